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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bandit.stats import FILLS, REQUESTS, REVENUE, REVENUE_SQ, log_price, price_bin

#: History (discounted requests) a floor bin needs before the batch is compared with it.
MIN_HISTORY = 5.0
#: Events of a batch (in bins with history) needed for a comparison.
MIN_EVENTS = 2
#: Revenue relative-variance floor: history that looks certain is not taken as exact.
REL_SD_FLOOR = 0.25


@dataclass(frozen=True, slots=True)
class Deviation:
    """How a batch compares with history: signed z-score and relative revenue gap."""

    z: float
    relative: float


def batch_deviation(
    history: NDArray[np.float64], floor_cpm: NDArray[np.float64], filled: NDArray[np.bool_], revenue: NDArray
) -> Deviation | None:
    """Deviation of one cell's batch ([n] arrays) from its history [F, B]; None without overlap.

    Two comparisons, the larger in size wins:

    - revenue per request against the history of the same floor bins;
    - fill counts against monotone bounds: P(fill | f) falls as f rises, so the historical
      fill rate at floors <= f bounds the expected fills from above and the rate at floors
      >= f from below. More fills than the upper bound means demand arrived; fewer than the
      lower bound, demand left. These use all history, so a network with little traffic at
      scattered floors is still checked, and moving floors alone never looks like a change.
    """
    bins = price_bin(log_price(floor_cpm))
    found: list[Deviation] = []
    req = history[REQUESTS, bins]
    known = req >= MIN_HISTORY
    if known.sum() >= MIN_EVENTS:
        b, r = bins[known], req[known]
        mean = history[REVENUE, b] / r
        var = np.maximum(history[REVENUE_SQ, b] / r - mean**2, 0.0) + (REL_SD_FLOOR * mean) ** 2 + 1e-9
        observed = revenue[known]
        z = float((observed - mean).sum()) / math.sqrt(float(var.sum()))
        found.append(Deviation(z, _relative(float(observed.sum()), float(mean.sum()))))
    cum_req = np.cumsum(history[REQUESTS])
    cum_fill = np.cumsum(history[FILLS])
    at_or_below = (cum_req[bins], cum_fill[bins])
    at_or_above = (
        cum_req[-1] - cum_req[bins] + history[REQUESTS, bins],
        cum_fill[-1] - cum_fill[bins] + history[FILLS, bins],
    )
    for (r, f), direction in ((at_or_below, 1.0), (at_or_above, -1.0)):
        usable = r >= MIN_HISTORY
        if usable.sum() < MIN_EVENTS:
            continue
        p = (f[usable] + 0.5) / (r[usable] + 1.0)
        observed = float(filled[usable].sum())
        z = (observed - float(p.sum())) / math.sqrt(float((p * (1 - p)).sum()))
        if z * direction > 0:
            found.append(Deviation(z, _relative(observed, float(p.sum()))))
    return max(found, key=lambda d: abs(d.z)) if found else None


def _relative(observed: float, expected: float) -> float:
    if expected > 0:
        return observed / expected - 1.0
    return math.inf if observed > 0 else 0.0


def cusum_step(state: NDArray[np.float64], z: float, slack: float) -> NDArray[np.float64]:
    """Next (upper, lower) CUSUM values [2] after a batch with z-score ``z``."""
    return np.array([max(0.0, state[0] + z - slack), max(0.0, state[1] - z - slack)])
