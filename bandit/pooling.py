"""Segments that borrow the right strength: each segment's prior from the segments that
share its context fields, at a strength the data justify.

A segment's statistics [N, F, B] are learned together with a *target*: the placement's
statistics without the segment's own, moved in log price to the value level predicted for
the segment, and weighted like κ extra requests per network. Per segment s and network j
(arrays [S, N]):

* **Level.** y = log of revenue per request, with sampling variance v = c² / n: n the
  (discounted) requests, c² the relative variance of one request's revenue within a
  segment, pooled over segments (it does not change when all prices scale).
* **Model.** y = μ + Σ_f β_f[s's value of field f] + u + e, with e ~ N(0, v), the segment's
  own deviation u ~ N(0, τ²), field effects β_f ~ N(0, σ_f²) (e.g. a country effect, an OS
  effect, an app-version effect; one variance per field and network) and the intercept μ
  near the placement's level. Effects are fitted by backfitting — each field's effects are
  weighted means of partial residuals with a ridge 1/σ_f², weights 1/(v + τ²), O(S·N) per
  sweep with ``np.bincount`` — and σ_f² by the evidence fixed point σ_f² = Σβ² / γ (γ the
  effectively determined values). A field whose values are shared by fewer than
  ``REPLICATION`` fitted segments each, on average, cannot be told apart from u and is
  left to it.
* **Leave one out.** The prediction ŷ₋ₛ for a segment removes its own weight from the
  field-level sums, and carries its variance p (the effects' posterior variances with the
  segment removed). Segments with fewer than ``MIN_FIT_REQUESTS`` requests on a network
  get a prediction but do not enter the fit (the delta method would misstate their
  variance).
* **Between-segment variance.** τ² solves the likelihood equation of the leave-one-out
  residuals, Σ (e² − v − p − τ²) / (v + p + τ²)² = 0 (weighted by each segment's own
  sampling variance: a segment known exactly weighs most), with one pseudo-segment at
  ``TAU_PRIOR``² so that a placement with one or two segments still has a value.
  Leaving each segment out does what REML does for the fitted effects: their share of the
  residual spread is not mistaken for τ². Tiny segments no longer dominate (the moment
  estimate this replaces came out hundreds of times too strong on long-tailed sizes).
* **Strength.** κ = c² / (τ² + p) pseudo-requests: with the target's level known to
  variance τ² + p, the normal–normal posterior weighs it like κ requests of the segment's
  own. A segment with n ≫ κ requests moves to its own optimum; a new one starts where the
  segments sharing its fields are.
* **Target.** A value level e^δ scales every bid: floors and prices move δ in log price
  (the binned statistics shift by δ / ``BIN_WIDTH`` bins, split between the two nearest
  whole shifts), revenue scales by e^δ, revenue² by e^{2δ}, summed log floors and prices
  by count · δ. With δ = ŷ₋ₛ − log R̄(rest of the placement), the target's revenue per
  request is the predicted one.

Pure numpy; the fit reads only ``SufficientStats.totals()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bandit.stats import (
    ATFLOOR,
    ATFLOOR_LOGF,
    BIN_WIDTH,
    FILLS,
    NOFILL_LOGF,
    PRICE,
    PRICE_LOGP,
    REQUESTS,
    REVENUE,
    REVENUE_SQ,
    SufficientStats,
)

#: Requests (per segment and network) below which a segment gets a prediction but does not
#: enter the fit of the model and of τ².
MIN_FIT_REQUESTS = 50.0
#: Requests-worth of the placement's mean revenue added to each segment's (keeps log finite).
LEVEL_PSEUDO_REQUESTS = 0.5
#: Prior guess of the between-segment sd τ of log revenue level (one pseudo-segment's worth).
TAU_PRIOR = 0.1
#: Prior guess of a field effect's sd σ_f (one pseudo-value's worth), and the prior sd of
#: the intercept around the placement's log level.
FIELD_SD_PRIOR = 0.3
INTERCEPT_SD_PRIOR = 1.0
#: Fitted segments per value of a field (on average over its values seen, per network) that
#: its effects need: fewer cannot tell them apart from the segments' own deviations.
REPLICATION = 1.5
#: Smallest variances the estimates may reach (numerical floor).
MIN_VARIANCE = 1e-6
#: Relative variance of one request's revenue when no segment has enough data to tell.
DEFAULT_REL_VAR = 1.0
#: Largest prior strength, in pseudo-requests, and largest level shift, in log price.
MAX_STRENGTH = 1e4
MAX_SHIFT = 4.0
#: Iterations (one backfitting sweep and one step for each variance), always all of them:
#: a convergence test would make the fit a discontinuous function of the statistics, so
#: statistics equal up to float error (merged from workers, or learned in another order)
#: could stop at different sweeps and give visibly different priors. ``TOL`` is what the
#: fit reports as converged (``moved`` below it at the last sweep).
MAX_ITER = 12
TOL = 5e-3


# ------------------------------------------------------------------------------ levels
@dataclass(frozen=True, slots=True)
class SegmentLevels:
    """Per (segment, network) summaries [S, N]: requests, log revenue level and its sampling
    variance; per network [N]: relative variance c² of a request's revenue and the
    placement's log level."""

    requests: NDArray[np.float64]
    level: NDArray[np.float64]
    variance: NDArray[np.float64]
    rel_var: NDArray[np.float64]
    placement_level: NDArray[np.float64]


