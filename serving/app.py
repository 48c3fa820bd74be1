"""The FastAPI application: :func:`create_app` builds it, :func:`start_store` opens the store.

Routes are thin: they validate the HTTP body (:mod:`serving.schemas`), call the
:class:`~serving.store.PolicyStore`, and shape the reply. Errors become HTTP statuses in
:mod:`serving.errors` only. Nothing is built at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bandit import InvalidConfig
from serving import errors
from serving.auth import accepted_keys
from serving.client_guard import BodyTimeoutMiddleware
from serving.decision_ids import key_from_setting
from serving.demo import DemoFeed, install_demo
from serving.docs_ui import install_docs
from serving.metrics import MetricsMiddleware, ServiceMetrics
from serving.report import allocation_metrics
from serving.routes import (
    admin,
    allocation,
    console,
    decide,
    experiment,
    health,
    history,
    openrtb,
    outcomes,
    placements,
    prebid,
)
from serving.settings import Settings, get_settings
from serving.sources import DemoSource, ModelSource
from serving.store import PolicyStore

log = logging.getLogger("adbandit.serving")

DESCRIPTION = """\
Learns, per ad placement and audience segment, which ad networks get how much traffic
(exposure weights) and what floor price (CPM) each gets — Thompson sampling with a censored
Gaussian-mixture price model — and serves those decisions to the ad server.

* **Ad server**: `POST /v1/decide` (or `/v1/decide/batch`) per request, or poll
  `GET /v1/placements/{placement}/allocation`; post what happened to `POST /v1/outcomes`.
* **Prebid.js**: `GET /v1/prebid/floors?placement=…` (Price Floors Module, schema 2).
* **OpenRTB 2.6**: `POST /v1/openrtb/floors` sets `imp[].bidfloor` of a BidRequest;
  `GET /v1/openrtb/{win,billing,loss}` take the `nurl`/`burl`/`lurl` notices as outcomes.
* **Ad-ops**: configure placements and A/B variants, read the experiment report, swap models.

