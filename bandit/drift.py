"""Change detection: does a batch disagree with the history at the same floors?

Per (segment, network) a two-sided CUSUM accumulates a standardised deviation of each
batch from the historical behaviour at the same floors (model-free: a model extrapolating
to floors it has not seen is not a change). Two deviations are measured — revenue per
request (prices moved) and fill count (demand appeared or vanished) — and the larger in
size is used. A change is declared when a CUSUM passes the threshold *and* the batch
differs by a relative amount that matters, so that a tiny but
statistically visible misfit on huge batches never fires. The policy then forgets most
of that cell's history, so traffic and floors move within a batch or two instead of a
half-life.

Everything is computed for the C cells of a batch at once: the events ([n] arrays, each
with its cell in [0, C)) carry their cell's history at their floor bin
(:class:`FloorHistory`), per-cell sums are ``np.bincount`` over the cell index, and a cell
without a comparison gets NaN. :func:`batch_deviation` is the one-cell form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from bandit.stats import (
    FILLS,
    N_BINS,
    REQUESTS,
    REVENUE,
    REVENUE_SQ,
    SufficientStats,
    distinct,
    log_price,
    price_bin,
)

#: History (discounted requests) a floor bin needs before the batch is compared with it.
MIN_HISTORY = 5.0
#: Events of a batch (in bins with history) needed for a comparison.
MIN_EVENTS = 2
#: Revenue relative-variance floor: history that looks certain is not taken as exact.
REL_SD_FLOOR = 0.25


#: Change alarms a policy keeps until they are taken (:class:`ChangeAlarm`); older ones are dropped.
MAX_ALARMS = 256


@dataclass(frozen=True, slots=True)
class ChangeAlarm:
    """A detected change: the newest event time of the batch that showed it (epoch seconds),
    its segment and network, and the batch's relative gap from history (``-0.4``: 40% below)."""

    ts: float
    segment: str
    network: str
    relative: float

    def to_dict(self) -> dict[str, float | str]:
        return {"ts": self.ts, "segment": self.segment, "network": self.network, "relative": self.relative}


@dataclass(frozen=True, slots=True)
class Deviation:
    """How a batch compares with history: signed z-score and relative revenue gap."""

    z: float
    relative: float


