"""``GET /healthz`` and ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from serving.auth import ReadAuth
from serving.errors import STORAGE_RETRY_AFTER_S, ServiceUnavailable
from serving.metrics import CONTENT_TYPE
from serving.routes.deps import MetricsDep, StoreDep, StrictQueryRoute, errors
from serving.schemas import HealthOut

router = APIRouter(tags=["health"], route_class=StrictQueryRoute)


@router.get("/healthz", response_model=HealthOut, responses=errors(503))
async def healthz(request: Request, store: StoreDep) -> dict:
    """Ready when the store is open and its disk takes writes: 503 while it is closing or
    while writes or fsyncs fail (with ``Retry-After``). ``status`` is ``degraded`` while
    damage found at recovery waits for an operator's acknowledgement."""
    if not store.is_open:
        raise ServiceUnavailable("the policy store is not open")
    failing = store.storage_failure
    if failing is not None:
        raise ServiceUnavailable(
            f"not ready: the state dir cannot be written ({failing}); writes are refused with 507 until it can",
            retry_after_s=STORAGE_RETRY_AFTER_S,
        )
    damage = await run_in_threadpool(store.damage, unacknowledged=True)
    return {
        "status": "degraded" if damage else "ok",
        "placements": len(store.list_placements()),
        "uptime_s": time.monotonic() - request.app.state.started,
        "damage": [d.message() for d in damage],
    }


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[ReadAuth],
    responses={200: {"content": {CONTENT_TYPE: {}}}, **errors(401)},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency per endpoint, outcome events by result,
    decisions per placement, the store's figures (event-log lag, requests and revenue per
    placement and variant …) and each placement's weights and floors per network."""
    # In the thread pool: reading allocations waits while the applier refits a variant.
    return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)
