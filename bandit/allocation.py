"""Allocation maths: P(network is best), share-constraint projection, and the per-segment
decision table that turns an allocation into sampled decisions.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from scipy.special import log_ndtr, ndtr, ndtri

from bandit.stats import LOG_EDGES, N_BINS, log_price, price_bin, price_bin_one

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
#: A log CPM below every positive floor and above a floor of 0 (log 0 = -inf).
_LOG_ABOVE_ZERO = -700.0


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


def discrete_quantile(values: NDArray[np.float64], probs: NDArray[np.float64], q: float) -> float:
    """q-quantile of a discrete distribution on ascending ``values`` with ``probs``."""
    cdf = np.cumsum(probs)
    k = int(np.searchsorted(cdf, q * cdf[-1] - 1e-12, side="left"))
    return float(values[min(k, len(values) - 1)])


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


#: From this many rows on, jittered-floor probabilities are evaluated per distinct row.
DISTINCT_EDGES_MIN = 64


def distinct_rows(net: NDArray[np.int64], x: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The rows of the distinct (net, x) pairs (one each) and every row's place among them:
    ``pairs[first][inverse] == pairs`` ([u] and [k])."""
    order = np.lexsort((x, net))
    sn, sx = net[order], x[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (sn[1:] != sn[:-1]) | (sx[1:] != sx[:-1])
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


@dataclass(frozen=True, slots=True)
class JitterTerms:
    """Per candidate [N, M] of a table, what every jittered-floor probability needs and only
    the table decides: whether it is jittered, its log floor and the standard normal CDF at
    its bounds; per network [N, 1] the jitter's sd (1 where the network is not jittered; a
    candidate that is not jittered, a floor of 0, is a point mass whatever it says)."""

    jittered: NDArray[np.bool_]
    mu: NDArray[np.float64]
    sd: NDArray[np.float64]
    z_lo: NDArray[np.float64]
    z_hi: NDArray[np.float64]


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

    Rounded floors: with ``floor_precision`` > 0 (CPM, 1/n; see :func:`round_table`, which
    sets it) a served floor is a multiple of it. Fixed candidate floors are rounded when the
    table is made (identical ones merged); a jittered draw is rounded to the nearest multiple
    within the grid of its bounds, so the served floor ``f`` stands for the whole *cell* of
    draws that round to it (:meth:`floor_cell`). Its ``floor_propensity`` is the probability of
    the cells in its statistics bin, and its logged density (:meth:`logged_floor_density`) the
    cell's probability per unit log CPM, ``P(cell) / |cell|`` (the mean density over the cell),
    which is what continuous-action off-policy evaluation divides by.
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
    #: Served floors are multiples of this (CPM, 1/n); 0: not rounded.
    floor_precision: float = 0.0
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
        self._steps = precision_steps(self.floor_precision)
        if self._steps:  # per network the multiples k/steps a floor may be rounded to: [N, 2] of k
            bounds = np.exp(self.floor_bounds)
            self._grid = np.stack(step_range(bounds[:, 0], bounds[:, 1], self._steps), axis=1)
            self._grid_list = self._grid.tolist()
        # The one-request path reads plain floats (no numpy scalar overhead): lists of the
        # per-network values, zero-copy views of the [N × candidates] ones (Python lists of
        # those took ~50 KB per 20-network table, a third of a fitted segment's memory).
        self._cum_view = memoryview(self.cum)
        self._floors_view = memoryview(np.ascontiguousarray(self.floors).ravel())
        self._weights_list = self.weights.tolist()
        self._fprop_view = memoryview(np.ascontiguousarray(self.floor_propensity).ravel())
        self._sd_list = self.floor_log_sd.tolist()

    @cached_property
    def _jitter(self) -> JitterTerms:
        """The table's :class:`JitterTerms`, on first use (most tables a refresh builds are
        replaced before they are sampled), so a probability costs one ``ndtr`` per candidate."""
        network_sd = self.floor_log_sd[:, None]
        jittered = (network_sd > 0) & (self.floors > 0)
        mu = np.log(np.maximum(self.floors, 1e-300))
        sd = np.where(jittered, network_sd, 1.0)
        z_lo = ndtr((self.floor_bounds[:, :1] - mu) / sd)
        z_hi = ndtr((self.floor_bounds[:, 1:] - mu) / sd)
        return JitterTerms(jittered, mu, np.where(network_sd > 0, network_sd, 1.0), z_lo, z_hi)

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
        terms = self._jitter
        mu = terms.mu.ravel()[flat]
        z_lo = np.where(jit, terms.z_lo.ravel()[flat], 0.0)
        z_hi = np.where(jit, terms.z_hi.ravel()[flat], 1.0)
        z = ndtri(np.clip(z_lo + v * (z_hi - z_lo), 1e-300, 1.0 - 1e-16))
        log_f = np.clip(mu + sd * z, lo, hi)
        floor = np.where(jit & (floor > 0), np.exp(log_f), floor)
        if self._steps:
            floor = self.round_floors(net, floor)
        fprop = np.where(jit, self.floor_bin_probability(net, floor), self.floor_propensity.ravel()[flat])
        return net, floor, self.weights[net], fprop

    def sample_plans(self, u: NDArray[np.float64]) -> NDArray[np.int64]:
        """Plan indices [k] for uniforms ``u`` [k] (multi-network placements)."""
        if self.plan_probs is None:
            raise ValueError("this table has no plans (a single-network placement)")
        cum = np.cumsum(self.plan_probs)
        return np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), len(cum) - 1)

    def decide_one(self, u: float, v: float | None = None) -> tuple[int, float, float, float, float]:
        """One decision for the uniforms ``u`` (and ``v`` for the floor jitter): (network,
        floor_cpm, propensity, floor_propensity, logged floor density), exactly as
        :meth:`sample` and :meth:`logged_floor_density` give them for one request, in scalar
        arithmetic: the array path costs a single request ~100 tiny numpy operations. All the
        jitter probabilities a rounded floor logs (its bin's cells, its own cell) come from one
        :meth:`_jitter_terms_at` call; unrounded floors take the array path."""
        flat = min(bisect_right(self._cum_view, u), len(self._cum_view) - 1)
        net = flat // self._n_candidates
        floor, prop = self._floors_view[flat], self._weights_list[net]
        if not self.jittered or v is None:
            return net, floor, prop, self._fprop_view[flat], math.nan
        sd = self._sd_list[net]
        if sd > 0 and floor > 0:
            terms = self._jitter
            m = flat % self._n_candidates
            z_lo, z_hi, mu = float(terms.z_lo[net, m]), float(terms.z_hi[net, m]), float(terms.mu[net, m])
            z = float(ndtri(min(max(z_lo + v * (z_hi - z_lo), 1e-300), 1.0 - 1e-16)))
            lo, hi = self.floor_bounds[net].tolist()
            floor = float(np.exp(min(max(mu + sd * z, lo), hi)))
        if self._steps:
            floor = self._round_one(net, floor)
        if not sd > 0:
            return net, floor, prop, self._fprop_view[flat], math.nan
        if not self._steps:  # unrounded floors: the array path (the service rounds by default)
            nets, f = np.array([net]), np.array([floor])
            fprop, density = self.floor_bin_probability(nets, f), self.log_floor_density(nets, f)
            return net, floor, prop, float(fprop[0]), float(density[0])
        b = price_bin_one(floor)
        cell = self._cell_one(net, floor)
        k_lo, k_hi = self._grid_list[net]
        first = max(self._first_step_in_bin_one(b), k_lo)
        last = min(math.inf if b == N_BINS - 1 else self._first_step_in_bin_one(b + 1) - 1, k_hi)
        spans = [cell]
        if first <= last:
            spans.append((self._cell_one(net, first / self._steps)[0], self._cell_one(net, last / self._steps)[1]))
        if b == 0 and k_lo > 0:
            spans.append(self._cell_one(net, 0.0))
        masses = self._masses_one(net, spans)
        fprop = sum(masses[1:], 0.0)  # the bin's run of cells, and a floor of 0's apart
        bounds = np.clip(self.floor_bounds[net], LOG_EDGES[0], LOG_EDGES[-1]).tolist()
        width = min(cell[1], bounds[1]) - max(cell[0], bounds[0])
        has = floor > 0 and math.isfinite(width) and width > 0 and masses[0] > 0
        return net, floor, prop, fprop, masses[0] / width if has else math.nan

    def _round_one(self, net: int, floor: float) -> float:
        """:meth:`round_floors` of one floor."""
        k_lo, k_hi = self._grid_list[net]
        k = min(max(float(math.floor(floor * self._steps + 0.5)), k_lo), k_hi)
        return k / self._steps if floor > 0 else 0.0

    def _cell_one(self, net: int, floor: float) -> tuple[float, float]:
        """:meth:`floor_cell` of one rounded floor."""
        k_lo, k_hi = self._grid_list[net]
        k = float(round(floor * self._steps))
        lower = float(np.log(max(k - 0.5, 0.0) / self._steps)) if k > 0.5 else -math.inf
        upper = math.inf if k >= k_hi else float(np.log((k + 0.5) / self._steps))
        if 0 < k <= k_lo:
            lower = _LOG_ABOVE_ZERO
        if k == 0 and k_lo > 0:
            upper = _LOG_ABOVE_ZERO
        return lower, upper

    def _first_step_in_bin_one(self, b: int) -> float:
        """:meth:`_first_step_in_bin` of one bin."""
        if b <= 0:
            return 0.0
        start = math.floor(float(np.exp(LOG_EDGES[min(b, N_BINS)])) * self._steps) - 1.0
        cands = [max(start + i, 0.0) for i in range(4)]
        return next((c for c in cands if price_bin_one(c / self._steps) >= b), cands[0])

    def _masses_one(self, net: int, spans: list[tuple[float, float]]) -> list[float]:
        """P(lower <= log f < upper | network) of each (lower, upper) in ``spans``, as
        :meth:`_mass_between` computes it, in one :meth:`_jitter_terms_at` call."""
        edges = [upper for _, upper in spans] + [lower for lower, _ in spans]
        cdf = self._jitter_terms_at(np.full(len(edges), net), np.array(edges)).sum(axis=1).tolist()
        return [cdf[i] - cdf[i + len(spans)] for i in range(len(spans))]

    def round_floors(self, network: NDArray[np.int64], floor_cpm: NDArray[np.float64]) -> NDArray[np.float64]:
        """Floors [k] rounded (half up) to the nearest multiple of ``floor_precision`` within
        the network's grid, as exact decimals (``k / n``: 1.37, never 1.3700000000000001)."""
        if not self._steps:
            return np.asarray(floor_cpm, dtype=np.float64)
        grid = self._grid[np.asarray(network, dtype=np.int64)]
        return round_to_steps(floor_cpm, self._steps, grid[:, 0], grid[:, 1])

    def floor_cell(
        self, network: NDArray[np.int64], floor_cpm: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Log CPM edges (lower, upper) [k] of the cell of draws that round to each (rounded)
        floor: ``[f - ½ step, f + ½ step)``, open-ended at the ends of the network's grid (a
        draw beyond them rounds to the end; the first floor's cell stops above 0, whose point
        mass is a cell of its own: below a grid that starts above 0, the cell of a floor of 0
        holds that point mass only); the whole line when floors are not rounded."""
        net = np.asarray(network, dtype=np.int64)
        f = np.asarray(floor_cpm, dtype=np.float64)
        if not self._steps:
            return np.full(len(f), -np.inf), np.full(len(f), np.inf)
        k = np.rint(f * self._steps)
        grid = self._grid[net]
        with np.errstate(divide="ignore"):
            lower = np.log(np.maximum(k - 0.5, 0.0) / self._steps)
            upper = np.where(k >= grid[:, 1], np.inf, np.log((k + 0.5) / self._steps))
        # The grid's first floor takes every draw below it, but not a point mass at 0 (a
        # candidate floor of 0 is served as 0, in its own cell).
        lower = np.where((k <= grid[:, 0]) & (k > 0), _LOG_ABOVE_ZERO, lower)
        upper = np.where((k == 0) & (grid[:, 0] > 0), _LOG_ABOVE_ZERO, upper)
        return lower, upper

    def floor_cell_span(
        self, network: NDArray[np.int64], floor_cpm: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The part of each floor's cell (:meth:`floor_cell`) a jittered draw can reach: within
        the network's bounds, clamped to the binned price range (log CPM, [k] each). Its width
        turns a cell probability into a density (:meth:`logged_floor_density`); off-policy
        evaluation averages the candidate's density over the same span."""
        net = np.asarray(network, dtype=np.int64)
        return self._reachable(net, *self.floor_cell(net, floor_cpm))

    def _reachable(
        self, net: NDArray[np.int64], lower: NDArray[np.float64], upper: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Log CPM edges [k] clamped to the network's bounds and the binned price range."""
        bounds = np.clip(self.floor_bounds[net], LOG_EDGES[0], LOG_EDGES[-1])
        return np.maximum(lower, bounds[:, 0]), np.minimum(upper, bounds[:, 1])

    def floor_cell_probability(self, network: NDArray[np.int64], floor_cpm: NDArray[np.float64]) -> NDArray:
        """P(the served floor is ``floor_cpm`` | network) [k] for rounded floors of a jittered
        table: the jitter mixture's probability of the floor's cell (:meth:`floor_cell`)."""
        net = np.asarray(network, dtype=np.int64)
        return self._mass_between(net, *self.floor_cell(net, floor_cpm))

    def logged_floor_density(self, network: NDArray[np.int64], floor_cpm: NDArray[np.float64]) -> NDArray:
        """The density of log floor a decision logs [k] (per unit log CPM; NaN without one):
        :meth:`log_floor_density` for unrounded floors; for rounded ones the floor's cell
        probability over the cell's width within the network's bounds (log CPM), i.e. the
        mean density over the cell: ``Σ_cells P(cell) g(x_cell) / density = Σ_cells |cell| g``
        integrates ``g`` over log floor as the unrounded density does."""
        net = np.asarray(network, dtype=np.int64)
        f = np.asarray(floor_cpm, dtype=np.float64)
        if not self._steps:
            return self.log_floor_density(net, f)
        cell = self.floor_cell(net, f)
        prob = self._mass_between(net, *cell)
        lower, upper = self._reachable(net, *cell)
        width = upper - lower
        has = (self.floor_log_sd[net] > 0) & (f > 0) & np.isfinite(width) & (width > 0) & (prob > 0)
        return np.where(has, prob / np.where(has, width, 1.0), np.nan)

    def _mass_between(
        self,
        net: NDArray[np.int64],
        lower: NDArray[np.float64],
        upper: NDArray[np.float64],
        per_candidate: bool = False,
    ) -> NDArray:
        """P(lower <= log f < upper | network) [k] (``per_candidate``: its terms [k, M]), both
        edges in one :meth:`_jitter_cdf` call."""
        k = len(net)
        cdf = self._jitter_cdf(np.concatenate([net, net]), np.concatenate([upper, lower]), per_candidate=per_candidate)
        return cdf[:k] - cdf[k:]

    def _jitter_cdf(
        self, net: NDArray[np.int64], log_floor: NDArray[np.float64], *, per_candidate: bool = False
    ) -> NDArray:
        """P(log f < log_floor | network) [k] under the jittered floor distribution
        (a step at each candidate floor that is not jittered: other networks, and floors of 0);
        ``per_candidate``: its terms ``p_m · P_m(log f < log_floor)`` [k, M].

        A batch of decisions repeats few (network, edge) pairs (rounded floors' cells, bin
        edges): each distinct pair is evaluated once."""
        terms = None
        if len(net) >= DISTINCT_EDGES_MIN:
            first, inverse = distinct_rows(net, log_floor)
            if 2 * len(first) <= len(net):
                terms = self._jitter_terms_at(net[first], log_floor[first])[inverse]
        if terms is None:
            terms = self._jitter_terms_at(net, log_floor)
        return terms if per_candidate else terms.sum(axis=1)

    def _jitter_terms_at(self, net: NDArray[np.int64], log_floor: NDArray[np.float64]) -> NDArray[np.float64]:
        """``p_m · P_m(log f < log_floor)`` [k, M] (see :meth:`_jitter_cdf`)."""
        terms = self._jitter
        jit, mu = terms.jittered[net], terms.mu[net]  # [k, M]
        at = np.clip(log_floor[:, None], self.floor_bounds[net, :1], self.floor_bounds[net, 1:])
        z_lo = terms.z_lo[net]
        within = np.maximum(terms.z_hi[net] - z_lo, 1e-300)
        mass = np.clip((ndtr((at - mu) / terms.sd[net]) - z_lo) / within, 0.0, 1.0)
        # P(log f < x) for point masses: bins are [edge_b, edge_b+1), like price_bin.
        step = np.where(self.floors[net] > 0, mu, -np.inf) < log_floor[:, None]
        mass = np.where(jit, mass, step.astype(float))
        return self.floor_probs[net] * mass

    def cell_probability_terms(
        self, network: NDArray[np.int64], lower: NDArray[np.float64], upper: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Per candidate, ``p_m · P_m(lower <= log f < upper | network)`` [k, M] (log CPM edges [k])."""
        return self._mass_between(np.asarray(network, dtype=np.int64), lower, upper, per_candidate=True)

    def floor_bin_probability(self, network: NDArray[np.int64], floor_cpm: NDArray[np.float64]) -> NDArray:
        """P(the floor's statistics bin | network) [k] for floors drawn from this table.

        The first and last bins are open-ended (:func:`bandit.stats.price_bin` clamps
        floors below ``PRICE_MIN`` and above ``MAX_CPM`` into them)."""
        net = np.asarray(network, dtype=np.int64)
        b = price_bin(log_price(np.asarray(floor_cpm, dtype=np.float64)))
        if self._steps:
            return self._rounded_bin_probability(net, b)
        upper = np.where(b == len(LOG_EDGES) - 2, np.inf, LOG_EDGES[b + 1])
        lower = np.where(b == 0, -np.inf, LOG_EDGES[b])
        return self._mass_between(net, lower, upper)

    def _rounded_bin_probability(self, net: NDArray[np.int64], b: NDArray[np.int64]) -> NDArray:
        """P(the rounded floor lies in bin ``b`` | network) [k]: the cells of the grid floors
        ``k / n`` of that bin (a run ``k_first … k_last``; none in a bin narrower than a step)
        and, in the first bin, a floor of 0 (``price_bin`` clamps it there): when the grid
        starts above 0 its point mass is a cell apart from the run's."""
        k = len(b)
        grid = self._grid[net]
        steps = self._first_step_in_bin(np.concatenate([b, b + 1]))  # both ends of each bin at once
        first = np.maximum(steps[:k], grid[:, 0])
        last = np.minimum(np.where(b == N_BINS - 1, np.inf, steps[k:] - 1), grid[:, 1])
        some = first <= last
        ends = np.concatenate([np.where(some, first, grid[:, 0]), np.where(some, last, grid[:, 0])])
        lower, upper = self.floor_cell(np.concatenate([net, net]), ends / self._steps)
        run = np.where(some, self._mass_between(net, lower[:k], upper[k:]), 0.0)
        apart = np.flatnonzero((b == 0) & (grid[:, 0] > 0))
        if len(apart):
            run[apart] += self.floor_cell_probability(net[apart], np.zeros(len(apart)))
        return run

    def _first_step_in_bin(self, b: NDArray[np.int64]) -> NDArray[np.float64]:
        """Smallest k with ``price_bin(k / n) >= b`` [k] (0 for the first bin), checked with
        :func:`bandit.stats.price_bin` itself so that float edges agree."""
        start = np.floor(np.exp(LOG_EDGES[np.minimum(b, N_BINS)]) * self._steps) - 1.0
        cand = np.maximum(start[:, None] + np.arange(4.0)[None, :], 0.0)  # [k, 4]
        ok = price_bin(log_price(cand / self._steps)) >= b[:, None]
        return np.where(b <= 0, 0.0, cand[np.arange(len(b)), np.argmax(ok, axis=1)])

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


def precision_steps(precision: float) -> int:
    """Multiples of a floor precision per CPM (0: floors are not rounded)."""
    return round(1.0 / precision) if precision > 0 else 0


def step_range(
    lo_cpm: NDArray[np.float64] | float, hi_cpm: NDArray[np.float64] | float, steps: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The first and last k with ``k / steps`` inside [lo_cpm, hi_cpm] (a bound within 10⁻⁶ of
    a multiple counts as on it; an infinite upper bound stops at 10¹⁵)."""
    with np.errstate(over="ignore"):
        lo, hi = np.asarray(lo_cpm, dtype=np.float64) * steps, np.asarray(hi_cpm, dtype=np.float64) * steps
    return np.ceil(lo - 1e-6), np.floor(np.minimum(hi, 1e15) + 1e-6)


def round_to_steps(
    floor_cpm: NDArray[np.float64], steps: int, k_lo: NDArray[np.float64] | float, k_hi: NDArray[np.float64] | float
) -> NDArray[np.float64]:
    """Floors rounded (half up) to the nearest multiple ``k / steps`` with ``k_lo <= k <= k_hi``,
    as exact decimals (1.37, never 1.3700000000000001); a floor of 0 stays 0."""
    f = np.asarray(floor_cpm, dtype=np.float64)
    k = np.clip(np.floor(f * steps + 0.5), k_lo, k_hi)
    return np.where(f > 0, k, 0.0) / steps


def round_table(table: SegmentTable, precision: float, log_bounds: NDArray[np.float64]) -> SegmentTable:
    """``table`` serving floors that are multiples of ``precision`` (CPM, 1/n; 0 returns it as
    it is), within each network's floor bounds ``log_bounds`` [N, 2] (log CPM).

    Fixed candidate floors (networks without jitter, and candidate floors of 0) are rounded
    now and identical ones merge their probability (the others keep their place with
    probability 0); their ``floor_propensity`` is recomputed for the rounded floors' bins.
    A jittered network keeps its candidates (the centres of its jitter) and rounds each draw
    (:meth:`SegmentTable.sample`); its rows get ``log_bounds`` only where they had none.
    Plan floors (waterfall tiers, auction bidders) are rounded too and identical plans
    merged, first occurrence first. Idempotent: rounding a rounded table changes nothing."""
    if not precision > 0:
        return table
    steps = round(1.0 / precision)
    n = len(table.weights)
    jit = table.floor_log_sd > 0 if table.floor_log_sd is not None else np.zeros(n, dtype=bool)
    bounds = np.array(table.floor_bounds if table.floor_bounds is not None else np.tile([-np.inf, np.inf], (n, 1)))
    bounds[~jit] = log_bounds[~jit]
    with np.errstate(over="ignore"):
        grid_lo = np.ceil(np.exp(bounds[:, 0]) * steps - 1e-6)
        grid_hi = np.floor(np.minimum(np.exp(bounds[:, 1]) * steps, 1e15) + 1e-6)
    fixed = ~jit[:, None] | (table.floors <= 0)  # [N, M]
    k = np.clip(np.floor(table.floors * steps + 0.5), grid_lo[:, None], grid_hi[:, None])
    k = np.where(table.floors > 0, k, 0.0)  # a floor of 0 stays 0
    floors = np.where(fixed, k / steps, table.floors)
    probs = table.floor_probs.copy()
    for i in np.flatnonzero(fixed.sum(axis=1) > 1).tolist():  # rows with candidates to merge
        cols = np.flatnonzero(fixed[i])
        _, first, inverse = np.unique(k[i, cols], return_index=True, return_inverse=True)
        mass = np.bincount(inverse.ravel(), weights=probs[i, cols], minlength=len(first))
        probs[i, cols] = 0.0
        probs[i, cols[first]] = mass
    bins = price_bin(log_price(floors))
    plans = {}
    if table.plan_floors is not None and table.plan_tiers is not None and table.plan_probs is not None:
        called = table.plan_tiers >= 0
        pk = np.clip(np.floor(table.plan_floors * steps + 0.5), grid_lo, grid_hi)
        pk = np.where(called & (table.plan_floors > 0), pk, 0.0)
        tiers, plan_k, plan_probs = merge_plans(table.plan_tiers, pk, table.plan_probs)
        plans = {"plan_tiers": tiers, "plan_floors": plan_k / steps, "plan_probs": plan_probs}
    return SegmentTable(
        table.weights,
        floors,
        probs,
        floor_bin_propensity(floors, probs, bins),
        table.summary,
        floor_log_sd=table.floor_log_sd,
        floor_bounds=bounds,
        **plans,
        floor_precision=1.0 / steps,
    )


def merge_plans(
    tiers: NDArray[np.int64], floor_steps: NDArray[np.float64], probs: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Identical plans (tiers and floors [P, N]) merged into their first occurrence, in order of
    first occurrence, padded back to P rows of probability 0 (no network called)."""
    p = len(tiers)
    _, first, inverse = np.unique(
        np.concatenate([tiers, floor_steps], axis=1), axis=0, return_index=True, return_inverse=True
    )
    mass = np.bincount(inverse.ravel(), weights=probs, minlength=len(first))
    order = np.argsort(first)
    keep = first[order]
    out_t = np.full_like(tiers, -1)
    out_f = np.zeros_like(floor_steps)
    out_p = np.zeros(p)
    out_t[: len(keep)], out_f[: len(keep)], out_p[: len(keep)] = tiers[keep], floor_steps[keep], mass[order]
    return out_t, out_f, out_p