Errors are `{"detail": …}` with a 4xx status. Keys (`Authorization: Bearer <key>`), each
active only when set: `ADBANDIT_API_KEY` for writes (it also opens every other endpoint),
`ADBANDIT_READ_API_KEY` for reads of business data (placements, allocations, experiment
reports, `/metrics`), `ADBANDIT_DECIDE_API_KEY` for decisions and Prebid floors.
"""


class BodyLimitMiddleware:
    """413 for a request body over ``limit`` bytes: by ``Content-Length`` before reading,
    and by counting the bytes actually received (chunked or lying clients)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._reject(send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise errors.BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(self, send: Send) -> None:
        body = b'{"detail":"request body is larger than the limit of %d bytes"}' % self.limit
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def start_store(
    settings: Settings, model_source: ModelSource | None = None, demo_source: DemoSource | None = None
) -> PolicyStore:
    """Open the store over ``settings.state_dir`` (replaying the event log since the last
    snapshot), load the start-up model (``settings.model``, from ``model_source``) and the demo
    placement (``settings.demo``, from ``demo_source``). On any failure the store is closed
    again and the error raised: ``adbandit serve`` calls this before it listens, so a start-up
    failure is one line on stderr."""
    if settings.model and model_source is None:
        raise InvalidConfig("--model needs a model registry; install adbandit[offline] (MLflow)")
    if settings.demo and demo_source is None:
        raise InvalidConfig("--demo needs a demo market; none was given to the service")
    store = PolicyStore(
        settings.state_dir,
        default_policy=settings.default_policy,
        dedupe_days=settings.dedupe_days,
        snapshot_every_s=settings.snapshot_every_s,
        snapshot_max_deltas=settings.snapshot_max_deltas,
        snapshot_delta_share=settings.snapshot_delta_share,
        fsync=settings.fsync,
        max_event_skew_s=settings.max_event_skew_s,
        decision_key=key_from_setting(settings.decision_key.get_secret_value()) if settings.decision_key else None,
        limits=settings.limits(),
        floors_id_max_age_s=settings.prebid_id_max_age_s,
        history_every_s=settings.history_every_s or None,
        history_max_points=settings.history_max_points,
        history_max_segments=settings.history_max_segments,
    )
    start = time.perf_counter()
    store.open()
    try:
        log.info(
            "store open",
            extra={
                "fields": {
                    "state_dir": str(settings.state_dir),
                    "placements": len(store.list_placements()),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            },
        )
        if settings.model:
            assert model_source is not None
            load_startup_model(store, model_source, settings.model, settings.model_name)
        if settings.demo:
            assert demo_source is not None
            install_demo(store, demo_source)
    except BaseException:
        store.close()
        raise
    return store


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the store (:func:`start_store`) unless the app was given an open one, and close it
    (final snapshot) at exit; a later lifespan of the same app starts a new store."""
    store = getattr(app.state, "store", None)
    if store is None or not store.is_open:  # none given, or the previous lifespan's, closed
        app.state.store = await run_in_threadpool(
            start_store, app.state.settings, app.state.model_source, app.state.demo_source
        )
    settings, feed = app.state.settings, None
    if settings.demo and settings.demo_feed_s > 0 and app.state.demo_source is not None:
        feed = DemoFeed(app.state.store, app.state.demo_source, settings.demo_feed_s)
        feed.start()
    try:
        yield
    finally:
        if feed is not None:
            await run_in_threadpool(feed.stop)
        await run_in_threadpool(app.state.store.close)
        log.info("store closed")


def load_startup_model(store: PolicyStore, source: ModelSource, alias: str, name: str) -> None:
    """``serve --model ALIAS``: make model ``name@alias`` of ``source`` the champion of its
    placement (creating the placement from the state's configuration if it does not exist)."""
    from bandit import UnknownPlacement
    from bandit.io import state_meta
    from serving.placement_config import ServicePlacement

    state = source.load(alias, name)
    meta = state_meta(state)
    placement = meta["placement_id"]
    try:
        store.get_placement(placement)
    except UnknownPlacement:
        store.put_placement(ServicePlacement.from_dict(placement, meta["placement"]))
    version = store.swap_model(placement, store.get_experiment(placement).champion, state)
    log.info(
        "start-up model loaded",
        extra={"fields": {"model": f"{name}@{alias}", "placement": placement, "model_version": version}},
    )


def package_version() -> str:
    """The installed adbandit version (``0+unknown`` when run from a tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adbandit")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(
    settings: Settings | None = None,
    *,
    model_source: ModelSource | None = None,
    demo_source: DemoSource | None = None,
    store: PolicyStore | None = None,
) -> FastAPI:
    """The service with ``settings`` (default: :func:`get_settings`, from the environment).

    ``model_source`` serves ``settings.model`` and model swaps by alias (none: such swaps are
    a 503), ``demo_source`` the demo placement (:mod:`serving.sources`; the command line wires
    both). ``store``: an already started store (:func:`start_store`) that the app closes at
    exit; by default the app's lifespan starts one."""
    settings = settings or get_settings()
    app = FastAPI(
        title="adbandit",
        version=package_version(),
        summary="Exposure weights and floor prices of ad networks, learned online.",
        description=DESCRIPTION,
        lifespan=lifespan,
        strict_content_type=False,  # a body without Content-Type is read as JSON
        docs_url=None,  # served from local files by install_docs, not from a CDN
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the public validator
    )
    app.state.settings = settings
    app.state.model_source = model_source
    app.state.demo_source = demo_source
    app.state.store = store
    app.state.decide_keys = accepted_keys(settings, "decide")
    app.state.metrics = ServiceMetrics()
    app.state.started = time.monotonic()
    app.state.metrics.watch(lambda: app.state.store.metrics())
    app.state.metrics.watch_allocations(lambda: allocation_metrics(app.state.store))
    errors.install(app)
    # Hot routes first: matching is linear in the number of routes before the match.
    for module in (decide, outcomes, placements, allocation, experiment, history, prebid, openrtb, admin, health):
        app.include_router(module.router)
    install_docs(app)
    console.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(prebid.FloorsCorsMiddleware, settings=settings)
    _publish_extra_schemas(app)
    return app


def _publish_extra_schemas(app: FastAPI) -> None:
    """Add to OpenAPI the models of bodies the routes parse themselves (decide, outcomes)."""
    from fastapi.openapi.utils import get_openapi
    from pydantic.json_schema import models_json_schema

    from serving.openrtb import BidRequest
    from serving.schemas import DecideBatchRequest, DecideRequest, MultiOutcomeEventIn, OutcomeEventIn

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            bodies = (DecideRequest, DecideBatchRequest, OutcomeEventIn, MultiOutcomeEventIn, BidRequest)
            models = [(m, "validation") for m in bodies]
            _, extra = models_json_schema(models, ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(extra.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
