"""Market scenarios: frozen descriptions of a simulated ad market, read from TOML files.

A scenario lists the placement's networks (auction type, bidder arrival, bid-value
mixture, floor bounds, contract shares, demand caps), the audience segments (traffic
share and per-network multipliers), hour-of-day seasonality and scheduled events
(price shifts, fill collapses, networks leaving or joining). :class:`simulator.market.Market`
turns it into a sampler with exact ground truth.

Besides the model the policies assume (Poisson bidders, iid log-normal-mixture values,
second price paying exactly max(second bid, floor), stationarity), a scenario can build
markets outside that family, each with exact truth (:class:`simulator.auction.RevenueCurve`):
a common value shock per request (``shock_sd``), negative-binomial bidder counts
(``dispersion``), Pareto or log-normal + Pareto values (``value_dist``), second-price
payments rounded up by an increment (``price_increment_cpm``: the network pays
min(top bid, max(second bid, floor) + increment)), floor-responsive first-price bidders
(``floor_responsive``: a bidder whose value clears the floor bids max(shading·value,
floor)), a network that throttles its fills under high floors (``throttle_floor_cpm``,
``throttle_power``: it answers with probability 1 / (1 + (floor / throttle_floor_cpm)^power)),
and hour-of-day cycles of traffic, demand and values (``[seasonality]``).

A long tail of segments (``[segment_grid]``) is generated rather than listed: every
combination of the fields' values, with Zipf traffic shares and multiplicative effects of
each field value plus a deviation of each segment's own, drawn once from ``seed`` — so
segments have truly different optima that their fields only partly predict.

Every field is checked on load; a bad file raises :class:`bandit.errors.InvalidConfig`
whose message starts with the path of the field, e.g.
``networks[2].auction: must be 'first' or 'second', got 'third'``.

File layout (TOML; defaults in brackets)::

    name, description, placement_id [name], currency ["USD"], start [2026-11-21T00:00:00Z]
    requests_per_hour [10000], default_requests [200000], shock_sd [0]  # common value shock
    segment_by = ["country", "os"]                                       # [] = one segment "*"
    mode ["single"|"waterfall"|"auction"], max_tiers [0 = all], max_calls [0 = all]
    [[networks]]  id, auction ("first"|"second"), bidders (mean λ), dispersion [0 = Poisson; -1 = one bidder],
                  value_dist ["lognormal"|"pareto"|"lognormal_pareto"],
                  value_weights [equal], value_log_means, value_log_sds (log CPM mixture;
                  not with "pareto"), pareto_alpha, pareto_scale_cpm (x_m),
                  pareto_weight (share of the Pareto component, "lognormal_pareto" only),
                  shading [1, first price only], floor_responsive [false, first price only],
                  price_increment_cpm [0, second price only],
                  throttle_floor_cpm [inf = none], throttle_power [2], timeout_rate [0],
                  qps_cap [inf = none; waterfall/auction: calls answered per second],
                  floor_min_cpm [0], floor_max_cpm [50],
                  min_share [0], max_share [1], cap_fills_per_hour [inf],
                  declared_auction [= auction; "auto" hides it from the policy]
    [[segments]]  context = {country = "KR", os = "ios"}, share,
                  bidders_mult = {network = x}, value_mult = {network = x}   # [1]
    [segment_grid]  (instead of [[segments]]: every combination of generated field values)
                  values = [24, 3, 16] (distinct values per segment_by field, named
                  "<field><i>"), zipf (share of the r-th largest segment ∝ r^-zipf, ranks in
                  random order), value_sd, bidders_sd (per field: sd of a value's log
                  effect on each network's value scale / λ), noise_value_sd, noise_bidders_sd
                  (the segment's own log deviations) [0], seed [0]
    [seasonality] traffic = [24 values] | traffic_amplitude, traffic_peak_hour (UTC),
                  demand = [24 values] | demand_amplitude, demand_peak_hour,
                  value = [24 values] | value_amplitude, value_peak_hour
    [[events]]    at_hour, kind ("price_shift"|"fill_collapse"|"network_leaves"|
                  "network_joins"), network, factor (price_shift, fill_collapse)
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bandit.errors import AdbanditError, InvalidConfig
from bandit.types import MAX_CPM, NetworkConfig, PlacementConfig
from simulator.auction import SINGLE_BIDDER

#: Directory of the bundled scenario files (``load_scenario("stationary")`` looks here).
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
#: Default simulated start: a Saturday midnight UTC.
DEFAULT_START = "2026-11-21T00:00:00Z"
HOURS_PER_DAY = 24

EventKind = Literal["price_shift", "fill_collapse", "network_leaves", "network_joins"]
EVENT_KINDS: tuple[str, ...] = ("price_shift", "fill_collapse", "network_leaves", "network_joins")


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """One network's true market and its placement settings.

    Bids arrive as a Poisson process (``dispersion`` 0) or a negative binomial one
    (``dispersion`` d > 0: variance of the bidder count = λ + d·λ²), or come from a single
    bidder (``dispersion`` −1: one bid with probability ``bidders`` ≤ 1), with mean ``bidders``
    (λ) per request; each bidder's value is drawn from a log-normal mixture in log CPM.
    A first-price network pays its top bid, ``shading`` × the top value; a second-price
    network pays max(second value, floor). Both fill iff the top bid clears the floor.

    Outside that model: ``value_dist`` "pareto" draws values from a Pareto law
    (survival (v / ``pareto_scale_cpm``)^-``pareto_alpha`` above the scale),
    "lognormal_pareto" from the log-normal mixture with a Pareto component of weight
    ``pareto_weight``; ``floor_responsive`` first-price bidders bid max(shading·v, floor)
    when v clears the floor (the network fills iff the top value clears it and pays
    max(shading·top value, floor)); a second-price network with ``price_increment_cpm``
    δ > 0 pays min(top value, max(second value, floor) + δ); ``throttle_floor_cpm`` f½
    makes the network answer a request only with probability 1 / (1 + (f / f½)^k),
    k = ``throttle_power``, independently of its auction.
    """

    id: str
    auction: Literal["first", "second"]
    bidders: float
    value_weights: tuple[float, ...]
    value_log_means: tuple[float, ...]
    value_log_sds: tuple[float, ...]
    dispersion: float = 0.0
    shading: float = 1.0
    floor_min_cpm: float = 0.0
    floor_max_cpm: float = 50.0
    min_share: float = 0.0
    max_share: float = 1.0
    cap_fills_per_hour: float = math.inf
    declared_auction: Literal["auto", "first", "second"] | None = None
    value_dist: Literal["lognormal", "pareto", "lognormal_pareto"] = "lognormal"
    pareto_alpha: float = 0.0
    pareto_scale_cpm: float = 0.0
    pareto_weight: float = 0.0
    floor_responsive: bool = False
    price_increment_cpm: float = 0.0
    throttle_floor_cpm: float = math.inf
    throttle_power: float = 2.0
    #: Probability that the network does not answer in time (a no-bid), an independent coin.
    timeout_rate: float = 0.0
    #: Calls the network answers per second of arrival time (waterfall and auction runs,
    #: :mod:`simulator.modes`); the calls beyond it in a second are no-bids.
    qps_cap: float = math.inf

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """Short names of the ways this network leaves the policy's model, for reports."""
        out = []
        if self.dispersion > 0:
            out.append(f"nb(d={self.dispersion:g})")
        elif self.dispersion == SINGLE_BIDDER:
            out.append("single")
        if self.value_dist != "lognormal":
            out.append(f"{self.value_dist}(alpha={self.pareto_alpha:g})")
        if self.floor_responsive:
            out.append("floor_responsive")
        if self.price_increment_cpm > 0:
            out.append(f"increment={self.price_increment_cpm:g}")
        if math.isfinite(self.throttle_floor_cpm):
            out.append(f"throttle({self.throttle_floor_cpm:g}^{self.throttle_power:g})")
        if math.isfinite(self.qps_cap):
            out.append(f"qps_cap={self.qps_cap:g}")
        return tuple(out)

    def config(self) -> NetworkConfig:
        """The placement's view of this network (what a policy is told)."""
        return NetworkConfig(
            id=self.id,
            floor_min_cpm=self.floor_min_cpm,
            floor_max_cpm=self.floor_max_cpm,
            min_share=self.min_share,
            max_share=self.max_share,
            auction=self.declared_auction or self.auction,
        )


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """An audience segment: its context, traffic share and per-network multipliers
    (tuples in network order) on the bidder rate λ and on the value scale."""

    context: tuple[tuple[str, str], ...]
    share: float
    bidders_mult: tuple[float, ...]
    value_mult: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Seasonality:
    """Hour-of-day (UTC) multipliers: on the request rate (``traffic``), on every network's
    λ (``demand``) and on every network's value scale (``value``: all bids of the hour
    move together, so R_h(f) = c_h · R(f / c_h) and best floors scale with c_h)."""

    traffic: tuple[float, ...] = (1.0,) * HOURS_PER_DAY
    demand: tuple[float, ...] = (1.0,) * HOURS_PER_DAY
    value: tuple[float, ...] = (1.0,) * HOURS_PER_DAY


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A change of the market at ``at_hour`` simulated hours after the start.

    ``price_shift`` multiplies the network's value scale by ``factor``; ``fill_collapse``
    multiplies its λ by ``factor``; ``network_leaves`` sets λ to 0 from then on;
    ``network_joins`` keeps λ at 0 until then.
    """

    at_hour: float
    kind: EventKind
    network: int
    factor: float = 1.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole simulated market; see the module docstring and ``simulator/scenarios/*.toml``."""

    name: str
    networks: tuple[NetworkSpec, ...]
    segments: tuple[SegmentSpec, ...]
    segment_by: tuple[str, ...] = ()
    requests_per_hour: float = 10_000.0
    default_requests: int = 200_000
    start_ts: float = datetime.fromisoformat(DEFAULT_START.replace("Z", "+00:00")).timestamp()
    shock_sd: float = 0.0
    seasonality: Seasonality = Seasonality()
    events: tuple[EventSpec, ...] = ()
    placement_id: str = ""
    currency: str = "USD"
    description: str = ""
    #: How requests call networks (``PlacementConfig.mode``) and the mode's limits.
    mode: str = "single"
    max_tiers: int = 0
    max_calls: int = 0

    @property
    def network_ids(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.networks)

    def placement(self) -> PlacementConfig:
        """The placement configuration a policy is built for."""
        return PlacementConfig(
            self.placement_id or self.name,
            tuple(n.config() for n in self.networks),
            self.segment_by,
            self.currency,
            self.mode,
            self.max_tiers,
            self.max_calls,
        )

    def segment_keys(self) -> tuple[str, ...]:
        """Segment key of each segment (as ``PlacementConfig.segment_of`` makes it)."""
        cfg = self.placement()
        return tuple(cfg.segment_of(dict(s.context)) for s in self.segments)

    @property
    def has_caps(self) -> bool:
        return any(math.isfinite(n.cap_fills_per_hour) for n in self.networks)

    @property
    def has_qps_caps(self) -> bool:
        return any(math.isfinite(n.qps_cap) for n in self.networks)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], name: str | None = None) -> Scenario:
        """Validate a parsed TOML document; errors name the field's path."""
        return _parse_scenario(_Fields(body, ""), name)


