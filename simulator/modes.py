"""Waterfall and parallel-auction runs: a policy's plans through a market, against an oracle.

A plan (:class:`bandit.policy.PlanBatch`) gives each request a tier per network (−1: not
called) and a floor per network. On the market:

* **waterfall** — tiers are called in order; the first network whose bid clears its floor
  fills and pays; tiers after it are not called;
* **auction** — the called networks bid at once; the highest bid wins and pays its bid
  (first price at the publisher's level); a network that times out (``timeout_rate``) is a
  no-bid.

Each called network's response is one outcome event of that network at its floor (filled
with what it would pay, or not), so the policy learns every tier's no-fill and every
bidder's bid, not only the winner's. What a network pays comes from :meth:`Market.pays`
(the same bids, by common random numbers, whichever policy asks).

Oracles, per market regime and segment:

* waterfall: the exact best order and floors (:func:`bandit.modes.best_waterfall`,
  exhaustive up to six networks, local search beyond) on the networks' exact fill and
  revenue curves — exact when networks bid independently given the segment (no common
  value shock), as in the waterfall scenarios;
* auction: the best called subset and floors by coordinate ascent, greedy subset and swaps
  on ``ORACLE_REQUESTS`` sampled requests (a fixed stream, so every run compares with the
  same oracle).

**QPS caps** (a network's ``qps_cap``): a network answers at most that many calls per second
of arrival time (``floor(ts)``); the calls beyond are no-bids, like time-outs. Calls are
admitted in arrival order; a waterfall's later tiers after its first tiers of the same second
(a passback comes after a round trip): tier level by tier level, only the tiers actually
reached counting. Each player (the policy, the oracle, a baseline) has its own
:class:`QpsLedger` carried across batches, so the run is deterministic for a seed. The
oracles assume a capped network is called on every request, so it answers the share
E[min(K, c)]/μ of them, K ~ Poisson(μ = requests per second of the regime)
(:meth:`Market.qps_answer_share`): the waterfall oracle scales the network's fill and revenue
by it (exact for a first tier and for an auction that always calls it; pessimistic for a
later tier, which sees fewer calls), the auction oracle drops that share of its sampled bids
(an independent coin per request: an over-cap call is a late one, whatever it would bid).
Plans are still played under the real caps, the oracle's too.

Capture is the policy's realised revenue over the oracle plan's realised revenue on the
same requests. Baselines: a static waterfall ordered by eCPM (the price paid given a fill
at the lowest floor) with each network's own best floor, and an auction with one floor for
all bidders (the best such floor, knowing the market).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import polars as pl
from numpy.typing import NDArray

from bandit import EventBatch
from bandit.modes import PRICE_POINTS, best_waterfall
from bandit.policy import PlanBatch
from simulator.auction import stream_uniform_keyed
from simulator.market import QPS_STREAM, Market, RequestBatch
from simulator.runner import RequestStream, run_seeds

#: Requests the auction oracle optimises on, and its floor grid (every 2nd candidate: 10% steps).
ORACLE_REQUESTS = 30_000
ORACLE_SEED = 20_261_202
FLOOR_STEP = 2


class Planner(Protocol):
    """What the runner needs of a policy: plans for requests, and learning from outcomes."""

    def decide_plans(self, segments, segment_index, *, rng=None) -> PlanBatch: ...

    def update(self, events, *, refresh: bool = True) -> list[str]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """One fixed plan: tiers [N] (−1: not called) and floors [N] (CPM), and its value."""

    tiers: NDArray[np.int64]
    floors: NDArray[np.float64]
    value: float


def floor_candidates(market: Market) -> NDArray[np.float64]:
    """[N, G] candidate floors per network (NaN where outside its bounds), on the policies' grid."""
    points = PRICE_POINTS[::FLOOR_STEP]
    lo = np.array([n.floor_min_cpm for n in market.placement.networks])[:, None]
    hi = np.array([n.floor_max_cpm for n in market.placement.networks])[:, None]
    out = np.where((points >= lo) & (points <= hi), points, np.nan)
    out[:, 0] = np.where(np.isnan(out[:, 0]), lo[:, 0], out[:, 0])
    return out


def pay_at(market: Market, req: RequestBatch, network: int, floors: NDArray[np.float64]) -> NDArray[np.float64]:
    """What ``network`` pays [n] for each request at its own floor ``floors`` [n]."""
    unique, inverse = np.unique(floors, return_inverse=True)
    return market.pays(req, network, unique)[np.arange(len(req)), inverse.ravel()]


