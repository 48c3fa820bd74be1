"""Off-policy evaluation: a candidate policy's revenue per request from logged decisions.

Each logged request carries the action taken — network and floor — with its logging
propensity ``μ = propensity · floor_propensity`` (P(network) · P(floor bin | network)) and
its reward (revenue in CPM, 0 for a no-fill). The candidate's probability ``π`` of the same
action comes from its decision table for the request's segment
(:meth:`bandit.Policy.table`): ``weights[n] · Σ_m floor_probs[n, m] · [bin(floors[n, m]) =
bin(floor)]`` with bins from :func:`bandit.stats.price_bin` — floors in the same statistics
bin count as the same action, exactly as the logging ``floor_propensity`` does.

Estimators (``w = π / μ``, ``r`` the reward, all means over the n logged requests):

* ``ips``   — ``mean(w r)``: unbiased when the logger covers the candidate's actions.
* ``snips`` — ``Σ w r / Σ w``: self-normalised, lower variance, slightly biased.
* ``dr``    — doubly robust, ``mean(Σ_a π(a) q̂(a) + w (r - q̂(a_i)))``, with a reward model
  ``q̂(segment, network, floor bin)`` of cell means shrunk towards (network, floor bin) and
  network means, fitted by 2-fold cross-fitting (each row is scored by the model of the
  other fold, so the model's errors do not correlate with the row's own noise).

Each estimate gets a 95% normal interval from the per-request influence terms. The
candidate must be *fixed* while it is evaluated (its table is read once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit.errors import InvalidOutcome
from bandit.events import reindex_segments
from bandit.policy import Policy
from bandit.stats import N_BINS, log_price, price_bin
from bandit.types import ALL_SEGMENTS, PlacementConfig

Z_95 = 1.959963984540054
#: Pseudo-count of the reward model's shrinkage towards the coarser cell mean.
SHRINKAGE = 10.0
ESTIMATORS = ("ips", "snips", "dr")
_PROPENSITIES = ("propensity", "floor_propensity")


@dataclass(frozen=True, slots=True)
class LoggedDecisions:
    """Logged requests of one placement, arrays of shape [n].

    ``segment_index`` indexes ``segments``; ``network`` indexes the placement's networks;
    ``propensity`` is P(network) and ``floor_propensity`` P(floor bin | network) under the
    logging policy; ``reward`` is revenue per request (CPM, 0 when not filled).
    """

    segments: tuple[str, ...]
    segment_index: NDArray[np.int64]
    network: NDArray[np.int64]
    floor_cpm: NDArray[np.float64]
    propensity: NDArray[np.float64]
    floor_propensity: NDArray[np.float64]
    reward: NDArray[np.float64]

    def __post_init__(self) -> None:
        n = len(self.network)
        for name in ("segment_index", "floor_cpm", "propensity", "floor_propensity", "reward"):
            if len(getattr(self, name)) != n:
                raise InvalidOutcome(f"column {name} has {len(getattr(self, name))} rows, expected {n}")
        mu = self.propensity * self.floor_propensity
        bad = ~np.isfinite(mu) | (mu <= 0) | (self.propensity > 1 + 1e-9) | (self.floor_propensity > 1 + 1e-9)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InvalidOutcome(
                f"row {row}: propensity and floor_propensity must lie in (0, 1] ({int(bad.sum())} bad rows)"
            )
        if (~np.isfinite(self.reward) | (self.reward < 0)).any():
            raise InvalidOutcome("reward must be finite and >= 0 CPM")

    def __len__(self) -> int:
        return len(self.network)

    @property
    def logging_probability(self) -> NDArray[np.float64]:
        """μ [n]: probability the logger gave the logged (network, floor bin)."""
        return self.propensity * self.floor_propensity

    @property
    def floor_bin(self) -> NDArray[np.int64]:
        return price_bin(log_price(self.floor_cpm))

    @classmethod
    def concat(cls, parts: Sequence[LoggedDecisions]) -> LoggedDecisions:
        keys, index = reindex_segments([(p.segments, p.segment_index) for p in parts])
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return cls(
            keys,
            index,
            cat("network"),
            cat("floor_cpm"),
            cat("propensity"),
            cat("floor_propensity"),
            cat("reward"),
        )

    @classmethod
    def from_frame(cls, placement: PlacementConfig, frame: Any) -> LoggedDecisions:
        """From a polars frame of logged events.

        Columns: ``network`` (id, or index into the placement's networks), ``floor_cpm``,
        ``propensity``, ``floor_propensity``, the reward as ``reward`` or as
        ``revenue_cpm`` (+ ``filled``), and the segment as ``segment`` or derived from
        ``context`` by the placement's ``segment_by`` (then ``filled`` and ``ts`` are needed
        too, as for any outcome log). Rows of other placements, and rows without
        propensities, are skipped. The service's outcome archive (``state/outcomes/*.parquet``)
        has exactly these columns.
        """
        import polars as pl

        from bandit.io import batch_from_frame

        if isinstance(frame, pl.LazyFrame):
            frame = frame.collect()
        if "placement" in frame.columns:
            frame = frame.filter(pl.col("placement") == placement.id)
        missing = [c for c in ("network", "floor_cpm", *_PROPENSITIES) if c not in frame.columns]
        if "reward" not in frame.columns and "revenue_cpm" not in frame.columns:
            missing.append("reward (or revenue_cpm)")
        if missing:
            raise InvalidOutcome(f"logged decisions lack columns {missing}")
        # Events whose decision's propensities are unknown (NaN/null in the service's outcome
        # archive: decided before a restart or by another system) cannot be weighted: skip them.
        known = pl.all_horizontal(pl.col(c).is_not_null() & pl.col(c).is_not_nan() for c in _PROPENSITIES)
        frame = frame.with_columns(pl.col(c).cast(pl.Float64) for c in _PROPENSITIES).filter(known)
        if frame["floor_cpm"].null_count():
            raise InvalidOutcome(f"column floor_cpm has {frame['floor_cpm'].null_count()} missing values")
        if "segment" in frame.columns:
            segment = frame["segment"].cast(pl.String).fill_null(ALL_SEGMENTS)
            keys = segment.unique(maintain_order=True)
            seg_index = segment.replace_strict(keys, pl.int_range(len(keys), eager=True), return_dtype=pl.Int64)
            segments, seg_index = tuple(keys.to_list()), seg_index.to_numpy()
            network = _network_codes(placement, frame["network"])
        else:
            batch = batch_from_frame(placement, frame)
            segments, seg_index, network = batch.segments, batch.segment_index, batch.network
        if "reward" in frame.columns:
            reward = frame["reward"].cast(pl.Float64).fill_null(0.0).to_numpy()
        else:
            reward = frame["revenue_cpm"].cast(pl.Float64).fill_null(0.0).to_numpy()
            if "filled" in frame.columns:
                reward = np.where(frame["filled"].fill_null(False).to_numpy(), reward, 0.0)
        return cls(
            segments,
            np.asarray(seg_index, dtype=np.int64),
            np.asarray(network, dtype=np.int64),
            frame["floor_cpm"].cast(pl.Float64).to_numpy(),
            frame["propensity"].cast(pl.Float64).to_numpy(),
            frame["floor_propensity"].cast(pl.Float64).to_numpy(),
            reward,
        )


def _network_codes(placement: PlacementConfig, column: Any) -> NDArray[np.int64]:
    """Network indexes from a column of network ids (strings) or indexes (integers)."""
    import polars as pl

    n = len(placement.networks)
    if column.dtype.is_integer():
        codes = column.cast(pl.Int64).fill_null(-1).to_numpy()
        if ((codes < 0) | (codes >= n)).any():
            raise InvalidOutcome(f"network index must be in [0, {n})")
        return codes
    codes = column.cast(pl.String).replace_strict(
        {nid: i for i, nid in enumerate(placement.network_ids)}, default=-1, return_dtype=pl.Int64
    )
    if (codes < 0).any():
        placement.network_index(str(column.filter(codes < 0)[0]))  # raises UnknownNetwork
    return codes.to_numpy()


@dataclass(frozen=True, slots=True)
class OPEEstimate:
    """One estimator's revenue per request (CPM) with its 95% interval.

    ``ess`` is the effective sample size of the importance weights, ``(Σw)² / Σw²``: far
    below ``n`` means few logged requests look like the candidate's, so trust it less.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    se: float
    n: int
    ess: float

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "se": self.se,
            "n": self.n,
            "ess": self.ess,
        }


