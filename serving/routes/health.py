"""``GET /healthz`` and ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from serving.auth import ReadAuth
from serving.errors import ServiceUnavailable
from serving.metrics import CONTENT_TYPE
from serving.routes.deps import MetricsDep, StoreDep, errors
from serving.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, responses=errors(503))
async def healthz(request: Request, store: StoreDep) -> dict:
    """The store is open and answering (503 while it is closing)."""
    if not store.is_open:
        raise ServiceUnavailable("the policy store is not open")
    return {
        "status": "ok",
        "placements": len(store.list_placements()),
        "uptime_s": time.monotonic() - request.app.state.started,
    }


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[ReadAuth],
    responses={200: {"content": {CONTENT_TYPE: {}}}, **errors(401)},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency per endpoint, outcome events by result,
    decisions per placement, and the store's figures (event-log lag, revenue per request …)."""
    return Response(metrics.render(), media_type=CONTENT_TYPE)