def load_scenario(path_or_name: str | Path) -> Scenario:
    """A scenario from a TOML file path, or by name from :data:`SCENARIO_DIR`."""
    path = Path(path_or_name)
    if path.suffix != ".toml" and not path.exists():
        path = SCENARIO_DIR / f"{path_or_name}.toml"
    if not path.exists():
        raise InvalidConfig(f"scenario {str(path_or_name)!r} not found; bundled scenarios: {list_scenarios()}")
    try:
        body = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"scenario file {str(path)!r} is not valid TOML: {exc}") from None
    return Scenario.from_dict(body, name=path.stem)


def list_scenarios() -> list[str]:
    """Names of the bundled scenarios."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


# ---------------------------------------------------------------------------- parsing
class _Fields:
    """Reads one TOML table, remembering its path for error messages and the keys used."""

    def __init__(self, body: Any, path: str) -> None:
        if not isinstance(body, Mapping):
            raise InvalidConfig(f"{path or 'scenario'}: must be a table")
        self.body = body
        self.path = path
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, what: str) -> InvalidConfig:
        return InvalidConfig(f"{self.where(key)}: {what}")

    def has(self, key: str) -> bool:
        return key in self.body

    def raw(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.body.get(key, default)

    def number(
        self,
        key: str,
        default: float | None = None,
        *,
        lo: float = -math.inf,
        hi: float = math.inf,
        lo_open: bool = False,
        allow_inf: bool = False,
    ) -> float:
        value = self.raw(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, got {value!r}")
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if value < lo or (lo_open and value == lo) or value > hi:
            left = "(" if lo_open else "["
            raise self.fail(key, f"must lie in {left}{lo:g}, {hi:g}], got {value:g}")
        return value

    def string(self, key: str, default: str | None = None, choices: Sequence[str] | None = None) -> str:
        value = self.raw(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            options = " or ".join(repr(c) for c in choices)
            raise self.fail(key, f"must be {options}, got {value!r}")
        return value

    def numbers(
        self, key: str, *, length: int | None = None, lo: float = -math.inf, lo_open: bool = False
    ) -> tuple[float, ...]:
        value = self.raw(key)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"must be a non-empty list of numbers, got {value!r}")
        if length is not None and len(value) != length:
            raise self.fail(key, f"must have {length} entries, got {len(value)}")
        out = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.fail(key, f"entry {i} must be a finite number, got {v!r}")
            if v < lo or (lo_open and v == lo):
                raise self.fail(key, f"entry {i} must be {'>' if lo_open else '>='} {lo:g}, got {v!r}")
            out.append(float(v))
        return tuple(out)

    def tables(self, key: str) -> list[_Fields]:
        value = self.raw(key, [])
        if not isinstance(value, list):
            raise self.fail(key, "must be an array of tables ([[...]])")
        return [_Fields(v, f"{self.where(key)}[{i}]") for i, v in enumerate(value)]

    def table(self, key: str) -> _Fields | None:
        value = self.raw(key)
        return None if value is None else _Fields(value, self.where(key))

    def done(self) -> None:
        unknown = sorted(set(self.body) - self.used)
        if unknown:
            raise InvalidConfig(f"{self.path or 'scenario'}: unknown fields {unknown}")


VALUE_DISTS: tuple[str, ...] = ("lognormal", "pareto", "lognormal_pareto")


def _parse_lognormal(f: _Fields) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(weights, log means, log sds) of the log-normal value mixture; weights sum to 1."""
    weights = f.numbers("value_weights", lo=0.0, lo_open=True) if f.has("value_weights") else None
    means = f.numbers("value_log_means")
    sds = f.numbers("value_log_sds", lo=0.0, lo_open=True)
    if weights is None:
        weights = (1.0,) * len(means)
    if not len(weights) == len(means) == len(sds):
        raise f.fail(
            "value_log_sds",
            f"value_weights, value_log_means and value_log_sds must have equal lengths, "
            f"got {len(weights)}, {len(means)}, {len(sds)}",
        )
    for m in means:
        if not math.log(1e-3) <= m <= math.log(MAX_CPM):
            raise f.fail(
                "value_log_means",
                f"log CPM means must lie in [log 0.001, log {MAX_CPM:g}], got {m:g}",
            )
    if max(sds) > 3.0:
        raise f.fail("value_log_sds", f"must be <= 3 (log CPM), got {max(sds):g}")
    total = sum(weights)
    return tuple(w / total for w in weights), means, sds


