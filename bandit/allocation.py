"""Allocation maths: P(network is best), share-constraint projection, and the per-segment
decision table that turns an allocation into sampled decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.special import log_ndtr, ndtr, ndtri

from bandit.stats import LOG_EDGES, log_price, price_bin

#: Columns of ``SegmentTable.summary`` (per network).
SUMMARY_FIELDS = (
    "floor_cpm",
    "floor_p10_cpm",
    "floor_p90_cpm",
    "expected_revenue_cpm",
    "revenue_sd_cpm",
    "fill_rate",
    "auction",
    "auction_confidence",
)
AUCTION_CODES = ("auto", "first", "second")


def prob_best_normal(mean: NDArray[np.float64], sd: NDArray[np.float64], n_grid: int = 512) -> NDArray[np.float64]:
    """P(arm i has the highest value) for independent normals ``N(mean[i], sd[i]²)``, shape [N].

    Computed by quadrature of ``∫ φ_i(x) Π_{j≠i} Φ_j(x) dx`` on a common grid; arms
    with sd → 0 are treated as nearly point masses. Deterministic and smooth in the inputs.
    """
    mean = np.asarray(mean, dtype=np.float64)
    n = len(mean)
    if n == 1:
        return np.ones(1)
    scale = max(float(np.max(np.abs(mean))), 1e-12)
    sd = np.maximum(np.asarray(sd, dtype=np.float64), 1e-6 * scale + 1e-12)
    lo = float(np.min(mean - 8 * sd))
    hi = float(np.max(mean + 8 * sd))
    x = np.linspace(lo, hi, n_grid)
    z = (x[None, :] - mean[:, None]) / sd[:, None]  # [N, G]
    log_cdf = log_ndtr(z)
    total = log_cdf.sum(axis=0)
    pdf = np.exp(-0.5 * z**2) / (np.sqrt(2 * np.pi) * sd[:, None])
    integrand = pdf * np.exp(total[None, :] - log_cdf)
    p = np.trapezoid(integrand, x, axis=1)
    # Quadrature error can leave tiny negatives; a degenerate case falls back to the argmax.
    p = np.clip(p, 0.0, None)
    s = p.sum()
    if not np.isfinite(s) or s <= 0:
        p = (mean == mean.max()).astype(float)
        s = p.sum()
    return p / s


def project_shares(p: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.float64]:
    """Closest weights to ``p`` (Euclidean) with ``lo <= w <= hi`` and ``sum(w) == 1``.

    Solves ``w = clip(p - tau, lo, hi)`` for the scalar ``tau`` by bisection; the
    constraints must be feasible (``sum(lo) <= 1 <= sum(hi)``, checked by the config).
    """
    p = np.asarray(p, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if np.all(lo <= p) and np.all(p <= hi) and abs(p.sum() - 1.0) < 1e-12:
        return p.copy()
    a, b = float(np.min(p - hi)) - 1.0, float(np.max(p - lo)) + 1.0
    for _ in range(100):
        tau = 0.5 * (a + b)
        if np.clip(p - tau, lo, hi).sum() > 1.0:
            a = tau
        else:
            b = tau
    w = np.clip(p - 0.5 * (a + b), lo, hi)
    # Put the last rounding error on a network with slack so the sum is exactly 1.
    err = 1.0 - w.sum()
    slack = (hi - w) if err > 0 else (w - lo)
    w[int(np.argmax(slack))] += err
    return w


def greedy_fill(values: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.float64]:
    """Revenue-maximising shares for each row of arm values [D, N] under the share contract.

    The LP "max Σ w·v s.t. lo <= w <= hi, Σ w = 1" is solved by giving every arm its minimum
    and then the rest to arms in decreasing order of value, each up to its maximum.
    """
    d, n = values.shape
    w = np.broadcast_to(lo, (d, n)).copy()
    remaining = np.full(d, 1.0 - lo.sum())
    order = np.argsort(-values, axis=1)
    rows = np.arange(d)
    for r in range(n):
        j = order[:, r]
        add = np.minimum(hi[j] - lo[j], remaining)
        w[rows, j] += add
        remaining -= add
    return w


def shares_bind(lo: NDArray[np.float64], hi: NDArray[np.float64]) -> bool:
    """Whether a min/max share contract restricts anything."""
    return bool(np.any(lo > 0.0) or np.any(hi < 1.0))


def matched_shares(
    samples: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Thompson sampling with a share contract: the average over posterior samples of network
    values [D, N] of the contract-constrained optimal allocation (:func:`greedy_fill`).

    Exact min/max shares (an average of feasible points is feasible), and traffic a capped
    network cannot take goes to the next-best networks rather than evenly to all.
    """
    w = greedy_fill(samples, lo, hi).mean(axis=0)
    return project_shares(w / w.sum(), lo, hi)


