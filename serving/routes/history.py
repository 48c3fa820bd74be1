"""``GET /v1/placements/{placement}/history``: the console's time series of a placement."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from bandit import ALL_SEGMENTS
from serving.auth import ReadAuth
from serving.routes.allocation import check_segment_key
from serving.routes.deps import JSON, StoreDep, StrictQueryRoute, errors
from serving.schemas import HistoryOut

router = APIRouter(prefix="/v1/placements", tags=["history"], route_class=StrictQueryRoute)


@router.get("/{placement}/history", response_model=HistoryOut, dependencies=[ReadAuth], responses=errors(401, 404))
async def get_history(
    placement: str,
    store: StoreDep,
    segment: Annotated[
        str | None,
        Query(
            max_length=1024,
            description="Segment key as for the allocation ('KR|ios'); omitted or '*': the whole placement. "
            "`segments` in the reply lists those with a history.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only points and alarms after this time: seconds since the epoch (1764672000.5) or "
            "ISO 8601 with a time zone (2026-12-02T10:00:00Z).",
        ),
    ] = None,
) -> Response:
    """Per point (every ``every_s`` seconds, oldest first): the window's requests, fills, revenue,
    revenue per request and fill rate, and the champion's weight and floor per network at that
    time; the placement's change alarms; the service's data health (log lag, events accepted,
    rejected and duplicate, last accepted). Kept in the state dir across restarts; old points
    are thinned to a coarser resolution."""
    config = store.get_placement(placement)
    if segment is not None:
        check_segment_key(placement, config.segment_by, segment)
    after = None if since is None else parse_since(since)
    history = await run_in_threadpool(store.history, placement, segment or ALL_SEGMENTS, after)
    return JSON(history)


def parse_since(text: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 time with a zone; else a 422."""
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise _bad_since(text) from None
        return when.timestamp()
    if not math.isfinite(value):
        raise _bad_since(text)
    return value


def _bad_since(text: str) -> RequestValidationError:
    msg = (
        f"since {text!r} is not a time: send seconds since the epoch (1764672000) or ISO 8601 with a time zone "
        "(2026-12-02T10:00:00Z)"
    )
    return RequestValidationError([{"loc": ("query", "since"), "msg": msg, "type": "value_error"}])
