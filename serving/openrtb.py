"""OpenRTB 2.6: floors on a BidRequest's impressions, and win/billing/loss notices as outcomes.

**Floors** (``POST /v1/openrtb/floors``). Each ``imp`` names its placement by ``tagid``; its
context comes from the request (:func:`context_of`):

=============  ==============================================================
context field  OpenRTB 2.6
=============  ==============================================================
``country``    ``device.geo.country`` (ISO-3166-1 alpha-3 in OpenRTB, as sent)
``region``     ``device.geo.region``
``os``         ``device.os``, lower-cased (``iOS`` → ``ios``)
``devicetype`` ``device.devicetype`` as a string (``4`` = phone; also ``device_type``)
``bundle``     ``app.bundle``
``domain``     ``site.domain``, else ``app.domain``
``channel``    ``site`` or ``app``
``media_type`` ``banner``, ``video``, ``native`` or ``audio`` of the imp (only when it has one)
=============  ==============================================================

Only the fields of the placement's ``segment_by`` key its segment. The placement's live
policy makes one decision per imp, exactly as ``POST /v1/decide`` (request id
``<BidRequest.id>:<imp.id>``, variant by ``user.id`` when given): ``imp.bidfloor`` is the
decision's floor, ``imp.bidfloorcur`` the placement's currency (a floor already on the imp is
replaced). ``imp.ext.prebid.floors`` records it as Prebid Server does (``floorRule`` = the
segment key, ``floorRuleValue``, ``floorValue``) plus, when networks of the placement name
Prebid bidder codes, ``bidderFloors`` {bidder code: that network's floor in the segment's
allocation} (Prebid Server has no ``bidder`` floor dimension; this is for a server hook or an
SSP that reads it). ``imp.ext.adbandit`` carries the decision (``decision_id``, ``network``,
``segment``, ``variant``, ``model_version``) and the notice URLs to put in the bid
responses' ``nurl``/``burl``/``lurl``. Everything else of the request, extensions included,
passes through unchanged.

**Waterfall and auction placements** (``mode``, :mod:`serving.plans`): the decision is a
plan, and ``imp.ext.adbandit`` adds ``mode``, ``propensity`` (the whole plan's) and its
offers: ``bidders`` (auction: the networks to call at once, each with its own floor; a network
left out is not to be called) or ``tiers`` (waterfall: in calling order), each
``{"network", "floor_cpm", "bidder"?, "nurl", "burl", "lurl"}`` with the Prebid bidder code
when the network maps one and that network's own notice URLs. ``imp.bidfloor`` is the floor
below which no offer is interesting: an auction's lowest bidder floor (an SSP that reads only
``bidfloor`` excludes no bid the plan wants), a waterfall's first tier's floor;
``ext.prebid.floors.bidderFloors`` gives the plan's floor of each mapped bidder (not the
allocation's average), and ``network``/``decision_id`` and the top-level notice URLs of
``ext.adbandit`` stay those of the first offer, as for any decision. A notice of a plan's
offer is learned as that network's response (event id ``rtb:<decision_id>/<network>``, one
per network of the decision, verified against the signed plan): ``win``/``billing`` a
``bid`` that won at the price, ``loss`` a ``no_bid`` at its floor. The notices of one
decision come apart but count as one request of the experiment report (live counters, console
history): the first notice learned for the decision starts it, earning what it paid, and the
later ones (the other networks' losses, the winner's win) add what they paid to it and start
none, so the request earns the winner's price (:mod:`serving.intake`: read from the
de-duplication window, written into the events record, so a replay or a restart counts the
same; a notice later than the window starts a request of its own). An outcome with
``responses`` counts the whole decision once too.

**Notices** (``GET /v1/openrtb/{win,billing,loss}``): an outcome event with event id
``rtb:<decision_id>`` (one outcome per decision: a later notice of the same decision is a
duplicate), learned through the same intake as ``POST /v1/outcomes``:

* ``win`` (``nurl``) and ``billing`` (``burl``): ``filled`` true, ``revenue_cpm`` =
  ``${AUCTION_PRICE}`` (the clearing price, CPM, in the placement's currency, clear text);
* ``loss`` (``lurl``) with an auction loss reason (``${AUCTION_LOSS}`` in 100-199: below
  the auction or deal floor, lost to a higher bid or a deal, seat blocked) or none:
  ``filled`` false, ``revenue_cpm`` 0, the decision's network did not fill at its floor. Any
  other reason (0 won, 1-10 technical failures, 200+ creative filtered, exchange-specific
  codes) says nothing about the floor: answered, not learned (:func:`loss_ignored`).

The notice's context is read back from the raw segment key it carries (``s``), so the event
is learned under the segment the decision was made for. Notices are unauthenticated (an
exchange cannot send a key): only a decision id that verifies for the notice's placement,
network and floor is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from bandit import MAX_CPM, InvalidDecisionRequest, PlacementConfig
from bandit.errors import InvalidOutcome
from bandit.types import MISSING_VALUE

#: Most impressions of one BidRequest.
MAX_IMPS = 100
#: Largest BidRequest body accepted (a 100-imp request with rich extensions is far smaller).
MAX_BODY_BYTES = 1 << 20
#: Prefix of the event id of a notice: one outcome per decision.
EVENT_PREFIX = "rtb:"
NoticeKind = Literal["win", "billing", "loss"]
#: Whether a notice of each kind means the impression was filled.
FILLED: dict[str, bool] = {"win": True, "billing": True, "loss": False}
#: OpenRTB 2.6 device.devicetype 4 = phone; mediatypes of an imp, in OpenRTB's order.
MEDIA_TYPES = ("banner", "video", "native", "audio")

Text = Annotated[str, StringConstraints(max_length=1024)]


class _Ortb(BaseModel):
    """OpenRTB objects: unknown fields are kept (extensions must pass through)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Geo(_Ortb):
    country: Text | None = None
    region: Text | None = None