def action_probabilities(policy: Policy, segments: Sequence[str]) -> NDArray[np.float64]:
    """Candidate's P(network, floor bin) per segment, shape [S, N, B] (each [N, B] sums to 1)."""
    n_net = len(policy.placement.networks)
    out = np.zeros((len(segments), n_net, N_BINS))
    for s, seg in enumerate(segments):
        table = policy.table(seg)
        bins = price_bin(log_price(table.floors))  # [N, M]
        joint = table.weights[:, None] * table.floor_probs  # [N, M]
        rows = np.broadcast_to(np.arange(n_net)[:, None], bins.shape)
        np.add.at(out[s], (rows, bins), joint)
    return out


def reward_model(
    logs: LoggedDecisions, rows: NDArray[np.int64], n_networks: int, shrinkage: float = SHRINKAGE
) -> NDArray[np.float64]:
    """Reward estimate q̂ [S, N, B] from the logged ``rows``: cell means of (segment, network,
    floor bin), shrunk with ``shrinkage`` pseudo-requests towards the (network, floor bin)
    mean, itself shrunk towards the network mean, itself towards the overall mean."""
    n_seg = len(logs.segments)
    cell = (logs.segment_index[rows] * n_networks + logs.network[rows]) * N_BINS + logs.floor_bin[rows]
    size = n_seg * n_networks * N_BINS
    r = logs.reward[rows]
    count = np.bincount(cell, minlength=size).reshape(n_seg, n_networks, N_BINS).astype(float)
    total = np.bincount(cell, weights=r, minlength=size).reshape(n_seg, n_networks, N_BINS)
    overall = float(r.mean()) if len(r) else 0.0
    q_net = _shrunk_mean(total.sum(axis=(0, 2)), count.sum(axis=(0, 2)), overall, shrinkage)  # [N]
    q_nb = _shrunk_mean(total.sum(axis=0), count.sum(axis=0), q_net[:, None], shrinkage)  # [N, B]
    return _shrunk_mean(total, count, q_nb[None], shrinkage)  # [S, N, B]