class QpsLedger:
    """Calls each network has answered in the latest second of one player's run, so a QPS
    cap holds across feedback batches (module docstring)."""

    def __init__(self, caps: NDArray[np.float64]) -> None:
        self.caps = np.asarray(caps, dtype=np.float64)
        self._second = np.full(len(self.caps), -np.inf)
        self._used = np.zeros(len(self.caps), dtype=np.int64)

    @property
    def active(self) -> bool:
        return bool(np.isfinite(self.caps).any())

    def admit(self, network: int, ts: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Which of a network's calls at times ``ts`` [m] (non-decreasing seconds) it answers."""
        cap = self.caps[network]
        if not np.isfinite(cap) or not len(ts):
            return np.ones(len(ts), dtype=bool)
        second = np.floor(ts)
        start = np.flatnonzero(np.concatenate([[True], second[1:] != second[:-1]]))
        rank = np.arange(len(ts)) - np.repeat(start, np.diff(np.append(start, len(ts))))
        rank = rank + np.where(second == self._second[network], self._used[network], 0)
        admitted = rank < np.floor(cap)
        self._second[network] = second[-1]
        self._used[network] = int(min(rank[-1] + 1, np.floor(cap)))
        return admitted


def play(
    market: Market,
    req: RequestBatch,
    tiers: NDArray[np.int64],
    floors: NDArray[np.float64],
    qps: QpsLedger | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64]]:
    """Run plans on requests: (publisher revenue [n], network called [n, N], its pay [n, N]).
    ``qps``: the player's ledger of the networks' QPS caps (none: no caps)."""
    n, n_net = tiers.shape
    pay = np.zeros((n, n_net))
    for j in range(n_net):
        rows = np.flatnonzero(tiers[:, j] >= 0)
        if len(rows):
            pay[rows, j] = pay_at(market, req.take(rows), j, floors[rows, j])
    if qps is not None and qps.active:
        _over_cap_no_bids(market, req, tiers, pay, qps)
    if market.placement.mode == "waterfall":
        filled_tier = np.where((tiers >= 0) & (pay > 0), tiers, np.iinfo(np.int64).max)
        win = filled_tier.min(axis=1)
        called = (tiers >= 0) & (tiers <= win[:, None])
        revenue = np.where(tiers == win[:, None], pay, 0.0).sum(axis=1)
    else:
        called = tiers >= 0
        revenue = np.where(called, pay, 0.0).max(axis=1)
    return revenue, called, pay


def _over_cap_no_bids(
    market: Market, req: RequestBatch, tiers: NDArray[np.int64], pay: NDArray[np.float64], qps: QpsLedger
) -> None:
    """Zero ``pay`` [n, N] of the calls over their network's QPS cap (module docstring): an
    auction's calls in arrival order, a waterfall's tier level by tier level, counting only
    the tiers reached (no earlier tier filled)."""
    capped = np.flatnonzero(np.isfinite(qps.caps))
    if market.placement.mode != "waterfall":
        for j in capped:
            rows = np.flatnonzero(tiers[:, j] >= 0)
            pay[rows[~qps.admit(int(j), req.ts[rows])], j] = 0.0
        return
    filled = np.zeros(len(tiers), dtype=bool)
    for t in range(int(tiers.max(initial=-1)) + 1):
        at = tiers == t
        reached = at.any(axis=1) & ~filled
        for j in capped:
            rows = np.flatnonzero(reached & at[:, j])
            pay[rows[~qps.admit(int(j), req.ts[rows])], j] = 0.0
        net = np.argmax(at, axis=1)
        filled |= reached & (pay[np.arange(len(tiers)), net] > 0)