def _only_for(f: _Fields, keys: Sequence[str], allowed: bool, why: str) -> None:
    for key in keys:
        if f.has(key) and not allowed:
            raise f.fail(key, why)


def _dispersion(f: _Fields) -> float:
    """A network's bidder-count dispersion: 0 (Poisson), > 0 (negative binomial) or −1 (a
    single bidder, present on a request with probability ``bidders`` ≤ 1)."""
    d = f.number("dispersion", 0.0, lo=SINGLE_BIDDER, hi=100.0)
    if SINGLE_BIDDER < d < 0:
        raise f.fail("dispersion", f"must be -1 (a single bidder) or >= 0, got {d:g}")
    if d == SINGLE_BIDDER and f.number("bidders", lo=0.0, lo_open=True) > 1.0:
        raise f.fail("bidders", "is the chance that the single bidder bids (dispersion -1): at most 1")
    return d


def _parse_network(f: _Fields) -> NetworkSpec:
    net_id = f.string("id")
    auction = f.string("auction", choices=("first", "second"))
    value_dist = f.string("value_dist", "lognormal", choices=VALUE_DISTS)
    lognormal_keys = ("value_weights", "value_log_means", "value_log_sds")
    _only_for(f, lognormal_keys, value_dist != "pareto", "does not apply to value_dist 'pareto'; remove it")
    _only_for(
        f,
        ("pareto_alpha", "pareto_scale_cpm"),
        value_dist != "lognormal",
        "needs value_dist 'pareto' or 'lognormal_pareto'",
    )
    _only_for(f, ("pareto_weight",), value_dist == "lognormal_pareto", "needs value_dist 'lognormal_pareto'")
    weights: tuple[float, ...] = ()
    means: tuple[float, ...] = ()
    sds: tuple[float, ...] = ()
    if value_dist != "pareto":
        weights, means, sds = _parse_lognormal(f)
    pareto_alpha = pareto_scale = pareto_weight = 0.0
    if value_dist != "lognormal":
        # α >= 1.5 keeps the mean finite and the tail beyond the bid grid negligible.
        pareto_alpha = f.number("pareto_alpha", lo=1.5, hi=20.0)
        pareto_scale = f.number("pareto_scale_cpm", lo=1e-3, hi=MAX_CPM)
        pareto_weight = 1.0 if value_dist == "pareto" else f.number("pareto_weight", lo=0.0, hi=1.0, lo_open=True)
        if pareto_weight == 1.0 and value_dist == "lognormal_pareto":
            raise f.fail("pareto_weight", "must be < 1 with value_dist 'lognormal_pareto' (use 'pareto')")
    shading = f.number("shading", 1.0, lo=0.0, hi=1.0, lo_open=True)
    if auction == "second" and shading != 1.0:
        raise f.fail("shading", "applies to first-price networks only; remove it or set 1.0")
    responsive = f.raw("floor_responsive", False)
    if not isinstance(responsive, bool):
        raise f.fail("floor_responsive", f"must be true or false, got {responsive!r}")
    if responsive and auction != "first":
        raise f.fail("floor_responsive", "applies to first-price networks only")
    increment = f.number("price_increment_cpm", 0.0, lo=0.0, hi=1.0)
    if increment > 0 and auction != "second":
        raise f.fail("price_increment_cpm", "applies to second-price networks only")
    throttle = f.number("throttle_floor_cpm", math.inf, lo=0.0, lo_open=True, allow_inf=True)
    if f.has("throttle_power") and not math.isfinite(throttle):
        raise f.fail("throttle_power", "needs throttle_floor_cpm")
    declared = f.raw("declared_auction")
    if declared is not None and declared not in ("auto", "first", "second"):
        raise f.fail("declared_auction", f"must be 'auto', 'first' or 'second', got {declared!r}")
    spec = NetworkSpec(
        id=net_id,
        auction=auction,  # type: ignore[arg-type]
        bidders=f.number("bidders", lo=0.0, hi=1000.0, lo_open=True),
        value_weights=weights,
        value_log_means=means,
        value_log_sds=sds,
        dispersion=_dispersion(f),
        shading=shading,
        floor_min_cpm=f.number("floor_min_cpm", 0.0, lo=0.0, hi=MAX_CPM),
        floor_max_cpm=f.number("floor_max_cpm", 50.0, lo=0.0, hi=MAX_CPM),
        min_share=f.number("min_share", 0.0, lo=0.0, hi=1.0),
        max_share=f.number("max_share", 1.0, lo=0.0, hi=1.0),
        cap_fills_per_hour=f.number("cap_fills_per_hour", math.inf, lo=0.0, lo_open=True, allow_inf=True),
        declared_auction=declared,
        value_dist=value_dist,  # type: ignore[arg-type]
        pareto_alpha=pareto_alpha,
        pareto_scale_cpm=pareto_scale,
        pareto_weight=pareto_weight,
        floor_responsive=responsive,
        price_increment_cpm=increment,
        throttle_floor_cpm=throttle,
        throttle_power=f.number("throttle_power", 2.0, lo=0.5, hi=20.0),
        timeout_rate=f.number("timeout_rate", 0.0, lo=0.0, hi=1.0),
        qps_cap=f.number("qps_cap", math.inf, lo=0.0, lo_open=True, allow_inf=True),
    )
    if spec.floor_max_cpm < spec.floor_min_cpm:
        raise f.fail(
            "floor_max_cpm",
            f"must be >= floor_min_cpm ({spec.floor_min_cpm:g}), got {spec.floor_max_cpm:g}",
        )
    if spec.max_share < spec.min_share:
        raise f.fail("max_share", f"must be >= min_share ({spec.min_share:g}), got {spec.max_share:g}")
    f.done()
    return spec


