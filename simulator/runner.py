"""In-process runner: drives any :class:`bandit.Policy` through a market, with delayed feedback.

Requests arrive; the policy decides each feedback batch with the tables it has; the
market samples outcomes; at the end of the batch (every ``batch_size`` requests or every
``batch_seconds`` of simulated time) the outcomes go back through ``policy.update``.
One trajectory row per feedback batch (or per ``record_every`` requests) records
realised revenue, the exact expected revenue of the decisions, the oracle's revenue on
the same requests, capture, and per-network traffic share and mean floor.

Seeds: one run seed (an int or a :class:`numpy.random.SeedSequence`) derives three
independent streams — the market's requests, the policy's decision draws, and the
policy's own seed — so runs of different policies on the same seed see identical
requests and bids (common random numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from bandit import ALL_SEGMENTS, EventBatch, Policy, make_policy
from bandit.policy import DecisionBatch
from simulator.market import CapLedger, Market, Outcome, RequestBatch

_MARKET, _DECISIONS, _POLICY = 0, 1, 2


@dataclass(frozen=True, slots=True)
class RunSeeds:
    """The independent random streams of one run."""

    market: np.random.SeedSequence
    decisions: np.random.SeedSequence
    policy: int


def run_seeds(seed: int | np.random.SeedSequence) -> RunSeeds:
    """Derive a run's streams from its seed without mutating it (same seed → same streams)."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    child = lambda i: np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, i))  # noqa: E731
    policy_seed = int(child(_POLICY).generate_state(1, dtype=np.uint32)[0])
    return RunSeeds(child(_MARKET), child(_DECISIONS), policy_seed)


def build_policy(
    name: str,
    market: Market,
    params: dict[str, Any] | None = None,
    *,
    seed: int | np.random.SeedSequence = 0,
) -> Policy:
    """``bandit.make_policy(name, market.placement, seed=<from the run seed>, **params)``."""
    params = dict(params or {})
    params.setdefault("seed", run_seeds(seed).policy)
    return make_policy(name, market.placement, **params)


class RequestStream:
    """Consecutive requests of one run, handed out by count or up to a time.

    Requests are generated in chunks from the market's random stream and buffered, so
    how the stream is cut into batches does not change the requests.
    """

    def __init__(self, market: Market, rng: np.random.Generator, start_ts: float | None = None) -> None:
        self.market = market
        self.rng = rng
        self.last_ts = market.scenario.start_ts if start_ts is None else float(start_ts)
        self._buffer: RequestBatch | None = None

    def _grow(self, n: int) -> None:
        new = self.market.requests(n, self.rng, start_ts=self.last_ts)
        self.last_ts = float(new.ts[-1])
        self._buffer = (
            new if self._buffer is None or not len(self._buffer) else RequestBatch.concat([self._buffer, new])
        )

    def _pop(self, n: int) -> RequestBatch:
        out = self._buffer.take(slice(0, n))
        self._buffer = self._buffer.take(slice(n, None))
        return out

    def take(self, n: int) -> RequestBatch:
        """The next ``n`` requests."""
        have = 0 if self._buffer is None else len(self._buffer)
        if have < n:
            self._grow(n - have)
        return self._pop(n)

    def until(self, ts_end: float, limit: int) -> RequestBatch:
        """The next requests arriving before ``ts_end`` (at most ``limit``)."""
        rate = self.market.scenario.requests_per_hour / 3600.0
        while (
            self._buffer is None
            or not len(self._buffer)
            or (self._buffer.ts[-1] < ts_end and len(self._buffer) < limit)
        ):
            gap = max(ts_end - self.last_ts, 0.0)
            self._grow(int(min(limit, 1.5 * rate * gap)) + 64)
        n = int(np.searchsorted(self._buffer.ts, ts_end, side="left"))
        return self._pop(min(n, limit))


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """Everything about one feedback batch, for callbacks (logging for OPE, CRN checks)."""

    requests: RequestBatch
    decisions: DecisionBatch
    outcome: Outcome
    expected_revenue: NDArray[np.float64]
    oracle_revenue: NDArray[np.float64]
    #: Each request's network at its best floor (:meth:`Market.network_best`).
    network_best_revenue: NDArray[np.float64]


