"""``/v1/openrtb``: floors on OpenRTB 2.6 BidRequests, and win/billing/loss notices.

``POST /v1/openrtb/floors`` returns the BidRequest with each imp's floor set by the live
policy of the placement its ``tagid`` names; ``GET /v1/openrtb/{win,billing,loss}`` (the
``nurl``/``burl``/``lurl`` the floors reply gives) land as outcome events through the same
intake as ``POST /v1/outcomes`` (validated, de-duplicated, durable before the reply). The
mapping and the notice semantics are in :mod:`serving.openrtb`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response

from bandit import InvalidOutcome, UnknownPlacement
from serving.auth import DecideAuth
from serving.limits import check_context
from serving.openrtb import (
    MAX_BODY_BYTES,
    BidRequest,
    ImpFloor,
    NoticeKind,
    check_currency,
    context_of,
    loss_ignored,
    notice_event,
    parse_price,
    placement_of,
    plan_bidder_floors,
    read_bid_request,
    with_floors,
)
from serving.prebid import DECIMALS, bidder_floors, bidders_of
from serving.routes.deps import (
    BODY_ERRORS,
    JSON,
    StrictQueryRoute,
    body_schema,
    errors,
    is_json,
    media_type,
    parse_json,
)
from serving.store import PolicyStore

router = APIRouter(prefix="/v1/openrtb", tags=["openrtb"], route_class=StrictQueryRoute)


@router.post(
    "/floors",
    dependencies=[DecideAuth],
    responses={
        200: {"description": "The BidRequest, each imp with bidfloor, bidfloorcur and ext set"},
        **errors(401, 404, 503, *BODY_ERRORS),
    },
    openapi_extra=body_schema("BidRequest"),
)
async def floors(request: Request) -> Response:
    """Set ``imp[].bidfloor``/``bidfloorcur`` of an OpenRTB 2.6 BidRequest from one live decision per
    imp (placement = ``imp.tagid``; context from ``device``, ``site``/``app``); everything else,
    extensions included, comes back unchanged. See docs/service.md, "OpenRTB"."""
    kind = media_type(request)
    if not is_json(kind):
        raise HTTPException(415, f"Content-Type {kind!r} is not supported; send the BidRequest as application/json")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, f"the BidRequest is {len(raw)} bytes; at most {MAX_BODY_BYTES} are accepted")
    data = parse_json(raw)
    bid_request = read_bid_request(data)
    state = request.app.state
    base = str(request.base_url)
    if reads_allocations(state.store, bid_request):  # they wait while the applier refits: not on the loop
        priced = await run_in_threadpool(price_bid_request, state.store, bid_request, data, base)
    else:  # decisions only: served from the decision tables, on the event loop like POST /v1/decide
        priced = price_bid_request(state.store, bid_request, data, base)
    for floor in priced[1]:
        state.metrics.decisions.labels(floor.placement).inc()
    return JSON(priced[0])


def reads_allocations(store: PolicyStore, bid_request: BidRequest) -> bool:
    """Whether pricing reads allocations: some single imp's placement maps networks to bidder
    codes (a plan's bidder floors are the plan's own)."""
    for imp in bid_request.imp:
        try:
            config = store.get_placement(imp.tagid or "")
            if config.mode == "single" and bidders_of(config):
                return True
        except UnknownPlacement:
            return False  # price_bid_request answers it
    return False


def price_bid_request(
    store: PolicyStore, bid_request: BidRequest, raw: dict[str, Any], base: str
) -> tuple[dict[str, Any], list[ImpFloor]]:
    """Decide every imp (placements and currencies checked first: a bad imp decides nothing)."""
    configs = []
    contexts: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, imp in enumerate(bid_request.imp):
        if imp.id in seen:
            raise InvalidOutcome(f"imp[{i}].id {imp.id!r} repeats an earlier imp's id; imp ids must be unique")
        seen.add(imp.id)
        placement = placement_of(imp, i)
        try:
            config = store.get_placement(placement)
        except UnknownPlacement:
            raise UnknownPlacement(
                f"imp[{i}].tagid {placement!r} names no placement: create it (PUT /v1/placements/{{p}}) or fix tagid"
            ) from None
        check_currency(bid_request.cur, config.currency, placement)
        contexts.append(context_of(bid_request, imp))
        check_context(contexts[-1], store.limits, where=f"the context of imp[{i}] (from device, site or app)")
        configs.append(config)
    user = bid_request.user.id if bid_request.user else None
    allocations: dict[tuple[str, str, str], dict[str, float]] = {}
    floors = []
    for imp, config, context in zip(bid_request.imp, configs, contexts, strict=True):
        record = store.decide(config.id, f"{bid_request.id}:{imp.id}", context, user_id=user)
        per_bidder: dict[str, float] = {}
        bidders = bidders_of(config)
        if record.offers:  # a plan: each bidder's floor is the plan's
            per_bidder = {c: round(f, DECIMALS) for c, f in plan_bidder_floors(record.offers, bidders).items()}
        elif bidders:
            key = (config.id, record.segment, record.variant)
            if key not in allocations:
                alloc = store.allocation(config.id, segment=record.segment, variant=record.variant)
                allocations[key] = {c: round(f, DECIMALS) for c, f in bidder_floors(alloc, bidders).items()}
            per_bidder = allocations[key]
        floors.append(
            ImpFloor(
                config.id,
                config.currency,
                record.decision_id,
                record.network,
                record.floor_cpm,
                record.segment,
                config.segment_of(context),
                record.variant,
                record.model_version,
                per_bidder,
                record.mode,
                record.propensity,
                record.offers,
                bidders,
            )
        )
    return with_floors(raw, floors, base), floors


DecisionQ = Annotated[str, Query(min_length=1, max_length=256, description="decision_id (d of the notice URL).")]
PlacementQ = Annotated[str, Query(min_length=1, max_length=128, description="Placement id.")]
NetworkQ = Annotated[str, Query(min_length=1, max_length=64, description="Network of the decision.")]
FloorQ = Annotated[float, Query(ge=0, allow_inf_nan=False, description="Floor (CPM) of the decision.")]
SegmentQ = Annotated[str, Query(max_length=4096, description="The request's segment key, as the floors reply gave.")]
_NOTICE_ERRORS = errors(404, 422, 503, 507)


@router.get("/win", responses=_NOTICE_ERRORS)
async def win(
    request: Request, d: DecisionQ, p: PlacementQ, n: NetworkQ, f: FloorQ, s: SegmentQ,
    price: Annotated[str, Query(max_length=64, description="${AUCTION_PRICE}: clearing price, CPM.")],
) -> Response:  # fmt: skip
    """Win notice (``nurl``): the impression was won at ``price`` (CPM) → a filled outcome."""
    return await notice(request, "win", d, p, n, f, s, parse_price(price))


@router.get("/billing", responses=_NOTICE_ERRORS)
async def billing(
    request: Request, d: DecisionQ, p: PlacementQ, n: NetworkQ, f: FloorQ, s: SegmentQ,
    price: Annotated[str, Query(max_length=64, description="${AUCTION_PRICE}: billed price, CPM.")],
) -> Response:  # fmt: skip
    """Billing notice (``burl``): the impression was billed at ``price`` (CPM) → a filled outcome."""
    return await notice(request, "billing", d, p, n, f, s, parse_price(price))


@router.get("/loss", responses=_NOTICE_ERRORS)
async def loss(
    request: Request, d: DecisionQ, p: PlacementQ, n: NetworkQ, f: FloorQ, s: SegmentQ,
    reason: Annotated[str | None, Query(max_length=64, description="${AUCTION_LOSS}: loss reason code.")] = None,
) -> Response:  # fmt: skip
    """Loss notice (``lurl``): lost in the auction (reason 100-199, or none given) → a no-fill
    outcome; any other reason (a technical failure, a filtered creative) is answered and not learned."""
    why_not = loss_ignored(reason)
    if why_not:
        return JSON({"accepted": 0, "duplicates": 0, "ignored": why_not})
    return await notice(request, "loss", d, p, n, f, s, 0.0)


async def notice(
    request: Request, kind: NoticeKind, d: str, p: str, n: str, f: float, s: str, price: float
) -> Response:
    """Verify the decision id, then ingest the notice's outcome as ``POST /v1/outcomes`` does."""
    state = request.app.state
    store: PolicyStore = state.store
    config = store.get_placement(p)
    if config.mode != "single":
        verdict = store.verify_plan_decision(d, p, [(n, f)])
    else:
        verdict = store.verify_decision(d, p, n, f)
    if not verdict.ok:
        raise InvalidOutcome(f"d is not a decision of placement {p!r}, network {n!r}, floor {f:g}: {verdict.reason}")
    event = notice_event(
        kind, decision_id=d, placement=config, network=n, floor_cpm=f, segment=s, price=price, now=time.time()
    )
    result = await run_in_threadpool(store.ingest, [event])
    state.metrics.record_ingest(result.accepted, result.duplicates, len(result.rejected))
    if result.rejected:
        raise InvalidOutcome(result.rejected[0][1])
    return JSON({"accepted": result.accepted, "duplicates": result.duplicates})