def segment_levels(totals: NDArray[np.float64]) -> SegmentLevels:
    """Summaries of statistics summed over bins, ``totals`` [S, N, F]."""
    n = totals[:, :, REQUESTS]
    rev = totals[:, :, REVENUE]
    rev2 = totals[:, :, REVENUE_SQ]
    n_all, rev_all, rev2_all = n.sum(axis=0), rev.sum(axis=0), rev2.sum(axis=0)
    mean_all = np.where(n_all > 0, rev_all / np.maximum(n_all, 1e-12), 0.0)
    # c² = Σ n·var / Σ n·mean² over segments with enough data (within-segment only: the
    # spread between segments is what τ² measures); else the placement's own.
    fit = n >= MIN_FIT_REQUESTS
    safe_n = np.maximum(n, 1e-12)
    within = np.where(fit, np.maximum(rev2 - rev**2 / safe_n, 0.0), 0.0).sum(axis=0)
    scale = np.where(fit, rev**2 / safe_n, 0.0).sum(axis=0)
    pooled = np.where(mean_all > 0, rev2_all / np.maximum(n_all, 1e-12) / np.maximum(mean_all, 1e-12) ** 2 - 1, 0)
    rel_var = np.where(scale > 0, within / np.maximum(scale, 1e-300), np.where(mean_all > 0, pooled, DEFAULT_REL_VAR))
    rel_var = np.clip(rel_var, 0.01, 100.0)
    floor = np.maximum(mean_all, 1e-9)  # a network that never paid: every level is the same
    level = np.log((rev + LEVEL_PSEUDO_REQUESTS * floor) / (n + LEVEL_PSEUDO_REQUESTS))
    variance = rel_var / (n + LEVEL_PSEUDO_REQUESTS)
    return SegmentLevels(n, level, variance, rel_var, np.log(floor))


# ------------------------------------------------------------------------------ fields
def field_codes(segments: Sequence[str], n_fields: int) -> tuple[NDArray[np.int64], tuple[int, ...]]:
    """Integer code of each segment's value of each field, [S, n_fields], and the number of
    distinct values per field. Keys are the field values joined by ``|`` (a key with
    another number of parts reads as one value of its own in every field)."""
    parts = [key.split("|") for key in segments]
    codes = np.zeros((len(segments), n_fields), dtype=np.int64)
    sizes = []
    for f in range(n_fields):
        values = [p[f] if len(p) == n_fields else "\x00" + key for p, key in zip(parts, segments, strict=True)]
        uniques, inverse = np.unique(np.array(values, dtype=np.str_), return_inverse=True)
        codes[:, f] = inverse.ravel()
        sizes.append(len(uniques))
    return codes, tuple(sizes)


