"""Domain types: placement configuration, decision, outcome event, allocation.

All are frozen dataclasses validated on construction; invalid values raise the
project's own errors (:mod:`bandit.errors`) with a message naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

from bandit.errors import InvalidConfig, InvalidOutcome, UnknownNetwork

#: Prices above this (CPM) are treated as absurd input, not as data.
MAX_CPM = 1000.0
#: Segment key of the whole placement (no segment fields, or the pooled level).
ALL_SEGMENTS = "*"
#: Value used in a segment key for a context field that is missing.
MISSING_VALUE = "unknown"
#: How a network prices: ``auto`` detects it from the data (mass at the floor).
Auction = Literal["auto", "first", "second"]

_SHARE_TOLERANCE = 1e-9
#: Default floor precision (CPM): cents, what ad servers and networks take.
FLOOR_PRECISION_CPM = 0.01
#: Finest floor precision a placement may ask for: 1 / MAX_FLOOR_STEPS CPM.
MAX_FLOOR_STEPS = 10_000


def _finite(value: float, name: str, error: type[Exception] = InvalidConfig) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    return value


def _cpm(value: float, name: str, error: type[Exception] = InvalidConfig) -> float:
    if type(value) is float and 0.0 <= value <= MAX_CPM:  # the common case (NaN and inf fail here)
        return value
    value = _finite(value, name, error)
    if value < 0:
        raise error(f"{name} must be >= 0 CPM, got {value}")
    if value > MAX_CPM:
        raise error(f"{name} must be <= {MAX_CPM:g} CPM, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """One ad network of a placement, with its floor bounds and traffic-share contract."""

    id: str
    floor_min_cpm: float = 0.0
    floor_max_cpm: float = 50.0
    min_share: float = 0.0
    max_share: float = 1.0
    auction: Auction = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip() or len(self.id) > 64:
            raise InvalidConfig(f"network id must be a non-empty string of <= 64 chars, got {self.id!r}")
        where = f"network {self.id!r}"
        lo = _cpm(self.floor_min_cpm, f"{where}: floor_min_cpm")
        hi = _cpm(self.floor_max_cpm, f"{where}: floor_max_cpm")
        if hi < lo:
            raise InvalidConfig(f"{where}: floor_max_cpm ({hi}) must be >= floor_min_cpm ({lo})")
        smin = _finite(self.min_share, f"{where}: min_share")
        smax = _finite(self.max_share, f"{where}: max_share")
        if not 0.0 <= smin <= 1.0 or not 0.0 <= smax <= 1.0:
            raise InvalidConfig(f"{where}: min_share and max_share must lie in [0, 1]")
        if smax < smin:
            raise InvalidConfig(f"{where}: max_share ({smax}) must be >= min_share ({smin})")
        if self.auction not in ("auto", "first", "second"):
            raise InvalidConfig(f"{where}: auction must be 'auto', 'first' or 'second', got {self.auction!r}")
        for name, value in (("floor_min_cpm", lo), ("floor_max_cpm", hi), ("min_share", smin), ("max_share", smax)):
            object.__setattr__(self, name, value)

    def clip_floor(self, floor_cpm: float) -> float:
        return min(max(floor_cpm, self.floor_min_cpm), self.floor_max_cpm)


#: How a placement calls its networks (see :class:`PlacementConfig`).
MODES = ("single", "waterfall", "auction")


def _check_share_sums(networks: Sequence[NetworkConfig], mode: str, max_calls: int) -> None:
    """Whether the min/max shares can hold together. Single and waterfall placements share
    each request's first call, so the minimums sum to at most 1 and the maximums to at least
    1; an auction's shares are of calls (the share of requests calling the network), so its
    minimums sum to at most ``max_calls`` (no request calls more networks) and its maximums
    to at least 1 (every request calls one network)."""
    lo = sum(n.min_share for n in networks)
    hi = sum(n.max_share for n in networks)
    if mode == "auction":
        if lo > max_calls + _SHARE_TOLERANCE:
            raise InvalidConfig(
                f"min_share of all networks sums to {lo:g} > max_calls ({max_calls}): an auction's shares are of "
                f"calls, and a request calls at most {max_calls} networks; lower some min_share or raise max_calls"
            )
    elif lo > 1.0 + _SHARE_TOLERANCE:
        raise InvalidConfig(f"min_share of all networks sums to {lo:g} > 1; lower some min_share")
    if hi < 1.0 - _SHARE_TOLERANCE:
        what = " (every request calls at least one network)" if mode == "auction" else ""
        raise InvalidConfig(f"max_share of all networks sums to {hi:g} < 1{what}; raise some max_share")


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    """An ad slot: its networks, the context fields that key segments, and the currency."""

    id: str
    networks: tuple[NetworkConfig, ...]
    segment_by: tuple[str, ...] = ()
    currency: str = "USD"
    #: How a request calls networks: ``single`` (one network, one floor: exposure weights),
    #: ``waterfall`` (tiers tried in order, each with its floor, until one fills) or
    #: ``auction`` (networks called at once, each with its floor; the highest bid wins).
    mode: str = "single"
    #: Waterfall: at most this many tiers (0: every network).
    max_tiers: int = 0
    #: Auction: at most this many networks called per request (0: every network).
    max_calls: int = 0
    #: Served floors are multiples of this (CPM; default cents): 1/n CPM for a whole n up to
    #: :data:`MAX_FLOOR_STEPS`, or 0 for unrounded floors. Rounded before the decision's
    #: propensities are computed, so the logged floor is the served one.
    floor_precision_cpm: float = FLOOR_PRECISION_CPM

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip() or len(self.id) > 128:
            raise InvalidConfig(f"placement id must be a non-empty string of <= 128 chars, got {self.id!r}")
        networks = tuple(self.networks)
        if not networks:
            raise InvalidConfig("networks must list at least one network")
        ids = [n.id for n in networks]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise InvalidConfig(f"network ids must be unique; repeated: {dup}")
        segment_by = tuple(self.segment_by)
        if any(not isinstance(f, str) or not f for f in segment_by) or len(set(segment_by)) != len(segment_by):
            raise InvalidConfig(f"segment_by must be distinct non-empty field names, got {list(segment_by)}")
        if not isinstance(self.currency, str) or len(self.currency) != 3 or not self.currency.isalpha():
            raise InvalidConfig(f"currency must be a 3-letter ISO 4217 code, got {self.currency!r}")
        if self.mode not in MODES:
            raise InvalidConfig(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        for name in ("max_tiers", "max_calls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= len(networks):
                raise InvalidConfig(
                    f"{name} must be an integer in [0, {len(networks)}] (0: every network), got {value!r}"
                )
        _check_share_sums(networks, self.mode, self.max_calls or len(networks))
        object.__setattr__(self, "floor_precision_cpm", _floor_precision(self.floor_precision_cpm, networks))
        object.__setattr__(self, "networks", networks)
        object.__setattr__(self, "segment_by", segment_by)
        object.__setattr__(self, "currency", self.currency.upper())

    @property
    def floor_steps_per_cpm(self) -> int:
        """Floor grid points per CPM (100 for cents); 0 when floors are not rounded."""
        return floor_steps(self.floor_precision_cpm)

    @property
    def depth(self) -> int:
        """Networks per request: 1 (single), the waterfall's tiers or the auction's calls."""
        if self.mode == "single":
            return 1
        limit = self.max_tiers if self.mode == "waterfall" else self.max_calls
        return limit or len(self.networks)

    @property
    def network_ids(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.networks)

    def network_index(self, network: str) -> int:
        for i, n in enumerate(self.networks):
            if n.id == network:
                return i
        raise UnknownNetwork(
            f"network {network!r} is not configured for placement {self.id!r}; known networks: {list(self.network_ids)}"
        )

    def segment_of(self, context: Mapping[str, object] | None) -> str:
        """Segment key of a request context: the ``segment_by`` values joined by ``|``."""
        if not self.segment_by:
            return ALL_SEGMENTS
        context = context or {}
        return "|".join(_segment_value(context.get(f)) for f in self.segment_by)

    def to_dict(self) -> dict:
        return {
            "networks": [
                {
                    "id": n.id,
                    "floor_min_cpm": n.floor_min_cpm,
                    "floor_max_cpm": n.floor_max_cpm,
                    "min_share": n.min_share,
                    "max_share": n.max_share,
                    "auction": n.auction,
                }
                for n in self.networks
            ],
            "segment_by": list(self.segment_by),
            "currency": self.currency,
            # Only for the multi-network modes, so single placements serialise as before.
            **(
                {"mode": self.mode, "max_tiers": self.max_tiers, "max_calls": self.max_calls}
                if self.mode != "single"
                else {}
            ),
            # Only when not the default, so stored placements (and policy states) compare as before.
            **(
                {"floor_precision_cpm": self.floor_precision_cpm}
                if self.floor_precision_cpm != FLOOR_PRECISION_CPM
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, placement: str, body: Mapping) -> PlacementConfig:
        """Build from the JSON body of ``PUT /v1/placements/{placement}``."""
        if not isinstance(body, Mapping):
            raise InvalidConfig("placement body must be a JSON object")
        raw = body.get("networks")
        if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
            raise InvalidConfig("networks must be a list of network objects")
        networks = []
        for i, n in enumerate(raw):
            if not isinstance(n, Mapping) or "id" not in n:
                raise InvalidConfig(f"networks[{i}] must be an object with an 'id'")
            unknown = set(n) - {"id", "floor_min_cpm", "floor_max_cpm", "min_share", "max_share", "auction"}
            if unknown:
                raise InvalidConfig(f"networks[{i}] has unknown fields {sorted(unknown)}")
            networks.append(NetworkConfig(**n))
        segment_by = body.get("segment_by", ())
        if isinstance(segment_by, str) or not isinstance(segment_by, Sequence):
            raise InvalidConfig("segment_by must be a list of context field names")
        return cls(
            placement,
            tuple(networks),
            tuple(segment_by),
            body.get("currency", "USD"),
            body.get("mode", "single"),
            body.get("max_tiers", 0),
            body.get("max_calls", 0),
            body.get("floor_precision_cpm", FLOOR_PRECISION_CPM),
        )


def floor_steps(precision_cpm: float) -> int:
    """Grid points per CPM of a (validated) floor precision: ``round(1 / precision)``; 0 for 0."""
    return round(1.0 / precision_cpm) if precision_cpm > 0 else 0


def _floor_precision(value: object, networks: Sequence[NetworkConfig]) -> float:
    """A valid floor precision (see :attr:`PlacementConfig.floor_precision_cpm`): 0, or 1/n CPM
    with every network's floor bounds holding at least one multiple of it."""
    expected = (
        f"floor_precision_cpm must be 0 (floors not rounded) or 1/n CPM for a whole n from 1 to "
        f"{MAX_FLOOR_STEPS} (0.01: cents, 0.001: tenths of a cent, 0.05, 0.1, 1), got {value!r}"
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidConfig(expected)
    if value == 0:
        return 0.0
    steps = 1.0 / value
    n = round(steps)
    if not 1 <= n <= MAX_FLOOR_STEPS or abs(steps - n) > 1e-6 * n:
        raise InvalidConfig(expected)
    for net in networks:
        if math.ceil(net.floor_min_cpm * n - 1e-6) > math.floor(net.floor_max_cpm * n + 1e-6):
            raise InvalidConfig(
                f"network {net.id!r}: floor bounds [{net.floor_min_cpm:g}, {net.floor_max_cpm:g}] hold no multiple of "
                f"floor_precision_cpm {value:g}: widen them or choose a finer precision"
            )
    return float(value)


def _segment_value(value: object) -> str:
    if value is None or value == "":
        return MISSING_VALUE
    return str(value).replace("|", "_")


@dataclass(frozen=True, slots=True)
class Decision:
    """What one request gets: a network and its floor, with the probabilities of choosing them.

    ``propensity`` is P(network) under the allocation used; ``floor_propensity`` is
    P(floor bin | network). Their product is the logging propensity for off-policy
    evaluation. A later parallel-auction mode returns several (network, floor) pairs per
    request; it will extend this type with a tuple of offers rather than change it.
    """

    network: str
    floor_cpm: float
    propensity: float
    floor_propensity: float
    segment: str
    model_version: str
    #: Density of log floor_cpm given the network (per unit log CPM) when floors are drawn
    #: continuously (a jitter around the chosen floor) — of the served, rounded floor: its cell's
    #: probability per unit log CPM; NaN for floors from a discrete set.
    floor_density: float = math.nan


@lru_cache(maxsize=65536)
def _iso_seconds(value: str) -> float:
    """Epoch seconds of an ISO 8601 time (cached: a batch of events shares few distinct times)."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidOutcome(f"ts must be an ISO 8601 time like 2026-11-21T10:00:00Z, got {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def parse_ts(value: object) -> float:
    """Event time in seconds since the epoch, from an ISO 8601 string or a number."""
    if isinstance(value, bool):
        raise InvalidOutcome(f"ts must be an ISO 8601 time or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, datetime):
        ts = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, str):
        ts = _iso_seconds(value)
    else:
        raise InvalidOutcome(f"ts must be an ISO 8601 time or epoch seconds, got {value!r}")
    if not math.isfinite(ts) or ts < 0 or ts > 4.1e9:
        raise InvalidOutcome(f"ts must be a time between 1970 and 2100, got {value!r}")
    return ts


@dataclass(frozen=True, slots=True)
class OutcomeEvent:
    """What happened to one decision. ``revenue_cpm`` is the price paid (0 when not filled)."""

    event_id: str
    placement: str
    network: str
    floor_cpm: float
    filled: bool
    revenue_cpm: float
    ts: float
    context: Mapping[str, str] = field(default_factory=dict)
    decision_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event_id, str) or not self.event_id or len(self.event_id) > 256:
            raise InvalidOutcome(f"event_id must be a non-empty string of <= 256 chars, got {self.event_id!r}")
        if not isinstance(self.placement, str) or not self.placement:
            raise InvalidOutcome(f"placement must be a non-empty string, got {self.placement!r}")
        if not isinstance(self.network, str) or not self.network:
            raise InvalidOutcome(f"network must be a non-empty string, got {self.network!r}")
        if not isinstance(self.filled, bool):
            raise InvalidOutcome(f"filled must be true or false, got {self.filled!r}")
        floor = _cpm(self.floor_cpm, "floor_cpm", InvalidOutcome)
        revenue = _cpm(self.revenue_cpm, "revenue_cpm", InvalidOutcome)
        if not self.filled and revenue != 0.0:
            raise InvalidOutcome(f"revenue_cpm must be 0 when filled is false, got {revenue}")
        if not isinstance(self.context, Mapping):
            raise InvalidOutcome("context must be an object of string fields")
        object.__setattr__(self, "floor_cpm", floor)
        object.__setattr__(self, "revenue_cpm", revenue)
        object.__setattr__(self, "ts", parse_ts(self.ts))

    @property
    def reward(self) -> float:
        """Revenue of the request in CPM: the price if filled, else 0."""
        return self.revenue_cpm if self.filled else 0.0

    @classmethod
    def from_dict(cls, body: Mapping) -> OutcomeEvent:
        if not isinstance(body, Mapping):
            raise InvalidOutcome("an outcome event must be a JSON object")
        required = ("event_id", "placement", "network", "floor_cpm", "filled", "ts")
        missing = [k for k in required if k not in body]
        if missing:
            raise InvalidOutcome(f"missing required fields {missing}")
        filled = body["filled"]
        return cls(
            event_id=body["event_id"],
            placement=body["placement"],
            network=body["network"],
            floor_cpm=body["floor_cpm"],
            filled=filled,
            revenue_cpm=body.get("revenue_cpm", 0.0),
            ts=body["ts"],
            context=body.get("context") or {},
            decision_id=body.get("decision_id"),
        )


@dataclass(frozen=True, slots=True)
class NetworkAllocation:
    """One network's part of an allocation, with the uncertainty behind it."""

    network: str
    weight: float
    floor_cpm: float
    floor_p10_cpm: float
    floor_p90_cpm: float
    expected_revenue_cpm: float
    revenue_sd_cpm: float
    fill_rate: float
    auction: str
    #: Probability that ``auction`` is right (1 when configured; NaN when unknown).
    auction_confidence: float = float("nan")


@dataclass(frozen=True, slots=True)
class Allocation:
    """Per placement and segment: weights over networks (summing to 1) and a floor per network."""

    placement: str
    segment: str
    networks: tuple[NetworkAllocation, ...]
    model_version: str
    effective_events: float

    def to_dict(self) -> dict:
        return {
            "placement": self.placement,
            "segment": self.segment,
            "model_version": self.model_version,
            "effective_events": self.effective_events,
            "networks": [
                {
                    "network": n.network,
                    "weight": n.weight,
                    "floor_cpm": n.floor_cpm,
                    "floor_p10_cpm": n.floor_p10_cpm,
                    "floor_p90_cpm": n.floor_p90_cpm,
                    "expected_revenue_cpm": n.expected_revenue_cpm,
                    "revenue_sd_cpm": n.revenue_sd_cpm,
                    "fill_rate": n.fill_rate,
                    "auction": n.auction,
                    "auction_confidence": None if math.isnan(n.auction_confidence) else n.auction_confidence,
                }
                for n in self.networks
            ],
        }
