"""Auction maths of one network: bid distributions, exact revenue curves, fast bid sampling.

Model. On a request a network receives bids as a Poisson process (or a gamma-mixed one,
i.e. a negative binomial bidder count) of mean λ; each bid is an iid draw from a
log-normal mixture, optionally with a Pareto component (bid = shading × value, scaled by
the segment's value multiplier, the hour's value multiplier and by an optional
per-request common shock). Write ``S(x)`` for a bid's survival function and ``N(x)`` for
the number of bids above ``x``: ``N(x) ~ Poisson(λ S(x))`` (or the negative binomial with
that mean and dispersion ``d``, variance ``m + d·m²``; ``d = −1``: a single bidder, present
with probability m ≤ 1).

* The network fills at floor ``f`` iff ``N(f) >= 1``.
* First price pays the top bid; second price pays ``max(second bid, f)``. With prices
  capped at ``M`` (:data:`bandit.MAX_CPM`), integrating by parts gives, for both,

      R(f) = f · P(N(f) >= 1) + ∫_f^M P(N(x) >= m) dx,   m = 1 (first) or 2 (second),

  since the price exceeds ``x >= f`` iff at least ``m`` bids exceed ``x``.
  ``P(N >= m)`` is ``gammainc(m, λS)`` (Poisson) or ``betainc(m, 1/d, p)`` with
  ``p = dλS / (1 + dλS)`` (negative binomial), both exact.
* Outside the policies' model, with the same tail integrals (:class:`RevenueCurve`):
  a floor-responsive first-price network (bidders whose value clears f bid
  max(s·v, f)) fills iff ``N(s·f) >= 1`` and pays max(top bid, f):
  ``R = f·P(N(s f) >= 1) + ∫_f^M P(N(x) >= 1) dx``; a second-price network with a price
  increment δ pays ``min(top, max(second, f) + δ)``:
  ``R = f·P(N(f)>=1) + ∫_f^{f+δ} P(N(x)>=1) dx + ∫_{f+δ}^M P(N(x)>=1, N(x−δ)>=2) dx``
  (:func:`joint_count_prob`); a throttle multiplies R and the fill rate by
  ``t(f) = 1 / (1 + (f/f½)^k)`` (:func:`throttle_factor`).
* A common value scale ``a`` enters as ``R(f; a) = a · r(f/a, M/a)`` with ``r`` the
  revenue of the unit-scale market, so the log-normal shock is integrated by
  Gauss-Hermite quadrature over ``a`` (an increment is δ/a in unit prices, so its tail
  table is built per quadrature node).

Sampling uses the same representation: the survival positions of the bids are the
points of a Poisson process on ``[0, 1]``, so the top bid sits at ``S1 = E1/λ`` and the
second at ``S2 = S1 + E2/λ`` (``E`` standard exponentials; closed forms too for the
gamma mixture), and the bid is ``S⁻¹`` of that, read from a quantile table. Only the
top two bids are drawn, never the bidder count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.special import betainc, gammainc, log_ndtr, logsumexp, ndtr

#: Points of the log-price grid on which tail integrals are tabulated.
GRID_POINTS = 4096
#: Points of each quantile table (uniform in log S and in log F).
QUANTILE_POINTS = 8192
#: Smallest tabulated log probability: bids beyond it are rarer than ~3e-20.
LOG_P_MIN = -45.0
#: Half-width of the log-price grid in log-sd units around the mixture components.
GRID_SDS = 9.0
#: Gauss-Hermite nodes used to integrate the common value shock.
SHOCK_NODES = 24


# ------------------------------------------------------------------ bid distribution
@dataclass(frozen=True)
class BidDistribution:
    """Unit-scale bid of one bidder: a log-normal mixture in log CPM, optionally with a
    Pareto component (a heavy upper tail).

    ``weights``, ``log_means``, ``log_sds`` have shape [K] (K may be 0 for a pure Pareto
    bid). ``pareto_weight`` w_P in [0, 1] is the Pareto component's share (the log-normal
    weights are rescaled to sum to 1 − w_P); its survival is
    ``(x / x_m)^(-α)`` above ``x_m = exp(pareto_log_scale)`` and 1 below, with
    ``α = pareto_alpha``. Built once per network; holds the log-price grid [G] and the
    quantile tables [2, Q]. Without the Pareto component every table is exactly the
    plain log-normal one.

    The grid spans ±:data:`GRID_SDS` log-sds around each log-normal component and, for a
    Pareto component, from ``x_m`` (which sits exactly on a grid node, so the kink of its
    survival function costs the trapezoid rule nothing) up to where its survival falls
    to ``e^LOG_P_MIN``.
    """

    weights: NDArray[np.float64]
    log_means: NDArray[np.float64]
    log_sds: NDArray[np.float64]
    pareto_weight: float = 0.0
    pareto_alpha: float = 2.0
    pareto_log_scale: float = 0.0
    grid_log_x: NDArray[np.float64] = field(init=False, repr=False)
    grid_x: NDArray[np.float64] = field(init=False, repr=False)
    grid_survival: NDArray[np.float64] = field(init=False, repr=False)
    quantiles: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        wp = float(self.pareto_weight)
        if not 0.0 <= wp <= 1.0:
            raise ValueError(f"pareto_weight must lie in [0, 1], got {wp:g}")
        w = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if len(w) == 0 and wp < 1.0:
            raise ValueError("a bid distribution without log-normal components must be pure Pareto")
        if wp > 0.0 and not self.pareto_alpha > 1.0:
            raise ValueError(f"pareto_alpha must be > 1, got {self.pareto_alpha:g}")
        object.__setattr__(self, "weights", w / w.sum() * (1.0 - wp) if len(w) else w)
        object.__setattr__(self, "log_means", np.asarray(self.log_means, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "log_sds", np.asarray(self.log_sds, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "pareto_weight", wp)
        ends_lo, ends_hi = [], []
        if len(w):
            ends_lo.append(float(np.min(self.log_means - GRID_SDS * self.log_sds)))
            ends_hi.append(float(np.max(self.log_means + GRID_SDS * self.log_sds)))
        if wp > 0.0:
            ends_lo.append(self.pareto_log_scale)
            ends_hi.append(self.pareto_log_scale - LOG_P_MIN / self.pareto_alpha)
        lo, hi = min(ends_lo), max(ends_hi)
        if wp > 0.0:
            # Shift the grid (by less than a step, widening it) so that log x_m is a node.
            h = (hi - lo) / (GRID_POINTS - 2)
            lo = self.pareto_log_scale - math.ceil((self.pareto_log_scale - lo) / h - 1e-9) * h
            lx = lo + h * np.arange(GRID_POINTS)
        else:
            lx = np.linspace(lo, hi, GRID_POINTS)
        object.__setattr__(self, "grid_log_x", lx)
        object.__setattr__(self, "grid_x", np.exp(lx))
        object.__setattr__(self, "grid_survival", self.survival_log(lx))
        object.__setattr__(self, "quantiles", self._quantile_tables())

    @property
    def grid_step(self) -> float:
        return float(self.grid_log_x[1] - self.grid_log_x[0])

    @property
    def has_pareto(self) -> bool:
        return self.pareto_weight > 0.0

    def _z(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        return (np.asarray(log_x, dtype=np.float64)[..., None] - self.log_means) / self.log_sds

    def _pareto_excess(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """α · max(log x − log x_m, 0) = −log of the Pareto component's survival."""
        return self.pareto_alpha * np.maximum(np.asarray(log_x, dtype=np.float64) - self.pareto_log_scale, 0.0)

    def survival_log(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """S(x) = P(bid > x) at log prices ``log_x`` (any shape)."""
        out = ndtr(-self._z(log_x)) @ self.weights
        if self.has_pareto:
            out = out + self.pareto_weight * np.exp(-self._pareto_excess(log_x))
        return out

    def _log_mix(self, log_terms: NDArray[np.float64], pareto: NDArray[np.float64] | None) -> NDArray[np.float64]:
        """log Σ_k w_k e^{log_terms[..., k]} (+ w_P e^{pareto}), without underflow."""
        with np.errstate(divide="ignore"):
            parts = log_terms + np.log(self.weights)
            if pareto is not None:
                parts = np.concatenate([parts, (pareto + math.log(self.pareto_weight))[..., None]], axis=-1)
        return logsumexp(parts, axis=-1)

    def log_survival_log(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """log S(x), accurate deep in the upper tail."""
        pareto = -self._pareto_excess(log_x) if self.has_pareto else None
        return self._log_mix(log_ndtr(-self._z(log_x)), pareto)

    def log_cdf_log(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """log F(x), accurate deep in the lower tail."""
        pareto = None
        if self.has_pareto:
            with np.errstate(divide="ignore"):
                pareto = np.log(-np.expm1(-self._pareto_excess(log_x)))
        return self._log_mix(log_ndtr(self._z(log_x)), pareto)

    def density_times_x(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """x·f(x) = d F / d log x."""
        z = self._z(log_x)
        out = (np.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * self.log_sds)) @ self.weights
        if self.has_pareto:
            lx = np.asarray(log_x, dtype=np.float64)
            above = lx > self.pareto_log_scale
            pareto = self.pareto_weight * self.pareto_alpha * np.exp(-self._pareto_excess(lx))
            out = out + np.where(above, pareto, 0.0)
        return out

    def _quantile_tables(self) -> NDArray[np.float64]:
        """log x at log S = t (row 0) and at log F = t (row 1), t uniform on [LOG_P_MIN, log ½].

        Started from interpolation on a fine grid and polished by Newton steps, so the
        table holds S⁻¹ to near machine precision at its nodes. A pure Pareto bid has
        closed forms: log S⁻¹ = log x_m − t/α, log F⁻¹ = log x_m − log(1 − e^t)/α.
        """
        t = quantile_nodes()
        out = np.empty((2, len(t)))
        if self.pareto_weight == 1.0:
            out[0] = self.pareto_log_scale - t / self.pareto_alpha
            out[1] = self.pareto_log_scale - np.log1p(-np.exp(t)) / self.pareto_alpha
            return out
        fine = np.linspace(self.grid_log_x[0] - 3.0, self.grid_log_x[-1] + 3.0, 4 * GRID_POINTS)
        log_s = self.log_survival_log(fine)
        log_f = self.log_cdf_log(fine)
        out[0] = np.interp(t, log_s[::-1], fine[::-1])
        out[1] = np.interp(t, log_f, fine)
        for _ in range(3 if not self.has_pareto else 6):
            s0, f0 = self.log_survival_log(out[0]), self.log_cdf_log(out[1])
            # d log S / d log x = -x f / S ;  d log F / d log x = x f / F
            out[0] -= (s0 - t) / -(self.density_times_x(out[0]) / np.exp(s0))
            out[1] -= (f0 - t) / (self.density_times_x(out[1]) / np.exp(f0))
        return out


def quantile_nodes() -> NDArray[np.float64]:
    """The log-probability nodes [Q] of every quantile table."""
    return np.linspace(LOG_P_MIN, math.log(0.5), QUANTILE_POINTS)


def bid_log_quantile(
    tables: NDArray[np.float64], table_index: NDArray[np.int64], s: NDArray[np.float64]
) -> NDArray[np.float64]:
    """log S⁻¹(s) for survival probabilities ``s`` in (0, 1], each read from its network's table.

    ``tables`` is [N, 2, Q] (rows of :attr:`BidDistribution.quantiles`) flattened to one
    array; ``table_index`` [n] picks the network. Linear interpolation on a uniform grid:
    an index computation and two gathers, no search.
    """
    q = QUANTILE_POINTS
    t0 = LOG_P_MIN
    inv_dt = (q - 1) / (math.log(0.5) - LOG_P_MIN)
    upper = s < 0.5
    with np.errstate(divide="ignore"):
        t = np.where(upper, np.log(s), np.log1p(-s))
    pos = np.clip((t - t0) * inv_dt, 0.0, q - 1.000001)
    i = pos.astype(np.int64)
    frac = pos - i
    base = table_index * (2 * q) + np.where(upper, 0, q) + i
    lo = tables[base]
    return lo + frac * (tables[base + 1] - lo)


# --------------------------------------------------------------- bidder counts / tails
#: ``dispersion`` of a single bidder: N is 0 or 1 (Bernoulli, variance m − m²), mean m ≤ 1.
SINGLE_BIDDER = -1.0

#: Mean count below which P(N >= 2) comes from the special function (see tail_count_prob).
SMALL_MEAN = 1e-3


def tail_count_prob(m: int, mean: NDArray[np.float64], dispersion: float) -> NDArray[np.float64]:
    """P(N >= m) for N Poisson (``dispersion`` 0), negative binomial (> 0) or a single bidder
    (``SINGLE_BIDDER``) with this mean.

    For m = 1 and 2 in closed form (the special functions cost most of a simulated run):
    with log P(N = 0) = -μ (Poisson) or -log(1 + dμ)/d (negative binomial),
    P(N >= 1) = -expm1(log P0), and P(N >= 2) = P(N >= 1) - P(N = 1) with
    P(N = 1) = P0·μ (Poisson) or P0·μ / (1 + dμ); that difference loses digits where
    μ is tiny (relative error ~1e-16/μ), so below ``SMALL_MEAN`` the special function
    gives it."""
    mean = np.asarray(mean, dtype=np.float64)
    if dispersion == SINGLE_BIDDER:
        return np.minimum(mean, 1.0) if m == 1 else np.zeros_like(mean)
    if m > 2:
        return _tail_count_special(m, mean, dispersion)
    if dispersion <= 0.0:
        log_p0, one_per_p0 = -mean, mean
    else:
        d_mean = dispersion * mean
        log_p0, one_per_p0 = -np.log1p(d_mean) / dispersion, mean / (1.0 + d_mean)
    at_least_one = -np.expm1(log_p0)
    if m == 1:
        return at_least_one
    out = np.asarray(np.maximum(at_least_one - np.exp(log_p0) * one_per_p0, 0.0))
    small = mean < SMALL_MEAN
    if np.any(small):
        out[small] = _tail_count_special(2, mean[small], dispersion)
    return out


def _tail_count_special(m: int, mean: NDArray[np.float64], dispersion: float) -> NDArray[np.float64]:
    """P(N >= m) from the regularised incomplete gamma (Poisson) or beta (negative binomial)."""
    if dispersion <= 0.0:
        return gammainc(m, mean)
    theta_m = dispersion * mean
    return betainc(m, 1.0 / dispersion, theta_m / (1.0 + theta_m))


def joint_count_prob(
    mean_x: NDArray[np.float64], mean_gap: NDArray[np.float64], dispersion: float
) -> NDArray[np.float64]:
    """P(N(x) >= 1 and N(y) >= 2) for y < x, i.e. top bid above x and second above y.

    ``mean_x`` = λS(x), ``mean_gap`` = λ(S(y) − S(x)) (the mean count in (y, x]). Split as
    P(N(x) >= 2) + P(N(x) = 1, N(y) − N(x) >= 1), with no cancellation:

    * Poisson: ``a e^{-a} (1 − e^{-b})`` (a = mean_x, b = mean_gap, independent counts);
    * gamma-mixed (k = 1/d, mean-one rate Λ ~ Gamma(k, d)):
      ``E[aΛ e^{-aΛ}(1 − e^{-bΛ})] = a (1+da)^{-k-1} (1 − ((1 + d(a+b))/(1+da))^{-k-1})``.
    """
    a = np.asarray(mean_x, dtype=np.float64)
    b = np.maximum(np.asarray(mean_gap, dtype=np.float64), 0.0)
    if dispersion == SINGLE_BIDDER:  # never a second bid
        return np.zeros(np.broadcast_shapes(a.shape, b.shape))
    two = tail_count_prob(2, a, dispersion)
    if dispersion <= 0.0:
        return two + a * np.exp(-a) * -np.expm1(-b)
    k1 = 1.0 / dispersion + 1.0
    da = dispersion * a
    one_then_more = a * np.exp(-k1 * np.log1p(da)) * -np.expm1(-k1 * np.log1p(dispersion * b / (1.0 + da)))
    return two + one_then_more


def throttle_factor(
    floor_cpm: NDArray[np.float64], half_cpm: NDArray[np.float64] | float, power: NDArray[np.float64] | float
) -> NDArray[np.float64]:
    """t(f) = 1 / (1 + (f / f_half)^k): the chance a throttling network answers at floor f
    (1 everywhere where ``half_cpm`` is infinite). Arguments broadcast."""
    ratio = np.asarray(floor_cpm, dtype=np.float64) / np.asarray(half_cpm, dtype=np.float64)
    return 1.0 / (1.0 + ratio ** np.asarray(power, dtype=np.float64))


def top_survival(
    e1: NDArray[np.float64], lam: NDArray[np.float64], dispersion: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Survival position S1 of the top bid from a standard exponential ``e1``.

    Poisson: ``S1 = e1/λ``. Gamma-mixed (negative binomial) with ``k = 1/d``:
    ``P(no bid above s) = (1 + dλs)^(-k)`` inverts to ``S1 = (e^{d·e1} − 1)/(dλ)``.
    A single bidder (``SINGLE_BIDDER``): ``P(no bid above s) = 1 − λs`` inverts to
    ``S1 = (1 − e^{−e1})/λ``. ``S1 >= 1`` means no bid at all. λ = 0 gives ``inf``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        poisson = e1 / lam
        if not np.any(dispersion != 0):
            return poisson
        d = np.where(dispersion > 0, dispersion, 1.0)
        nb = np.expm1(d * e1) / (d * lam)
        single = -np.expm1(-e1) / lam
    return np.where(dispersion == SINGLE_BIDDER, single, np.where(dispersion > 0, nb, poisson))


def next_survival(
    s1: NDArray[np.float64],
    e2: NDArray[np.float64],
    lam: NDArray[np.float64],
    dispersion: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Survival position S2 of the second bid given the top at ``s1``.

    Poisson: ``S2 = S1 + e2/λ``. Gamma-mixed: given a first point at ``s1`` the rate is
    Gamma(k+1, rate 1/θ + s1), so ``P(S2 − S1 > t) = (1 + t/(1/θ + s1))^-(k+1)`` and
    ``S2 = S1 + (1/θ + s1)(e^{e2·d/(1+d)} − 1)`` with ``θ = dλ``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        poisson = s1 + e2 / lam
        if not np.any(dispersion != 0):
            return poisson
        d = np.where(dispersion > 0, dispersion, 1.0)
        nb = s1 + (1.0 / (d * lam) + s1) * np.expm1(e2 * d / (1.0 + d))
    return np.where(dispersion == SINGLE_BIDDER, np.inf, np.where(dispersion > 0, nb, poisson))


# ------------------------------------------------------------------- random numbers
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser: a bijective 64-bit hash (counter-based random numbers)."""
    z = x ^ (x >> np.uint64(30))
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def stream_uniform(key: NDArray[np.uint64], stream: int) -> NDArray[np.float64]:
    """Uniform in (0, 1) [n], a pure function of each request's 64-bit ``key`` and ``stream``.

    Because draws depend on (request key, stream) only, which network a policy picks for
    one request never changes the random numbers of any other (common random numbers).
    """
    return stream_uniform_keyed(key, np.uint64(stream))


def stream_uniform_keyed(key: NDArray[np.uint64], stream: NDArray[np.uint64] | np.uint64) -> NDArray[np.float64]:
    """As :func:`stream_uniform`, with a stream id per element."""
    with np.errstate(over="ignore"):
        z = mix64(key + (np.asarray(stream, dtype=np.uint64) + np.uint64(1)) * _GOLDEN)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


# ------------------------------------------------------------------ revenue curves
@dataclass(frozen=True)
class _TailTable:
    """∫_x^∞ y(u) du for one integrand y per row, tabulated on a bid grid.

    ``integrand`` [T, G] holds y·x at the grid nodes (the integrand in log x), ``tail``
    [T, G] the trapezoid tail sums from each node to the grid's end, ``below`` [T] the
    constant value of y below the grid (where S(x) = 1 to double precision).
    """

    integrand: NDArray[np.float64]
    tail: NDArray[np.float64]
    below: NDArray[np.float64]

    @staticmethod
    def of(bids: BidDistribution, y: NDArray[np.float64], below: NDArray[np.float64]) -> _TailTable:
        """Table of the integrand values ``y`` [T, G] at ``bids``' grid nodes."""
        g = np.atleast_2d(y) * bids.grid_x
        steps = 0.5 * (g[:, 1:] + g[:, :-1]) * bids.grid_step
        tail = np.zeros_like(g)
        tail[:, :-1] = np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]
        return _TailTable(g, tail, np.atleast_1d(np.asarray(below, dtype=np.float64)))

    def at(
        self,
        bids: BidDistribution,
        x: NDArray[np.float64],
        lx: NDArray[np.float64],
        y: NDArray[np.float64],
        row: NDArray[np.int64] | int = 0,
    ) -> NDArray[np.float64]:
        """∫_x^∞ y at unit prices ``x`` (log ``lx``, integrand value ``y`` there), any shape;
        ``row`` (broadcast with ``x``) picks the table row."""
        lx0, h, last = bids.grid_log_x[0], bids.grid_step, len(bids.grid_x) - 1
        k = np.clip(((lx - lx0) / h).astype(np.int64) + 1, 1, last)
        # Trapezoid from x to the next grid node, then the tabulated tail beyond it.
        inside = self.tail[row, k] + 0.5 * (y * x + self.integrand[row, k]) * (bids.grid_log_x[k] - lx)
        below_grid = self.tail[row, 0] + (bids.grid_x[0] - x) * self.below[row]
        return np.where(lx <= lx0, below_grid, np.where(lx >= bids.grid_log_x[-1], 0.0, inside))


@dataclass(frozen=True)
class RevenueCurve:
    """Exact expected revenue per request R(f) and fill rate of one network in one market
    state (λ, dispersion, auction, value scale, common-shock sd, and the mechanisms below).

    At unit value scale, with ``N(x)`` the number of bids above ``x``, prices capped at M:

    * plain first / second price: ``R = f·P(N(f)>=1) + ∫_f^M P(N(x)>=m) dx``, m = 1 / 2;
    * floor-responsive first price (``responsive``, shading s): a bidder whose value
      clears f bids max(s·v, f), so the network fills iff the top *bid* s·V1 >= s·f and pays
      max(s·V1, f): ``R = f·P(N(s·f)>=1) + ∫_f^M P(N(x)>=1) dx`` (bids above f are paid
      as bid; the rest of the fills pay f);
    * second price with a price increment δ (``increment_cpm``): the price is
      ``min(V1, max(V2, f) + δ)``, which exceeds x in [f, f+δ) iff V1 > x and, beyond,
      iff V1 > x and V2 > x − δ, so with u = min(f + δ, M)
      ``R = f·P(N(f)>=1) + ∫_f^u P(N(x)>=1) dx + ∫_u^M P(N(x)>=1, N(x−δ)>=2) dx``
      (:func:`joint_count_prob`). δ is in CPM, so at value scale a it is δ/a in unit
      prices and its tail table is built per shock node;
    * a throttle t(f) (``throttle_cpm``, ``throttle_power``; :func:`throttle_factor`) is
      an independent coin on top of the auction: R and the fill rate are multiplied by t(f).

    Tail tables (:class:`_TailTable`) hold ``∫_{x_g}^∞`` of each integrand on the
    unit-scale grid (trapezoid in log x); their values at the cap M/a are precomputed per
    shock node.
    """

    bids: BidDistribution
    lam: float
    dispersion: float
    second_price: bool
    scale: float
    shock_sd: float
    cap_cpm: float
    increment_cpm: float = 0.0
    responsive: bool = False
    shading: float = 1.0
    throttle_cpm: float = math.inf
    throttle_power: float = 1.0
    tables: dict[str, _TailTable] = field(init=False, repr=False)
    cap_tails: dict[str, NDArray[np.float64]] = field(init=False, repr=False)
    nodes: NDArray[np.float64] = field(init=False, repr=False)
    node_weights: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        b = self.bids
        nodes, weights = shock_quadrature(self.shock_sd)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "node_weights", weights)
        lam_s = self.lam * b.grid_survival
        tables: dict[str, _TailTable] = {}
        # Below the grid S(x) = 1 to double precision: each integrand is a constant there.
        p1 = tail_count_prob(1, lam_s, self.dispersion)
        below1 = tail_count_prob(1, np.array(self.lam), self.dispersion)
        below2 = tail_count_prob(2, np.array(self.lam), self.dispersion)
        if self.second_price and self.increment_cpm <= 0.0:
            tables["second"] = _TailTable.of(b, tail_count_prob(2, lam_s, self.dispersion), below2)
        else:
            tables["first"] = _TailTable.of(b, p1, below1)
        if self.increment_cpm > 0.0:
            # P(N(x) >= 1, N(x − δ_q) >= 2) per shock node q, δ_q = δ / (scale · node_q).
            delta = self._unit_increment()[:, None]  # [Q, 1]
            shifted = np.log(np.maximum(b.grid_x[None, :] - delta, 1e-300))
            gap = self.lam * (b.survival_log(shifted) - b.grid_survival[None, :])
            joint = joint_count_prob(lam_s[None, :], gap, self.dispersion)
            tables["joint"] = _TailTable.of(b, joint, np.full(len(nodes), below2))
        object.__setattr__(self, "tables", tables)
        cap = np.asarray(self.cap_cpm / (self.scale * nodes)) if self.scale > 0 else np.full(len(nodes), np.inf)
        rows = np.arange(len(nodes))
        cap_tails = {}
        for name, table in tables.items():
            y = self._integrand(name, cap, rows)
            cap_tails[name] = table.at(b, cap, np.log(np.minimum(cap, 1e300)), y, rows if name == "joint" else 0)
        object.__setattr__(self, "cap_tails", cap_tails)

    def _unit_increment(self) -> NDArray[np.float64]:
        """δ in unit-scale prices per shock node [Q]."""
        return self.increment_cpm / (self.scale * self.nodes)

    def _integrand(
        self, name: str, x: NDArray[np.float64], rows: NDArray[np.int64], s: NDArray[np.float64] | None = None
    ) -> NDArray[np.float64]:
        """The integrand of table ``name`` at unit prices ``x`` (column q uses node ``rows``);
        ``s`` is S(x) when already known."""
        b = self.bids
        if s is None:
            s = b.survival_log(np.log(np.maximum(x, 1e-300)))
        if name == "first":
            return tail_count_prob(1, self.lam * s, self.dispersion)
        if name == "second":
            return tail_count_prob(2, self.lam * s, self.dispersion)
        shifted = np.log(np.maximum(x - self._unit_increment()[rows], 1e-300))
        return joint_count_prob(self.lam * s, self.lam * (b.survival_log(shifted) - s), self.dispersion)

    def __call__(self, floor_cpm: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(R(f), P(fill | f)) at floors ``floor_cpm`` [n], averaged over the common shock."""
        f = np.asarray(floor_cpm, dtype=np.float64)
        if self.lam <= 0.0 or self.scale <= 0.0:
            return np.zeros_like(f), np.zeros_like(f)
        b = self.bids
        a = self.scale * self.nodes  # [Q]
        phi = np.maximum(f[..., None] / a, 1e-300)  # [n, Q]
        lx = np.log(phi)
        lam_s = self.lam * b.survival_log(lx)
        if self.second_price and self.increment_cpm <= 0.0:
            fill = tail_count_prob(1, lam_s, self.dispersion)
            table = self.tables["second"]
            y = tail_count_prob(2, lam_s, self.dispersion)
            unit_rev = phi * fill + table.at(b, phi, lx, y) - self.cap_tails["second"]
        else:
            p1 = tail_count_prob(1, lam_s, self.dispersion)
            first = self.tables["first"]
            tail = first.at(b, phi, lx, p1)
            if self.responsive:
                # Fills iff the top value clears f, i.e. the top (shaded) bid clears s·f.
                lam_sf = self.lam * b.survival_log(lx + math.log(self.shading))
                fill = tail_count_prob(1, lam_sf, self.dispersion)
            else:
                fill = p1
            if self.increment_cpm > 0.0:
                rows = np.arange(len(a))
                u = np.minimum(phi + self._unit_increment(), self.cap_cpm / a)
                lu = np.log(u)
                s_u = b.survival_log(lu)
                tail_u = first.at(b, u, lu, self._integrand("first", u, rows, s_u))
                joint_u = self.tables["joint"].at(b, u, lu, self._integrand("joint", u, rows, s_u), rows)
                unit_rev = phi * fill + tail - tail_u + joint_u - self.cap_tails["joint"]
            else:
                unit_rev = phi * fill + tail - self.cap_tails["first"]
        revenue = np.maximum((a * unit_rev) @ self.node_weights, 0.0)
        fill_rate = fill @ self.node_weights
        if math.isfinite(self.throttle_cpm):
            t = throttle_factor(f, self.throttle_cpm, self.throttle_power)
            revenue, fill_rate = revenue * t, fill_rate * t
        return revenue, fill_rate


def shock_quadrature(sd: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Nodes (multipliers) and weights for E[g(Z)], log Z ~ N(−sd²/2, sd²) (so E[Z] = 1)."""
    if sd <= 0.0:
        return np.ones(1), np.ones(1)
    x, w = np.polynomial.hermite_e.hermegauss(SHOCK_NODES)
    return np.exp(sd * x - 0.5 * sd * sd), w / w.sum()
