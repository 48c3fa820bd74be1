"""``/v1/decide``: which network, at what floor, for one request or a batch (in request order).

The hot path: bodies are parsed with orjson and validated in one pydantic pass
(:func:`serving.routes.deps.read_body`), and the store is read from the app state
without dependency injection, so a decision costs tens of microseconds in Python.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from serving.auth import check_bearer
from serving.routes.deps import BODY_ERRORS, JSON, StrictQueryRoute, body_schema, errors, read_body
from serving.schemas import DecideBatchRequest, DecideBatchResponse, DecideRequest, DecisionOut
from serving.store import DecisionRecord

router = APIRouter(prefix="/v1/decide", tags=["decide"], route_class=StrictQueryRoute)

_ERRORS = errors(401, 404, *BODY_ERRORS)


def decision_out(record: DecisionRecord) -> dict:
    """The HTTP shape of a decision (the contract in docs/design.md); a waterfall or auction
    decision adds ``mode`` and its offers as ``tiers`` (calling order) or ``bidders``."""
    out = {
        "decision_id": record.decision_id,
        "placement": record.placement,
        "network": record.network,
        "floor_cpm": record.floor_cpm,
        "propensity": record.propensity,
        "segment": record.segment,
        "variant": record.variant,
        "model_version": record.model_version,
    }
    if record.offers:
        out["mode"] = record.mode
        out["tiers" if record.mode == "waterfall" else "bidders"] = [
            {"network": network, "floor_cpm": floor} for network, floor in record.offers
        ]
    return out


@router.post("", response_model=DecisionOut, responses=_ERRORS, openapi_extra=body_schema("DecideRequest"))
async def decide(request: Request) -> Response:
    """One decision: the network to call and the floor (CPM) to give it, with P(network).

    Served from the placement's precomputed decision table (a look-up and one uniform draw),
    so it runs on the event loop without a thread hop.
    """
    state = request.app.state
    if state.decide_keys:  # inline, not a dependency: this is the hot path
        check_bearer(request.headers.get("authorization"), state.decide_keys, "decide")
    body = await read_body(request, DecideRequest)
    record = state.store.decide(body.placement, body.request_id, body.context, user_id=body.user_id)
    state.metrics.decisions.labels(body.placement).inc()
    return JSON(decision_out(record))


@router.post(
    "/batch", response_model=DecideBatchResponse, responses=_ERRORS, openapi_extra=body_schema("DecideBatchRequest")
)
async def decide_batch(request: Request) -> Response:
    """Decisions for up to 10,000 requests of one placement, returned in request order."""
    state = request.app.state
    if state.decide_keys:
        check_bearer(request.headers.get("authorization"), state.decide_keys, "decide")
    body = await read_body(request, DecideBatchRequest)
    records = state.store.decide_batch(body.placement, [(r["request_id"], r.get("context")) for r in body.requests])
    state.metrics.decisions.labels(body.placement).inc(len(records))
    return JSON({"decisions": [decision_out(r) for r in records]})
