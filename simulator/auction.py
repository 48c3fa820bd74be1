"""Auction maths of one network: bid distributions, exact revenue curves, fast bid sampling.

Model. On a request a network receives bids as a Poisson process (or a gamma-mixed one,
i.e. a negative binomial bidder count) of mean λ; each bid is an iid draw from a
log-normal mixture (bid = shading × value, scaled by the segment's value multiplier and
by an optional per-request common shock). Write ``S(x)`` for a bid's survival function and
``N(x)`` for the number of bids above ``x``: ``N(x) ~ Poisson(λ S(x))`` (or the negative
binomial with that mean and dispersion ``d``, variance ``m + d·m²``).

* The network fills at floor ``f`` iff ``N(f) >= 1``.
* First price pays the top bid; second price pays ``max(second bid, f)``. With prices
  capped at ``M`` (:data:`bandit.MAX_CPM`), integrating by parts gives, for both,

      R(f) = f · P(N(f) >= 1) + ∫_f^M P(N(x) >= m) dx,   m = 1 (first) or 2 (second),

  since the price exceeds ``x >= f`` iff at least ``m`` bids exceed ``x``.
  ``P(N >= m)`` is ``gammainc(m, λS)`` (Poisson) or ``betainc(m, 1/d, p)`` with
  ``p = dλS / (1 + dλS)`` (negative binomial), both exact.
* A common value scale ``a`` enters as ``R(f; a) = a · r(f/a, M/a)`` with ``r`` the
  revenue of the unit-scale market, so the log-normal shock is integrated by
  Gauss-Hermite quadrature over ``a``.

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
    """Unit-scale bid of one bidder: a log-normal mixture in log CPM.

    ``weights``, ``log_means``, ``log_sds`` have shape [K] (weights sum to 1). Built once
    per network; holds the log-price grid [G] and the quantile tables [2, Q].
    """

    weights: NDArray[np.float64]
    log_means: NDArray[np.float64]
    log_sds: NDArray[np.float64]
    grid_log_x: NDArray[np.float64] = field(init=False, repr=False)
    grid_x: NDArray[np.float64] = field(init=False, repr=False)
    grid_survival: NDArray[np.float64] = field(init=False, repr=False)
    quantiles: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "log_means", np.asarray(self.log_means, dtype=np.float64))
        object.__setattr__(self, "log_sds", np.asarray(self.log_sds, dtype=np.float64))
        lo = float(np.min(self.log_means - GRID_SDS * self.log_sds))
        hi = float(np.max(self.log_means + GRID_SDS * self.log_sds))
        lx = np.linspace(lo, hi, GRID_POINTS)
        object.__setattr__(self, "grid_log_x", lx)
        object.__setattr__(self, "grid_x", np.exp(lx))
        object.__setattr__(self, "grid_survival", self.survival_log(lx))
        object.__setattr__(self, "quantiles", self._quantile_tables())

    @property
    def grid_step(self) -> float:
        return float(self.grid_log_x[1] - self.grid_log_x[0])

    def _z(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        return (np.asarray(log_x, dtype=np.float64)[..., None] - self.log_means) / self.log_sds

    def survival_log(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """S(x) = P(bid > x) at log prices ``log_x`` (any shape)."""
        return ndtr(-self._z(log_x)) @ self.weights

    def log_survival_log(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """log S(x), accurate deep in the upper tail."""
        return logsumexp(log_ndtr(-self._z(log_x)) + np.log(self.weights), axis=-1)

    def log_cdf_log(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """log F(x), accurate deep in the lower tail."""
        return logsumexp(log_ndtr(self._z(log_x)) + np.log(self.weights), axis=-1)

    def density_times_x(self, log_x: NDArray[np.float64]) -> NDArray[np.float64]:
        """x·f(x) = d F / d log x."""
        z = self._z(log_x)
        return (np.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * self.log_sds)) @ self.weights

    def _quantile_tables(self) -> NDArray[np.float64]:
        """log x at log S = t (row 0) and at log F = t (row 1), t uniform on [LOG_P_MIN, log ½].

        Started from interpolation on a fine grid and polished by Newton steps, so the
        table holds S⁻¹ to near machine precision at its nodes.
        """
        t = quantile_nodes()
        fine = np.linspace(self.grid_log_x[0] - 3.0, self.grid_log_x[-1] + 3.0, 4 * GRID_POINTS)
        log_s = self.log_survival_log(fine)
        log_f = self.log_cdf_log(fine)
        out = np.empty((2, len(t)))
        out[0] = np.interp(t, log_s[::-1], fine[::-1])
        out[1] = np.interp(t, log_f, fine)
        for _ in range(3):
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
def tail_count_prob(m: int, mean: NDArray[np.float64], dispersion: float) -> NDArray[np.float64]:
    """P(N >= m) for N Poisson (``dispersion`` 0) or negative binomial with this mean."""
    mean = np.asarray(mean, dtype=np.float64)
    if dispersion <= 0.0:
        return -np.expm1(-mean) if m == 1 else gammainc(m, mean)
    theta_m = dispersion * mean
    return betainc(m, 1.0 / dispersion, theta_m / (1.0 + theta_m))


def top_survival(
    e1: NDArray[np.float64], lam: NDArray[np.float64], dispersion: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Survival position S1 of the top bid from a standard exponential ``e1``.

    Poisson: ``S1 = e1/λ``. Gamma-mixed (negative binomial) with ``k = 1/d``:
    ``P(no bid above s) = (1 + dλs)^(-k)`` inverts to ``S1 = (e^{d·e1} − 1)/(dλ)``.
    ``S1 >= 1`` means no bid at all. λ = 0 gives ``inf``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        poisson = e1 / lam
        if not np.any(dispersion > 0):
            return poisson
        d = np.where(dispersion > 0, dispersion, 1.0)
        nb = np.expm1(d * e1) / (d * lam)
    return np.where(dispersion > 0, nb, poisson)


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
        if not np.any(dispersion > 0):
            return poisson
        d = np.where(dispersion > 0, dispersion, 1.0)
        nb = s1 + (1.0 / (d * lam) + s1) * np.expm1(e2 * d / (1.0 + d))
    return np.where(dispersion > 0, nb, poisson)


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
class RevenueCurve:
    """Exact expected revenue per request R(f) and fill rate of one network in one market
    state (λ, dispersion, auction, value scale, common-shock sd).

    ``tail[g]`` = ∫_{x_g}^{∞} P(N(x) >= m) dx on the unit-scale grid (trapezoid in log x).
    """

    bids: BidDistribution
    lam: float
    dispersion: float
    second_price: bool
    scale: float
    shock_sd: float
    cap_cpm: float
    tail: NDArray[np.float64] = field(init=False, repr=False)
    integrand: NDArray[np.float64] = field(init=False, repr=False)
    below: float = field(init=False, repr=False)
    nodes: NDArray[np.float64] = field(init=False, repr=False)
    node_weights: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        b = self.bids
        m = 2 if self.second_price else 1
        y = tail_count_prob(m, self.lam * b.grid_survival, self.dispersion)
        g = y * b.grid_x
        steps = 0.5 * (g[1:] + g[:-1]) * b.grid_step
        tail = np.zeros(len(g))
        tail[:-1] = np.cumsum(steps[::-1])[::-1]
        object.__setattr__(self, "tail", tail)
        object.__setattr__(self, "integrand", g)
        # Below the grid S(x) = 1 to double precision: the integrand is the constant y[0].
        object.__setattr__(self, "below", float(y[0]))
        nodes, weights = shock_quadrature(self.shock_sd)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "node_weights", weights)

    def _unit(self, x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """At unit-scale prices ``x`` (any shape): (P(N>=1), P(N>=m), ∫_x^∞ P(N>=m))."""
        b = self.bids
        m = 2 if self.second_price else 1
        x = np.maximum(x, 1e-300)
        lx = np.log(x)
        s = b.survival_log(lx)
        fill = tail_count_prob(1, self.lam * s, self.dispersion)
        y = fill if m == 1 else tail_count_prob(m, self.lam * s, self.dispersion)
        lx0, h, last = b.grid_log_x[0], b.grid_step, len(b.grid_x) - 1
        k = np.clip(((lx - lx0) / h).astype(np.int64) + 1, 1, last)
        # Trapezoid from x to the next grid node, then the tabulated tail beyond it.
        inside = self.tail[k] + 0.5 * (y * x + self.integrand[k]) * (b.grid_log_x[k] - lx)
        below_grid = self.tail[0] + (b.grid_x[0] - x) * self.below
        tail = np.where(lx <= lx0, below_grid, np.where(lx >= b.grid_log_x[-1], 0.0, inside))
        return fill, y, tail

    def __call__(self, floor_cpm: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(R(f), P(fill | f)) at floors ``floor_cpm`` [n], averaged over the common shock."""
        f = np.asarray(floor_cpm, dtype=np.float64)
        if self.lam <= 0.0 or self.scale <= 0.0:
            return np.zeros_like(f), np.zeros_like(f)
        a = self.scale * self.nodes  # [Q]
        phi = f[..., None] / a  # [n, Q]
        fill, _, tail_f = self._unit(phi)
        _, _, tail_cap = self._unit(np.asarray(self.cap_cpm / a))
        unit_rev = phi * fill + tail_f - tail_cap
        revenue = (a * unit_rev) @ self.node_weights
        return np.maximum(revenue, 0.0), fill @ self.node_weights


def shock_quadrature(sd: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Nodes (multipliers) and weights for E[g(Z)], log Z ~ N(−sd²/2, sd²) (so E[Z] = 1)."""
    if sd <= 0.0:
        return np.ones(1), np.ones(1)
    x, w = np.polynomial.hermite_e.hermegauss(SHOCK_NODES)
    return np.exp(sd * x - 0.5 * sd * sd), w / w.sum()