def _per_network(f: _Fields | None, ids: Sequence[str]) -> tuple[float, ...]:
    if f is None:
        return (1.0,) * len(ids)
    unknown = sorted(set(f.body) - set(ids))
    if unknown:
        raise InvalidConfig(f"{f.path}: unknown networks {unknown}; known: {list(ids)}")
    return tuple(f.number(i, 1.0, lo=0.0) if f.has(i) else 1.0 for i in ids)


def _parse_segment(f: _Fields, ids: Sequence[str], segment_by: Sequence[str]) -> SegmentSpec:
    ctx = f.table("context")
    if ctx is None:
        raise f.fail("context", "is required when segment_by is set")
    if set(ctx.body) != set(segment_by):
        raise InvalidConfig(
            f"{ctx.path}: must give exactly the segment_by fields {list(segment_by)}, got {sorted(ctx.body)}"
        )
    context = tuple((k, ctx.string(k)) for k in segment_by)
    spec = SegmentSpec(
        context=context,
        share=f.number("share", lo=0.0, hi=1.0, lo_open=True),
        bidders_mult=_per_network(f.table("bidders_mult"), ids),
        value_mult=_per_network(f.table("value_mult"), ids),
    )
    f.done()
    return spec


def _parse_segment_grid(f: _Fields, ids: Sequence[str], segment_by: Sequence[str]) -> tuple[SegmentSpec, ...]:
    """Every combination of generated field values: Zipf shares in random rank order, and
    per network log multipliers = Σ field-value effects + the segment's own deviation."""
    k = len(segment_by)
    counts = f.numbers("values", length=k, lo=1.0)
    if any(c != int(c) for c in counts):
        raise f.fail("values", f"must be whole numbers of values per field, got {list(counts)}")
    sizes = [int(c) for c in counts]
    n_segments = math.prod(sizes)
    if n_segments > 100_000:
        raise f.fail("values", f"make at most 100000 segments, got {n_segments}")
    zipf = f.number("zipf", lo=0.0, hi=5.0)
    value_sd = f.numbers("value_sd", length=k, lo=0.0)
    bidders_sd = f.numbers("bidders_sd", length=k, lo=0.0)
    noise_value = f.number("noise_value_sd", 0.0, lo=0.0, hi=2.0)
    noise_bidders = f.number("noise_bidders_sd", 0.0, lo=0.0, hi=2.0)
    seed = int(f.number("seed", 0, lo=0.0, hi=2.0**32))
    f.done()
    rng = np.random.default_rng(seed)
    n_net = len(ids)
    grid = np.stack(np.meshgrid(*[np.arange(c) for c in sizes], indexing="ij"), axis=-1).reshape(-1, k)
    log_value = rng.normal(0.0, noise_value, (n_segments, n_net))
    log_bidders = rng.normal(0.0, noise_bidders, (n_segments, n_net))
    for field in range(k):
        log_value += rng.normal(0.0, value_sd[field], (sizes[field], n_net))[grid[:, field]]
        log_bidders += rng.normal(0.0, bidders_sd[field], (sizes[field], n_net))[grid[:, field]]
    share = (1.0 + rng.permutation(n_segments)) ** -zipf
    share /= share.sum()
    return tuple(
        SegmentSpec(
            context=tuple((name, f"{name}{int(v)}") for name, v in zip(segment_by, grid[s], strict=True)),
            share=float(share[s]),
            bidders_mult=tuple(np.exp(log_bidders[s]).tolist()),
            value_mult=tuple(np.exp(log_value[s]).tolist()),
        )
        for s in range(n_segments)
    )


