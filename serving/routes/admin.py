"""``/v1/admin``: swap a variant's live model, force a snapshot, read and acknowledge damage
found at recovery. Admin endpoints (API key)."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import time

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from bandit import AdbanditError, InvalidState
from serving.auth import WriteAuth
from serving.errors import ServiceUnavailable
from serving.routes.deps import BODY_ERRORS, OrjsonRoute, SettingsDep, StoreDep, errors
from serving.schemas import AcknowledgeOut, DamageListOut, ModelSwapIn, ModelSwapOut, SnapshotOut
from serving.sources import ModelSource

router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[WriteAuth], route_class=OrjsonRoute, responses=errors(401)
)
log = logging.getLogger("adbandit.serving")


def state_from_b64(data: str) -> dict[str, np.ndarray]:
    """A policy state from a base64 ``.npz`` (pickle disabled)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidState("state_npz_b64 is not valid base64") from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise InvalidState(f"state_npz_b64 is not a readable .npz policy state: {exc}") from None


def registry_state(source: ModelSource | None, alias: str, name: str) -> dict[str, np.ndarray]:
    """The state of model ``name`` at ``alias`` in the service's model source (the MLflow
    registry when started by ``adbandit serve``); 503 when there is none or it cannot be used."""
    if source is None:
        raise ServiceUnavailable("no model registry is configured (start with adbandit serve; needs adbandit[offline])")
    try:
        return source.load(alias, name)
    except AdbanditError:
        raise
    except Exception as exc:
        log.warning("model registry unavailable", exc_info=True)
        raise ServiceUnavailable(f"model registry unavailable: {type(exc).__name__}: {exc}") from None


@router.post(
    "/placements/{placement}/model",
    response_model=ModelSwapOut,
    responses=errors(404, 503, 507, *BODY_ERRORS),
)
async def swap_model(
    placement: str, body: ModelSwapIn, store: StoreDep, settings: SettingsDep, request: Request
) -> dict:
    """Replace the live policy of one variant, from an MLflow alias (``mlflow_alias``, e.g.
    ``champion``) or a base64 ``.npz`` state (``state_npz_b64``). Decisions keep being served
    during the swap: the new policy is built aside and replaces the old one in one step."""
    if (body.mlflow_alias is None) == (body.state_npz_b64 is None):
        raise InvalidState("give exactly one of mlflow_alias or state_npz_b64")
    store.get_placement(placement)  # 404 before any download
    if body.mlflow_alias is not None:
        name = body.model_name or settings.model_name
        state = await run_in_threadpool(registry_state, request.app.state.model_source, body.mlflow_alias, name)
    else:
        state = state_from_b64(body.state_npz_b64 or "")
    version = await run_in_threadpool(store.swap_model, placement, body.variant, state)
    log.info(
        "model swapped", extra={"fields": {"placement": placement, "variant": body.variant, "model_version": version}}
    )
    return {"placement": placement, "variant": body.variant, "model_version": version}


@router.post("/snapshot", response_model=SnapshotOut, responses=errors(507))
async def snapshot(store: StoreDep) -> dict:
    """Write a snapshot of every policy now (also done periodically), so a restart replays less."""
    start = time.perf_counter()
    await run_in_threadpool(store.snapshot)
    return {"snapshot": "written", "seconds": time.perf_counter() - start}


def _damage_rows(entries: list) -> list[dict]:
    return [{**d.to_dict(), "message": d.message()} for d in entries]


@router.get("/damage", response_model=DamageListOut)
async def damage(store: StoreDep) -> dict:
    """Every damage recovery found in the state dir (the quarantine ledger), oldest first:
    torn tails cut, damaged or missing log records with the events they held, unreadable
    snapshots; with where the damaged bytes were moved."""
    return {"damage": _damage_rows(await run_in_threadpool(store.damage))}


@router.post("/acknowledge-damage", response_model=AcknowledgeOut, responses=errors(507))
async def acknowledge_damage(store: StoreDep) -> dict:
    """Acknowledge every reported damage: ``/healthz`` is ``ok`` again (until new damage is
    found). The ledger keeps the entries, with the acknowledgement time."""
    done = await run_in_threadpool(store.acknowledge_damage)
    log.warning("damage acknowledged by an operator", extra={"fields": {"entries": len(done)}})
    return {"acknowledged": len(done), "damage": _damage_rows(done)}
