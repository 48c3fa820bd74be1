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
from scipy.stats import chi2

from bandit.stats import distinct, log_price, price_bin

HOURS_PER_DAY = 24
#: Memory of an hour's level (in events): a level is the mean of what its events show until
#: it has this many, then each batch of n events moves it ``n / (n + LEVEL_EVENTS)`` of the
#: way to what they show (a slowly changing daily shape is followed).
LEVEL_EVENTS = 2000.0
#: How far networks' daily shapes are expected to differ from their segment's common one, as
#: a share of the common cycle's own spread over the day: a second-price network gains more
#: from a demand peak than a first-price one, by a fraction of the cycle; without a cycle,
#: networks do not differ by the hour either.
DEVIATION_SHARE = 0.5
#: Bounds of the strength (in events) of the common level in a network's served level.
DEVIATION_EVENTS_MIN, DEVIATION_EVENTS_MAX = 50.0, 1e6
#: Events (at level 0) a segment's common level holds before its networks' events.
COMMON_EVENTS = 200.0
#: Standard deviation of one event's log revenue ratio (observed / expected): the
#: uncertainty of a level learned from n events is about ``LEVEL_NOISE / sqrt(n)``.
LEVEL_NOISE = 1.0
#: Floor-bin history (discounted requests) needed before an event is compared with it: a
#: level is a running mean of what its first events show, so it must not learn the noise of a
#: thin bin (with 5 requests, as before, the small segments of `longtail` learned levels off
#: by tens of percent; with 200 a break in `core_drift` was absorbed by the levels of bins the
#: detector's fallback then compared with, and went undetected).
MIN_BIN_HISTORY = 50.0
#: False-alarm rate of the test that a segment's day shows a cycle (:func:`shows_cycle`).
CYCLE_P = 1e-3
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
    served: NDArray[np.float64] | None = None,
    seen: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """New log levels [C, 24] of C cells (``log_level`` [C, 24]) after their events (``cell`` [n]
    in [0, C), with their hours, revenues and expectations): per cell and hour, the events show
    the level ``served + log(Σ revenue / Σ expected)`` (``expected`` computed at the ``served``
    log levels [C, 24], default the cells' own; NaN: not compared), and ``log s_h`` moves by
    ``n / (n + min(seen, level_events))`` of the way to it, ``seen`` [C, 24] the events the
    level has learned from so far (default ``level_events``): a running mean of what the
    events show, with a memory of ``level_events``. A cell without such events is left as it is."""
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
    flat, step = out.reshape(-1), ratio  # step: from the own level to what the events show
    if served is not None:
        step = ratio + served.reshape(-1)[slots[ok]] - flat[slots[ok]]
    memory = level_events if seen is None else np.minimum(seen.reshape(-1)[slots[ok]], level_events)
    flat[slots[ok]] += n[ok] / (n[ok] + memory) * step
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


def shrunk_levels(
    log_level: NDArray[np.float64],
    events: NDArray[np.float64],
    strength: float | NDArray[np.float64],
    axis: int = -1,
    common: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Served log levels of one segment's N networks (along ``axis``, by default the last), from
    their own levels ``log_level`` learned from ``events`` compared events at the same hour
    (same shape): each is pulled toward the segment's common level (default
    :func:`common_levels`; the ts_gmm policy passes :func:`cycle_levels`) with ``strength``
    events (a number, or an array that broadcasts). A daily cycle is mostly the market's, so a
    network seldom served at an hour follows the others instead of a stale level of its own,
    networks are ranked on levels that are equally well learned, and a seldom-served
    network's events are learned at the level it is served at (see :func:`update_cell_levels`)."""
    if common is None:
        common = common_levels(log_level, events, axis)
    return (events * log_level + strength * np.expand_dims(common, axis)) / (events + strength)