class Oracle:
    """Best plans per (regime, segment), cached; :meth:`revenue` plays them on requests (under
    the QPS caps, with the oracle's own ledger)."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self._plans: dict[tuple[int, int], Plan] = {}
        self._qps = QpsLedger(market.qps_cap)

    def start(self) -> None:
        """A new run from the scenario's start: the oracle's QPS ledger forgets its calls."""
        self._qps = QpsLedger(self.market.qps_cap)

    def plan(self, regime: int, segment: int) -> Plan:
        key = (regime, segment)
        if key not in self._plans:
            search = waterfall_oracle if self.market.placement.mode == "waterfall" else auction_oracle
            self._plans[key] = search(self.market, regime, segment)
        return self._plans[key]

    def plans_for(self, req: RequestBatch) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        n_net = self.market.n_networks
        tiers = np.empty((len(req), n_net), dtype=np.int64)
        floors = np.empty((len(req), n_net))
        code = req.regime * self.market.n_segments + req.segment_index
        for c in np.unique(code):
            rows = code == c
            plan = self.plan(*divmod(int(c), self.market.n_segments))
            tiers[rows], floors[rows] = plan.tiers, plan.floors
        return tiers, floors

    def revenue(self, req: RequestBatch) -> NDArray[np.float64]:
        return play(self.market, req, *self.plans_for(req), qps=self._qps)[0]


def _exact_curves(market: Market, regime: int, segment: int) -> tuple[NDArray, NDArray, NDArray]:
    """Exact fill and revenue per call [N, G] at the candidate floors [N, G] (time-outs included,
    and QPS caps as the oracles assume them: module docstring)."""
    cand = floor_candidates(market)
    fill, revenue = np.zeros(cand.shape), np.zeros(cand.shape)
    under_cap = market.qps_answer_share(regime)
    for j in range(market.n_networks):
        ok = ~np.isnan(cand[j])
        r, f = market.curve(regime, segment, j)(cand[j, ok])
        answer = (1.0 - market._timeout[j]) * under_cap[j]
        revenue[j, ok], fill[j, ok] = r * answer, f * answer
    return cand, fill, revenue


def waterfall_oracle(market: Market, regime: int, segment: int) -> Plan:
    cand, fill, revenue = _exact_curves(market, regime, segment)
    allowed = ~np.isnan(cand)
    order, index, value = best_waterfall(fill[None], revenue[None], allowed, market.placement.depth)
    tiers = np.full(market.n_networks, -1, dtype=np.int64)
    floors = np.zeros(market.n_networks)
    for t, j in enumerate(order[0]):
        tiers[j], floors[j] = t, cand[j, index[0, t]]
    return Plan(tiers, floors, float(value[0]))


def oracle_requests(market: Market, regime: int, segment: int, n: int = ORACLE_REQUESTS) -> RequestBatch:
    """A fixed sample of requests in one regime and segment (for auction truth)."""
    req = market.requests(n, ORACLE_SEED)
    return dataclasses.replace(
        req, segment_index=np.full(n, segment, dtype=np.int64), regime=np.full(n, regime, dtype=np.int64)
    )


def sampled_pays(market: Market, req: RequestBatch) -> tuple[NDArray, NDArray]:
    """(candidate floors [N, G], pays [n, N, G]; −1 where a floor is outside the bounds); a
    capped network's bids dropped on the share of requests over its cap (module docstring;
    ``req`` of one regime)."""
    cand = floor_candidates(market)
    pays = np.full((len(req), *cand.shape), -1.0)
    under_cap = market.qps_answer_share(int(req.regime[0])) if len(req) else np.ones(market.n_networks)
    for j in range(market.n_networks):
        ok = ~np.isnan(cand[j])
        pays[:, j, ok] = market.pays(req, j, cand[j, ok])
        if under_cap[j] < 1.0:
            over = stream_uniform_keyed(req.key, np.uint64(QPS_STREAM) + np.uint64(j)) >= under_cap[j]
            pays[over, j, :] = np.where(ok, 0.0, -1.0)
    return cand, pays


def best_sampled_auction(pays: NDArray[np.float64], max_calls: int, sweeps: int = 8) -> tuple[NDArray, NDArray, float]:
    """Called networks [N], floor indices [N] and value maximising the mean highest pay over
    sampled requests ``pays`` [n, N, G] (−1: floor not allowed): coordinate ascent on floors
    from each network's own best floor, greedy subset under ``max_calls``, then swaps."""
    n, n_net, _ = pays.shape
    own = pays.mean(axis=0)  # [N, G]; −1 columns never win
    solo = np.argmax(own, axis=1)

    def response(j: int, others: NDArray) -> tuple[int, float]:
        values = np.maximum(others[:, None], pays[:, j, :]).mean(axis=0)
        values[pays[0, j, :] < 0] = -np.inf
        g = int(np.argmax(values))
        return g, float(values[g])

    def others_max(called: NDArray, floors: NDArray, skip: int) -> NDArray:
        cols = [pays[:, j, floors[j]] for j in range(n_net) if called[j] and j != skip]
        return np.max(np.stack(cols, axis=1), axis=1) if cols else np.zeros(n)

    def ascend(called: NDArray, floors: NDArray) -> tuple[NDArray, float]:
        floors = floors.copy()
        value = 0.0
        for _ in range(sweeps):
            moved = False
            for j in np.flatnonzero(called):
                g, value = response(j, others_max(called, floors, j))
                moved |= g != floors[j]
                floors[j] = g
            if not moved:
                break
        return floors, value

    cap = max_calls or n_net
    called = np.zeros(n_net, dtype=bool)
    floors = solo.copy()
    while called.sum() < min(cap, n_net):
        gains = [(-np.inf, 0) if called[j] else response(j, others_max(called, floors, j))[::-1] for j in range(n_net)]
        j = int(np.argmax([g for g, _ in gains]))
        called[j], floors[j] = True, gains[j][1]
    floors, value = ascend(called, floors)
    if cap < n_net:
        improved = True
        while improved:
            improved = False
            for i in np.flatnonzero(called):
                for j in np.flatnonzero(~called):
                    trial = called.copy()
                    trial[i] = False
                    g, v = response(j, others_max(trial, floors, j))
                    if v > value + 1e-9:  # j at its best response beats i: take it, re-ascend
                        trial[j] = True
                        start = floors.copy()
                        start[j] = g
                        floors, value = ascend(trial, start)
                        called, improved = trial, True
                        break
                if improved:
                    break
    return called, floors, value


