"""The FastAPI application: :func:`create_app` builds it, :func:`lifespan` opens and closes the store.

Routes are thin: they validate the HTTP body (:mod:`serving.schemas`), call the
:class:`~serving.store.PolicyStore`, and shape the reply. Errors become HTTP statuses in
:mod:`serving.errors` only. Nothing is built at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import errors
from serving.auth import accepted_keys
from serving.client_guard import BodyTimeoutMiddleware
from serving.decision_ids import key_from_setting
from serving.demo import install_demo
from serving.metrics import MetricsMiddleware, ServiceMetrics
from serving.routes import admin, allocation, decide, experiment, health, outcomes, placements, prebid
from serving.settings import Settings, get_settings
from serving.store import PolicyStore

log = logging.getLogger("adbandit.serving")

DESCRIPTION = """\
Learns, per ad placement and audience segment, which ad networks get how much traffic
(exposure weights) and what floor price (CPM) each gets — Thompson sampling with a censored
Gaussian-mixture price model — and serves those decisions to the ad server.

* **Ad server**: `POST /v1/decide` (or `/v1/decide/batch`) per request, or poll
  `GET /v1/placements/{placement}/allocation`; post what happened to `POST /v1/outcomes`.
* **Prebid.js**: `GET /v1/prebid/floors?placement=…` (Price Floors Module, schema 2).
* **Ad-ops**: configure placements and A/B variants, read the experiment report, swap models.

Errors are `{"detail": …}` with a 4xx status. Keys (`Authorization: Bearer <key>`), each
active only when set: `ADBANDIT_API_KEY` for writes (it also opens every other endpoint),
`ADBANDIT_READ_API_KEY` for reads of business data (placements, allocations, experiment
reports, `/metrics`), `ADBANDIT_DECIDE_API_KEY` for decisions and Prebid floors.
"""


class BodyLimitMiddleware:
    """413 for a request body over ``limit`` bytes: by ``Content-Length`` before reading,
    and by counting the bytes actually received (chunked or lying clients)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._reject(send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise errors.BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(self, send: Send) -> None:
        body = b'{"detail":"request body is larger than the limit of %d bytes"}' % self.limit
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the store (replaying the event log since the last snapshot), load the start-up
    model and the demo placement if asked, and close the store (final snapshot) at exit."""
    settings: Settings = app.state.settings
    store = PolicyStore(
        settings.state_dir,
        default_policy=settings.default_policy,
        dedupe_days=settings.dedupe_days,
        snapshot_every_s=settings.snapshot_every_s,
        snapshot_max_deltas=settings.snapshot_max_deltas,
        snapshot_delta_share=settings.snapshot_delta_share,
        fsync=settings.fsync,
        max_event_skew_s=settings.max_event_skew_s,
        decision_key=key_from_setting(settings.decision_key.get_secret_value()) if settings.decision_key else None,
        limits=settings.limits(),
    )
    start = time.perf_counter()
    await run_in_threadpool(store.open)
    app.state.store = store
    log.info(
        "store open",
        extra={
            "fields": {
                "state_dir": str(settings.state_dir),
                "placements": len(store.list_placements()),
                "seconds": round(time.perf_counter() - start, 3),
            }
        },
    )
    try:
        if settings.model:
            await run_in_threadpool(load_startup_model, store, settings.model, settings.model_name)
        if settings.demo:
            await run_in_threadpool(install_demo, store)
        yield
    finally:
        await run_in_threadpool(store.close)
        log.info("store closed")


def load_startup_model(store: PolicyStore, alias: str, name: str) -> None:
    """``serve --model ALIAS``: make MLflow model ``name@alias`` the champion of its placement
    (creating the placement from the state's configuration if it does not exist)."""
    from bandit import UnknownPlacement
    from bandit.io import state_meta
    from experiments.model_registry import load_model_state
    from serving.placement_config import ServicePlacement

    state = load_model_state(alias=alias, name=name)
    meta = state_meta(state)
    placement = meta["placement_id"]
    try:
        store.get_placement(placement)
    except UnknownPlacement:
        store.put_placement(ServicePlacement.from_dict(placement, meta["placement"]))
    version = store.swap_model(placement, store.get_experiment(placement).champion, state)
    log.info(
        "start-up model loaded",
        extra={"fields": {"model": f"{name}@{alias}", "placement": placement, "model_version": version}},
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service with ``settings`` (default: :func:`get_settings`, from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="adbandit",
        version="0.1.0",
        summary="Exposure weights and floor prices of ad networks, learned online.",
        description=DESCRIPTION,
        lifespan=lifespan,
        strict_content_type=False,  # a body without Content-Type is read as JSON
    )
    app.state.settings = settings
    app.state.decide_keys = accepted_keys(settings, "decide")
    app.state.metrics = ServiceMetrics()
    app.state.started = time.monotonic()
    app.state.metrics.watch(lambda: app.state.store.metrics())
    errors.install(app)
    # Hot routes first: matching is linear in the number of routes before the match.
    for module in (decide, outcomes, placements, allocation, experiment, prebid, admin, health):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    _publish_extra_schemas(app)
    return app


def _publish_extra_schemas(app: FastAPI) -> None:
    """Add to OpenAPI the models of bodies the routes parse themselves (decide, outcomes)."""
    from fastapi.openapi.utils import get_openapi
    from pydantic.json_schema import models_json_schema

    from serving.schemas import DecideBatchRequest, DecideRequest, OutcomeEventIn

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            models = [(m, "validation") for m in (DecideRequest, DecideBatchRequest, OutcomeEventIn)]
            _, extra = models_json_schema(models, ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(extra.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