class Device(_Ortb):
    geo: Geo | None = None
    os: Text | None = None
    devicetype: int | None = None


class Site(_Ortb):
    domain: Text | None = None


class App(_Ortb):
    bundle: Text | None = None
    domain: Text | None = None


class User(_Ortb):
    id: Text | None = None


class Imp(_Ortb):
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    tagid: Text | None = None
    bidfloor: float = Field(0.0, ge=0.0)
    bidfloorcur: Text | None = None
    banner: dict[str, Any] | None = None
    video: dict[str, Any] | None = None
    native: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    ext: dict[str, Any] | None = None


class BidRequest(_Ortb):
    """The subset of an OpenRTB 2.6 BidRequest this service reads (the rest is kept as is)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "80ce30c53c16e6ede735f123ef6e32361bfc7b22",
                    "at": 1,
                    "cur": ["USD"],
                    "imp": [{"id": "1", "tagid": "p1", "banner": {"w": 300, "h": 250}}],
                    "site": {"id": "102855", "domain": "www.foobar.com", "page": "http://www.foobar.com/1234.html"},
                    "device": {"ua": "Mozilla/5.0", "os": "iOS", "devicetype": 4, "geo": {"country": "KOR"}},
                    "user": {"id": "55816b39711f9b5acf3b90e313ed29e51665623f"},
                }
            ]
        }
    )

    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    imp: Annotated[list[Imp], Field(min_length=1, max_length=MAX_IMPS)]
    site: Site | None = None
    app: App | None = None
    device: Device | None = None
    user: User | None = None
    cur: list[Text] | None = None
    ext: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _site_or_app(self) -> BidRequest:
        if self.site is not None and self.app is not None:
            raise ValueError("a BidRequest has a site or an app object, not both (OpenRTB 2.6, 3.2.1)")
        return self


@dataclass(frozen=True, slots=True)
class ImpFloor:
    """What one imp gets: the decision made for it and what goes into its ``ext``."""

    placement: str
    currency: str
    decision_id: str
    network: str
    floor_cpm: float
    segment: str  # the segment the decision was made under (after pooling)
    raw_segment: str  # the request's own segment key (what a notice sends back)
    variant: str
    model_version: str
    bidder_floors: Mapping[str, float]
    #: ``single``, or ``waterfall`` / ``auction`` for a plan (module docstring).
    mode: str = "single"
    #: The plan's probability (a plan decision only).
    propensity: float = math.nan
    #: A plan's (network, floor_cpm) offers in calling order; () for a single decision.
    offers: tuple[tuple[str, float], ...] = ()
    #: Network id → Prebid bidder code of the placement's mapped networks.
    bidders: Mapping[str, str] = field(default_factory=dict)

    @property
    def imp_floor(self) -> float:
        """``imp.bidfloor``: the decision's floor; an auction plan's lowest bidder floor."""
        if self.mode == "auction" and self.offers:
            return min(f for _, f in self.offers)
        return self.floor_cpm


def read_bid_request(data: object) -> BidRequest:
    """The BidRequest of a parsed JSON body, or :class:`InvalidDecisionRequest` (422) saying
    what to fix: not an object, no ``imp``, or the first field pydantic finds wrong."""
    if not isinstance(data, Mapping):
        raise InvalidDecisionRequest("an OpenRTB BidRequest is a JSON object with 'id' and 'imp'")
    imp = data.get("imp")
    if not isinstance(imp, list) or not imp:
        raise InvalidDecisionRequest(
            "the BidRequest has no impressions: 'imp' must be a non-empty array of imp objects, each with its "
            "placement id in 'tagid' (OpenRTB 2.6, 3.2.1)"
        )
    if len(imp) > MAX_IMPS:
        raise InvalidDecisionRequest(f"the BidRequest has {len(imp)} imps; at most {MAX_IMPS}: split it")
    try:
        return BidRequest.model_validate(data)
    except ValidationError as exc:
        issue = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in issue["loc"]) or "the BidRequest"
        raise InvalidDecisionRequest(f"{where}: {issue['msg']}") from None


def placement_of(imp: Imp, index: int) -> str:
    """The placement an imp names by ``tagid``."""
    if not imp.tagid:
        raise InvalidDecisionRequest(f"imp[{index}] (id {imp.id!r}) has no 'tagid': set it to the placement id")
    return imp.tagid


def media_type(imp: Imp) -> str | None:
    """The imp's media type when it offers exactly one, else None."""
    kinds = [k for k in MEDIA_TYPES if getattr(imp, k) is not None]
    return kinds[0] if len(kinds) == 1 else None


