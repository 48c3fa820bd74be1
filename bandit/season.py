"""Hour-of-day value levels: a daily cycle as a covariate of the price model.

Ad prices follow the clock (evening peaks, night troughs). A value scale ``s_h`` per
(segment, network) and hour of day h (UTC) models it: at hour h the market is the base
market with every bid multiplied by ``s_h``, so

    R_h(f) = s_h · R(f / s_h),

i.e. an event at floor f paying r in hour h is the base market's event at floor ``f / s_h``
paying ``r / s_h``. Events are learned *deflated* (the statistics hold the base market,
whatever the hour), and a decision table built at hour h scales the base floors and
revenues back by ``s_h``. Without a cycle every ``s_h`` stays near 1.

Estimation is online: the events of a batch in hour h are compared with what the base
statistics expect at their (deflated) floors, model-free (mean revenue of the same floor
bin), and ``log s_h`` moves by ``n / (n + LEVEL_EVENTS)`` of the log ratio (``n`` events
with an expectation). A regular cycle is learned within its first day and kept across
days; a break is left to the change detector. All arrays are [24] per cell.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bandit.stats import REQUESTS, REVENUE, log_price, price_bin

HOURS_PER_DAY = 24
#: Events of an hour that move its level half-way to what they show.
LEVEL_EVENTS = 5000.0
#: Floor-bin history (discounted requests) needed before an event is compared with it.
MIN_BIN_HISTORY = 5.0
#: Levels stay within [1 / LEVEL_BOUND, LEVEL_BOUND].
LEVEL_BOUND = 5.0


def hour_of_day(ts: NDArray[np.float64]) -> NDArray[np.int64]:
    """UTC hour of day [n] of epoch seconds ``ts`` [n]."""
    return (np.floor(np.asarray(ts, dtype=np.float64) / 3600.0).astype(np.int64)) % HOURS_PER_DAY


def expected_revenue(base: NDArray[np.float64], floor_cpm: NDArray[np.float64], scale: NDArray[np.float64]) -> NDArray:
    """What base statistics [F, B] expect an event at raw floor ``floor_cpm`` [n] to pay at
    value scale ``scale`` [n]: ``s · m(f / s)`` with ``m`` the base floor bin's mean revenue
    per request; NaN where that bin has too little history."""
    b = price_bin(log_price(floor_cpm / scale))
    n = base[REQUESTS, b]
    mean = np.divide(base[REVENUE, b], n, out=np.full(len(b), np.nan), where=n >= MIN_BIN_HISTORY)
    return scale * mean


def update_levels(
    log_level: NDArray[np.float64],
    hours: NDArray[np.int64],
    revenue: NDArray[np.float64],
    expected: NDArray[np.float64],
) -> NDArray[np.float64]:
    """New log levels [24] after events of one cell: per hour, move ``log s_h`` by
    ``n / (n + LEVEL_EVENTS)`` of ``log(Σ revenue / Σ expected)`` over its events with an
    expectation (``expected`` NaN: not compared)."""
    out = log_level.copy()
    known = np.isfinite(expected)
    if not known.any():
        return out
    h = hours[known]
    n = np.bincount(h, minlength=HOURS_PER_DAY).astype(np.float64)
    observed = np.bincount(h, weights=revenue[known], minlength=HOURS_PER_DAY)
    predicted = np.bincount(h, weights=expected[known], minlength=HOURS_PER_DAY)
    ok = (n > 0) & (predicted > 0) & (observed > 0)
    ratio = np.log(np.clip(observed[ok] / predicted[ok], 1 / LEVEL_BOUND, LEVEL_BOUND))
    out[ok] += n[ok] / (n[ok] + LEVEL_EVENTS) * ratio
    return np.clip(out, -np.log(LEVEL_BOUND), np.log(LEVEL_BOUND))


def level_at(log_level: NDArray[np.float64], ts: float) -> float:
    """Log level [24] at epoch second ``ts``, linear between hour centres (circular)."""
    pos = (ts / 3600.0 - 0.5) % HOURS_PER_DAY  # hour h's level sits at h + 0.5
    lo = int(pos)
    frac = pos - lo
    return float((1 - frac) * log_level[lo] + frac * log_level[(lo + 1) % HOURS_PER_DAY])