@dataclass
class SegmentTable:
    """How one segment's requests are decided: P(network) and a floor sampler per network.

    weights [N] sum to 1; floors [N, M] are candidate floors with probabilities
    floor_probs [N, M] (rows sum to 1); floor_propensity [N, M] is the probability of the
    candidate's floor *bin* given the network (what off-policy evaluation needs);
    summary [N, len(SUMMARY_FIELDS)] describes the allocation for humans and dashboards.

    Continuous floors: when ``floor_log_sd`` [N] is positive for a network, a decision's
    floor is its candidate times a log-normal jitter, ``log f ~ N(log floors[n, m], sd²)``
    truncated to ``floor_bounds[n]`` (log CPM, [N, 2]), so floors are explored in both
    directions and the floor has a proper density: :meth:`log_floor_density` gives
    ``p(log f | network)`` for off-policy evaluation, and the decision's ``floor_propensity``
    is then the probability of the sampled floor's bin under that density. A candidate
    floor of 0 is not jittered (it has no log): it stays a point mass at 0, without density.
    """

    weights: NDArray[np.float64]
    floors: NDArray[np.float64]
    floor_probs: NDArray[np.float64]
    floor_propensity: NDArray[np.float64]
    summary: NDArray[np.float64]
    floor_log_sd: NDArray[np.float64] | None = None
    floor_bounds: NDArray[np.float64] | None = None
    #: Multi-network placements (waterfall, auction): P candidate plans, each the tier of every
    #: network (0, 1, … in calling order; −1 not called; an auction calls all its tier-0
    #: networks at once) ``plan_tiers`` [P, N], their floors ``plan_floors`` [P, N] (CPM) and
    #: probabilities ``plan_probs`` [P] (Thompson sampling: the share of posterior draws whose
    #: optimal plan it is). None for single-network placements.
    plan_tiers: NDArray[np.int64] | None = None
    plan_floors: NDArray[np.float64] | None = None
    plan_probs: NDArray[np.float64] | None = None
    cum: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n, m = self.floors.shape
        joint = (self.weights[:, None] * self.floor_probs).ravel()
        self.cum = np.cumsum(joint)
        self.cum /= self.cum[-1]
        self._n_candidates = m
        if self.floor_log_sd is None or not np.any(self.floor_log_sd > 0):
            self.floor_log_sd = np.zeros(n)
        if self.floor_bounds is None:
            self.floor_bounds = np.tile([-np.inf, np.inf], (n, 1))
        self.jittered = bool(np.any(self.floor_log_sd > 0))
        # Plain lists make the one-request path fast (no numpy scalar overhead).
        self._cum_list = self.cum.tolist()
        self._floors_list = self.floors.ravel().tolist()
        self._weights_list = self.weights.tolist()
        self._fprop_list = self.floor_propensity.ravel().tolist()

    def sample(
        self, u: NDArray[np.float64], v: NDArray[np.float64] | None = None
    ) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """Decisions for uniforms ``u`` [k] (and ``v`` [k] for the floor jitter):
        (network, floor_cpm, propensity, floor_propensity)."""
        flat = np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.cum) - 1)
        net = flat // self._n_candidates
        floor = self.floors.ravel()[flat]
        if not self.jittered or v is None:
            return net, floor, self.weights[net], self.floor_propensity.ravel()[flat]
        sd = self.floor_log_sd[net]
        jit = sd > 0
        lo, hi = self.floor_bounds[net, 0], self.floor_bounds[net, 1]
        mu = np.log(np.maximum(floor, 1e-300))
        safe = np.where(jit, sd, 1.0)
        z_lo = np.where(jit, ndtr((lo - mu) / safe), 0.0)
        z_hi = np.where(jit, ndtr((hi - mu) / safe), 1.0)
        z = ndtri(np.clip(z_lo + v * (z_hi - z_lo), 1e-300, 1.0 - 1e-16))
        log_f = np.clip(mu + sd * z, lo, hi)
        floor = np.where(jit & (floor > 0), np.exp(log_f), floor)
        fprop = np.where(jit, self.floor_bin_probability(net, floor), self.floor_propensity.ravel()[flat])
        return net, floor, self.weights[net], fprop

    def sample_plans(self, u: NDArray[np.float64]) -> NDArray[np.int64]:
        """Plan indices [k] for uniforms ``u`` [k] (multi-network placements)."""
        if self.plan_probs is None:
            raise ValueError("this table has no plans (a single-network placement)")
        cum = np.cumsum(self.plan_probs)
        return np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), len(cum) - 1)

    def sample_one(self, u: float, v: float | None = None) -> tuple[int, float, float, float]:
        if self.jittered and v is not None:
            net, floor, prop, fprop = self.sample(np.array([u]), np.array([v]))
            return int(net[0]), float(floor[0]), float(prop[0]), float(fprop[0])
        from bisect import bisect_right

        flat = min(bisect_right(self._cum_list, u), len(self._cum_list) - 1)
        net = flat // self._n_candidates
        return net, self._floors_list[flat], self._weights_list[net], self._fprop_list[flat]

    def _jitter_cdf(self, net: NDArray[np.int64], log_floor: NDArray[np.float64]) -> NDArray:
        """P(log f < log_floor | network) [k] under the jittered floor distribution
        (a step at each candidate floor that is not jittered: other networks, and floors of 0)."""
        sd = self.floor_log_sd[net][:, None]
        jit = (sd > 0) & (self.floors[net] > 0)  # [k, M]
        safe = np.where(jit, sd, 1.0)
        mu = np.log(np.maximum(self.floors[net], 1e-300))  # [k, M]
        lo, hi = self.floor_bounds[net, :1], self.floor_bounds[net, 1:]
        z_lo, z_hi = ndtr((lo - mu) / safe), ndtr((hi - mu) / safe)
        at = np.clip(log_floor[:, None], lo, hi)
        mass = np.clip((ndtr((at - mu) / safe) - z_lo) / np.maximum(z_hi - z_lo, 1e-300), 0.0, 1.0)
        # P(log f < x) for point masses: bins are [edge_b, edge_b+1), like price_bin.
        step = np.where(self.floors[net] > 0, mu, -np.inf) < log_floor[:, None]
        mass = np.where(jit, mass, step.astype(float))
        return (self.floor_probs[net] * mass).sum(axis=1)

    def floor_bin_probability(self, network: NDArray[np.int64], floor_cpm: NDArray[np.float64]) -> NDArray:
        """P(the floor's statistics bin | network) [k] for floors drawn from this table.

        The first and last bins are open-ended (:func:`bandit.stats.price_bin` clamps
        floors below ``PRICE_MIN`` and above ``MAX_CPM`` into them)."""
        net = np.asarray(network, dtype=np.int64)
        b = price_bin(log_price(np.asarray(floor_cpm, dtype=np.float64)))
        upper = np.where(b == len(LOG_EDGES) - 2, np.inf, LOG_EDGES[b + 1])
        lower = np.where(b == 0, -np.inf, LOG_EDGES[b])
        return self._jitter_cdf(net, upper) - self._jitter_cdf(net, lower)

    def log_floor_density(
        self,
        network: NDArray[np.int64],
        floor_cpm: NDArray[np.float64],
        extra_sd: float | NDArray[np.float64] = 0.0,
        *,
        per_candidate: bool = False,
    ) -> NDArray[np.float64]:
        """Density of ``log floor`` given the network [k] (per unit log CPM), jittered networks only.

        ``extra_sd`` (scalar or [k]) > 0 convolves it with a Gaussian kernel of that bandwidth
        in log floor: the kernel-smoothed target density of continuous-action off-policy
        evaluation, ``∫ φ_h(x - y) p(y) dy``. For a candidate's truncated normal
        ``N(m, s²)`` on ``[lo, hi]`` that is, exactly,
        ``φ_√(s²+h²)(x - m) · [Φ((hi - c)/t) - Φ((lo - c)/t)] / Z`` with
        ``c = (x s² + m h²)/(s² + h²)``, ``t = s h / √(s² + h²)`` and ``Z`` the truncation
        mass; for a network without jitter (point masses) it is ``Σ_m p_m φ_h(x - log f_m)``.
        Networks without jitter have no density (NaN) where ``extra_sd`` is 0, and neither has
        a floor of 0 (a candidate floor of 0 stays a point mass at 0: no log, no jitter).
        ``per_candidate`` returns the terms ``p_m · density_m`` [k, M] instead of their sum [k].
        """
        net = np.asarray(network, dtype=np.int64)
        x = np.log(np.maximum(np.asarray(floor_cpm, dtype=np.float64), 1e-300))[:, None]
        h = np.broadcast_to(np.asarray(extra_sd, dtype=np.float64), (len(net),))[:, None]
        sd0 = self.floor_log_sd[net][:, None]
        jit = sd0 > 0
        var = sd0**2 + h**2
        sd = np.sqrt(var)
        safe_sd = np.where(sd > 0, sd, 1.0)
        safe0 = np.where(jit, sd0, 1.0)
        mu = np.log(np.maximum(self.floors[net], 1e-300))
        lo, hi = self.floor_bounds[net, :1], self.floor_bounds[net, 1:]
        z = np.where(jit, ndtr((hi - mu) / safe0) - ndtr((lo - mu) / safe0), 1.0)
        dens = np.exp(-0.5 * ((x - mu) / safe_sd) ** 2) / (np.sqrt(2 * np.pi) * safe_sd)
        smoothed = h > 0
        # Truncation factor: the kernel-smoothed truncated normal (posterior of y given x),
        # or the indicator of the bounds without smoothing.
        c = (x * sd0**2 + mu * h**2) / np.where(smoothed | jit, var, 1.0)
        t = np.where(smoothed & jit, sd0 * h / safe_sd, 1.0)
        kept = np.where(
            jit & smoothed,
            ndtr((hi - c) / t) - ndtr((lo - c) / t),
            np.where(jit, (x >= lo) & (x <= hi), 1.0),
        )
        terms = self.floor_probs[net] * dens * kept / np.maximum(z, 1e-300)  # [k, M]
        has = (sd[:, 0] > 0) & (x[:, 0] > -690.0)
        if per_candidate:
            return np.where(has[:, None], terms, np.nan)
        return np.where(has, terms.sum(axis=1), np.nan)


def floor_bin_propensity(
    floors: NDArray[np.float64], probs: NDArray[np.float64], bins: NDArray[np.int64]
) -> NDArray[np.float64]:
    """For each candidate [N, M], the total probability of candidates in the same bin and row."""
    out = np.empty_like(probs)
    for i in range(floors.shape[0]):
        same = bins[i][:, None] == bins[i][None, :]
        out[i] = same.astype(float) @ probs[i]
    return out
