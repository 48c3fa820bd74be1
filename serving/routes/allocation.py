"""``GET /v1/placements/{placement}/allocation``: current weights and floors, with uncertainty."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from serving.auth import ReadAuth
from serving.routes.deps import JSON, StoreDep, errors
from serving.schemas import AllocationOut

router = APIRouter(prefix="/v1/placements", tags=["allocation"])


@router.get(
    "/{placement}/allocation", response_model=AllocationOut, dependencies=[ReadAuth], responses=errors(401, 404, 422)
)
async def get_allocation(
    placement: str,
    store: StoreDep,
    segment: Annotated[
        str | None,
        Query(
            max_length=1024,
            description="Segment key, e.g. 'KR|ios' (segment_by values joined by '|'); "
            "omitted: the whole placement. An unseen segment gets the placement's allocation.",
        ),
    ] = None,
    variant: Annotated[
        str | None, Query(max_length=64, description="Experiment variant (default: the champion).")
    ] = None,
) -> Response:
    """Per network: weight (share of traffic), floor (CPM) with its 10th-90th percentile
    band, expected revenue per request with its posterior standard deviation, fill rate and
    auction type; plus the model version and the (discounted) number of events behind it."""
    config = store.get_placement(placement)
    name = variant or store.get_experiment(placement).champion
    # In the thread pool: reading an allocation waits while the applier refits that variant.
    allocation = await run_in_threadpool(store.allocation, placement, segment, name)
    return JSON({**allocation.to_dict(), "variant": name, "currency": config.currency})