def context_of(request: BidRequest, imp: Imp) -> dict[str, str]:
    """The decision context of one imp (module docstring); absent fields are left out."""
    device = request.device or Device()
    geo = device.geo or Geo()
    values: dict[str, str | None] = {
        "country": geo.country,
        "region": geo.region,
        "os": device.os.lower() if device.os else None,
        "devicetype": None if device.devicetype is None else str(device.devicetype),
        "bundle": request.app.bundle if request.app else None,
        "domain": request.site.domain if request.site else request.app.domain if request.app else None,
        "channel": "site" if request.site else "app" if request.app else None,
        "media_type": media_type(imp),
    }
    values["device_type"] = values["devicetype"]
    return {k: v for k, v in values.items() if v}


def check_currency(accepted: Sequence[str] | None, currency: str, placement: str) -> None:
    """:class:`InvalidDecisionRequest` when the request's ``cur`` does not allow the placement's currency."""
    if accepted and currency.upper() not in {c.upper() for c in accepted}:
        raise InvalidDecisionRequest(
            f"the BidRequest allows bids in {list(accepted)} (cur), but placement {placement!r} sets floors in "
            f"{currency}: add {currency!r} to cur, or leave cur out"
        )


def notice_urls(base: str, floor: ImpFloor) -> dict[str, str]:
    """``nurl``/``burl``/``lurl`` for the bid responses of an imp (macros left for the exchange):
    of its decision's network and floor (of the first offer of a plan)."""
    # A decision id is "<variant>.<base64url>" (URL-safe as it is); the rest is quoted.
    query = (
        f"d={floor.decision_id}&p={quote(floor.placement, safe='')}&n={quote(floor.network, safe='')}"
        f"&f={floor.floor_cpm!r}&s={quote(floor.raw_segment, safe='')}"
    )
    root = base.rstrip("/") + "/v1/openrtb"
    return {
        "nurl": f"{root}/win?{query}&price=${{AUCTION_PRICE}}",
        "burl": f"{root}/billing?{query}&price=${{AUCTION_PRICE}}",
        "lurl": f"{root}/loss?{query}&reason=${{AUCTION_LOSS}}",
    }