class _Recorder:
    """Accumulates batches into trajectory rows of at least ``every`` requests."""

    def __init__(self, market: Market, every: int | None, start_ts: float) -> None:
        self.ids = market.placement.network_ids
        self.every = every or 1
        self.start_ts = start_ts
        self.rows: list[dict[str, Any]] = []
        self.total = 0
        self.cum_expected = 0.0
        self.cum_oracle = 0.0
        self._open: dict[str, Any] | None = None

    def add(self, rec: BatchRecord, model_version: str, change_alarms: int = 0) -> None:
        n_net = len(self.ids)
        net = rec.decisions.network
        row = self._open or {
            "ts_start": float(rec.requests.ts[0]),
            "requests": 0,
            "fills": 0,
            "revenue": 0.0,
            "expected_revenue": 0.0,
            "oracle_revenue": 0.0,
            "network_best_revenue": 0.0,
            "count": np.zeros(n_net),
            "floor_sum": np.zeros(n_net),
        }
        row["requests"] += len(net)
        row["fills"] += int(rec.outcome.filled.sum())
        row["revenue"] += float(rec.outcome.revenue.sum())
        row["expected_revenue"] += float(rec.expected_revenue.sum())
        row["oracle_revenue"] += float(rec.oracle_revenue.sum())
        row["network_best_revenue"] += float(rec.network_best_revenue.sum())
        row["count"] += np.bincount(net, minlength=n_net)
        row["floor_sum"] += np.bincount(net, weights=rec.decisions.floor_cpm, minlength=n_net)
        row["ts"] = float(rec.requests.ts[-1])
        row["model_version"] = model_version
        row["change_alarms"] = change_alarms
        self._open = row
        if row["requests"] >= self.every:
            self.flush()

    def flush(self) -> None:
        row = self._open
        if row is None:
            return
        self._open = None
        self.total += row["requests"]
        self.cum_expected += row["expected_revenue"]
        self.cum_oracle += row["oracle_revenue"]
        count, floor_sum = row.pop("count"), row.pop("floor_sum")
        out = {
            "row": len(self.rows),
            "ts": row["ts"],
            "hour": (row["ts"] - self.start_ts) / 3600.0,
            "requests": row["requests"],
            "requests_total": self.total,
            "fills": row["fills"],
            "revenue": row["revenue"],
            "expected_revenue": row["expected_revenue"],
            "oracle_revenue": row["oracle_revenue"],
            "network_best_revenue": row["network_best_revenue"],
            "capture": _ratio(row["expected_revenue"], row["oracle_revenue"]),
            "cumulative_capture": _ratio(self.cum_expected, self.cum_oracle),
            "model_version": row["model_version"],
            "change_alarms": row["change_alarms"],
        }
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_floor = np.where(count > 0, floor_sum / count, np.nan)
        for j, nid in enumerate(self.ids):
            out[f"share_{nid}"] = float(count[j] / row["requests"])
        for j, nid in enumerate(self.ids):
            out[f"floor_{nid}"] = float(mean_floor[j])
        self.rows.append(out)

    def frame(self) -> pl.DataFrame:
        self.flush()
        return pl.DataFrame(self.rows, infer_schema_length=None)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def run(
    policy: Policy,
    market: Market,
    n_requests: int,
    *,
    seed: int | np.random.SeedSequence,
    batch_size: int = 2000,
    batch_seconds: float | None = None,
    record_every: int | None = None,
    start_ts: float | None = None,
    on_batch: Callable[[BatchRecord], None] | None = None,
    progress: bool = False,
    refresh_segments: Collection[str] | None = None,
) -> pl.DataFrame:
    """Drive ``policy`` through ``n_requests`` requests of ``market``; return the trajectory.

    Feedback is delayed by one batch: ``batch_size`` requests, or, when ``batch_seconds``
    is given, all requests of that much simulated time. The trajectory has one row per
    batch (or per ``record_every`` requests): ``ts``, ``hour``, ``requests``,
    ``requests_total``, ``fills``, ``revenue`` (realised), ``expected_revenue`` (exact
    expectation of the decisions), ``oracle_revenue``, ``network_best_revenue`` (the
    decisions' networks at their best floors; sums in CPM over the row's requests),
    ``capture``, ``cumulative_capture``, ``model_version``, ``change_alarms`` (changes the
    policy's detector has declared so far, 0 without one), ``share_<network>`` and
    ``floor_<network>`` (mean floor given, NaN without traffic).

    ``refresh_segments`` (default: all) limits the tables rebuilt after a batch to these
    segments (the placement's table is always rebuilt); other segments keep being served
    by the table they had, or by the placement's, while all their events are learned. A
    market of thousands of segments then costs what the segments followed cost.
    """
    if n_requests < 0 or batch_size < 1 or (batch_seconds is not None and not batch_seconds > 0):
        raise ValueError("need n_requests >= 0, batch_size >= 1 and batch_seconds > 0")
    seeds = run_seeds(seed)
    stream = RequestStream(market, np.random.default_rng(seeds.market), start_ts)
    decide_rng = np.random.default_rng(seeds.decisions)
    ledger = CapLedger()
    placement = market.placement
    recorder = _Recorder(market, record_every, stream.last_ts)
    bar = _progress(n_requests) if progress else None
    boundary = stream.last_ts
    done = 0
    while done < n_requests:
        if batch_seconds is None:
            req = stream.take(min(batch_size, n_requests - done))
        else:
            boundary += batch_seconds
            req = stream.until(boundary, n_requests - done)
            if not len(req):
                continue
        db = policy.decide_indexed(req.segments, req.segment_index, rng=decide_rng)
        out = market.sample(req, db.network, db.floor_cpm, ledger)
        expected, _ = market.expected(req.ts, req.segment_index, db.network, db.floor_cpm)
        expected = expected * out.available
        oracle = market.oracle(req.ts, req.segment_index).revenue
        network_best = market.network_best(req.ts, req.segment_index, db.network) * out.available
        events = EventBatch.from_arrays(
            placement,
            segments=req.segments,
            segment_index=req.segment_index,
            network=db.network,
            floor_cpm=db.floor_cpm,
            filled=out.filled,
            revenue_cpm=out.revenue,
            ts=req.ts,
        )
        if refresh_segments is None:
            policy.update(events)
        else:
            touched = policy.update(events, refresh=False)
            policy.refresh([seg for seg in touched if seg in refresh_segments])
        record = BatchRecord(req, db, out, expected, oracle, network_best)
        recorder.add(record, db.model_version, int(getattr(policy, "changes_detected", 0)))
        if on_batch is not None:
            on_batch(record)
        done += len(req)
        if bar is not None:
            bar.update(len(req))
    if bar is not None:
        bar.close()
    return recorder.frame()