def _shrunk_mean(total: NDArray, count: NDArray, prior: NDArray | float, shrinkage: float) -> NDArray:
    """``(total + k·prior) / (count + k)``; the prior itself where there is nothing at all."""
    prior = np.broadcast_to(prior, total.shape)
    den = count + shrinkage
    return np.divide(total + shrinkage * prior, den, out=np.array(prior, dtype=float), where=den > 0)


def _estimate(name: str, terms: NDArray[np.float64], value: float | None, w: NDArray[np.float64]) -> OPEEstimate:
    n = len(terms)
    v = float(terms.mean()) if value is None else value
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    ess = float(w.sum() ** 2 / np.sum(w * w)) if np.any(w > 0) else 0.0
    return OPEEstimate(name, v, v - Z_95 * se, v + Z_95 * se, se, n, ess)


def evaluate(
    logs: LoggedDecisions,
    policy: Policy,
    *,
    folds: int = 2,
    seed: int = 0,
) -> dict[str, OPEEstimate]:
    """IPS, SNIPS and doubly-robust estimates of ``policy``'s revenue per request on ``logs``.

    ``folds`` > 1 cross-fits the DR reward model (rows are split at random with ``seed``);
    ``folds = 1`` fits it on all rows.
    """
    if len(logs) < 2:
        raise InvalidOutcome(f"off-policy evaluation needs at least 2 logged requests, got {len(logs)}")
    if len(policy.placement.networks) <= int(logs.network.max()):
        raise InvalidOutcome("logged network index beyond the candidate policy's networks")
    probs = action_probabilities(policy, logs.segments)  # [S, N, B]
    fbin = logs.floor_bin
    pi = probs[logs.segment_index, logs.network, fbin]
    w = pi / logs.logging_probability
    r = logs.reward
    wr = w * r
    out = {"ips": _estimate("ips", wr, None, w)}
    w_mean = float(w.mean())
    if w_mean > 0:
        snips = float(wr.sum() / w.sum())
        # Delta method for a ratio of means: influence term w (r - V) / mean(w).
        out["snips"] = _estimate("snips", w * (r - snips) / w_mean, snips, w)
    else:
        out["snips"] = OPEEstimate("snips", math.nan, math.nan, math.nan, math.nan, len(logs), 0.0)
    fold = np.random.default_rng(seed).integers(0, folds, len(logs)) if folds > 1 else np.zeros(len(logs), np.int64)
    dr_terms = np.empty(len(logs))
    n_net = probs.shape[1]
    for k in range(max(folds, 1)):
        scored = np.flatnonzero(fold == k)
        train = np.flatnonzero(fold != k) if folds > 1 else scored
        q = reward_model(logs, train, n_net)  # [S, N, B]
        direct = np.einsum("snb,snb->s", probs, q)  # [S]: candidate's value under q̂ per segment
        seg = logs.segment_index[scored]
        q_logged = q[seg, logs.network[scored], fbin[scored]]
        dr_terms[scored] = direct[seg] + w[scored] * (r[scored] - q_logged)
    out["dr"] = _estimate("dr", dr_terms, None, w)
    return out


