"""Change detection: does a batch disagree with the history at the same floors?

Per (segment, network) a two-sided CUSUM accumulates a standardised deviation of each
batch from the historical behaviour *in the same floor bins* (model-free: a model
extrapolating to floors it has not seen is not a change). Two deviations are measured —
revenue per request (prices moved) and fill count (demand appeared or vanished) — and
the larger in size is used. A change is declared when a CUSUM passes the threshold *and*
the batch's revenue differs by a relative amount that matters, so that a tiny but
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
    """Deviation of one cell's batch ([n] arrays) from its history [F, B]; None without overlap."""
    bins = price_bin(log_price(floor_cpm))
    req = history[REQUESTS, bins]
    known = req >= MIN_HISTORY
    if known.sum() < MIN_EVENTS:
        return None
    b, req = bins[known], req[known]
    # Revenue per request against the bin's historical mean and variance.
    mean = history[REVENUE, b] / req
    var = np.maximum(history[REVENUE_SQ, b] / req - mean**2, 0.0) + (REL_SD_FLOOR * mean) ** 2 + 1e-9
    observed = revenue[known]
    z_revenue = float((observed - mean).sum()) / math.sqrt(float(var.sum()))
    # Fill count against a smoothed historical fill probability (well-defined with little history).
    p = (history[FILLS, b] + 0.5) / (req + 1.0)
    z_fill = float((filled[known] - p).sum()) / math.sqrt(float((p * (1 - p)).sum()))
    expected = float(mean.sum())
    if expected > 0:
        relative = float(observed.sum()) / expected - 1.0
    else:
        relative = math.inf if observed.sum() > 0 else 0.0
    return Deviation(z_revenue if abs(z_revenue) >= abs(z_fill) else z_fill, relative)


def cusum_step(state: NDArray[np.float64], z: float, slack: float) -> NDArray[np.float64]:
    """Next (upper, lower) CUSUM values [2] after a batch with z-score ``z``."""
    return np.array([max(0.0, state[0] + z - slack), max(0.0, state[1] - z - slack)])
