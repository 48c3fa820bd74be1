"""A seller-side ad market with exact ground truth: requests, auction outcomes, truth, oracle.

:class:`Market` turns a :class:`~simulator.scenario.Scenario` into

* :meth:`Market.requests` — a batch of requests (arrival times, segments, a 64-bit
  auction key and the common value shock per request);
* :meth:`Market.outcomes` / :meth:`Market.sample` — what the chosen network does at the
  chosen floor (filled, revenue), vectorised, drawn from counter-based random numbers
  keyed by (request key, network), so every policy run on the same seed sees the same
  requests and the same bids (common random numbers);
* :meth:`Market.expected` — exact expected revenue per request and fill rate;
* :meth:`Market.oracle` — the best allocation knowing the truth (best floor per network,
  weights from the share contract and demand caps).

Market parameters are piecewise constant over *regimes*: an event epoch (between two
scheduled events) combined with a class of hours of the day with equal seasonality
(demand and value multipliers, and traffic when demand caps make it matter).
Truth curves and oracle allocations are computed once per regime and cached.

Mechanisms outside the policies' model (see :mod:`simulator.scenario`) act in
:meth:`Market.sample` exactly as their truth in :class:`~simulator.auction.RevenueCurve`
assumes: a floor-responsive first-price network fills iff its top bid clears
shading × floor and pays max(top bid, floor); a second-price network with a price
increment δ pays min(top bid, max(second bid, floor) + δ); a throttling network answers
only when a uniform from its own stream of the request key (:data:`_THROTTLE_STREAM`)
falls below t(floor), so common random numbers hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
from numpy.typing import NDArray
from scipy.special import ndtri

from bandit.errors import InvalidDecisionRequest
from bandit.types import MAX_CPM, PlacementConfig
from simulator.auction import (
    BidDistribution,
    RevenueCurve,
    bid_log_quantile,
    next_survival,
    stream_uniform,
    stream_uniform_keyed,
    throttle_factor,
    top_survival,
)
from simulator.oracle import OracleAllocation, best_floor, constrained_allocation, share_allocation
from simulator.scenario import HOURS_PER_DAY, Scenario, load_scenario

SECONDS_PER_HOUR = 3600.0

# Random-number streams of a request key (network streams start at _NETWORK_STREAM).
_GAP_STREAM, _SEGMENT_STREAM, _SHOCK_STREAM = 0, 1, 2
_NETWORK_STREAM = 16
# Throttle coins: one stream per network, far above the bid streams (2 per network).
_THROTTLE_STREAM = 1 << 32
# Time-out coins of the multi-network modes (Market.pays): one stream per network.
_TIMEOUT_STREAM = 1 << 33
# Over-QPS-cap coins of the auction oracle's sampled requests (simulator.modes): one per network.
QPS_STREAM = 1 << 34


@dataclass(frozen=True, slots=True)
class RequestBatch:
    """Requests in arrival order, arrays of shape [n].

    ``segments`` are the distinct segment keys (``"KR|ios"``, or ``"*"``) indexed by
    ``segment_index``; ``key`` is each request's 64-bit auction key (all its auction
    randomness derives from it); ``shock`` its common value multiplier (1 without a
    shock); ``regime`` the market regime at its arrival time.
    """

    ts: NDArray[np.float64]
    segment_index: NDArray[np.int64]
    segments: tuple[str, ...]
    key: NDArray[np.uint64]
    shock: NDArray[np.float64]
    regime: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, rows: slice | NDArray) -> RequestBatch:
        """The requests selected by a slice, index or boolean array."""
        return RequestBatch(
            self.ts[rows],
            self.segment_index[rows],
            self.segments,
            self.key[rows],
            self.shock[rows],
            self.regime[rows],
        )

    @staticmethod
    def concat(batches: list[RequestBatch]) -> RequestBatch:
        first = batches[0]
        cat = lambda name: np.concatenate([getattr(b, name) for b in batches])  # noqa: E731
        return RequestBatch(cat("ts"), cat("segment_index"), first.segments, cat("key"), cat("shock"), cat("regime"))


class Outcome(NamedTuple):
    """What happened to a batch of decisions, arrays [n]. ``available`` is False where the
    network had used up its hourly demand cap (it could not fill whatever the floor)."""

    filled: NDArray[np.bool_]
    revenue: NDArray[np.float64]
    available: NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class OracleResult:
    """The oracle on a batch of requests: ``revenue`` [n] per request (CPM) and the oracle's
    ``weights`` and ``floors`` [n, N] for each request's (regime, segment)."""

    revenue: NDArray[np.float64]
    weights: NDArray[np.float64]
    floors: NDArray[np.float64]


