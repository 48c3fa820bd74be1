"""Change detection: does a batch's revenue disagree with the history at the same floors?

Per (segment, network) a two-sided CUSUM accumulates the standardised deviation of each
batch's observed revenue from the historical revenue per request in the same floor bins
(model-free: a model extrapolating to floors it has not seen is not a change). A
change is declared when a CUSUM passes ``threshold`` *and* the batch's relative
deviation is large enough to matter (``min_relative``), so that a tiny, statistically
visible misfit on huge batches never fires. The policy then forgets most of that cell's
history, so traffic and floors move within a batch or two instead of a half-life.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Deviation:
    """How a batch's revenue compares with the prediction: z-score and relative gap."""

    z: float
    relative: float


def revenue_deviation(observed: NDArray[np.float64], predicted: NDArray[np.float64]) -> Deviation:
    """Deviation of observed revenue per request [n] from its historical expectation [n]."""
    n = len(observed)
    gap = observed - predicted
    var = float(gap.var()) + 1e-12
    z = float(gap.sum()) / math.sqrt(n * var)
    expected = float(predicted.sum())
    relative = float(observed.sum()) / expected - 1.0 if expected > 0 else (math.inf if observed.sum() > 0 else 0.0)
    return Deviation(z, relative)


def cusum_step(state: NDArray[np.float64], z: float, slack: float) -> NDArray[np.float64]:
    """Next (upper, lower) CUSUM values [2] after a batch with z-score ``z``."""
    return np.array([max(0.0, state[0] + z - slack), max(0.0, state[1] - z - slack)])
