"""``/v1/placements``: create or replace a placement, read one, list them."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from bandit import PlacementConfig
from serving.auth import ReadAuth, WriteAuth
from serving.placement_config import ServicePlacement
from serving.routes.deps import BODY_ERRORS, OrjsonRoute, PlacementPath, StoreDep, errors
from serving.schemas import PlacementIn, PlacementList, PlacementOut

router = APIRouter(prefix="/v1/placements", tags=["placements"], route_class=OrjsonRoute)


def placement_out(config: PlacementConfig) -> dict:
    return {"placement": config.id, **ServicePlacement.of(config).to_public_dict()}


@router.put(
    "/{placement}",
    response_model=PlacementOut,
    response_model_exclude_none=True,
    status_code=200,
    dependencies=[WriteAuth],
    responses={201: {"model": PlacementOut, "description": "Created"}, **errors(401, 507, *BODY_ERRORS)},
    summary="Create (201) or replace (200) a placement",
)
async def put_placement(placement: PlacementPath, body: PlacementIn, store: StoreDep, response: Response) -> dict:
    """Networks with their floor bounds and share contract, the context fields that key
    segments (``segment_by``) and the currency. Replacing keeps what was learned for the
    networks that remain."""
    config = ServicePlacement.from_dict(placement, body.model_dump())
    created = await run_in_threadpool(store.put_placement, config)
    if created:
        response.status_code = 201
    return placement_out(store.get_placement(placement))


@router.get(
    "/{placement}",
    response_model=PlacementOut,
    response_model_exclude_none=True,
    dependencies=[ReadAuth],
    responses=errors(401, 404, 422),
)
async def get_placement(placement: str, store: StoreDep) -> dict:
    return placement_out(store.get_placement(placement))


@router.get(
    "", response_model=PlacementList, response_model_exclude_none=True, dependencies=[ReadAuth], responses=errors(401)
)
async def list_placements(store: StoreDep) -> dict:
    return {"placements": [placement_out(c) for c in store.list_placements()]}