def _hourly(f: _Fields, key: str) -> tuple[float, ...]:
    """24 multipliers, given as a list or as ``<key>_amplitude`` (+ ``<key>_peak_hour``):
    1 + A·cos(2π(h − peak)/24)."""
    if f.has(key):
        if f.has(f"{key}_amplitude"):
            raise f.fail(key, f"give either {key} or {key}_amplitude, not both")
        return f.numbers(key, length=HOURS_PER_DAY, lo=0.0, lo_open=True)
    amp = f.number(f"{key}_amplitude", 0.0, lo=0.0, hi=0.95)
    peak = f.number(f"{key}_peak_hour", 20.0, lo=0.0, hi=24.0)
    return tuple(1.0 + amp * math.cos(2 * math.pi * (h - peak) / HOURS_PER_DAY) for h in range(HOURS_PER_DAY))


def _parse_event(f: _Fields, ids: Sequence[str]) -> EventSpec:
    kind = f.string("kind", choices=EVENT_KINDS)
    net = f.string("network")
    if net not in ids:
        raise f.fail("network", f"unknown network {net!r}; known: {list(ids)}")
    needs_factor = kind in ("price_shift", "fill_collapse")
    if not needs_factor and f.has("factor"):
        raise f.fail("factor", f"does not apply to {kind!r}")
    spec = EventSpec(
        at_hour=f.number("at_hour", lo=0.0),
        kind=kind,  # type: ignore[arg-type]
        network=ids.index(net),
        factor=f.number("factor", lo=0.0, hi=100.0, lo_open=True) if needs_factor else 1.0,
    )
    f.done()
    return spec