def imp_with_floor(
    imp: Mapping[str, Any], floor: ImpFloor, urls: Mapping[str, str], offers: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """A copy of a raw imp object with its floor, ``ext.prebid.floors`` and ``ext.adbandit`` set
    (other keys of ``ext`` and ``ext.prebid`` kept); ``offers``: a plan's (:func:`plan_offers`)."""
    ext = dict(imp.get("ext") or {})
    prebid = dict(ext.get("prebid") or {})
    bidfloor = floor.imp_floor
    floors: dict[str, Any] = {
        "floorRule": floor.segment,
        "floorRuleValue": bidfloor,
        "floorValue": bidfloor,
    }
    if floor.bidder_floors:
        floors["bidderFloors"] = dict(floor.bidder_floors)
    prebid["floors"] = {**(prebid.get("floors") or {}), **floors}
    ext["prebid"] = prebid
    ext["adbandit"] = {
        "decision_id": floor.decision_id,
        "placement": floor.placement,
        "network": floor.network,
        "segment": floor.segment,
        "variant": floor.variant,
        "model_version": floor.model_version,
        **urls,
    }
    if floor.offers:
        ext["adbandit"]["mode"] = floor.mode
        ext["adbandit"]["propensity"] = floor.propensity
        ext["adbandit"]["tiers" if floor.mode == "waterfall" else "bidders"] = list(offers)
    return {**imp, "bidfloor": bidfloor, "bidfloorcur": floor.currency, "ext": ext}


def plan_offers(floor: ImpFloor, base: str) -> list[dict[str, Any]]:
    """A plan's offers for ``ext.adbandit``: each network with its floor, bidder code (when the
    placement maps one) and its own notice URLs."""
    out = []
    for network, cpm in floor.offers:
        offer: dict[str, Any] = {"network": network, "floor_cpm": cpm}
        if network in floor.bidders:
            offer["bidder"] = floor.bidders[network]
        offer.update(notice_urls(base, replace(floor, network=network, floor_cpm=cpm)))
        out.append(offer)
    return out


def plan_bidder_floors(offers: Sequence[tuple[str, float]], bidders: Mapping[str, str]) -> dict[str, float]:
    """Bidder code → the plan's floor of its network (the lowest when several networks share a
    code), for the mapped networks the plan calls."""
    out: dict[str, float] = {}
    for network, cpm in offers:
        code = bidders.get(network)
        if code is not None:
            out[code] = min(cpm, out.get(code, math.inf))
    return out


def with_floors(raw: Mapping[str, Any], floors: Sequence[ImpFloor], base: str) -> dict[str, Any]:
    """The BidRequest as received with each imp's floor set (``floors[i]`` is for ``imp[i]``)."""
    imps = [
        imp_with_floor(imp, f, notice_urls(base, f), plan_offers(f, base))
        for imp, f in zip(raw["imp"], floors, strict=True)
    ]
    return {**raw, "imp": imps}


#: OpenRTB loss reason codes of losing the auction itself (5.25: 100 below auction floor, 101
#: below deal floor, 102 lost to a higher bid, 103 lost to a PMP deal, 104 buyer seat blocked).
AUCTION_LOSSES = range(100, 200)


def loss_ignored(reason: str | None) -> str:
    """Why a loss notice is not learned ("" when it is a no-fill at the floor); a reason that is
    not an integer code is an :class:`InvalidOutcome`."""
    if reason is None or reason == "" or reason.startswith("${"):
        return ""  # not given: a loss in the auction
    try:
        code = int(reason)
    except ValueError:
        raise InvalidOutcome(f"reason must be an OpenRTB loss reason code (an integer), got {reason[:40]!r}") from None
    if code in AUCTION_LOSSES:
        return ""
    return (
        f"loss reason {code} is not a loss in the auction (100-199: below the floor, outbid, ...); "
        "nothing is learned from it"
    )


def parse_price(text: str | None, name: str = "price") -> float:
    """A clear-text CPM price of a notice; a macro the exchange did not substitute says so."""
    if text is None or text == "":
        raise InvalidOutcome(f"{name} is missing: put ${{AUCTION_PRICE}} in the notice URL")
    if text.startswith("${"):
        raise InvalidOutcome(f"{name} is the macro {text!r}: the exchange did not substitute it")
    try:
        price = float(text)
    except ValueError:
        raise InvalidOutcome(f"{name} must be a clear-text CPM number, got {text[:40]!r}") from None
    if not math.isfinite(price) or not 0.0 <= price <= MAX_CPM:
        raise InvalidOutcome(f"{name} must be a CPM between 0 and {MAX_CPM:g}, got {text[:40]!r}")
    return price


def notice_context(placement: PlacementConfig, segment: str) -> dict[str, str]:
    """The context a notice's raw segment key stands for (``KR|unknown`` → ``{"country": "KR"}``)."""
    if not placement.segment_by:
        return {}
    values = segment.split("|")
    if len(values) != len(placement.segment_by):
        raise InvalidOutcome(
            f"s={segment!r} does not fit placement {placement.id!r}, which segments by "
            f"{'|'.join(placement.segment_by)}: send the s of the notice URL the floors reply gave"
        )
    return {f: v for f, v in zip(placement.segment_by, values, strict=True) if v != MISSING_VALUE}


def notice_event(
    kind: NoticeKind,
    *,
    decision_id: str,
    placement: PlacementConfig,
    network: str,
    floor_cpm: float,
    segment: str,
    price: float,
    now: float,
) -> dict[str, Any]:
    """The outcome event of a notice (module docstring), in ``POST /v1/outcomes``'s shape: of
    a plan decision (a waterfall or auction placement) one with a single response, which the
    intake expands into event ``rtb:<decision_id>/<network>``."""
    filled = FILLED[kind]
    if placement.mode != "single":
        response: dict[str, Any] = {"network": network, "floor_cpm": floor_cpm, "status": "bid" if filled else "no_bid"}
        if filled:
            response.update(price_cpm=price, won=True)
        return {
            "event_id": EVENT_PREFIX + decision_id,
            "decision_id": decision_id,
            "ts": now,
            "placement": placement.id,
            "context": notice_context(placement, segment),
            "responses": [response],
        }
    return {
        "event_id": EVENT_PREFIX + decision_id,
        "decision_id": decision_id,
        "ts": now,
        "placement": placement.id,
        "network": network,
        "floor_cpm": floor_cpm,
        "filled": filled,
        "revenue_cpm": price if filled else 0.0,
        "context": notice_context(placement, segment),
    }