@dataclass(frozen=True, slots=True)
class FloorHistory:
    """Each event's cell history at the event's floor bin, arrays [n] (discounted weights):
    requests, fills, revenue and revenue² of that bin; requests and fills summed over the
    cell's bins at or below it (``*_below``) and over all its bins (``*_total``)."""

    requests: NDArray[np.float64]
    fills: NDArray[np.float64]
    revenue: NDArray[np.float64]
    revenue_sq: NDArray[np.float64]
    requests_below: NDArray[np.float64]
    fills_below: NDArray[np.float64]
    requests_total: NDArray[np.float64]
    fills_total: NDArray[np.float64]

    @classmethod
    def of_cell(cls, history: NDArray[np.float64], bins: NDArray[np.int64]) -> FloorHistory:
        """From one cell's dense statistics [F, B], at floor bins ``bins`` [n]."""
        cum_req = np.cumsum(history[REQUESTS])
        cum_fill = np.cumsum(history[FILLS])
        n = len(bins)
        return cls(
            history[REQUESTS, bins],
            history[FILLS, bins],
            history[REVENUE, bins],
            history[REVENUE_SQ, bins],
            cum_req[bins],
            cum_fill[bins],
            np.full(n, cum_req[-1]),
            np.full(n, cum_fill[-1]),
        )

    @classmethod
    def of_stats(
        cls,
        stats: SufficientStats,
        keys: NDArray[np.int64],
        cell: NDArray[np.int64],
        bins: NDArray[np.int64],
        factor: float = 1.0,
    ) -> FloorHistory:
        """From ``stats`` at t_ref times ``factor``: event i at floor bin ``bins[i]`` of the
        statistics' cell ``keys[cell[i]]`` (``keys`` [C] distinct; ``cell``, ``bins`` [n]).

        When events outnumber the (cell, bin) pairs they could fall in (a large batch over few
        cells), each pair is read once and the reads are handed to its events: the same values.
        """
        size = len(keys) * N_BINS
        if len(cell) * 8 < size:
            return cls._read(stats, keys, cell, bins, factor)
        pairs, inverse = distinct(cell * N_BINS + bins, size)  # no sort: a bitmap of the pairs
        once = cls._read(stats, keys, pairs // N_BINS, pairs % N_BINS, factor)
        return cls(*(getattr(once, f.name)[inverse] for f in fields(cls)))

    @classmethod
    def _read(
        cls,
        stats: SufficientStats,
        keys: NDArray[np.int64],
        cell: NDArray[np.int64],
        bins: NDArray[np.int64],
        factor: float,
    ) -> FloorHistory:
        """:meth:`of_stats`, read at each of the ``cell``, ``bins`` pairs [n]."""
        at = stats.values_at(keys[cell], bins, (REQUESTS, FILLS, REVENUE, REVENUE_SQ), factor)
        present = np.flatnonzero(np.bincount(cell, minlength=len(keys)))
        sums = stats.cumulative_at(  # at each event's bin, and at the last bin: each cell's total
            np.concatenate([keys[cell], keys[present]]),
            np.concatenate([bins, np.full(len(present), N_BINS - 1)]),
            (REQUESTS, FILLS),
            factor,
        )
        n = len(cell)
        total = np.zeros((len(keys), 2))
        total[present] = sums[n:]
        return cls(*at.T, sums[:n, 0], sums[:n, 1], total[cell, 0], total[cell, 1])


def batch_deviations(
    cell: NDArray[np.int64],
    n_cells: int,
    history: FloorHistory,
    filled: NDArray[np.bool_],
    revenue: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Deviation of each cell's events from its history: z-score and relative gap [n_cells]
    each, NaN for a cell without a comparison (too little overlap with its history).

    ``cell`` [n] is each event's cell, ``history`` its cell's history at its floor bin,
    ``filled`` and ``revenue`` [n] its outcome. Three comparisons, the largest in size wins
    (the first of equals):

    - revenue per request against the history of the same floor bins;
    - fill counts against monotone bounds: P(fill | f) falls as f rises, so the historical
      fill rate at floors <= f bounds the expected fills from above and the rate at floors
      >= f from below. More fills than the upper bound means demand arrived; fewer than the
      lower bound, demand left. These use all history, so a network with little traffic at
      scattered floors is still checked, and moving floors alone never looks like a change.
    """

    z = np.full(n_cells, np.nan)
    rel = np.full(n_cells, np.nan)

    def consider(ok: NDArray[np.bool_], z_new: NDArray[np.float64], rel_new: NDArray[np.float64]) -> None:
        take = ok & ~(np.abs(z) >= np.abs(z_new))  # a cell without a comparison yet (NaN) takes it
        z[take], rel[take] = z_new[take], rel_new[take]

    def per_cell(mask: NDArray[np.bool_], *weights: NDArray[np.float64]) -> list[NDArray[np.float64]]:
        """Event count and sums of ``weights`` [n_cells] over each cell's events in ``mask``."""
        c = cell[mask]
        return [np.bincount(c, minlength=n_cells)] + [np.bincount(c, w, minlength=n_cells) for w in weights]

    known = history.requests >= MIN_HISTORY
    r = history.requests[known]
    mean = history.revenue[known] / r
    var = np.maximum(history.revenue_sq[known] / r - mean**2, 0.0) + (REL_SD_FLOOR * mean) ** 2 + 1e-9
    observed = revenue[known]
    count, gap, var_sum, observed_sum, mean_sum = per_cell(known, observed - mean, var, observed, mean)
    ok = count >= MIN_EVENTS
    z_rev = np.divide(gap, np.sqrt(var_sum), out=np.zeros(n_cells), where=ok)
    consider(ok, z_rev, _relative(observed_sum, mean_sum))

    above_r = history.requests_total - history.requests_below + history.requests
    above_f = history.fills_total - history.fills_below + history.fills
    for r, f, direction in ((history.requests_below, history.fills_below, 1.0), (above_r, above_f, -1.0)):
        usable = r >= MIN_HISTORY
        p = (f[usable] + 0.5) / (r[usable] + 1.0)
        count, observed_sum, expected, var_sum = per_cell(usable, filled[usable].astype(np.float64), p, p * (1 - p))
        ok = count >= MIN_EVENTS
        z_fill = np.divide(observed_sum - expected, np.sqrt(var_sum), out=np.zeros(n_cells), where=ok)
        consider(ok & (z_fill * direction > 0), z_fill, _relative(observed_sum, expected))
    return z, rel


def batch_deviation(
    history: NDArray[np.float64], floor_cpm: NDArray[np.float64], filled: NDArray[np.bool_], revenue: NDArray
) -> Deviation | None:
    """Deviation of one cell's batch ([n] arrays) from its history [F, B]; None without overlap
    (see :func:`batch_deviations`)."""
    bins = price_bin(log_price(floor_cpm))
    z, rel = batch_deviations(
        np.zeros(len(bins), np.int64), 1, FloorHistory.of_cell(history, bins), np.asarray(filled), revenue
    )
    return None if math.isnan(z[0]) else Deviation(float(z[0]), float(rel[0]))


def _relative(observed: NDArray[np.float64], expected: NDArray[np.float64]) -> NDArray[np.float64]:
    """``observed / expected - 1``; where nothing was expected, inf if something was observed, else 0."""
    gap = np.where(observed > 0, np.inf, 0.0)
    return np.divide(observed, expected, out=gap, where=expected > 0) - np.where(expected > 0, 1.0, 0.0)


def cusum_step(state: NDArray[np.float64], z: NDArray[np.float64] | float, slack: float) -> NDArray[np.float64]:
    """Next (upper, lower) CUSUM values [..., 2] after batches with z-scores ``z`` [...]."""
    return np.stack([np.maximum(0.0, state[..., 0] + z - slack), np.maximum(0.0, state[..., 1] - z - slack)], axis=-1)
