"""``POST /v1/outcomes``: what happened to decisions, as a JSON array or NDJSON.

Every event is validated on its own: the reply counts the accepted events and the
duplicates (an ``event_id`` already seen is counted once) and lists the rejected ones
with their index and the reason. An event of a waterfall or auction placement may report
every called network at once (``responses``, :mod:`serving.plans`); it is expanded into one
per-network event each and counted once. Accepted events are durable (written and fsynced to the
event log) before the reply.

A Prebid page posts without the write key (:func:`serving.auth.outcome_poster`): then each event
needs the floors id of its auction's floors document (:mod:`serving.intake`); a post in which
no event carries one is a 401, one in which none of them verifies a 403
(:func:`refused_page_post`), each saying what to do.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serving.auth import OutcomePoster
from serving.decision_ids import is_floors_id
from serving.intake import PAGE_NEEDS_FLOORS_ID
from serving.routes.deps import (
    BODY_ERRORS,
    JSON,
    MetricsDep,
    StoreDep,
    StrictQueryRoute,
    errors,
    is_json,
    media_type,
    parse_json,
    unsupported,
)
from serving.schemas import IngestResponse
from serving.store import IngestResult

router = APIRouter(prefix="/v1/outcomes", tags=["outcomes"], route_class=StrictQueryRoute)
log = logging.getLogger("adbandit.serving")

#: Most events one request may carry (a 16 MiB body of real events holds far fewer).
MAX_EVENTS = 100_000
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})

_EVENTS_SCHEMA = {
    "type": "array",
    "items": {
        "anyOf": [
            {"$ref": "#/components/schemas/OutcomeEventIn"},
            {"$ref": "#/components/schemas/MultiOutcomeEventIn"},
        ]
    },
}
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "description": "Outcome events as a JSON array, or one JSON object per line with "
        "Content-Type: application/x-ndjson.",
        "content": {
            "application/json": {"schema": _EVENTS_SCHEMA},
            "application/x-ndjson": {
                "schema": {**_EVENTS_SCHEMA, "description": "The events, sent as one JSON object per line."}
            },
        },
    }
}


def parse_ndjson(raw: bytes) -> tuple[list[Any], list[int], list[dict]]:
    """Events of an NDJSON body, their indexes (non-blank line numbers, from 0), and
    a rejected entry for each line that is not JSON."""
    events: list[Any] = []
    positions: list[int] = []
    rejected: list[dict] = []
    index = 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            events.append(orjson.loads(line))
            positions.append(index)
        except orjson.JSONDecodeError as exc:
            rejected.append({"index": index, "error": f"malformed JSON line: {exc}"})
        index += 1
    return events, positions, rejected


def parse_events(request: Request, raw: bytes) -> tuple[list[Any], list[int], list[dict]]:
    kind = media_type(request)
    if kind in NDJSON_TYPES:
        return parse_ndjson(raw)
    if not is_json(kind):
        raise unsupported(kind, "application/json (an array) or application/x-ndjson")
    body = parse_json(raw)
    if not isinstance(body, list):
        raise HTTPException(422, "the body must be a JSON array of outcome events (or NDJSON lines)")
    return body, list(range(len(body))), []


def refused_page_post(events: list[Any], result: IngestResult | None) -> HTTPException | None:
    """The 401 or 403 of a page's post (no write key) from which nothing was accepted because of
    its credentials: 401 when no event carries a floors id, 403 when none of those it carries
    verifies (the first rejected event's reason is in the message); None otherwise."""
    if result is not None and (result.accepted or result.duplicates or result.refused_ids < len(events)):
        return None
    with_id = [e for e in events if isinstance(e, dict) and is_floors_id(e.get("decision_id"))]
    headers = {"WWW-Authenticate": "Bearer"}
    if not with_id:
        return HTTPException(401, f"no write key, and no event carries a floors id: {PAGE_NEEDS_FLOORS_ID}", headers)
    first = result.rejected[0][1] if result is not None and result.rejected else ""
    return HTTPException(
        403,
        f"no write key, and no event's floors id verifies (first: {first}); fetch the floors again "
        "(GET /v1/prebid/floors) and post the new modelVersion's id, or post with the write key from a server",
        headers,
    )


@router.post(
    "",
    response_model=IngestResponse,
    openapi_extra=OPENAPI_BODY,
    responses=errors(401, 403, 507, *BODY_ERRORS),
)
async def post_outcomes(request: Request, store: StoreDep, metrics: MetricsDep, poster: OutcomePoster) -> Response:
    """Ingest outcome events (see the module docstring). Without a write key set, or with it,
    any events; from a Prebid page (no key while one is set), events with a valid floors id."""
    raw = await request.body()
    events, positions, rejected = parse_events(request, raw)
    if len(events) + len(rejected) > MAX_EVENTS:
        raise HTTPException(413, f"at most {MAX_EVENTS} outcome events per request; split the batch")
    page = poster == "page"
    if page and not events:
        raise refused_page_post(events, None)  # type: ignore[misc]
    if events:
        result = await run_in_threadpool(store.ingest, events, page=page)
        if page and (refusal := refused_page_post(events, result)) is not None:
            metrics.record_ingest(0, 0, len(events) + len(rejected))
            raise refusal
        accepted, duplicates = result.accepted, result.duplicates
        rejected.extend({"index": positions[i], "error": error} for i, error in result.rejected)
        rejected.sort(key=lambda r: r["index"])
    else:
        accepted = duplicates = 0
    metrics.record_ingest(accepted, duplicates, len(rejected))
    if rejected:
        log.info(
            "outcomes rejected",
            extra={
                "fields": {
                    "accepted": accepted,
                    "duplicates": duplicates,
                    "rejected": len(rejected),
                    "first_error": rejected[0]["error"],
                }
            },
        )
    return JSON({"accepted": accepted, "duplicates": duplicates, "rejected": rejected})