class SegmentCapture:
    """An ``on_batch`` callback summing, per segment, the expected revenue of the decisions
    made and the oracle's on the same requests: :meth:`capture` is each segment's capture
    over the run (what its traffic earned while the policy learned)."""

    def __init__(self, market: Market) -> None:
        self.expected = np.zeros(market.n_segments)
        self.oracle = np.zeros(market.n_segments)
        self._index = {seg: i for i, seg in enumerate(market.segments)}

    def __call__(self, record: BatchRecord) -> None:
        # Requests carry the market's own segment indexes.
        seg = record.requests.segment_index
        n = len(self.expected)
        self.expected += np.bincount(seg, weights=record.expected_revenue, minlength=n)
        self.oracle += np.bincount(seg, weights=record.oracle_revenue, minlength=n)

    def capture(self, segment: str) -> float:
        i = self._index[segment]
        return _ratio(float(self.expected[i]), float(self.oracle[i]))


def table_report(
    policy: Policy,
    market: Market,
    segments: Sequence[str],
    *,
    ts: float | None = None,
    n_decisions: int = 4096,
    seed: int = 0,
    during: SegmentCapture | None = None,
) -> pl.DataFrame:
    """How good each segment's current decision table is, against the oracle at time ``ts``
    (default: the scenario's start), one row per segment.

    ``capture`` is the exact expected revenue per request of the table's decisions (a
    Monte Carlo average over ``n_decisions`` decisions drawn from it, each valued exactly)
    over the oracle's; ``oracle_network`` the oracle's best network, ``weight_best`` the
    table's weight on it; per network ``weight_<id>`` and ``floor_<id>`` (the table's
    median floor) next to ``oracle_floor_<id>`` (the network's best floor); ``requests``
    the (discounted) requests learned in the segment; ``pooled_capture`` the capture the
    placement's table would have in the segment (how far its own optimum is from the pool's);
    with ``during`` (the run's :class:`SegmentCapture`), ``run_capture`` the segment's
    capture over the run.
    """
    ts = market.scenario.start_ts if ts is None else float(ts)
    ids = market.placement.network_ids
    rng = np.random.default_rng(seed)
    rows = []
    at = np.full(n_decisions, ts)
    for seg in segments:
        s = market.segments.index(seg)
        db = policy.decide_indexed((seg,), np.zeros(n_decisions, dtype=np.int64), rng=rng)
        revenue, _ = market.expected(at, s, db.network, db.floor_cpm)
        pooled = policy.decide_indexed((ALL_SEGMENTS,), np.zeros(n_decisions, dtype=np.int64), rng=rng)
        pooled_revenue, _ = market.expected(at, s, pooled.network, pooled.floor_cpm)
        oracle = market.oracle_at(ts, s)
        best = int(np.argmax(oracle.revenue))
        alloc = policy.allocation(seg)
        row: dict[str, Any] = {
            "segment": seg,
            "share": market.scenario.segments[s].share,
            "requests": alloc.effective_events,
            "capture": float(revenue.mean()) / oracle.revenue_per_request,
            "pooled_capture": float(pooled_revenue.mean()) / oracle.revenue_per_request,
            "run_capture": during.capture(seg) if during is not None else math.nan,
            "oracle_network": ids[best],
            "weight_best": alloc.networks[best].weight,
        }
        for j, nid in enumerate(ids):
            row[f"weight_{nid}"] = alloc.networks[j].weight
            row[f"floor_{nid}"] = alloc.networks[j].floor_cpm
            row[f"oracle_floor_{nid}"] = float(oracle.floors[j])
        rows.append(row)
    return pl.DataFrame(rows)


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="req", unit_scale=True)