@dataclass
class CapLedger:
    """Fills counted per (clock hour, network) for the networks' hourly demand caps."""

    hour: int = -1
    fills: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def reset(self) -> None:
        self.hour = -1
        self.fills = np.zeros(0)


class Market:
    """A simulated market built from a scenario (a :class:`Scenario` or its name/path).

    ``placement`` is the :class:`bandit.PlacementConfig` policies are built for.
    Parameter tables have shape [R, S, N]: regimes × segments × networks.
    """

    def __init__(self, scenario: Scenario | str | Path) -> None:
        sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.scenario = sc
        self.placement: PlacementConfig = sc.placement()
        self.segments: tuple[str, ...] = sc.segment_keys()
        self.n_networks = len(sc.networks)
        self.n_segments = len(sc.segments)
        self.bid_distributions = tuple(
            BidDistribution(
                np.array(n.value_weights),
                np.array(n.value_log_means) + math.log(n.shading),
                np.array(n.value_log_sds),
                pareto_weight=n.pareto_weight,
                pareto_alpha=n.pareto_alpha if n.pareto_weight > 0 else 2.0,
                pareto_log_scale=math.log(n.pareto_scale_cpm * n.shading) if n.pareto_weight > 0 else 0.0,
            )
            for n in sc.networks
        )
        self._tables = np.concatenate([b.quantiles.ravel() for b in self.bid_distributions])
        self._second = np.array([n.auction == "second" for n in sc.networks])
        self._shading = np.array([n.shading for n in sc.networks])
        self._responsive = np.array([n.floor_responsive for n in sc.networks])
        self._increment = np.array([n.price_increment_cpm for n in sc.networks])
        self._throttle_cpm = np.array([n.throttle_floor_cpm for n in sc.networks])
        self._throttle_power = np.array([n.throttle_power for n in sc.networks])
        self._dispersion = np.array([n.dispersion for n in sc.networks])
        self._timeout = np.array([n.timeout_rate for n in sc.networks])
        #: Calls answered per second (inf: no cap), :mod:`simulator.modes`.
        self.qps_cap = np.array([n.qps_cap for n in sc.networks])
        self._caps = np.array([n.cap_fills_per_hour for n in sc.networks])
        self._floor_lo = np.array([n.floor_min_cpm for n in sc.networks])
        self._floor_hi = np.array([n.floor_max_cpm for n in sc.networks])
        self._segment_cum = np.cumsum([s.share for s in sc.segments])
        self._segment_cum[-1] = 1.0
        self._build_regimes()
        self._curves: dict[int, RevenueCurve] = {}
        self._oracle: dict[tuple[int, int], OracleAllocation] = {}
        self._best: dict[int, tuple[float, float, float]] = {}
        self.ledger = CapLedger()

    # ------------------------------------------------------------------- regimes
    def _build_regimes(self) -> None:
        sc = self.scenario
        n = self.n_networks
        self._event_ts = np.array([sc.start_ts + e.at_hour * SECONDS_PER_HOUR for e in sc.events])
        # Per epoch (after 0, 1, ..., E events): λ and value-scale factors per network.
        present = np.ones(n, dtype=bool)
        for j in range(n):
            first = next(
                (e.kind for e in sc.events if e.network == j and e.kind in ("network_joins", "network_leaves")),
                None,
            )
            present[j] = first != "network_joins"
        lam_f, val_f = np.ones(n), np.ones(n)
        epochs = [(present.copy(), lam_f.copy(), val_f.copy())]
        for e in sc.events:
            if e.kind == "price_shift":
                val_f[e.network] *= e.factor
            elif e.kind == "fill_collapse":
                lam_f[e.network] *= e.factor
            else:
                present[e.network] = e.kind == "network_joins"
            epochs.append((present.copy(), lam_f.copy(), val_f.copy()))
        # Hour-of-day classes with equal demand and values (and traffic, which matters under caps).
        demand = np.array(sc.seasonality.demand)
        traffic = np.array(sc.seasonality.traffic)
        value = np.array(sc.seasonality.value)
        by_traffic = sc.has_caps or sc.has_qps_caps  # caps make the traffic level matter
        keys = np.stack([demand, traffic if by_traffic else np.ones(HOURS_PER_DAY), value], axis=1)
        classes, self._hour_class = np.unique(keys, axis=0, return_inverse=True)
        self._hour_class = self._hour_class.ravel()
        self._n_classes = len(classes)
        self._class_traffic = sc.requests_per_hour * classes[:, 1] if sc.has_caps else None
        # Requests per second of each hour class (the hourly mean when traffic does not key classes).
        mean_traffic = float(np.mean(sc.seasonality.traffic))
        level = classes[:, 1] if by_traffic else np.full(self._n_classes, mean_traffic)
        self._class_rate = sc.requests_per_hour * level / SECONDS_PER_HOUR
        base_lam = np.array([[s.bidders_mult[j] * sc.networks[j].bidders for j in range(n)] for s in sc.segments])
        base_val = np.array([list(s.value_mult) for s in sc.segments])
        lam, scale = [], []
        for pres, lf, vf in epochs:
            for c in range(self._n_classes):
                lam.append(base_lam * (pres * lf)[None, :] * classes[c, 0])
                scale.append(base_val * vf[None, :] * classes[c, 2])
        self._lam = np.array(lam)  # [R, S, N]
        self._scale = np.array(scale)
        self.n_regimes = len(lam)
        self._lam_flat = self._lam.ravel()
        self._scale_flat = self._scale.ravel()
        traffic_rate = sc.requests_per_hour * traffic / SECONDS_PER_HOUR  # requests per second by hour
        self._rate = traffic_rate
        self._uniform_traffic = bool(np.all(traffic == traffic[0]))

    def qps_answer_share(self, regime: int, call_share: float = 1.0) -> NDArray[np.float64]:
        """[N] the share of a network's calls under its QPS cap c when it is called on
        ``call_share`` of the requests of ``regime``: calls in a second are Poisson with mean
        μ = rate·call_share, so E[min(K, c)]/μ (1 without a cap). What the oracles assume."""
        mu = float(self._class_rate[regime % self._n_classes]) * call_share
        out = np.ones(self.n_networks)
        for j, cap in enumerate(self.qps_cap):
            c = math.floor(cap) if math.isfinite(cap) else 0
            if math.isfinite(cap) and mu > 0 and c < mu + 12 * math.sqrt(mu) + 30:  # else never reached
                k = np.arange(c)
                pmf = np.exp(k * math.log(mu) - mu - np.array([math.lgamma(i + 1) for i in k]))
                out[j] = min(1.0, float((k * pmf).sum() + c * (1.0 - pmf.sum())) / mu)
        return out

    def regime_of(self, ts: NDArray[np.float64]) -> NDArray[np.int64]:
        """Market regime [n] at times ``ts`` [n] (epoch seconds)."""
        ts = np.asarray(ts, dtype=np.float64)
        epoch = np.searchsorted(self._event_ts, ts, side="right")
        hour = (np.floor(ts / SECONDS_PER_HOUR).astype(np.int64)) % HOURS_PER_DAY
        return epoch * self._n_classes + self._hour_class[hour]

    def market_params(self, ts: float, segment: int, network: int) -> dict[str, float]:
        """The true λ (mean bidders) and value scale of one network at one time, for reports."""
        r = int(self.regime_of(np.array([ts]))[0])
        return {
            "bidders": float(self._lam[r, segment, network]),
            "value_scale": float(self._scale[r, segment, network]),
        }

    # ------------------------------------------------------------------ requests
    def requests(self, n: int, rng: np.random.Generator | int, *, start_ts: float | None = None) -> RequestBatch:
        """``n`` requests arriving after ``start_ts`` (default: the scenario start).

        Arrivals are a Poisson process at the scenario's hourly rate. Each request takes
        one raw 64-bit draw from ``rng`` (its key); everything else about it — arrival gap,
        segment, common shock, bids — is a function of that key, so splitting the same
        stream into batches differently yields the same requests.
        """
        start = self.scenario.start_ts if start_ts is None else float(start_ts)
        rng = np.random.default_rng(rng)  # a Generator passes through unchanged
        key = np.asarray(rng.bit_generator.random_raw(n), dtype=np.uint64)
        gaps = -np.log(stream_uniform(key, _GAP_STREAM))
        ts = self._arrival_times(start, np.cumsum(gaps))
        if self.n_segments == 1:
            seg = np.zeros(n, dtype=np.int64)
        else:
            seg = np.searchsorted(self._segment_cum, stream_uniform(key, _SEGMENT_STREAM), side="right")
            seg = np.minimum(seg, self.n_segments - 1)
        sd = self.scenario.shock_sd
        if sd > 0:
            shock = np.exp(sd * ndtri(stream_uniform(key, _SHOCK_STREAM)) - 0.5 * sd * sd)
        else:
            shock = np.ones(n)
        return RequestBatch(ts, seg, self.segments, key, shock, self.regime_of(ts))

    def _arrival_times(self, start: float, work: NDArray[np.float64]) -> NDArray[np.float64]:
        """Times at which the cumulative expected request count since ``start`` reaches
        ``work`` [n] (sorted), with a rate constant within each clock hour."""
        if self._uniform_traffic:
            return start + work / self._rate[0]
        hour0 = math.floor(start / SECONDS_PER_HOUR)
        min_per_hour = float(self._rate.min() * SECONDS_PER_HOUR)
        n_hours = int(work[-1] / min_per_hour) + 2 if len(work) else 1
        hours = hour0 + np.arange(n_hours)
        rate = self._rate[hours % HOURS_PER_DAY]
        seconds = np.full(n_hours, SECONDS_PER_HOUR)
        seconds[0] = (hour0 + 1) * SECONDS_PER_HOUR - start
        cum = np.concatenate([[0.0], np.cumsum(rate * seconds)])
        k = np.minimum(np.searchsorted(cum, work, side="right") - 1, n_hours - 1)
        begin = np.maximum(hours[k] * SECONDS_PER_HOUR, start)
        return begin + (work - cum[k]) / rate[k]

    # ------------------------------------------------------------------ outcomes
    def _cells(
        self,
        regime: NDArray[np.int64],
        segment_index: NDArray[np.int64],
        network: NDArray[np.int64],
    ) -> NDArray[np.int64]:
        return (regime * self.n_segments + segment_index) * self.n_networks + network

    def _cell_key(self, cell: int) -> tuple[int, int, int]:
        """(regime, segment, network) of a cell code of :meth:`_cells`."""
        regime, rest = divmod(cell, self.n_segments * self.n_networks)
        return (regime, *divmod(rest, self.n_networks))

    def _check(self, n: int, network: NDArray, floor_cpm: NDArray) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        network = np.asarray(network)
        floor_cpm = np.asarray(floor_cpm, dtype=np.float64)
        if network.shape != (n,) or floor_cpm.shape != (n,):
            raise InvalidDecisionRequest(
                f"network and floor_cpm must have shape ({n},), got {network.shape} and {floor_cpm.shape}"
            )
        if n and (network.min() < 0 or network.max() >= self.n_networks):
            raise InvalidDecisionRequest(f"network index must lie in [0, {self.n_networks})")
        if n and not (np.all(np.isfinite(floor_cpm)) and floor_cpm.min() >= 0 and floor_cpm.max() <= MAX_CPM):
            raise InvalidDecisionRequest(f"floor_cpm must be finite and within [0, {MAX_CPM:g}]")
        return network.astype(np.int64, copy=False), floor_cpm

    def bids(
        self, req: RequestBatch, network: NDArray[np.int64] | int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(top bid, second bid) [n] at ``network`` for each request (0 where absent).

        Pure in (request key, network): the same whichever policy asks.
        """
        n = len(req)
        net = np.broadcast_to(np.asarray(network, dtype=np.int64), (n,))
        cell = self._cells(req.regime, req.segment_index, net)
        lam = self._lam_flat[cell]
        scale = self._scale_flat[cell] * req.shock
        disp = self._dispersion[net]
        stream = net.astype(np.uint64) * np.uint64(2) + np.uint64(_NETWORK_STREAM)
        e1 = -np.log(stream_uniform_keyed(req.key, stream))
        s1 = top_survival(e1, lam, disp)
        has1 = s1 < 1.0
        top = np.where(has1, scale * np.exp(bid_log_quantile(self._tables, net, np.where(has1, s1, 0.5))), 0.0)
        second = np.zeros(n)
        rows = np.flatnonzero(has1 & self._second[net])
        if len(rows):
            e2 = -np.log(stream_uniform_keyed(req.key[rows], stream[rows] + np.uint64(1)))
            s2 = next_survival(s1[rows], e2, lam[rows], disp[rows])
            has2 = s2 < 1.0
            lx2 = bid_log_quantile(self._tables, net[rows], np.where(has2, s2, 0.5))
            second[rows] = np.where(has2, scale[rows] * np.exp(lx2), 0.0)
        return top, second

    def sample(
        self,
        req: RequestBatch,
        network: NDArray,
        floor_cpm: NDArray,
        ledger: CapLedger | None = None,
    ) -> Outcome:
        """Outcomes of sending each request to ``network`` [n] at ``floor_cpm`` [n].

        Requests must come in time order across calls sharing a ``ledger`` (default: the
        market's own, cleared by :meth:`reset`), which enforces the hourly demand caps.
        """
        network, floor_cpm = self._check(len(req), network, floor_cpm)
        top, second = self.bids(req, network)
        price = np.where(self._second[network], np.maximum(second, floor_cpm), top)
        if self._responsive.any():
            # Bidders whose value clears f bid at least f: fill iff top value >= f.
            responsive = self._responsive[network]
            filled = (top > 0.0) & (top >= np.where(responsive, self._shading[network] * floor_cpm, floor_cpm))
            price = np.where(responsive, np.maximum(top, floor_cpm), price)
        else:
            filled = (top > 0.0) & (top >= floor_cpm)
        if self._increment.any():
            price = np.where(self._second[network], np.minimum(top, price + self._increment[network]), price)
        if np.isfinite(self._throttle_cpm).any():
            filled &= self.answers(req, network, floor_cpm)
        if self._timeout.any():  # a network that times out is a no-bid (as in Market.pays)
            stream = np.uint64(_TIMEOUT_STREAM) + network.astype(np.uint64)
            filled &= stream_uniform_keyed(req.key, stream) >= self._timeout[network]
        available = np.ones(len(req), dtype=bool)
        if np.isfinite(self._caps).any():
            available = self._apply_caps(req.ts, network, filled, ledger or self.ledger)
            filled &= available
        revenue = np.where(filled, np.minimum(price, MAX_CPM), 0.0)
        return Outcome(filled, revenue, available)

    def pays(self, req: RequestBatch, network: int, floor_cpm: NDArray[np.float64]) -> NDArray[np.float64]:
        """What ``network`` pays [n, G] for each request at each of the floors [G] (0: no fill),
        by the mechanisms of :meth:`sample` from one draw of the bids (demand caps aside: they
        depend on the run's history)."""
        floors = np.asarray(floor_cpm, dtype=np.float64)[None, :]
        top, second = (b[:, None] for b in self.bids(req, network))
        price = np.maximum(second, floors) if self._second[network] else np.broadcast_to(top, (len(req), floors.size))
        if self._responsive[network]:
            filled = (top > 0.0) & (top >= self._shading[network] * floors)
            price = np.maximum(top, floors)
        else:
            filled = (top > 0.0) & (top >= floors)
        if self._second[network] and self._increment[network] > 0:
            price = np.minimum(top, price + self._increment[network])
        half = self._throttle_cpm[network]
        if np.isfinite(half):
            stream = np.uint64(_THROTTLE_STREAM) + np.uint64(network)
            u = stream_uniform_keyed(req.key, stream)[:, None]
            filled &= u < throttle_factor(floors, half, self._throttle_power[network])
        if self._timeout[network] > 0:
            stream = np.uint64(_TIMEOUT_STREAM) + np.uint64(network)
            filled &= (stream_uniform_keyed(req.key, stream) >= self._timeout[network])[:, None]
        return np.where(filled, np.minimum(price, MAX_CPM), 0.0)

    def answers(
        self, req: RequestBatch, network: NDArray[np.int64], floor_cpm: NDArray[np.float64]
    ) -> NDArray[np.bool_]:
        """Whether each network answers at all [n] (False only for throttling networks):
        a uniform from the network's own stream of the request key below t(floor)."""
        half = self._throttle_cpm[network]
        throttled = np.isfinite(half)
        out = np.ones(len(req), dtype=bool)
        if throttled.any():
            rows = np.flatnonzero(throttled)
            stream = np.uint64(_THROTTLE_STREAM) + network[rows].astype(np.uint64)
            u = stream_uniform_keyed(req.key[rows], stream)
            t = throttle_factor(floor_cpm[rows], half[rows], self._throttle_power[network[rows]])
            out[rows] = u < t
        return out

    def outcomes(
        self, req: RequestBatch, network: NDArray, floor_cpm: NDArray
    ) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
        """(filled [n], revenue_cpm [n]) of the decisions; see :meth:`sample`."""
        out = self.sample(req, network, floor_cpm)
        return out.filled, out.revenue

    def reset(self) -> None:
        """Forget the demand-cap fills counted so far (start of a new run)."""
        self.ledger.reset()

    def _apply_caps(self, ts: NDArray, network: NDArray, would_fill: NDArray, ledger: CapLedger) -> NDArray[np.bool_]:
        """Available [n]: False where the network had already filled its cap this clock hour."""
        available = np.ones(len(ts), dtype=bool)
        hours = np.floor(ts / SECONDS_PER_HOUR).astype(np.int64)
        if len(ledger.fills) != self.n_networks:
            ledger.fills = np.zeros(self.n_networks)
        for hour in np.unique(hours):
            if hour != ledger.hour:
                ledger.hour = int(hour)
                ledger.fills[:] = 0.0
            in_hour = hours == hour
            for j in np.flatnonzero(np.isfinite(self._caps)):
                rows = np.flatnonzero(in_hour & (network == j))
                if not len(rows):
                    continue
                before = ledger.fills[j] + np.concatenate([[0], np.cumsum(would_fill[rows])[:-1]])
                available[rows] = before < self._caps[j]
                ledger.fills[j] += float((would_fill[rows] & available[rows]).sum())
        return available

    # -------------------------------------------------------------- ground truth
    def curve(self, regime: int, segment: int, network: int) -> RevenueCurve:
        """The exact revenue curve of one network in one regime and segment (cached)."""
        cell = (regime * self.n_segments + segment) * self.n_networks + network
        got = self._curves.get(cell)
        if got is None:
            got = RevenueCurve(
                self.bid_distributions[network],
                float(self._lam_flat[cell]),
                float(self._dispersion[network]),
                bool(self._second[network]),
                float(self._scale_flat[cell]),
                self.scenario.shock_sd,
                MAX_CPM,
                increment_cpm=float(self._increment[network]),
                responsive=bool(self._responsive[network]),
                shading=float(self._shading[network]),
                throttle_cpm=float(self._throttle_cpm[network]),
                throttle_power=float(self._throttle_power[network]),
            )
            self._curves[cell] = got
        return got

    def expected(
        self, ts: NDArray, segment_index: NDArray, network: NDArray, floor_cpm: NDArray
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Exact expected revenue per request R(f) and fill rate P(fill | f), arrays [n].

        Demand caps are not part of it (they depend on the history of the run; see
        :attr:`Outcome.available`). Each cell's curve is evaluated once per distinct floor:
        a batch of decisions holds few (a policy's table rows), and the curve's cost is per
        floor.
        """
        ts = np.atleast_1d(np.asarray(ts, dtype=np.float64))
        n = len(ts)
        segment_index = np.broadcast_to(np.asarray(segment_index, dtype=np.int64), (n,))
        network, floor_cpm = self._check(n, np.broadcast_to(network, (n,)), np.broadcast_to(floor_cpm, (n,)))
        cells = self._cells(self.regime_of(ts), segment_index, network)
        revenue, fill = np.empty(n), np.empty(n)
        unique, inverse = np.unique(cells, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
        for u, cell in enumerate(unique.tolist()):
            rows = order[bounds[u] : bounds[u + 1]]
            floors, at = np.unique(floor_cpm[rows], return_inverse=True)
            cell_revenue, cell_fill = self.curve(*self._cell_key(cell))(floors)
            revenue[rows], fill[rows] = cell_revenue[at], cell_fill[at]
        return revenue, fill

    def network_best(self, ts: NDArray, segment_index: NDArray, network: NDArray) -> NDArray[np.float64]:
        """Revenue per request [n] of each request's network at that network's best floor: what
        the decision would have earned with a perfect floor (the oracle's revenue minus it is the
        cost of the network choice, it minus the decision's the cost of the floor)."""
        ts = np.atleast_1d(np.asarray(ts, dtype=np.float64))
        n = len(ts)
        segment_index = np.broadcast_to(np.asarray(segment_index, dtype=np.int64), (n,))
        network = np.broadcast_to(np.asarray(network, dtype=np.int64), (n,))
        cells = self._cells(self.regime_of(ts), segment_index, network)
        unique, inverse = np.unique(cells, return_inverse=True)
        best = np.array([self.best_floor(*self._cell_key(cell))[1] for cell in unique.tolist()])
        return best[inverse.ravel()]

    # -------------------------------------------------------------------- oracle
    def best_floor(self, regime: int, segment: int, network: int) -> tuple[float, float, float]:
        """(best floor, its revenue per request, its fill rate) within the network's bounds."""
        cell = (regime * self.n_segments + segment) * self.n_networks + network
        got = self._best.get(cell)
        if got is None:
            got = best_floor(
                self.curve(regime, segment, network),
                self._floor_lo[network],
                self._floor_hi[network],
            )
            self._best[cell] = got
        return got

    def oracle_allocation(self, regime: int, segment: int) -> OracleAllocation:
        """Best allocation of one regime and segment knowing the truth (cached)."""
        got = self._oracle.get((regime, segment))
        if got is not None:
            return got
        if self.scenario.has_caps:
            traffic = float(self._class_traffic[regime % self._n_classes])
            shares = np.diff(np.concatenate([[0.0], self._segment_cum]))
            per_segment = [
                [(self.curve(regime, s, j), self.best_floor(regime, s, j)) for j in range(self.n_networks)]
                for s in range(self.n_segments)
            ]
            allocations = constrained_allocation(
                per_segment, shares, traffic, self._caps, self.placement, self._floor_hi
            )
            for s, alloc in enumerate(allocations):
                self._oracle[(regime, s)] = alloc
            return self._oracle[(regime, segment)]
        best = np.array([self.best_floor(regime, segment, j) for j in range(self.n_networks)])
        got = share_allocation(best[:, 0], best[:, 1], best[:, 2], self.placement)
        self._oracle[(regime, segment)] = got
        return got

    def oracle_at(self, ts: float, segment: int | str = 0) -> OracleAllocation:
        """The oracle allocation at time ``ts`` for a segment (index or key)."""
        seg = self.segments.index(segment) if isinstance(segment, str) else int(segment)
        return self.oracle_allocation(int(self.regime_of(np.array([float(ts)]))[0]), seg)

    def oracle(self, ts: NDArray, segment_index: NDArray) -> OracleResult:
        """Oracle revenue per request [n] (and weights/floors [n, N]) at ``ts`` and segments."""
        ts = np.atleast_1d(np.asarray(ts, dtype=np.float64))
        n = len(ts)
        segment_index = np.broadcast_to(np.asarray(segment_index, dtype=np.int64), (n,))
        code = self.regime_of(ts) * self.n_segments + segment_index
        unique, inverse = np.unique(code, return_inverse=True)
        allocs = [self.oracle_allocation(*divmod(int(c), self.n_segments)) for c in unique]
        rev = np.array([a.revenue_per_request for a in allocs])
        weights = np.array([a.weights for a in allocs])
        floors = np.array([a.floors for a in allocs])
        inverse = inverse.ravel()
        return OracleResult(rev[inverse], weights[inverse], floors[inverse])

    def oracle_table(self, ts: float | None = None) -> pl.DataFrame:
        """The truth at time ``ts`` (default: the start) for humans: one row per segment and
        network with λ, value scale, best floor, its revenue and fill, and the oracle weight."""
        ts = self.scenario.start_ts if ts is None else float(ts)
        regime = int(self.regime_of(np.array([ts]))[0])
        rows = []
        for s, seg in enumerate(self.segments):
            alloc = self.oracle_allocation(regime, s)
            for j, nid in enumerate(self.placement.network_ids):
                floor, revenue, fill = self.best_floor(regime, s, j)
                rows.append(
                    {
                        "segment": seg,
                        "network": nid,
                        "auction": self.scenario.networks[j].auction,
                        "mechanisms": ",".join(self.scenario.networks[j].mechanisms),
                        "bidders": float(self._lam[regime, s, j]),
                        "value_scale": float(self._scale[regime, s, j]),
                        "best_floor_cpm": floor,
                        "best_revenue_cpm": revenue,
                        "best_fill_rate": fill,
                        "oracle_weight": float(alloc.weights[j]),
                        "oracle_floor_cpm": float(alloc.floors[j]),
                        "segment_oracle_revenue_cpm": alloc.revenue_per_request,
                    }
                )
        return pl.DataFrame(rows)