def auction_oracle(market: Market, regime: int, segment: int) -> Plan:
    cand, pays = sampled_pays(market, oracle_requests(market, regime, segment))
    called, index, value = best_sampled_auction(pays, market.placement.depth)
    tiers = np.where(called, 0, -1).astype(np.int64)
    floors = np.where(called, cand[np.arange(market.n_networks), index], 0.0)
    return Plan(tiers, floors, value)


# ------------------------------------------------------------------------------ baselines
class FixedPlans:
    """A planner that always plays the same plan per segment index (a baseline); learns nothing."""

    def __init__(self, market: Market, plans: dict[int, Plan], version: str) -> None:
        self.market, self.plans, self.version = market, plans, version

    def decide_plans(self, segments, segment_index, *, rng=None) -> PlanBatch:
        plans = [self.plans[self.market.segments.index(s)] for s in segments]
        tiers = np.array([p.tiers for p in plans])[segment_index]
        floors = np.array([p.floors for p in plans])[segment_index]
        return PlanBatch(tiers, floors, np.ones(len(segment_index)), tuple(segments), segment_index, self.version)

    def update(self, events, *, refresh: bool = True) -> list[str]:
        return []


def ecpm_waterfall(market: Market, regime: int = 0) -> FixedPlans:
    """The ad-ops waterfall: networks ordered by their historical eCPM (the price paid per
    fill at the lowest floor, known exactly here), each tier floored at that eCPM, as
    mediation waterfalls are priced (a tier is asked for what it usually pays)."""
    plans = {}
    for s in range(market.n_segments):
        cand, fill, revenue = _exact_curves(market, regime, s)
        lowest = np.nanargmin(cand, axis=1)
        rows = np.arange(market.n_networks)
        ecpm = revenue[rows, lowest] / np.maximum(fill[rows, lowest], 1e-12)
        order = np.argsort(-ecpm, kind="stable")[: market.placement.depth]
        tiers = np.full(market.n_networks, -1, dtype=np.int64)
        tiers[order] = np.arange(len(order))
        lo = np.array([n.floor_min_cpm for n in market.placement.networks])
        hi = np.array([n.floor_max_cpm for n in market.placement.networks])
        plans[s] = Plan(tiers, np.where(tiers >= 0, np.clip(ecpm, lo, hi), 0.0), float("nan"))
    return FixedPlans(market, plans, "ecpm_waterfall")


