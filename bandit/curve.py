"""Revenue curve posterior: a parametric prior mean corrected by model-free evidence.

The censored mixture (:mod:`bandit.gmm`) gives a revenue curve ``R_m(x)`` over log floor
``x`` that is exact only when the market comes from its family. Real networks break it
(a value shock shared by the bidders, over-dispersed bidder counts, cent-rounded prices,
floor-responsive first-price bidders, throttling), so the curve used for decisions is

    R(x) = R_m(x) + e(x),   e ~ GP(0, a² exp(-(x - x')² / (2 ℓ²)))

and the binned statistics observe it directly: the mean revenue per request ``r̄_b`` of
floor bin ``b`` is ``R(x_b)`` plus noise of variance ``σ_b² / n_b`` (``n_b`` discounted
requests, ``σ_b²`` their revenue variance shrunk towards the cell's). The posterior of
``R`` on a floor grid is Gaussian with

    mean = R_m(grid) + K_gb (K_bb + N)⁻¹ (r̄ − R_m(x_b)),   cov = K_gg − K_gb (K_bb + N)⁻¹ K_bg,

so where floors were tried the data decide, and away from them the mixture extrapolates
(its no-fill censoring still informs floors never tried). Cost O(G³) per cell and refresh
(G ≈ 70 grid points), independent of the number of events.

Draws for Thompson sampling are ``mean + L z`` with fixed standard normals ``z`` per
network (common random numbers across refreshes: the weights move only when the data do).
Exposure weights are P(network's best draw is the best of all), computed exactly over the
empirical distributions of the draws (Rao–Blackwellised over the other networks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bandit.stats import (
    ATFLOOR,
    ATFLOOR_LOGF,
    FILLS,
    LOG_CENTERS,
    LOG_PRICE_MIN,
    REQUESTS,
    REVENUE,
    REVENUE_SQ,
    log_price,
    mean_position,
    price_bin,
)

#: Pseudo-requests of the cell-level revenue variance mixed into each bin's variance.
VARIANCE_PRIOR = 10.0
#: Smallest relative jitter on the GP covariance diagonal (numerical stability).
_DIAG_JITTER = 1e-9


def floor_grid(floor_min: float, floor_max: float) -> NDArray[np.float64]:
    """Log-floor grid [G]: the statistics bin centres inside the bounds plus both bounds."""
    lo = math.log(max(floor_min, math.exp(LOG_PRICE_MIN)))
    hi = math.log(max(floor_max, math.exp(lo)))
    inside = LOG_CENTERS[(LOG_CENTERS > lo) & (LOG_CENTERS < hi)]
    return np.unique(np.concatenate([[lo], inside, [hi]]))


@dataclass(frozen=True, slots=True)
class BinnedEvidence:
    """Model-free revenue evidence of one cell: per tried floor bin (arrays [B'])
    its log floor (bin centre), mean revenue per request and that mean's variance."""

    log_floor: NDArray[np.float64]
    mean: NDArray[np.float64]
    variance: NDArray[np.float64]
    requests: NDArray[np.float64]

    @classmethod
    def of(
        cls,
        stats: NDArray[np.float64],
        lo: float,
        hi: float,
        min_requests: float = 1.0,
        price_above: NDArray[np.float64] | None = None,
    ) -> BinnedEvidence:
        """Evidence from statistics [F, B] for floor bins within log bounds ``[lo, hi]``: each
        bin's mean revenue per request, or, given ``price_above`` (a model's mean price of a
        fill above the floor at every bin centre [B]), its revenue read through its fills
        (:func:`revenue_through_fills`)."""
        n = stats[REQUESTS]
        total = float(n.sum())
        lo_bin, hi_bin = price_bin(np.array([lo, hi]))
        used = (n >= min_requests) & (np.arange(len(n)) >= lo_bin) & (np.arange(len(n)) <= hi_bin)
        if total <= 0 or not used.any():
            return cls(*(np.zeros(0) for _ in range(4)))
        nb = n[used]
        if price_above is None:
            cell_mean = float(stats[REVENUE].sum()) / total
            cell_var = max(float(stats[REVENUE_SQ].sum()) / total - cell_mean**2, 1e-12)
            mean = stats[REVENUE, used] / nb
            own_var = np.maximum(stats[REVENUE_SQ, used] / nb - mean**2, 0.0)
        else:
            mean, own_var, cell_var = revenue_through_fills(stats, used, price_above[used])
        var = (nb * own_var + VARIANCE_PRIOR * cell_var) / (nb + VARIANCE_PRIOR)
        x = np.clip(LOG_CENTERS[used], lo, hi)
        return cls(x, mean, var / nb, nb)


def revenue_through_fills(
    stats: NDArray[np.float64], used: NDArray[np.bool_], price_above: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Revenue per request of the floor bins ``used`` read through their fills,

        R(f) = f·P(fill at the floor | f) + P(fill above the floor | f)·E[price | price > f],

    exact (to the at-floor tolerance) for any auction whose price above the floor does not
    depend on the floor (the second bid of a second-price auction, with a shared value
    shock, over-dispersed bidders, a cent increment or a throttle alike). Both shares are counted in the bin; the
    mean price above the floor is the model's (``price_above`` [B'], a shape the mixture
    fits to the prices themselves), times the one factor that makes the cell's revenue above
    the floor the observed one. A bin's noise is then which of no fill, a fill at the floor
    or one above it a request gave, no longer the spread of the prices above the floor: under
    a shared value shock 2/5 of the binned revenue's variance. Returns the bins' means and
    per-request variances [B'] and the cell's per-request variance."""
    n = stats[REQUESTS, used]
    at = stats[ATFLOOR, used]
    above = np.maximum(stats[FILLS, used] - at, 0.0)
    at_floor = np.exp(mean_position(stats[ATFLOOR], stats[ATFLOOR_LOGF])[used])
    above_revenue = float(np.maximum(stats[REVENUE, used] - at * at_floor, 0.0).sum())
    expected = float((above * price_above).sum())
    price = price_above * (above_revenue / expected if expected > 0 else 1.0)
    p_above, p_at = above / n, at / n
    mean = p_above * price + p_at * at_floor
    own_var = np.maximum(p_above * price**2 + p_at * at_floor**2 - mean**2, 0.0)
    share_above, share_at = float(above.sum() / n.sum()), float(at.sum() / n.sum())
    cell_mean = share_above * price + share_at * at_floor
    cell_var = float(np.mean(share_above * price**2 + share_at * at_floor**2 - cell_mean**2))
    return mean, own_var, max(cell_var, 1e-12)


def se_kernel(a: NDArray[np.float64], b: NDArray[np.float64], length: float) -> NDArray:
    """Squared-exponential correlation [len(a), len(b)] in log floor."""
    d = (a[:, None] - b[None, :]) / length
    return np.exp(-0.5 * d * d)


def choose_doubt(
    resid: NDArray[np.float64],
    corr: NDArray[np.float64],
    noise: NDArray[np.float64],
    candidates: NDArray[np.float64],
    margin: float = 2.0,
) -> float:
    """The relative misfit ``doubt`` of a prior curve, from its residuals [B'] at the evidence.

    Type-II maximum likelihood over ascending ``candidates`` under
    ``resid ~ N(0, doubt² · corr + diag(noise))``, with parsimony: the smallest candidate
    whose log marginal likelihood is within ``margin`` of the best, so noise alone never
    buys the model a looser leash (a misfit must show in the data).
    """
    if len(resid) == 0:
        return float(candidates[0])
    lls = np.full(len(candidates), -np.inf)
    for i, d in enumerate(candidates):
        cov = d * d * corr
        cov[np.diag_indices_from(cov)] += noise
        try:
            factor = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            continue
        alpha = np.linalg.solve(factor, resid)
        lls[i] = -0.5 * float(alpha @ alpha) - float(np.log(np.diag(factor)).sum())
    ok = np.flatnonzero(lls >= lls.max() - margin)
    return float(candidates[ok[0]])


@dataclass(frozen=True, slots=True)
class CurvePosterior:
    """Gaussian posterior of the revenue curve on ``grid`` [G]: the correction of the prior
    mean (``gain`` [G, B'] applied to the evidence residuals) and the covariance factor
    ``chol`` [G, G] (lower triangular, ``cov = chol @ chol.T``)."""

    grid: NDArray[np.float64]
    evidence: BinnedEvidence
    gain: NDArray[np.float64]
    chol: NDArray[np.float64]

    def mean(self, prior_grid: NDArray[np.float64], prior_at_evidence: NDArray[np.float64]) -> NDArray:
        """Posterior mean [..., G] for prior curves [..., G] (and at the evidence [..., B'])."""
        resid = self.evidence.mean - prior_at_evidence
        return prior_grid + resid @ self.gain.T

    def draws(self, mean: NDArray[np.float64], z: NDArray[np.float64]) -> NDArray[np.float64]:
        """Curve draws [M, G] from a posterior mean [G] and standard normals ``z`` [M, G]."""
        return mean[None, :] + z @ self.chol.T

    def sd(self) -> NDArray[np.float64]:
        """Posterior standard deviation [G]."""
        return np.sqrt(np.einsum("ij,ij->i", self.chol, self.chol))


def curve_posterior(
    grid: NDArray[np.float64],
    evidence: BinnedEvidence,
    scale_grid: NDArray[np.float64],
    scale_at: NDArray[np.float64],
    doubt: float,
    length: float,
) -> CurvePosterior:
    """The GP correction of a prior curve on ``grid`` given binned ``evidence`` (see module).

    The correction's sd is ``doubt × scale`` (``scale_grid`` [G] on the grid, ``scale_at``
    [B'] at the evidence), i.e. a relative misfit of the prior curve, correlated over
    ``length`` in log floor.
    """
    k_gg = doubt**2 * se_kernel(grid, grid, length) * np.outer(scale_grid, scale_grid)
    jitter = _DIAG_JITTER * float(np.max(k_gg.diagonal())) + 1e-18
    if len(evidence.mean) == 0:
        gain = np.zeros((len(grid), 0))
        cov = k_gg
    else:
        k_bb = doubt**2 * se_kernel(evidence.log_floor, evidence.log_floor, length) * np.outer(scale_at, scale_at)
        k_gb = doubt**2 * se_kernel(grid, evidence.log_floor, length) * np.outer(scale_grid, scale_at)
        k_bb[np.diag_indices_from(k_bb)] += evidence.variance + jitter
        factor = np.linalg.cholesky(k_bb)
        solved = np.linalg.solve(factor, k_gb.T)  # [B', G] = L⁻¹ K_bg
        gain = np.linalg.solve(factor.T, solved).T  # K_gb K_bb⁻¹
        cov = k_gg - solved.T @ solved
    cov = 0.5 * (cov + cov.T)
    cov[np.diag_indices_from(cov)] += jitter
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(cov)
        chol = v * np.sqrt(np.clip(w, 0.0, None))[None, :]
    return CurvePosterior(grid, evidence, gain, chol)


#: Relative gap below which two grid values of a curve count as tied.
TIE_RTOL = 1e-9


def best_on_grid(grid: NDArray[np.float64], curves: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    """Each curve's [M, G] maximising log floor and its value ([M] each), refined between grid
    points by the vertex of the parabola through the best point and its neighbours."""
    j = _best_index(curves)
    rows = np.arange(curves.shape[0])
    best_x, best_v = grid[j].copy(), curves[rows, j].copy()
    if len(grid) < 3:
        return best_x, best_v
    x1, y1, a, b, lo, hi = _parabola(grid, curves, j)
    ok = (j > 0) & (j < len(grid) - 1) & (a < 0)
    shift = np.clip(np.where(ok, -b / (2 * np.where(ok, a, -1.0)), 0.0), lo, hi)
    best_x = np.where(ok, x1 + shift, best_x)
    best_v = np.where(ok, y1 + b * shift + a * shift**2, best_v)
    return best_x, best_v


def sharpened(curves: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """Draws [M, G] of the posterior with 1/k of the variance of the independent draws
    ``curves`` [M, G] (same mean): each the mean of k cyclically consecutive draws."""
    return sum(np.roll(curves, -i, axis=0) for i in range(k)) / k


def affordable_jitter(grid: NDArray[np.float64], curve: NDArray[np.float64], cap: float, loss: float) -> float:
    """The sd of a log-normal floor jitter, at most ``cap``, that costs at most ``loss`` (a share
    of the best revenue) on the posterior mean ``curve`` [G]: around its best floor, on the
    parabola ``y* + a (x - x*)²`` through its best grid point and its neighbours, a jitter of
    sd σ costs ``|a| σ²`` in expectation, so ``σ = sqrt(loss · y* / |a|)``. A sharp peak (a
    floor-responsive first-price network: revenue falls steeply on both sides of its best
    floor) gets a narrower jitter than a flat one; a best floor on a bound (the bound
    truncates the jitter there) or a curve without a peak keeps ``cap``."""
    j = _best_index(curve[None, :])
    if len(grid) < 3 or not 0 < j[0] < len(grid) - 1:
        return cap
    _, y1, a, b, _, _ = _parabola(grid, curve[None, :], j)
    if not a[0] < 0:
        return cap
    peak = float(y1[0] - b[0] ** 2 / (4 * a[0]))  # the vertex's value
    return min(cap, math.sqrt(loss * max(peak, 0.0) / -float(a[0])))


def _best_index(curves: NDArray[np.float64]) -> NDArray[np.int64]:
    """Each curve's [M, G] best grid index. Ties within float noise (a flat curve: floors below
    every bid earn the same) go to the highest floor, so statistics equal up to float error
    give the same best floor."""
    top = curves.max(axis=1, keepdims=True)
    near = curves >= top - TIE_RTOL * np.maximum(np.abs(top), 1e-12)
    return curves.shape[1] - 1 - np.argmax(near[:, ::-1], axis=1)


def _parabola(grid: NDArray[np.float64], curves: NDArray[np.float64], j: NDArray[np.int64]) -> tuple[NDArray, ...]:
    """The parabola ``y1 + b s + a s²`` (``s = x - x1``) through each curve's grid point ``j``
    (moved inside) and its neighbours (non-uniform spacing near the bounds): ``x1, y1, a, b``
    and the offsets of the neighbours ``s`` ∈ [lo, hi]; ``a = 0`` where the points coincide."""
    rows = np.arange(curves.shape[0])
    jj = np.clip(j, 1, len(grid) - 2)
    x0, x1, x2 = grid[jj - 1], grid[jj], grid[jj + 1]
    y0, y1, y2 = curves[rows, jj - 1], curves[rows, jj], curves[rows, jj + 1]
    d0, d2 = x0 - x1, x2 - x1
    denom = d0 * d2 * (d0 - d2)
    safe = np.where(denom != 0, denom, 1.0)
    a = np.where(denom != 0, ((y0 - y1) * d2 - (y2 - y1) * d0) / safe, 0.0)
    b = np.where(denom != 0, ((y2 - y1) * d0**2 - (y0 - y1) * d2**2) / safe, 0.0)
    return x1, y1, a, b, d0, d2


def prob_best_draws(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(network i has the highest value) [N] from independent draws [M, N] of each network.

    Rao–Blackwellised: for every draw of network i, the exact probability that it beats a
    random draw of every other network (empirical CDFs), averaged. Far smoother than counting
    which network wins each joint draw; ties split evenly.
    """
    m, n = values.shape
    if n == 1:
        return np.ones(1)
    log_beat = np.zeros((m, n))
    for k in range(n):
        col = np.sort(values[:, k])
        below = np.searchsorted(col, values, side="left")
        equal = np.searchsorted(col, values, side="right") - below
        frac = (below + 0.5 * equal) / m  # P(draw of k < value), ties split
        contrib = np.log(np.maximum(frac, 1e-300))
        contrib[:, k] = 0.0
        log_beat += contrib
    p = np.exp(log_beat).mean(axis=0)
    total = p.sum()
    return p / total if total > 0 else np.full(n, 1.0 / n)


def floor_histogram(
    grid: NDArray[np.float64], best_x: NDArray[np.float64], floor_min: float, floor_max: float, max_floors: int = 24
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """At most ``max_floors`` distinct floors (CPM) standing for the draws' best log floors [M],
    and their frequencies.

    Floors are rounded to a quarter of a grid step (coarser if needed to fit ``max_floors``)
    so near-identical draws share a candidate, and mapped back into the network's bounds
    (the lowest grid point stands for ``floor_min`` itself, which may be 0).
    """
    step = float(np.min(np.diff(grid))) / 4 if len(grid) > 1 else 1.0
    while True:
        key = np.round(best_x / step).astype(np.int64)
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        if len(counts) <= max_floors:
            break
        step *= 2
    x = np.bincount(inverse.ravel(), weights=best_x) / counts
    floors = np.clip(np.exp(x), floor_min, floor_max)
    floors = np.where(x <= grid[0] + 1e-12, floor_min, floors)
    return floors, counts / counts.sum()


def log_bounds(floor_min: float, floor_max: float) -> tuple[float, float]:
    """The network's floor bounds in the log CPM the statistics use."""
    lo = float(log_price(np.array([floor_min]))[0])
    return lo, max(lo, float(log_price(np.array([floor_max]))[0]))


def empirical_se(stats: NDArray[np.float64], log_floor: float, half_width: float) -> float:
    """Model-free standard error of the revenue per request of floors within ``half_width``
    (log CPM) of ``log_floor``, from statistics [F, B]; 0 without data there."""
    near = np.abs(LOG_CENTERS - log_floor) <= half_width
    n = float(stats[REQUESTS, near].sum())
    if n < 2.0:
        return 0.0
    mean = float(stats[REVENUE, near].sum()) / n
    var = max(float(stats[REVENUE_SQ, near].sum()) / n - mean**2, 0.0)
    return math.sqrt(var / n)