def estimates_frame(estimates: dict[str, OPEEstimate]) -> Any:
    """Estimates as a polars frame, one row per estimator."""
    import polars as pl

    return pl.DataFrame([e.to_dict() for e in estimates.values()])


class LogCollector:
    """Collects logged decisions from :func:`simulator.runner.run` (pass it as ``on_batch``).

    The runner's policy may be learning: each decision carries the propensities of the
    table it was drawn from, which is all IPS needs (adaptive logging stays unbiased).
    """

    def __init__(self) -> None:
        self._parts: list[LoggedDecisions] = []

    def __call__(self, record: Any) -> None:
        req, db = record.requests, record.decisions
        self._parts.append(
            LoggedDecisions(
                tuple(req.segments),
                np.asarray(req.segment_index, dtype=np.int64),
                np.asarray(db.network, dtype=np.int64),
                np.asarray(db.floor_cpm, dtype=np.float64),
                np.asarray(db.propensity, dtype=np.float64),
                np.asarray(db.floor_propensity, dtype=np.float64),
                np.asarray(record.outcome.revenue, dtype=np.float64),
            )
        )

    def logs(self) -> LoggedDecisions:
        if not self._parts:
            raise InvalidOutcome("no batches were collected")
        return LoggedDecisions.concat(self._parts)


def simulate_logs(
    logging_policy: Policy,
    market: Any,
    n_requests: int,
    *,
    seed: int | np.random.SeedSequence,
    start_ts: float | None = None,
) -> LoggedDecisions:
    """Log ``n_requests`` decisions of a *fixed* ``logging_policy`` in a simulated ``market``
    (a :class:`simulator.market.Market`): requests, decisions with their propensities,
    and the market's outcomes. The policy does not learn while logging."""
    rng = np.random.default_rng(seed)
    req = market.requests(n_requests, rng, start_ts=start_ts)
    db = logging_policy.decide_indexed(req.segments, req.segment_index, rng=rng)
    _, revenue = market.outcomes(req, db.network, db.floor_cpm)
    return LoggedDecisions(
        tuple(req.segments),
        np.asarray(req.segment_index, dtype=np.int64),
        db.network,
        db.floor_cpm,
        db.propensity,
        db.floor_propensity,
        np.asarray(revenue, dtype=np.float64),
    )


def true_value(policy: Policy, market: Any, n_requests: int, *, seed: int, start_ts: float | None = None) -> float:
    """Ground truth of a fixed ``policy``'s revenue per request in a simulated market:
    Σ over networks and floors of P(network, floor) · ``market.expected``, averaged over
    ``n_requests`` fresh requests. The market is piecewise constant in (regime, segment),
    so each such cell is evaluated once at one representative time and weighted by its count."""
    rng = np.random.default_rng(seed)
    req = market.requests(n_requests, rng, start_ts=start_ts)
    cell = market.regime_of(req.ts) * len(req.segments) + req.segment_index
    _, first, counts = np.unique(cell, return_index=True, return_counts=True)
    total = 0.0
    for row, count in zip(first, counts, strict=True):
        s = int(req.segment_index[row])
        table = policy.table(req.segments[s])
        p = table.weights[:, None] * table.floor_probs  # [N, M]
        nets, cands = np.nonzero(p)
        rev, _ = market.expected(np.full(len(nets), req.ts[row]), s, nets, table.floors[nets, cands])
        total += count * float(np.dot(p[nets, cands], rev))
    return total / len(req)