def capture(
    trajectory: pl.DataFrame,
    *,
    last: int | None = None,
    start: int | None = None,
    stop: int | None = None,
) -> float:
    """Expected revenue / oracle revenue over a range of requests of a trajectory.

    ``last=50_000`` takes the final 50,000 requests; ``start``/``stop`` give a request
    range ``[start, stop)``. Rows are whole batches: a row counts when it lies inside the
    range, so the range is rounded inward to row boundaries.
    """
    rows = _window(trajectory, last=last, start=start, stop=stop)
    return _ratio(float(rows["expected_revenue"].sum()), float(rows["oracle_revenue"].sum()))


def _window(
    trajectory: pl.DataFrame, *, last: int | None = None, start: int | None = None, stop: int | None = None
) -> pl.DataFrame:
    """The rows of a trajectory inside a range of requests (whole rows, rounded inward)."""
    total = int(trajectory["requests_total"].max()) if trajectory.height else 0
    lo = total - last if last is not None else (start or 0)
    hi = stop if stop is not None else total
    first = pl.col("requests_total") - pl.col("requests")
    return trajectory.filter((first >= lo) & (pl.col("requests_total") <= hi))


def regret_split(
    trajectory: pl.DataFrame, *, last: int | None = None, start: int | None = None, stop: int | None = None
) -> tuple[float, float]:
    """Where the oracle revenue a trajectory missed went, as shares of the oracle's over a
    range of requests (``last`` / ``start`` / ``stop`` as in :func:`capture`): (network, floor)
    — traffic sent to networks worse than the oracle's allocation, and floors worse than each
    chosen network's best. The two add up to 1 − capture."""
    rows = _window(trajectory, last=last, start=start, stop=stop)
    oracle = float(rows["oracle_revenue"].sum())
    best = float(rows["network_best_revenue"].sum())
    return _ratio(oracle - best, oracle), _ratio(best - float(rows["expected_revenue"].sum()), oracle)


def summarize(trajectory: pl.DataFrame) -> dict[str, float]:
    """Totals of a trajectory: requests, revenue (realised / expected / oracle) and capture."""
    req = int(trajectory["requests"].sum()) if trajectory.height else 0
    exp = float(trajectory["expected_revenue"].sum()) if req else 0.0
    orc = float(trajectory["oracle_revenue"].sum()) if req else 0.0
    rev = float(trajectory["revenue"].sum()) if req else 0.0
    return {
        "requests": req,
        "revenue_per_request": rev / req if req else math.nan,
        "expected_revenue_per_request": exp / req if req else math.nan,
        "oracle_revenue_per_request": orc / req if req else math.nan,
        "capture": _ratio(exp, orc),
        "fill_rate": float(trajectory["fills"].sum()) / req if req else math.nan,
    }
