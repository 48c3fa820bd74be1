"""``GET /v1/placements/{placement}/allocation``: current weights and floors, with uncertainty."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from bandit import ALL_SEGMENTS, InvalidDecisionRequest
from serving.auth import ReadAuth
from serving.routes.deps import JSON, StoreDep, StrictQueryRoute, errors
from serving.schemas import AllocationOut

router = APIRouter(prefix="/v1/placements", tags=["allocation"], route_class=StrictQueryRoute)


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
            description="Segment key, e.g. 'KR|ios': one value per segment_by field of the placement, joined "
            "by '|' ('*' for any value, e.g. '*|ios'); omitted or '*': the whole placement. A well-formed "
            "segment not seen yet gets the allocation its pooled prior gives; a key with the wrong number "
            "of fields is a 422.",
        ),
    ] = None,
    variant: Annotated[
        str | None, Query(max_length=64, description="Experiment variant (default: the champion).")
    ] = None,
) -> Response:
    """Per network: weight (share of traffic), floor (CPM) with its 10th-90th percentile
    band, expected revenue per request with its posterior standard deviation, fill rate and
    auction type; plus the model version and the (discounted) number of events behind it.

    A waterfall or auction placement adds ``mode`` and its most probable ``plans`` (each a
    probability and its offers in calling order); a network's weight is then its share of
    first-tier calls (waterfall) or its normalised call probability (auction), its floor the
    mean floor of the plans calling it and its p10 / p90 the percentiles of those floors.

    A ``segment`` must have one value per ``segment_by`` field of the placement (``*`` for
    any value, or ``*`` alone for the whole placement); anything else is a 422 naming the fields."""
    config = store.get_placement(placement)
    if segment is not None:
        check_segment_key(placement, config.segment_by, segment)
    name = variant or store.get_experiment(placement).champion
    # In the thread pool: reading an allocation waits while the applier refits that variant.
    if config.mode == "single":
        allocation = await run_in_threadpool(store.allocation, placement, segment, name)
        return JSON({**allocation.to_dict(), "variant": name, "currency": config.currency})
    allocation, plans = await run_in_threadpool(store.allocation_plans, placement, segment, name)
    return JSON(
        {**allocation.to_dict(), "variant": name, "currency": config.currency, "mode": config.mode, "plans": plans}
    )


def check_segment_key(placement: str, segment_by: Sequence[str], segment: str) -> None:
    """:class:`InvalidDecisionRequest` (422) unless ``segment`` is ``*`` or has one non-empty value
    per field of ``segment_by``."""
    if segment == ALL_SEGMENTS:
        return
    values = segment.split("|")
    if segment_by and len(values) == len(segment_by) and all(v.strip() for v in values):
        return
    if not segment_by:
        raise InvalidDecisionRequest(
            f"placement {placement!r} has no segment fields (segment_by is empty): omit segment or send '*', "
            f"got {segment!r}"
        )
    fields = "|".join(segment_by)
    example = "|".join(f"<{f}>" for f in segment_by)
    raise InvalidDecisionRequest(
        f"segment {segment!r} does not match placement {placement!r}, which segments by {fields}: send "
        f"{len(segment_by)} non-empty values joined by '|' ({example}; '*' for any value), or omit segment"
    )