def _parse_start(f: _Fields) -> float:
    value = f.raw("start", DEFAULT_START)
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise f.fail("start", f"must be an ISO 8601 time like {DEFAULT_START}, got {value!r}") from None
    else:
        raise f.fail("start", f"must be an ISO 8601 time like {DEFAULT_START}, got {value!r}")
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _parse_scenario(f: _Fields, name: str | None) -> Scenario:
    name = f.string("name", name)
    nets_f = f.tables("networks")
    if not nets_f:
        raise f.fail("networks", "must list at least one network ([[networks]])")
    networks = tuple(_parse_network(n) for n in nets_f)
    ids = [n.id for n in networks]
    if len(set(ids)) != len(ids):
        raise f.fail(
            "networks",
            f"network ids must be unique; repeated: {sorted({i for i in ids if ids.count(i) > 1})}",
        )
    segment_by = f.raw("segment_by", [])
    if not isinstance(segment_by, list) or not all(isinstance(s, str) and s for s in segment_by):
        raise f.fail("segment_by", f"must be a list of context field names, got {segment_by!r}")
    seg_f = f.tables("segments")
    grid_f = f.table("segment_grid")
    if seg_f and grid_f is not None:
        raise f.fail("segment_grid", "give either [[segments]] or [segment_grid], not both")
    if segment_by and not seg_f and grid_f is None:
        raise f.fail("segments", "must list the segments ([[segments]]) when segment_by is set")
    if (seg_f or grid_f is not None) and not segment_by:
        raise f.fail("segment_by", "must name the context fields when segments are listed")
    if grid_f is not None:
        segments = _parse_segment_grid(grid_f, ids, segment_by)
    elif seg_f:
        segments = tuple(_parse_segment(s, ids, segment_by) for s in seg_f)
    else:
        segments = (SegmentSpec((), 1.0, (1.0,) * len(ids), (1.0,) * len(ids)),)
    total = sum(s.share for s in segments)
    if abs(total - 1.0) > 1e-6:
        raise f.fail("segments", f"shares must sum to 1, got {total:g}")
    contexts = [s.context for s in segments]
    if len(set(contexts)) != len(contexts):
        raise f.fail("segments", "two segments have the same context")
    seas_f = f.table("seasonality")
    seasonality = Seasonality()
    if seas_f is not None:
        seasonality = Seasonality(
            traffic=_hourly(seas_f, "traffic"), demand=_hourly(seas_f, "demand"), value=_hourly(seas_f, "value")
        )
        seas_f.done()
    events = tuple(sorted((_parse_event(e, ids) for e in f.tables("events")), key=lambda e: e.at_hour))
    scenario = Scenario(
        name=name,
        networks=networks,
        segments=segments,
        segment_by=tuple(segment_by),
        requests_per_hour=f.number("requests_per_hour", 10_000.0, lo=0.0, hi=1e9, lo_open=True),
        default_requests=int(f.number("default_requests", 200_000, lo=1.0, hi=1e10)),
        start_ts=_parse_start(f),
        shock_sd=f.number("shock_sd", 0.0, lo=0.0, hi=2.0),
        seasonality=seasonality,
        events=events,
        placement_id=f.string("placement_id", name),
        currency=f.string("currency", "USD"),
        description=str(f.raw("description", "")),
        mode=f.string("mode", "single", choices=("single", "waterfall", "auction")),
        max_tiers=int(f.number("max_tiers", 0, lo=0.0, hi=len(networks))),
        max_calls=int(f.number("max_calls", 0, lo=0.0, hi=len(networks))),
    )
    f.done()
    if scenario.has_qps_caps and scenario.mode == "single":
        raise InvalidConfig(
            "networks: qps_cap is enforced by waterfall and auction runs (simulator.modes); set mode, or "
            "use cap_fills_per_hour for a single-network scenario"
        )
    try:
        scenario.placement()
    except AdbanditError as exc:
        raise InvalidConfig(f"networks: {exc}") from None
    return scenario