def unified_floor_auction(market: Market, regime: int = 0) -> FixedPlans:
    """One floor for every bidder (the best such floor, knowing the market); under a call cap
    the networks with the highest revenue on their own are called."""
    plans = {}
    for s in range(market.n_segments):
        cand, pays = sampled_pays(market, oracle_requests(market, regime, s))
        own = pays.max(axis=2).mean(axis=0)
        called = np.zeros(market.n_networks, dtype=bool)
        called[np.argsort(-own)[: market.placement.depth]] = True
        points = PRICE_POINTS[::FLOOR_STEP]
        # A network's pay at the shared floor points[g] (0 where that floor is outside its bounds).
        at_point = np.where((cand == points[None, :])[None], pays, 0.0)[:, called]  # [n, called, G]
        values = at_point.max(axis=1).mean(axis=0)
        g = int(np.argmax(values))
        best, best_floor = float(values[g]), float(points[g])
        lo = np.array([n.floor_min_cpm for n in market.placement.networks])
        hi = np.array([n.floor_max_cpm for n in market.placement.networks])
        tiers = np.where(called, 0, -1).astype(np.int64)
        plans[s] = Plan(tiers, np.where(called, np.clip(best_floor, lo, hi), 0.0), best)
    return FixedPlans(market, plans, "unified_floor")


@functools.cache
def scenario_setup(scenario: str) -> tuple[Market, Oracle, FixedPlans]:
    """A waterfall or auction scenario's market, its oracle and the ad-ops baseline (an eCPM
    waterfall, or an auction with one unified floor), once per scenario and process."""
    market = Market(scenario)
    oracle = Oracle(market)
    baseline = ecpm_waterfall(market) if market.placement.mode == "waterfall" else unified_floor_auction(market)
    return market, oracle, baseline


# ------------------------------------------------------------------------------ runner
def run_plans(
    policy: Planner,
    market: Market,
    n_requests: int,
    *,
    seed: int | np.random.SeedSequence,
    batch_size: int = 2000,
    oracle: Oracle | None = None,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> pl.DataFrame:
    """Drive a waterfall or auction ``policy`` through ``n_requests`` requests; one row per
    feedback batch: ``requests``, ``revenue`` (realised, CPM summed), ``oracle_revenue``
    (the oracle's plans on the same requests), ``capture``, ``cumulative_capture``,
    ``calls`` (networks called) and ``fills``."""
    if market.placement.mode == "single":
        raise ValueError(f"scenario {market.scenario.name!r} is single-network: use simulator.runner.run")
    seeds = run_seeds(seed)
    stream = RequestStream(market, np.random.default_rng(seeds.market))
    decide_rng = np.random.default_rng(seeds.decisions)
    oracle = oracle or Oracle(market)
    oracle.start()
    qps = QpsLedger(market.qps_cap)  # this run's own: the policy's calls against the caps
    rows: list[dict[str, Any]] = []
    done, cum_rev, cum_oracle = 0, 0.0, 0.0
    while done < n_requests:
        req = stream.take(min(batch_size, n_requests - done))
        plans = policy.decide_plans(req.segments, req.segment_index, rng=decide_rng)
        revenue, called, pay = play(market, req, plans.tiers, plans.floor_cpm, qps)
        oracle_revenue = oracle.revenue(req)
        r, j = np.nonzero(called)
        events = EventBatch.from_arrays(
            market.placement,
            segments=req.segments,
            segment_index=req.segment_index[r],
            network=j,
            floor_cpm=plans.floor_cpm[r, j],
            filled=pay[r, j] > 0,
            revenue_cpm=pay[r, j],
            ts=req.ts[r],
        )
        policy.update(events)
        done += len(req)
        cum_rev += float(revenue.sum())
        cum_oracle += float(oracle_revenue.sum())
        row = {
            "requests_total": done,
            "requests": len(req),
            "revenue": float(revenue.sum()),
            "oracle_revenue": float(oracle_revenue.sum()),
            "capture": float(revenue.sum() / max(oracle_revenue.sum(), 1e-12)),
            "cumulative_capture": cum_rev / max(cum_oracle, 1e-12),
            "calls": int(called.sum()),
            "fills": int((revenue > 0).sum()),
        }
        rows.append(row)
        if on_batch is not None:
            on_batch(row)
    return pl.DataFrame(rows)


def last_share_capture(frame: pl.DataFrame, share: float = 0.2) -> float:
    """Capture over the last ``share`` of the requests."""
    tail = frame.filter(pl.col("requests_total") > frame["requests_total"].max() * (1 - share))
    return float(tail["revenue"].sum() / max(tail["oracle_revenue"].sum(), 1e-12))