# ------------------------------------------------------------------------------ model
@dataclass(frozen=True, slots=True)
class AdditiveFit:
    """The fitted model: each segment's leave-one-out prediction ``mean`` [S, N] and its
    variance [S, N]; τ² [N]; field-effect variances σ_f² [F', N] of the fields kept
    (``fields``), the intercept [N] and effects (one [L_f, N] per kept field)."""

    mean: NDArray[np.float64]
    variance: NDArray[np.float64]
    tau2: NDArray[np.float64]
    fields: tuple[int, ...]
    field_var: NDArray[np.float64]
    intercept: NDArray[np.float64]
    effects: tuple[NDArray[np.float64], ...]
    #: How far predictions or log(τ² + p) moved in the last sweep (below ``TOL``: converged).
    last_change: float


def _sums(index: NDArray[np.int64], size: int, *weights: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    """Sums of each [S, N] array over segments sharing a field value: [L, N] each (``index``
    [S·N] flattens (value, network))."""
    n = weights[0].shape[1]
    return [np.bincount(index, weights=w.ravel(), minlength=size * n).reshape(size, n) for w in weights]


def fit_additive(
    y: NDArray[np.float64],
    v: NDArray[np.float64],
    in_fit: NDArray[np.bool_],
    codes: NDArray[np.int64],
    sizes: Sequence[int],
    prior_mean: NDArray[np.float64],
) -> AdditiveFit:
    """Fit y [S, N] (sampling variances v [S, N]; segments ``in_fit``) on the field values
    ``codes`` [S, F] (``sizes`` values per field); ``prior_mean`` [N] centres the intercept.

    Iterations run over the fitted segments only: one backfitting sweep (intercept, then
    each field; each step also gives its component's leave-one-out term), the evidence step
    of each σ_f² and one step of the likelihood equation for τ²; they stop when no
    prediction and no log(τ² + p) moves by ``TOL`` — run ``MAX_ITER`` times (see there). A
    last pass predicts every segment.
    """
    s_count, n = y.shape
    w_in = in_fit.astype(np.float64)
    # A field's effects are told apart from τ² only by segments sharing a value: on each
    # network, its values seen in fitted segments must be seen in REPLICATION segments each
    # on average (else σ_f² and τ² trade along a ridge the data cannot resolve).
    index_all = [(codes[:, f, None] * n + np.arange(n)).ravel() for f in range(codes.shape[1])]
    counts = [_sums(index_all[f], sizes[f], w_in)[0] for f in range(codes.shape[1])]  # [L_f, N] each
    active_all = np.array(
        [(c.sum(axis=0) >= REPLICATION * (c > 0).sum(axis=0)) & ((c >= 2).sum(axis=0) >= 1) for c in counts]
    ).reshape(-1, n)  # [F, N]
    fields = tuple(f for f in range(codes.shape[1]) if active_all[f].any())
    active = active_all[list(fields)]
    tau2 = np.full(n, TAU_PRIOR**2)
    field_var = np.full((len(fields), n), FIELD_SD_PRIOR**2)
    mu = np.array(prior_mean, dtype=np.float64)
    effects = [np.zeros((sizes[f], n)) for f in fields]
    # Iterate on the segments in the fit only; the others are predicted once at the end.
    rows = np.flatnonzero(in_fit.any(axis=1))
    yr, vr, wr_in, cr = y[rows], v[rows], w_in[rows], codes[rows]
    index_r = [(cr[:, f, None] * n + np.arange(n)).ravel() for f in fields]
    part = [np.zeros((len(rows), n)) for _ in fields]  # each field's fitted values per segment
    resid = yr - mu  # y − μ − Σ_f part_f
    mu_prec = 1.0 / INTERCEPT_SD_PRIOR**2
    last_mean, last_spread = np.full((len(rows), n), np.inf), np.full((len(rows), n), np.inf)
    moved = np.inf
    for _ in range(MAX_ITER):
        w = wr_in / (vr + tau2)
        # An inactive (field, network) has an infinite ridge: no effect, no variance.
        pens = np.where(active, 1.0 / field_var, np.inf)
        # One backfitting sweep (intercept, then each field); each step also gives the
        # leave-one-out prediction of its component: its sums without the segment's own term.
        partial = resid + mu
        wp = w * partial
        sw, swp = w.sum(axis=0), wp.sum(axis=0)
        mu = (swp + mu_prec * prior_mean) / (sw + mu_prec)
        resid = partial - mu
        inv = 1.0 / (sw - w + mu_prec)
        mean = (swp - wp + mu_prec * prior_mean) * inv
        var = inv
        new_field_var = np.empty_like(field_var)
        for k, f in enumerate(fields):
            c = cr[:, f]
            partial = resid + part[k]
            wp = w * partial
            weight, wsum = _sums(index_r[k], sizes[f], w, wp)
            effects[k] = wsum / (weight + pens[k])
            part[k] = effects[k][c]
            resid = partial - part[k]
            inv = 1.0 / (weight[c] - w + pens[k])
            mean += (wsum[c] - wp) * inv
            var += inv
            # σ_f² by the evidence fixed point (MacKay): Σβ² over the γ effectively
            # determined values, γ = Σ W / (W + 1/σ²), plus one pseudo-value at the prior.
            # It converges far faster than EM, whose steps stall where σ_f² and τ² trade.
            gamma = (weight / (weight + 1.0 / field_var[k])).sum(axis=0)
            new_field_var[k] = ((effects[k] ** 2).sum(axis=0) + FIELD_SD_PRIOR**2) / (gamma + 1.0)
        new_field_var = np.where(active, np.maximum(new_field_var, MIN_VARIANCE), field_var)
        # τ²: likelihood equation of the leave-one-out residuals, one pseudo-segment at the prior.
        a = wr_in / (vr + var + tau2) ** 2
        excess = (yr - mean) ** 2 - vr - var
        a0 = 1.0 / tau2**2
        new_tau2 = np.maximum(((a * excess).sum(axis=0) + a0 * TAU_PRIOR**2) / (a.sum(axis=0) + a0), MIN_VARIANCE)
        # What the fit is for: each prediction (log level) and its strength's denominator
        # τ² + p (relative); how far they moved in the last sweep is reported.
        spread = np.log(var + new_tau2)
        moved = max(
            float(np.max(np.abs(mean - last_mean), initial=0.0)),
            float(np.max(np.abs(spread - last_spread), initial=0.0)),
        )
        tau2, field_var, last_mean, last_spread = new_tau2, new_field_var, mean, spread
    # Every segment's prediction from the final fit (leaving its own term out where it is in the fit).
    w = w_in / (v + tau2)
    pens = np.where(active, 1.0 / field_var, np.inf)
    part_all = [effects[k][codes[:, f]] for k, f in enumerate(fields)]
    resid = y - mu - sum(part_all, np.zeros((s_count, n)))
    partial = resid + mu
    wp = w * partial
    sw, swp = w.sum(axis=0), wp.sum(axis=0)
    inv = 1.0 / (sw - w + mu_prec)
    mean = (swp - wp + mu_prec * prior_mean) * inv
    var = inv
    for k, f in enumerate(fields):
        c = codes[:, f]
        partial = resid + part_all[k]
        wp = w * partial
        weight, wsum = _sums(index_all[f], sizes[f], w, wp)
        inv = 1.0 / (weight[c] - w + pens[k])
        mean += (wsum[c] - wp) * inv
        var += inv
    return AdditiveFit(mean, var, tau2, fields, field_var, mu, tuple(effects), moved)


# ------------------------------------------------------------------------------ target
def shift_log_price(stats: NDArray[np.float64], delta: NDArray[np.float64]) -> NDArray[np.float64]:
    """Statistics [N, F, B] of a market whose bids are all e^δ times these, δ [N] per network.

    The shift is split between the two nearest whole numbers of bins (weights keep the mean
    shift δ), each of them exact: bins move, revenue scales by e^{kw}, revenue² by e^{2kw},
    summed log floors and prices grow by count · kw (w = ``BIN_WIDTH``). Mass shifted off
    the price grid is dropped.
    """
    steps = np.asarray(delta, dtype=np.float64) / BIN_WIDTH
    low = np.floor(steps).astype(np.int64)
    frac = (steps - low)[:, None, None]
    return (1.0 - frac) * _shift_bins(stats, low) + frac * _shift_bins(stats, low + 1)


def _shift_bins(stats: NDArray[np.float64], k: NDArray[np.int64]) -> NDArray[np.float64]:
    """``stats`` [N, F, B] moved up by ``k`` [N] whole bins, fields adjusted (see above)."""
    n_net, n_fields, n_bins = stats.shape
    source = np.arange(n_bins)[None, :] - k[:, None]  # [N, B]: the bin each bin comes from
    valid = (source >= 0) & (source < n_bins)
    first = (np.arange(n_net)[:, None, None] * n_fields + np.arange(n_fields)[None, :, None]) * n_bins
    moved = stats.ravel().take(first + np.clip(source, 0, n_bins - 1)[:, None, :]) * valid[:, None, :]
    d = (k * BIN_WIDTH)[:, None]
    moved[:, REVENUE] *= np.exp(d)
    moved[:, REVENUE_SQ] *= np.exp(2.0 * d)
    moved[:, NOFILL_LOGF] += d * (moved[:, REQUESTS] - moved[:, FILLS])
    moved[:, ATFLOOR_LOGF] += d * moved[:, ATFLOOR]
    moved[:, PRICE_LOGP] += d * moved[:, PRICE]
    return moved


#: Statistics fields that are counts or sums of non-negative values (never negative after
#: subtracting a segment from the placement).
_NON_NEGATIVE = [REQUESTS, FILLS, REVENUE, REVENUE_SQ, ATFLOOR, PRICE]


@dataclass(frozen=True)
class SegmentPool:
    """Each segment's prior, fitted once per refresh from all segments' totals.

    ``level`` [S, N] is the log revenue per request predicted for each segment (leave one
    out), ``strength`` [S, N] its weight κ in pseudo-requests; ``tau2`` [N], ``rel_var`` [N]
    and the model ``fit`` are kept for reports. ``rows`` maps a segment key to its row.
    """

    rows: dict[str, int]
    level: NDArray[np.float64]
    strength: NDArray[np.float64]
    tau2: NDArray[np.float64]
    rel_var: NDArray[np.float64]
    fit: AdditiveFit | None

    @classmethod
    def fit_stats(cls, stats: SufficientStats, n_fields: int, *, fields: bool = True) -> SegmentPool:
        """Fit on a placement's statistics whose segment keys join ``n_fields`` field values;
        ``fields=False`` gives the flat pool (every segment predicted by the same intercept)."""
        segments = list(stats.segments)
        n = stats.n_networks
        if not segments:
            empty = np.zeros((0, n))
            return cls({}, empty, empty, np.full(n, TAU_PRIOR**2), np.full(n, DEFAULT_REL_VAR), None)
        levels = segment_levels(stats.totals())
        codes, sizes = field_codes(segments, n_fields if fields else 0)
        fit = fit_additive(
            levels.level,
            levels.variance,
            levels.requests >= MIN_FIT_REQUESTS,
            codes,
            sizes,
            levels.placement_level,
        )
        strength = np.clip(levels.rel_var / (fit.tau2 + fit.variance), 0.0, MAX_STRENGTH)
        return cls({s: i for i, s in enumerate(segments)}, fit.mean, strength, fit.tau2, levels.rel_var, fit)

    def prior(self, segment: str, own: NDArray[np.float64], pooled: NDArray[np.float64]) -> NDArray[np.float64]:
        """Prior statistics [N, F, B] to add to a segment's own ``own`` [N, F, B], given the
        placement's ``pooled`` [N, F, B]: the rest of the placement, shifted to the
        segment's predicted level, weighted like κ requests (at most all of the rest)."""
        row = self.rows.get(segment)
        if row is None:
            return np.zeros_like(own)
        rest = pooled - own
        rest[:, _NON_NEGATIVE] = np.maximum(rest[:, _NON_NEGATIVE], 0.0)
        n_rest = rest[:, REQUESTS].sum(axis=1)
        rev_rest = rest[:, REVENUE].sum(axis=1)
        has = (n_rest > 0) & (rev_rest > 0)
        rest_level = np.log(np.where(has, rev_rest, 1.0) / np.where(has, n_rest, 1.0))
        delta = np.where(has, np.clip(self.level[row] - rest_level, -MAX_SHIFT, MAX_SHIFT), 0.0)
        share = np.where(n_rest > 0, np.minimum(self.strength[row] / np.maximum(n_rest, 1e-12), 1.0), 0.0)
        return share[:, None, None] * shift_log_price(rest, delta)
