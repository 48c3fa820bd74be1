"""``GET /v1/prebid/floors``: floors for the Prebid.js Price Floors Module.

Point Prebid's ``floors.endpoint.url`` here. The mapping from allocations to floor rules
(fields, weight-averaged floor, one model group per A/B variant, several ad units, per-bidder
rules, the fallback of variants without data) is in :mod:`serving.prebid`. Browsers fetch it
from publishers' pages, so it answers CORS (``ADBANDIT_PREBID_CORS_ORIGINS``, preflight
``OPTIONS`` included) and says how long it may be cached (``ADBANDIT_PREBID_CACHE_MAX_AGE_S``).

``GET /v1/prebid/adbandit-prebid.js`` serves the analytics script (package data
``serving/static/adbandit-prebid.js``) that posts a page's Prebid auction results to
``POST /v1/outcomes``; that route answers the same CORS (and its preflight) so the page may post.
Each model group's ``modelVersion`` ends in ``#<floors id>`` (:mod:`serving.prebid`): the
script posts it as each event's ``decision_id``, which attributes the event to the group's
variant and lets a page post without the write key (:mod:`serving.intake`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bandit import ALL_SEGMENTS
from serving.auth import DecideAuth
from serving.prebid import FloorsOptions, VariantFloors, page_floors, prebid_floors, with_fallback
from serving.routes.deps import JSON, PLACEMENT_PATTERN, SettingsDep, StoreDep, StrictQueryRoute, errors
from serving.schemas import PrebidFloors
from serving.settings import Settings
from serving.store import PolicyStore

router = APIRouter(prefix="/v1/prebid", tags=["prebid"], route_class=StrictQueryRoute)

#: Most placements (ad units) one floors document may hold.
MAX_PLACEMENTS = 500
FLOORS_PATH = "/v1/prebid/floors"
SCRIPT_PATH = "/v1/prebid/adbandit-prebid.js"
OUTCOMES_PATH = "/v1/outcomes"
#: Paths a publisher's page calls from the browser → the methods its CORS preflight allows.
BROWSER_PATHS: dict[str, str] = {FLOORS_PATH: "GET, OPTIONS", OUTCOMES_PATH: "POST, OPTIONS", SCRIPT_PATH: "GET"}
#: Seconds a browser may cache a CORS preflight answer.
PREFLIGHT_MAX_AGE_S = 600


@router.get(
    "/floors",
    response_model=PrebidFloors,
    response_model_by_alias=True,
    dependencies=[DecideAuth],
    responses=errors(401, 404, 422),
)
async def floors(
    store: StoreDep,
    settings: SettingsDep,
    placement: Annotated[
        list[str],
        Query(
            min_length=1,
            max_length=MAX_PLACEMENTS,
            description="Placement id; repeat it (?placement=a&placement=b) for one document of several ad units.",
        ),
    ],
    key: Annotated[
        Literal["adUnitCode", "gptSlot"] | None,
        Query(
            description="Schema field keyed by the placement id, e.g. adUnitCode (the default with several "
            "placements); omitted with one placement: the original one-placement document."
        ),
    ] = None,
    bidders: Annotated[
        bool,
        Query(description="Add the schema field 'bidder' with per-bidder floors (networks' Prebid bidder codes)."),
    ] = False,
    code: Annotated[
        list[str] | None,
        Query(
            max_length=MAX_PLACEMENTS,
            description="Page mapping: the ad unit code (or GPT slot, e.g. /1234/home/top) of each placement, "
            "in the order of the placement parameters (default: the placement ids).",
        ),
    ] = None,
) -> Response:
    """Floors data in Price Floors Module schema 2: one model group per experiment variant
    (``modelWeight`` = its traffic percent, ``modelVersion`` = ``<variant>:<version>#<floors id>``,
    the id the analytics script posts back), one rule per learned segment, floor = the
    segment allocation's weight-averaged floor (CPM). Prebid.js needs
    ``floors.additionalSchemaFields`` for fields it does not know natively (``country``, ``os``,
    ``bidder``)."""
    check_placement_ids(placement)
    units = ad_units(placement, code)
    options = FloorsOptions(
        key=key or ("adUnitCode" if len(units) > 1 or code is not None else None),
        bidders=bidders,
        skip_rate=settings.prebid_skip_rate,
        sign=store.issue_floors_id,
    )
    # In the thread pool: reading allocations waits while the applier refits a variant.
    doc = await run_in_threadpool(floors_of, store, units, options, settings.prebid_min_events)
    return JSON(doc, headers=cache_headers(settings))  # CORS headers: FloorsCorsMiddleware


def ad_units(placements: list[str], codes: list[str] | None) -> list[tuple[str, str]]:
    """(placement, ad unit code) pairs of a request, repeats dropped: ``codes[i]`` belongs to
    ``placements[i]`` (422 unless there are as many); without codes, the placement ids."""
    if codes is None:
        return [(p, p) for p in dict.fromkeys(placements)]
    if len(codes) != len(placements):
        raise RequestValidationError([{
            "loc": ("query", "code"), "type": "value_error",
            "msg": f"{len(codes)} code values for {len(placements)} placement values: give one code per placement, "
            "in the same order"}])  # fmt: skip
    bad = [i for i, c in enumerate(codes) if not c.strip() or len(c) > 256 or "|" in c]
    if bad:
        raise RequestValidationError([{
            "loc": ("query", "code", bad[0]), "type": "value_error",
            "msg": "an ad unit code is 1-256 characters without '|' (the rule delimiter)"}])  # fmt: skip
    return list(dict.fromkeys(zip(placements, codes, strict=True)))


def check_placement_ids(placements: list[str]) -> None:
    """422 for a placement id that cannot exist (as ``PUT /v1/placements/{p}`` would refuse it)."""
    pattern = re.compile(PLACEMENT_PATTERN)
    bad = [
        {"loc": ("query", "placement", i), "msg": f"not a placement id: {p[:80]!r}", "type": "string_pattern_mismatch"}
        for i, p in enumerate(placements)
        if not pattern.match(p)
    ]
    if bad:
        raise RequestValidationError(bad)


@router.get(
    "/adbandit-prebid.js",
    response_class=Response,
    responses={200: {"content": {"text/javascript": {}}, "description": "The analytics script."}},
)
async def analytics_script(settings: SettingsDep) -> Response:
    """The Prebid analytics script: load it on the page and call
    ``adbanditPrebid.attach(pbjs, {url: "<this service>"})``; it posts every bidder's answer
    in every auction (bid, floor not met, no bid, timeout; the winner marked) to
    ``POST /v1/outcomes``. Open (no key: a script tag cannot send one)."""
    return Response(
        analytics_script_bytes(), media_type="text/javascript; charset=utf-8", headers=cache_headers(settings)
    )


@cache
def analytics_script_bytes() -> bytes:
    """``serving/static/adbandit-prebid.js`` (package data), read once."""
    return resources.files("serving").joinpath("static/adbandit-prebid.js").read_bytes()


async def preflight(request: Request) -> Response:
    """CORS preflight of a browser path (:data:`BROWSER_PATHS`): which methods and headers may
    be used (the origin is answered by :class:`FloorsCorsMiddleware`)."""
    settings: Settings = request.app.state.settings
    headers = {}
    if "Access-Control-Allow-Origin" in cors_headers(request.headers.get("origin"), settings):
        headers = {
            "Access-Control-Allow-Methods": BROWSER_PATHS[request.url.path],
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        }
    return Response(status_code=204, headers=headers)


# Not a StrictQueryRoute: a preflight carries the query string of the request it asks for.
for _path in (FLOORS_PATH, OUTCOMES_PATH):
    router.routes.append(
        APIRoute(_path, preflight, methods=["OPTIONS"], include_in_schema=False, response_class=Response)
    )


def cors_headers(origin: str | None, settings: Settings) -> dict[str, str]:
    """``Access-Control-Allow-Origin`` for an allowed ``origin`` (``*`` when any is allowed);
    empty when the origin is not allowed (the browser then withholds the answer)."""
    allowed = settings.cors_origins()
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin and origin.rstrip("/") in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {"Vary": "Origin"} if allowed else {}


class FloorsCorsMiddleware:
    """Adds the CORS headers of :func:`cors_headers` to every answer of the paths a page calls
    (:data:`BROWSER_PATHS`: the floors, ``POST /v1/outcomes`` and the analytics script), errors
    included (a 401, 404 or 422 a page cannot read would only say "CORS error")."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in BROWSER_PATHS:
            await self.app(scope, receive, send)
            return
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
        extra = [(k.lower().encode(), v.encode("latin-1")) for k, v in cors_headers(origin, self.settings).items()]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def cache_headers(settings: Settings) -> dict[str, str]:
    age = settings.prebid_cache_max_age_s
    return {"Cache-Control": f"max-age={age}" if age > 0 else "no-cache"}


