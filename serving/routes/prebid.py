"""``GET /v1/prebid/floors``: the placement's floors for the Prebid.js Price Floors Module.

Point Prebid's ``floors.endpoint.url`` here. The mapping from allocations to floor rules
(fields, weight-averaged floor, one model group per A/B variant) is in :mod:`serving.prebid`.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from bandit import ALL_SEGMENTS
from serving.auth import DecideAuth
from serving.prebid import VariantFloors, prebid_floors
from serving.routes.deps import JSON, StoreDep, StrictQueryRoute, errors
from serving.schemas import PrebidFloors
from serving.store import PolicyStore

router = APIRouter(prefix="/v1/prebid", tags=["prebid"], route_class=StrictQueryRoute)


@router.get(
    "/floors",
    response_model=PrebidFloors,
    response_model_by_alias=True,
    dependencies=[DecideAuth],
    responses=errors(401, 404, 422),
)
async def floors(
    store: StoreDep,
    placement: Annotated[str, Query(min_length=1, max_length=128, description="Placement id.")],
) -> Response:
    """Floors data in Price Floors Module schema 2: one model group per experiment variant
    (``modelWeight`` = its traffic percent), one rule per learned segment, floor = the
    segment allocation's weight-averaged floor (CPM). Prebid.js needs
    ``floors.additionalSchemaFields`` for fields it does not know natively (``country``, ``os``)."""
    # In the thread pool: reading allocations waits while the applier refits a variant.
    return JSON(await run_in_threadpool(floors_of, store, placement))


def floors_of(store: PolicyStore, placement: str) -> dict:
    config = store.get_placement(placement)
    groups = []
    for variant in store.get_experiment(placement).variants:
        segments = [ALL_SEGMENTS, *store.segments(placement, variant.name)]
        allocations = [store.allocation(placement, segment=s, variant=variant.name) for s in segments]
        groups.append(VariantFloors(variant.name, variant.traffic, allocations))
    return prebid_floors(config, groups, timestamp=int(time.time()))