def common_levels(log_level: NDArray[np.float64], events: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    """A segment's common log level (networks along ``axis``, which is summed away): the mean of
    its networks' own levels weighted by their events, pulled toward 0 (no cycle) by
    ``COMMON_EVENTS`` events, so a few events of seldom-served networks do not set it."""
    weighted = (events * log_level).sum(axis=axis)
    return weighted / (events.sum(axis=axis) + COMMON_EVENTS)


def day_spread(common: NDArray[np.float64], total: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray]:
    """The variance [S] over the day of S segments' common levels ``common`` [S, 24], weighted
    by the ``total`` [S, 24] events they were learned from (0 without events), and those
    weights [S, 24] (each row sums to 1, or 0 without events)."""
    weight = np.divide(total, total.sum(axis=1, keepdims=True), out=np.zeros_like(total), where=total > 0)
    mean = (weight * common).sum(axis=1, keepdims=True)
    return (weight * (common - mean) ** 2).sum(axis=1), weight


def cycle_variance(common: NDArray[np.float64], total: NDArray[np.float64]) -> NDArray[np.float64]:
    """The variance [S] over the day of S segments' common levels ``common`` [S, 24] learned from
    ``total`` [S, 24] events (:func:`day_spread`), less what the levels' own noise (about
    ``LEVEL_NOISE² / events``) adds: the market's daily cycle as far as it shows; 0 if not at all."""
    spread, weight = day_spread(common, total)
    noise = (weight * LEVEL_NOISE**2 / np.maximum(total, 1.0)).sum(axis=1)
    return np.maximum(spread - noise, 0.0)


def cycle_levels(log_level: NDArray[np.float64], events: NDArray[np.float64]) -> NDArray[np.float64]:
    """The common log levels [S, 24] S segments are served at, from their networks' own levels and
    events ``[S, N, 24]``: each hour's :func:`common_levels` once the segment's day shows a cycle
    (:func:`shows_cycle`), else 0.

    Events are learned deflated by the levels they are served at, and levels are learned
    against that base, so a flat market's levels, served, wander from 0 together with the base
    in a loop no event corrects (a 1–2% error of the best revenue within a few hours, three
    times its posterior sd). Until its day shows a cycle, a segment is served, and learned, at
    level 0, while its levels keep learning what the events show: the base is then the market
    itself."""
    common = common_levels(log_level, events, axis=1)
    return cycle_of(common, events.sum(axis=1))


def cycle_of(common: NDArray[np.float64], total: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`cycle_levels` from S segments' common levels ``common`` [S, 24] and the ``total``
    [S, 24] events of their networks."""
    return common * shows_cycle(common, total)[:, None]


def shows_cycle(common: NDArray[np.float64], total: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Whether S segments' common levels ``common`` [S, 24], learned from ``total`` [S, 24]
    events, differ between hours by more than their noise: the χ² statistic
    ``Σ_h n_h (l_h − l̄)² / LEVEL_NOISE²`` over the hours with events exceeds its
    ``CYCLE_P`` quantile under no cycle (LEVEL_NOISE overstates an event's noise, so a
    flat market seldom passes; a ±30% cycle passes within its first three hours)."""
    statistic = total.sum(axis=1) * day_spread(common, total)[0] / LEVEL_NOISE**2
    dof = (total > 0).sum(axis=1) - 1
    return (dof > 0) & (statistic > chi2.isf(CYCLE_P, np.maximum(dof, 1)))


def deviation_strength(log_level: NDArray[np.float64], events: NDArray[np.float64]) -> NDArray[np.float64]:
    """Strength [S] of the common level in the served levels of S segments, from their networks'
    own levels and events ``[S, N, 24]``: ``LEVEL_NOISE² / τ²``, with τ = ``DEVIATION_SHARE`` ×
    the spread over the day of the segment's common level (:func:`cycle_variance`), within
    [``DEVIATION_EVENTS_MIN``, ``DEVIATION_EVENTS_MAX``]. A flat market keeps every network at
    the common level and is sure of it; a strong cycle lets networks' own shapes show after a
    few hundred events, and leaves a seldom-served network's doubtful."""
    return strength_of(common_levels(log_level, events, axis=1), events.sum(axis=1))


def strength_of(common: NDArray[np.float64], total: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`deviation_strength` from S segments' common levels ``common`` [S, 24] and the
    ``total`` [S, 24] events of their networks."""
    tau2 = DEVIATION_SHARE**2 * cycle_variance(common, total)
    strength = np.divide(LEVEL_NOISE**2, tau2, out=np.full_like(tau2, DEVIATION_EVENTS_MAX), where=tau2 > 0)
    return np.clip(strength, DEVIATION_EVENTS_MIN, DEVIATION_EVENTS_MAX)


def segment_levels(
    log_level: NDArray[np.float64], events: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Served log levels ``[S, N, 24]`` of S segments' networks from their own levels and events
    (same shape), and the strength [S] of each segment's common level in them: each network's
    level shrunk (:func:`shrunk_levels`) toward its segment's :func:`cycle_levels` with
    :func:`deviation_strength`, the common levels and event totals computed once for both."""
    common = common_levels(log_level, events, axis=1)
    total = events.sum(axis=1)
    strength = strength_of(common, total)
    return shrunk_levels(log_level, events, strength[:, None, None], axis=1, common=cycle_of(common, total)), strength


def level_sd(events: NDArray[np.float64], strength: float | NDArray[np.float64]) -> NDArray[np.float64]:
    """Posterior sd of served log levels learned from ``events`` events of their own, shrunk
    toward the common level with ``strength``: a network never served at an hour may differ
    from the others by about ``LEVEL_NOISE / sqrt(strength)``."""
    return LEVEL_NOISE / np.sqrt(np.asarray(events, dtype=np.float64) + strength)


def level_at(log_level: NDArray[np.float64], ts: float) -> float:
    """Log level [24] at epoch second ``ts``, linear between hour centres (circular)."""
    pos = (ts / 3600.0 - 0.5) % HOURS_PER_DAY  # hour h's level sits at h + 0.5
    lo = int(pos)
    frac = pos - lo
    return float((1 - frac) * log_level[lo] + frac * log_level[(lo + 1) % HOURS_PER_DAY])