def variant_floors(store: PolicyStore, placement: str, min_events: float) -> list[VariantFloors]:
    """Each variant's allocations (pooled first, then its learned segments), with fallback."""
    experiment = store.get_experiment(placement)
    variants = []
    for variant in experiment.variants:
        segments = [ALL_SEGMENTS, *store.segments(placement, variant.name)]
        allocations = [store.allocation(placement, segment=s, variant=variant.name) for s in segments]
        built = store.built_at(placement, variant.name)
        variants.append(VariantFloors(variant.name, variant.traffic, allocations, built))
    return with_fallback(variants, experiment.champion, min_events)


def floors_of(store: PolicyStore, units: list[tuple[str, str]], options: FloorsOptions, min_events: float) -> Mapping:
    """The document of (placement, ad unit code) pairs; each placement is read once."""
    placements = list(dict.fromkeys(p for p, _ in units))
    configs = {p: store.get_placement(p) for p in placements}
    variants = {p: variant_floors(store, p, min_events) for p in placements}
    if options.key is None:
        return prebid_floors(configs[placements[0]], variants[placements[0]], options=options)
    champions = {p: store.get_experiment(p).champion for p in placements}
    return page_floors(
        [configs[p] for p, _ in units],
        [variants[p] for p, _ in units],
        [champions[p] for p, _ in units],
        options=options,
        codes=[c for _, c in units],
    )
