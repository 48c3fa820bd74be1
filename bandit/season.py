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
days; a break is left to the change detector. Levels are [24] per cell; a batch's cells are
updated at once (sums per cell and hour are one ``np.bincount``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bandit.stats import distinct, log_price, price_bin

HOURS_PER_DAY = 24
#: Events of an hour that move its level half-way to what they show; also the strength
#: (in events) of the segment's common level in a network's served level.
LEVEL_EVENTS = 2000.0
#: Floor-bin history (discounted requests) needed before an event is compared with it.
MIN_BIN_HISTORY = 5.0
#: Levels stay within [1 / LEVEL_BOUND, LEVEL_BOUND].
LEVEL_BOUND = 5.0


def hour_of_day(ts: NDArray[np.float64]) -> NDArray[np.int64]:
    """UTC hour of day [n] of epoch seconds ``ts`` [n]."""
    return (np.floor(np.asarray(ts, dtype=np.float64) / 3600.0).astype(np.int64)) % HOURS_PER_DAY


def deflated_bin(floor_cpm: NDArray[np.float64], scale: NDArray[np.float64]) -> NDArray[np.int64]:
    """Floor bin [n] of each event in the base market: its raw floor divided by its level ``scale`` [n]."""
    return price_bin(log_price(floor_cpm / scale))


def expected_at(
    requests: NDArray[np.float64], revenue: NDArray[np.float64], scale: NDArray[np.float64]
) -> NDArray[np.float64]:
    """What base statistics expect each event [n] to pay at value scale ``scale``: ``s · m(f / s)``
    with ``m`` the mean revenue per request of the base floor bin of ``f / s``, given that bin's
    ``requests`` and ``revenue`` [n] (see :func:`deflated_bin`); NaN where it has too little history."""
    mean = np.divide(revenue, requests, out=np.full(len(requests), np.nan), where=requests >= MIN_BIN_HISTORY)
    return scale * mean


def update_cell_levels(
    log_level: NDArray[np.float64],
    cell: NDArray[np.int64],
    hours: NDArray[np.int64],
    revenue: NDArray[np.float64],
    expected: NDArray[np.float64],
    level_events: float = LEVEL_EVENTS,
) -> NDArray[np.float64]:
    """New log levels [C, 24] of C cells (``log_level`` [C, 24]) after their events (``cell`` [n]
    in [0, C), with their hours, revenues and expectations): per cell and hour, move ``log s_h``
    by ``n / (n + level_events)`` of ``log(Σ revenue / Σ expected)`` over its events with an
    expectation (``expected`` NaN: not compared). A cell without such events is left as it is."""
    out = log_level.copy()
    known = np.isfinite(expected)
    if not known.any():
        return out
    # Sums per (cell, hour) slot that has events: bincount over the slots' ranks, which adds
    # each slot's events in their order, as a bincount over the hours of one cell would.
    slots, inverse = distinct(cell[known] * HOURS_PER_DAY + hours[known], log_level.size)
    n = np.bincount(inverse, minlength=len(slots)).astype(np.float64)
    observed = np.bincount(inverse, weights=revenue[known], minlength=len(slots))
    predicted = np.bincount(inverse, weights=expected[known], minlength=len(slots))
    ok = (predicted > 0) & (observed > 0)
    ratio = np.log(np.clip(observed[ok] / predicted[ok], 1 / LEVEL_BOUND, LEVEL_BOUND))
    flat = out.reshape(-1)
    flat[slots[ok]] += n[ok] / (n[ok] + level_events) * ratio
    compared = np.unique(slots // HOURS_PER_DAY)
    out[compared] = np.clip(out[compared], -np.log(LEVEL_BOUND), np.log(LEVEL_BOUND))
    return out


def count_level_events(
    counts: NDArray[np.float64], cell: NDArray[np.int64], hours: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Counts [C, 24] of compared events per cell and hour (``counts`` [C, 24]) after one more
    event per (``cell`` [n], ``hours`` [n]) pair."""
    out = counts.copy()
    np.add.at(out, (cell, hours), 1.0)
    return out


def shrunk_levels(log_level: NDArray[np.float64], events: NDArray[np.float64], strength: float) -> NDArray[np.float64]:
    """Served log levels [N] of one segment's N networks at one time of day, from their own
    levels ``log_level`` [N] learned from ``events`` [N] compared events at that hour: each
    is pulled toward the segment's common level (the event-weighted mean over networks) with
    ``strength`` events. A daily cycle is mostly the market's, so a network seldom served at
    an hour follows the others instead of a stale level of its own, and networks are ranked
    on levels that are equally well learned."""
    total = float(events.sum())
    common = float(events @ log_level) / total if total > 0 else 0.0
    return (events * log_level + strength * common) / (events + strength)


def level_at(log_level: NDArray[np.float64], ts: float) -> float:
    """Log level [24] at epoch second ``ts``, linear between hour centres (circular)."""
    pos = (ts / 3600.0 - 0.5) % HOURS_PER_DAY  # hour h's level sits at h + 0.5
    lo = int(pos)
    frac = pos - lo
    return float((1 - frac) * log_level[lo] + frac * log_level[(lo + 1) % HOURS_PER_DAY])
