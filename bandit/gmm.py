"""Censored Gaussian-mixture price model of one network's auction, fitted by EM.

Model. A request reaches a network with a Poisson number of bidders, mean ``lam``, whose
values have log-price density ``g(x) = Σ_k pi_k N(x; mu_k, sd_k²)`` (x = log CPM).
Bidders then form a Poisson process on the log-price axis with intensity ``lam·g``; with
``S(x) = 1 - G(x)`` (G the mixture CDF) the auction at floor ``f`` (``a = log f``) gives

- no fill:                         P = exp(-lam·S(a))            → "top bid < f"
- first price, fill at price p:    density lam·g(x)·exp(-lam·S(x)), x = log p ≥ a
- second price, price at floor:    P = lam·S(a)·exp(-lam·S(a))  → exactly one bid ≥ f
- second price, price p above f:   density lam²·S(x)·g(x)·exp(-lam·S(x))  (second bid at p, one above)

so a no-fill is used as the censored observation it is, never dropped.

Single bidder. A second-price network whose fills are all at the floor while it fills often
has one buyer, not a Poisson crowd (a Poisson count that fills half the time would bring two
bids above the floor in a third of its fills). Then ``lam`` ≤ 1 is the chance that the buyer
bids, and at floor ``f``: no fill with P = 1 − lam·S(a), a fill (at the floor) with
P = lam·S(a), revenue f·lam·S(a) (:func:`is_single_bidder` decides; ``single_bid`` below).

EM. The complete data are all bidders' values. Given an observation, the Poisson points
below the revealed threshold are still a Poisson process of mean ``lam·G(t)`` with the
mixture truncated below ``t``; a revealed price is one point; "one bid above t" is one point
of the mixture truncated above ``t``. The E-step therefore needs only truncated-normal
moments; the M-step is weighted Gaussian-mixture algebra plus ``lam = E[points] / requests``,
with conjugate-style priors (MAP) so empty data still give a proper model.

Per-request effects (second-price crowds). Real bidders share a request: its value shock moves
all their values together, and the number of bidders varies more than a Poisson count. Both
are random effects of the request: values W·e^z with z ~ N(0, ``shock_sd``²), and the bidder
rate lam·u with u ~ Gamma(mean 1, variance ``dispersion``), so counts are negative binomial.
Given (z, u) the bidders are again a Poisson process, so every formula above holds at each
quadrature node (:func:`effect_nodes`) and the model mixes over them: an observation's
likelihood is the node-weighted mean of its node likelihoods, EM spreads each observation over
the nodes by their posterior weights (:func:`node_em_step`), and
R(f) = Σ_n w_n·e^{z_n}·R_n(f·e^{−z_n}) with R_n the curve at rate lam·u_n.

Everything is vectorised over a leading "draw" axis D, so the maximum-likelihood fit (D = 1)
and the bootstrap posterior draws used for Thompson sampling (D = M) share one code path.
Data arrive binned (see :mod:`bandit.stats`): each bin contributes its weight at the mean
log floor / log price of the events in it, so the cost is O(bins), not O(events).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from bandit.stats import (
    ATFLOOR,
    ATFLOOR_LOGF,
    FILLS,
    LOG_CENTERS,
    LOG_PRICE_MIN,
    NOFILL_LOGF,
    PRICE,
    PRICE_LOGP,
    REQUESTS,
    mean_position,
)

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
MIN_SD = 0.05
#: Log-price grid for revenue integrals, wide enough that tails beyond it are negligible.
X_GRID = np.linspace(math.log(0.002), math.log(5000.0), 600)


@dataclass(frozen=True, slots=True)
class GmmParams:
    """Mixture parameters, each with a leading draw axis: lam [D], pi/mu/sd [D, K]; the
    per-request effects (module docstring) are shared by the draws, 0 and 0 without them."""

    lam: NDArray[np.float64]
    pi: NDArray[np.float64]
    mu: NDArray[np.float64]
    sd: NDArray[np.float64]
    #: sd of the log-value shock a request's bidders share.
    shock_sd: float = 0.0
    #: Variance of the mean-1 Gamma factor on a request's bidder rate (negative-binomial counts).
    dispersion: float = 0.0

    @property
    def n_draws(self) -> int:
        return len(self.lam)

    @property
    def has_effects(self) -> bool:
        return self.shock_sd > 0.0 or self.dispersion > 0.0

    def pack(self) -> NDArray[np.float64]:
        """[D, 3 + 3K] rows of (lam, pi..., mu..., sd..., shock_sd, dispersion)."""
        effects = np.tile([self.shock_sd, self.dispersion], (len(self.lam), 1))
        return np.concatenate([self.lam[:, None], self.pi, self.mu, self.sd, effects], axis=1)

    @classmethod
    def unpack(cls, rows: NDArray[np.float64]) -> GmmParams:
        """Inverse of :meth:`pack`; rows of 1 + 3K (states written before the effects) have none."""
        rows = np.atleast_2d(rows)
        k = (rows.shape[1] - 1) // 3
        effects = [float(v) for v in rows[0, 1 + 3 * k :]]
        return cls(
            rows[:, 0].copy(),
            rows[:, 1 : 1 + k].copy(),
            rows[:, 1 + k : 1 + 2 * k].copy(),
            rows[:, 1 + 2 * k : 1 + 3 * k].copy(),
            *effects,
        )

    def repeat(self, d: int) -> GmmParams:
        return GmmParams.unpack(np.repeat(self.pack()[:1], d, axis=0))

    def with_effects(self, shock_sd: float, dispersion: float) -> GmmParams:
        return replace(self, shock_sd=shock_sd, dispersion=dispersion)


@dataclass(frozen=True, slots=True)
class Prior:
    """Weak MAP prior: ``strength`` pseudo-requests with ``lam0`` bidders whose log values
    spread as N(center_k, spread²) around component centres ``center`` [D, K]."""

    lam0: float
    center: NDArray[np.float64]
    spread: float
    strength: float


@dataclass(frozen=True, slots=True)
class CensoredData:
    """One network's binned observations in log price, each with weights [D, L] (D draws).

    ``nofill_at``: thresholds of no-fills (top bid below); ``atfloor_at``: floors of
    second-price fills at the floor; ``price_at``: revealed prices (first price: top bid;
    second price: second bid, one bid above). ``requests`` [D] is the total weight.
    """

    second_price: bool
    nofill_at: NDArray[np.float64]
    nofill_w: NDArray[np.float64]
    atfloor_at: NDArray[np.float64]
    atfloor_w: NDArray[np.float64]
    price_at: NDArray[np.float64]
    price_w: NDArray[np.float64]
    requests: NDArray[np.float64]
    #: One buyer at most (second price): every fill is that buyer above the floor.
    single_bid: bool = False

    def reweighted(self, rng: np.random.Generator, n_draws: int) -> CensoredData:
        """Bayesian-bootstrap copies: every bin weight w becomes Gamma(w, 1) (mean w, var w)."""

        def draw(w: NDArray[np.float64]) -> NDArray[np.float64]:
            base = np.broadcast_to(w[:1], (n_draws, w.shape[1]))
            return np.where(base > 0, rng.gamma(np.maximum(base, 1e-12)), 0.0)

        nf, af, pw = draw(self.nofill_w), draw(self.atfloor_w), draw(self.price_w)
        total_obs = self.nofill_w[0].sum() + self.atfloor_w[0].sum() + self.price_w[0].sum()
        scale = self.requests[0] / total_obs if total_obs > 0 else 1.0
        requests = (nf.sum(axis=1) + af.sum(axis=1) + pw.sum(axis=1)) * scale
        return CensoredData(
            self.second_price, self.nofill_at, nf, self.atfloor_at, af, self.price_at, pw, requests, self.single_bid
        )


#: Bids a floor-responsive first-price fill at the floor is read as (:func:`censored_data`):
#: spread over [s·f, f), not one bid at its log-midpoint, whose spike in the top-bid mixture
#: put a cliff into the revenue curve at f/√s.
AT_FLOOR_POINTS = 4


def censored_data(
    stats: NDArray[np.float64], second_price: bool, single_bid: bool = False, shading: float = 1.0
) -> CensoredData:
    """Binned statistics of one network [F, B] → observations for EM (D = 1). A single
    bidder's rare fills above the floor count as the bidder above their price.

    ``shading`` s < 1: a first-price network whose bidders respond to the floor
    (:class:`ResponsiveCurve`), described by its top bid B before the response. A no-fill at
    floor f then says B < s·f, and a fill at the floor that B lies in [s·f, f), read as
    ``AT_FLOOR_POINTS`` bids spread evenly over that interval in log price (s = 1: a no-fill
    says B < f, a fill at the floor is a bid of f)."""
    log_s = math.log(shading) if not second_price else 0.0
    nofill_w = np.maximum(stats[REQUESTS] - stats[FILLS], 0.0)
    nofill_at = mean_position(nofill_w, stats[NOFILL_LOGF]) + log_s
    atfloor_w = stats[ATFLOOR]
    atfloor_at = mean_position(atfloor_w, stats[ATFLOOR_LOGF])
    if log_s < 0.0:
        spread = log_s * (np.arange(AT_FLOOR_POINTS) + 0.5) / AT_FLOOR_POINTS  # [P], in (log s, 0)
        atfloor_at = (atfloor_at[None, :] + spread[:, None]).ravel()
        atfloor_w = np.tile(atfloor_w / AT_FLOOR_POINTS, AT_FLOOR_POINTS)
    price_w = stats[PRICE]
    price_at = mean_position(price_w, stats[PRICE_LOGP])
    if not second_price:
        # A first-price "fill at the floor" is a top bid equal to the floor: a revealed price.
        price_at = np.concatenate([price_at, atfloor_at])
        price_w = np.concatenate([price_w, atfloor_w])
        atfloor_at, atfloor_w = atfloor_at[:0], atfloor_w[:0]
    elif single_bid:
        atfloor_at = np.concatenate([atfloor_at, price_at])
        atfloor_w = np.concatenate([atfloor_w, price_w])
        price_at, price_w = price_at[:0], price_w[:0]
    keep = lambda at, w: (at[w > 0], w[w > 0][None, :])  # noqa: E731 - drop empty bins
    nf = keep(nofill_at, nofill_w)
    af = keep(atfloor_at, atfloor_w)
    pr = keep(price_at, price_w)
    requests = np.array([nf[1].sum() + af[1].sum() + pr[1].sum()])
    return CensoredData(second_price, nf[0], nf[1], af[0], af[1], pr[0], pr[1], requests, second_price and single_bid)


#: A second-price network is a single bidder when at most this share of its fills pay above
#: the floor although it fills at least ``SINGLE_BID_MIN_FILL_RATE`` of its requests (where a
#: Poisson crowd would pay above the floor in over a tenth of its fills), over enough fills.
SINGLE_BID_ABOVE_SHARE = 0.01
SINGLE_BID_MIN_FILL_RATE = 0.2
SINGLE_BID_MIN_FILLS = 30.0


def is_single_bidder(stats: NDArray[np.float64]) -> bool:
    """Whether a second-price network's statistics [F, B] show a single bidder (see the module)."""
    fills = float(stats[FILLS].sum())
    requests = float(stats[REQUESTS].sum())
    return (
        fills >= SINGLE_BID_MIN_FILLS
        and fills >= SINGLE_BID_MIN_FILL_RATE * requests
        and float(stats[PRICE].sum()) <= SINGLE_BID_ABOVE_SHARE * fills
    )


@dataclass(frozen=True, slots=True)
class ObservationSets:
    """The three kinds of evidence every observation reduces to (positions [L], weights [D, L]).

    - below: Poisson points lie below t (all observations: no-fill at the floor, revealed
      prices, second-price fills at the floor) — contributes ``-lam·S(t)``;
    - above: exactly one point lies above t (second-price prices and at-floor fills) —
      contributes ``log lam + log S(t)``;
    - points: one point at x (revealed prices) — contributes ``log lam + log g(x)``.

    A single bidder (``single_bid``): below are the no-fills only, where the buyer is absent
    or bids below t (``log(1 - lam·S(t))``); above are its fills (``log lam + log S(t)``).
    """

    below_at: NDArray[np.float64]
    below_w: NDArray[np.float64]
    above_at: NDArray[np.float64]
    above_w: NDArray[np.float64]
    point_at: NDArray[np.float64]
    point_w: NDArray[np.float64]
    requests: NDArray[np.float64]
    single_bid: bool = False

    @classmethod
    def of(cls, data: CensoredData) -> ObservationSets:
        cat = np.concatenate
        if data.single_bid:  # no prices: censored_data counted them as fills above their price
            nf, af = (data.nofill_at, data.nofill_w), (data.atfloor_at, data.atfloor_w)
            return cls(*nf, *af, data.price_at, data.price_w, data.requests, single_bid=True)
        if data.second_price:
            above_at, above_w = cat([data.price_at, data.atfloor_at]), cat([data.price_w, data.atfloor_w], axis=1)
        else:
            above_at, above_w = data.atfloor_at, data.atfloor_w
        return cls(
            cat([data.nofill_at, data.price_at, data.atfloor_at]),
            cat([data.nofill_w, data.price_w, data.atfloor_w], axis=1),
            above_at,
            above_w,
            data.price_at,
            data.price_w,
            data.requests,
        )


# --------------------------------------------------------------------------- E-step pieces
# Arrays over observations carry the mixture components on axis 1 ([D, K, ...]): elementwise
# work then runs along the long observation axes, and sums over observations are matrix products.
def _z(at: NDArray, p: GmmParams) -> NDArray:
    """Standardised positions [D, K, L] of log prices ``at`` [L]."""
    return (at[None, None, :] - p.mu[:, :, None]) / p.sd[:, :, None]


def _phi(z: NDArray) -> NDArray:
    """The standard normal density at ``z``."""
    return np.exp(-0.5 * z * z - _LOG_SQRT_2PI)


def _weighted_sum(w: NDArray, x: NDArray) -> NDArray:
    """Σ over the observations of ``w`` [D, ...] times ``x`` [D, K, ...]: [D, K]."""
    d, k = x.shape[:2]
    return (x.reshape(d, k, -1) @ w.reshape(len(w), -1, 1))[:, :, 0]


def _tail_sums(z: NDArray, phi: NDArray, mass: NDArray, w: NDArray, upper: bool) -> tuple[NDArray, NDArray, NDArray]:
    """Σ_l w_l·P·E[Y^j] for j = 0, 1, 2 [D, K]: each component's standard normal Y truncated
    below z (or above it), with φ(z) (:func:`_phi`) and ``mass`` P its mass there [D, K, ...],
    weights ``w`` [D, ...].

    Below z: P = Φ(z), P·E[Y] = -φ(z), P·E[Y²] = P - zφ(z); above z the mirror image. The
    products never divide by P, so far tails (P → 0) contribute 0 rather than 0·∞.
    """
    sign = 1.0 if upper else -1.0
    m0 = _weighted_sum(w, mass)
    return m0, sign * _weighted_sum(w, phi), m0 + sign * _weighted_sum(w, z * phi)


def _log_components(z: NDArray, p: GmmParams) -> NDArray:
    """log(pi_k φ_k(x)) at standardised positions ``z`` [D, K, ...] of log prices x."""
    shape = p.pi.shape + (1,) * (z.ndim - 2)
    return (np.log(p.pi) - np.log(p.sd)).reshape(shape) - 0.5 * z * z - _LOG_SQRT_2PI


def _logsumexp(x: NDArray, axis: int, keepdims: bool = False) -> NDArray:
    """log Σ exp(x) along ``axis`` of finite ``x`` (the lean form of scipy's, called per EM step)."""
    m = x.max(axis=axis, keepdims=True)
    out = m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
    return out if keepdims else out.squeeze(axis)


def _shares(log_components: NDArray) -> tuple[NDArray, NDArray]:
    """The mixture's log density log Σ_k pi_k φ_k [D, ...] at revealed prices, from their
    ``log_components`` [D, K, ...], and each component's share of it [D, K, ...]."""
    log_g = _logsumexp(log_components, axis=1)
    return log_g, np.exp(log_components - log_g[:, None])


def _mixture_survival(upper: NDArray, p: GmmParams) -> NDArray:
    """S = Σ_k pi_k·(1 − Φ_k) [D, ...] from the components' upper masses ``upper`` [D, K, ...]."""
    d, k = upper.shape[:2]
    return (p.pi[:, None, :] @ upper.reshape(d, k, -1)).reshape(d, *upper.shape[2:])


def _survival(at: NDArray, p: GmmParams) -> NDArray:
    """S(at) = 1 - G(at), [D, L]."""
    return _mixture_survival(ndtr(-_z(at, p)), p)


def _value_sums(scale: NDArray, m0: NDArray, m1: NDArray, m2: NDArray, p: GmmParams) -> NDArray:
    """Truncated-normal sums in standard units (:func:`_tail_sums`) times ``scale`` [D, K], as
    the expected count, Σx and Σx² of each component's points in log price [3, D, K]."""
    mu, sd = p.mu, p.sd
    return scale * np.stack([m0, mu * m0 + sd * m1, mu * mu * m0 + 2 * mu * sd * m1 + sd * sd * m2])


def _point_sums(w: NDArray, x: NDArray, shares: NDArray) -> NDArray:
    """Count, Σx and Σx² per component [3, D, K] of revealed prices ``x`` [..., L] with
    weights ``w`` [D, ..., L] and component shares ``shares`` [D, K, ..., L]."""
    return np.stack([_weighted_sum(w * x**j, shares) for j in range(3)])


def _m_step(sums: NDArray, requests: NDArray, p: GmmParams, prior: Prior, single_bid: bool) -> GmmParams:
    """MAP update from the expected count, Σx and Σx² per component [3, D, K], with the
    prior's pseudo-observations (strength split over components)."""
    n, s1, s2 = sums
    kappa = prior.strength / p.pi.shape[1]
    total = n.sum(axis=1)
    lam = (total + prior.strength * prior.lam0) / (requests + prior.strength)
    if single_bid:
        lam = np.minimum(lam, 1.0 - 1e-9)
    pi = (n + kappa) / (total[:, None] + prior.strength)
    mu = (s1 + kappa * prior.center) / (n + kappa)
    resid = s2 - 2 * mu * s1 + n * mu * mu
    var = (resid + kappa * ((mu - prior.center) ** 2 + prior.spread**2)) / (n + kappa)
    sd = np.sqrt(np.maximum(var, MIN_SD**2))
    return GmmParams(lam, pi, mu, sd, p.shock_sd, p.dispersion)


def em_step(obs: ObservationSets, p: GmmParams, prior: Prior) -> GmmParams:
    """One EM (MAP) iteration for every draw at once.

    E-step: expected bidders per component and their first two moments — the Poisson
    points below each threshold (mean ``lam·pi_k·Φ_k(t)``, truncated below t), one point
    above each "one bid above" threshold (component share ∝ ``pi_k·(1-Φ_k(t))``, truncated
    above t) and one point at each revealed price (responsibilities). M-step: MAP update.
    """
    sums = np.zeros((3, *p.pi.shape))
    if obs.below_at.size:
        z = _z(obs.below_at, p)
        w = obs.below_w
        if obs.single_bid:  # the buyer bid below t, given no fill: lam·pi_k·Φ_k(t) / (1 − lam·S(t))
            w = w / np.maximum(1.0 - p.lam[:, None] * _mixture_survival(ndtr(-z), p), 1e-12)
        sums += _value_sums(p.lam[:, None] * p.pi, *_tail_sums(z, _phi(z), ndtr(z), w, upper=False), p)
    if obs.above_at.size:
        z = _z(obs.above_at, p)
        mass = ndtr(-z)
        share = _mixture_survival(mass, p)
        above = obs.above_w / np.maximum(share, 1e-300)
        sums += _value_sums(p.pi, *_tail_sums(z, _phi(z), mass, above, upper=True), p)
    if obs.point_at.size:
        sums += _point_sums(obs.point_w, obs.point_at, _shares(_log_components(_z(obs.point_at, p), p))[1])
    return _m_step(sums, obs.requests, p, prior, obs.single_bid)


# --------------------------------------------------------------------------- per-request effects
#: Quadrature nodes per effect: Gauss–Hermite for the shock, the Gamma law's Gauss rule for the
#: rate factor (5 × 5 nodes with both).
EFFECT_NODES = 5


def _gamma_nodes(n: int, dispersion: float) -> tuple[NDArray, NDArray]:
    """Gauss quadrature of Gamma(mean 1, variance ``dispersion``): ``n`` nodes and weights
    summing to 1, by Golub–Welsch on the generalised Laguerre recurrence (shape 1 / dispersion)
    scaled by the dispersion, which stays finite for any dispersion (the weights of the
    unscaled rule overflow once the shape passes a few hundred)."""
    i = np.arange(1, n)
    diagonal = 1.0 + 2.0 * dispersion * np.arange(n)  # (2i + shape) / shape, i = 0 … n − 1
    off = dispersion * np.sqrt(i * (i + 1.0 / dispersion - 1.0))  # √(i (i + shape − 1)) / shape
    u, vectors = np.linalg.eigh(np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1))
    w = vectors[0] ** 2
    return u, w / w.sum()


@lru_cache(maxsize=256)
def effect_nodes(shock_sd: float, dispersion: float) -> tuple[NDArray, NDArray, NDArray]:
    """Quadrature of the per-request effects (module docstring): log-value shifts z [N], rate
    factors u [N] and weights w [N] summing to 1; the one node (0, 1, 1) without effects.
    Cached: callers must not modify the arrays."""
    if shock_sd > 0.0:
        h, wh = np.polynomial.hermite_e.hermegauss(EFFECT_NODES)
        z, wz = shock_sd * h, wh / wh.sum()
    else:
        z, wz = np.zeros(1), np.ones(1)
    if dispersion > 0.0:
        u, wu = _gamma_nodes(EFFECT_NODES, dispersion)
    else:
        u, wu = np.ones(1), np.ones(1)
    return np.repeat(z, len(u)), np.tile(u, len(z)), np.outer(wz, wu).ravel()


def _shifted(at: NDArray, z: NDArray) -> NDArray:
    """Positions [N·L] of observations ``at`` [L] in each node's unshocked values (x − z_n)."""
    return (at[None, :] - z[:, None]).ravel()


def _node_terms(data: CensoredData, p: GmmParams) -> tuple[NDArray, NDArray, NDArray, NDArray, NDArray]:
    """Every observation of a second-price crowd at its position in each node's unshocked
    values (x − z_n), L running over no-fills, prices, fills at the floor (:func:`_node_weights`
    order): standardised positions [D, K, N, L], their upper masses 1 − Φ, survivals S
    [D, N, L], log(w_n·P(observation | node n)) [D, N, L] (the module's formulas at rate
    lam·u_n), and the prices' component shares [D, K, N, L_price]."""
    shift, u, w = effect_nodes(p.shock_sd, p.dispersion)
    at = np.concatenate([data.nofill_at, data.price_at, data.atfloor_at])
    z = _z(_shifted(at, shift), p).reshape(*p.pi.shape, len(shift), len(at))
    upper = ndtr(-z)
    s = np.maximum(_mixture_survival(upper, p), 1e-300)
    rate = p.lam[:, None, None] * u[None, :, None]  # [D, N, 1]
    a, c = len(data.nofill_at), len(data.price_at)
    ll = np.log(w)[None, :, None] - rate * s  # Poisson points below every threshold
    ll[:, :, a:] += np.log(rate * s[:, :, a:])  # one bid above a price or an at-floor fill
    log_g, shares = _shares(_log_components(z[..., a : a + c], p))
    ll[:, :, a : a + c] += np.log(rate) + log_g  # and one bid at the price
    return z, upper, s, ll, shares


def _node_weights(data: CensoredData) -> NDArray:
    """The observations' weights [D, L] in :func:`_node_terms`' order."""
    return np.concatenate([data.nofill_w, data.price_w, data.atfloor_w], axis=1)


#: Draws per pass of :func:`node_em_step`: its [D, K, N, L] arrays then stay in the cache (a
#: bootstrap step of 16 draws × 25 nodes × 150 positions: 13 ms at once, 7.7 ms 4 at a time).
NODE_STEP_DRAWS = 4


def _draw_rows(data: CensoredData, p: GmmParams, prior: Prior, rows: slice) -> tuple[CensoredData, GmmParams, Prior]:
    """The draws ``rows`` of an EM step's data, parameters and prior (an array of one row
    serves every draw)."""
    pick = lambda x: x if len(x) == 1 else x[rows]  # noqa: E731
    data = replace(
        data,
        nofill_w=pick(data.nofill_w),
        price_w=pick(data.price_w),
        atfloor_w=pick(data.atfloor_w),
        requests=pick(data.requests),
    )
    return (
        data,
        GmmParams(p.lam[rows], p.pi[rows], p.mu[rows], p.sd[rows], p.shock_sd, p.dispersion),
        replace(prior, center=pick(prior.center)),
    )


def node_em_step(data: CensoredData, p: GmmParams, prior: Prior) -> GmmParams:
    """One EM step under the effects: each observation spreads over the nodes by its posterior
    weight P(node | observation), at its position in that node's unshocked values; its Poisson
    points below count times u_n (they arrive at rate lam·u_n), and the requests become
    Σ E[u | observation], the exposure ``lam`` is learned over. Draws go
    :data:`NODE_STEP_DRAWS` at a time (each draw's step is its own)."""
    if p.n_draws > NODE_STEP_DRAWS:
        chunks = range(0, p.n_draws, NODE_STEP_DRAWS)
        steps = [node_em_step(*_draw_rows(data, p, prior, slice(a, a + NODE_STEP_DRAWS))) for a in chunks]
        lam, pi, mu, sd = (np.concatenate([getattr(q, f) for q in steps]) for f in ("lam", "pi", "mu", "sd"))
        return GmmParams(lam, pi, mu, sd, p.shock_sd, p.dispersion)
    z, upper, s, ll, shares = _node_terms(data, p)
    shift, u, _ = effect_nodes(p.shock_sd, p.dispersion)
    post = _node_weights(data)[:, None, :] * np.exp(ll - _logsumexp(ll, axis=1, keepdims=True))
    below = post * u[None, :, None]
    phi = _phi(z)
    sums = _value_sums(p.lam[:, None] * p.pi, *_tail_sums(z, phi, 1.0 - upper, below, upper=False), p)
    a, c = len(data.nofill_at), len(data.price_at)
    # The bid above a price or an at-floor fill (none above a no-fill): of component k with
    # share pi_k·(1 − Φ_k) / S; summed over every position, so no array is sliced.
    above = np.zeros_like(post)
    above[:, :, a:] = post[:, :, a:] / s[:, :, a:]
    sums += _value_sums(p.pi, *_tail_sums(z, phi, upper, above, upper=True), p)
    prices = data.price_at[None, :] - shift[:, None]  # [N, L_price]
    sums += _point_sums(post[:, :, a : a + c], prices, shares)
    return _m_step(sums, below.sum(axis=(1, 2)), p, prior, single_bid=False)


def _with_effects(p: GmmParams, second_price: bool, single_bid: bool) -> bool:
    """Whether ``p``'s effects apply: to a second-price crowd (a single buyer and a first-price
    top bid are read without them)."""
    return p.has_effects and second_price and not single_bid


def log_likelihood(data: CensoredData, p: GmmParams) -> NDArray[np.float64]:
    """Observed-data log-likelihood per draw [D] (log-price densities for revealed prices)."""
    if _with_effects(p, data.second_price, data.single_bid):
        return (_node_weights(data) * _logsumexp(_node_terms(data, p)[3], axis=1)).sum(axis=1)
    obs = ObservationSets.of(data)
    lam = p.lam[:, None]
    if obs.single_bid:
        ll = (obs.below_w * np.log(np.maximum(1.0 - lam * _survival(obs.below_at, p), 1e-300))).sum(axis=1)
    else:
        ll = (obs.below_w * -lam * _survival(obs.below_at, p)).sum(axis=1)
    if obs.above_at.size:
        s = np.maximum(_survival(obs.above_at, p), 1e-300)
        ll += (obs.above_w * (np.log(lam) + np.log(s))).sum(axis=1)
    if obs.point_at.size:
        log_g = _logsumexp(_log_components(_z(obs.point_at, p), p), axis=1)
        ll += (obs.point_w * (np.log(lam) + log_g)).sum(axis=1)
    return ll


def fit(data: CensoredData, start: GmmParams, prior: Prior, *, max_iter: int = 200, tol: float = 1e-6) -> GmmParams:
    """Run EM from ``start`` until parameters move less than ``tol`` (or ``max_iter``)."""
    obs = ObservationSets.of(data)
    p = start
    if obs.single_bid:  # a chance to bid (a start fitted as a Poisson crowd may exceed 1)
        p = GmmParams(np.minimum(p.lam, 0.99), p.pi, p.mu, p.sd, p.shock_sd, p.dispersion)
    effects = _with_effects(p, data.second_price, data.single_bid)
    for _ in range(max_iter):
        q = node_em_step(data, p, prior) if effects else em_step(obs, p, prior)
        delta = max(
            float(np.max(np.abs(q.mu - p.mu))),
            float(np.max(np.abs(q.sd - p.sd))),
            float(np.max(np.abs(q.pi - p.pi))),
            float(np.max(np.abs(np.log(q.lam) - np.log(p.lam)))),
        )
        p = q
        if delta < tol:
            break
    return p


def fit_effects(
    data: CensoredData,
    start: GmmParams,
    prior: Prior,
    candidates: list[tuple[float, float]],
    *,
    em_steps: int,
    margin: float,
) -> GmmParams:
    """The most likely per-request effects among ``start``'s and ``candidates`` (shock_sd,
    dispersion): ``start`` refitted ``em_steps`` EM steps under its own effects, then under each
    candidate's from there. A candidate replaces the best so far only when its log-likelihood
    is ``margin`` higher, so noise alone neither adds an effect nor moves one."""
    current = best = fit(data, start, prior, max_iter=em_steps, tol=1e-5)
    best_ll = float(log_likelihood(data, best)[0])
    for shock_sd, dispersion in candidates:
        tried = fit(data, current.with_effects(shock_sd, dispersion), prior, max_iter=em_steps, tol=1e-5)
        ll = float(log_likelihood(data, tried)[0])
        if ll > best_ll + margin:
            best, best_ll = tried, ll
    return best


def initial_params(prior: Prior) -> GmmParams:
    """Start of EM with no earlier fit: the prior's own mode."""
    d, k = prior.center.shape
    return GmmParams(
        lam=np.full(d, prior.lam0),
        pi=np.full((d, k), 1.0 / k),
        mu=prior.center.copy(),
        sd=np.full((d, k), prior.spread),
    )


# --------------------------------------------------------------------------- revenue
def _upper_integral(x: NDArray, integrand: NDArray) -> NDArray:
    """∫_x^∞ of ``integrand`` [D, X] on the grid ``x`` (trapezoids), [D, X]."""
    step = np.diff(x)[None, :] * 0.5 * (integrand[:, 1:] + integrand[:, :-1])
    return np.concatenate([np.cumsum(step[:, ::-1], axis=1)[:, ::-1], np.zeros((len(integrand), 1))], axis=1)


def _grid_positions(log_floor: NDArray) -> tuple[NDArray, NDArray]:
    """The ``X_GRID`` cell [D, G] (or [1, G]) of each log floor and its fraction of the way
    to the next node, clamped to the grid."""
    pos = np.clip((log_floor - X_GRID[0]) / (X_GRID[1] - X_GRID[0]), 0, len(X_GRID) - 1 - 1e-9)
    i = pos.astype(np.int64)
    return i, pos - i


def _interp_at(table: NDArray, i: NDArray, frac: NDArray) -> NDArray:
    """Row-wise linear interpolation of ``table`` [D, X] at grid positions (:func:`_grid_positions`)."""
    if i.shape[0] == 1:  # the same floors for every row: a gather of columns
        lo, hi = table[:, i[0]], table[:, i[0] + 1]
    else:
        lo, hi = np.take_along_axis(table, i, axis=1), np.take_along_axis(table, i + 1, axis=1)
    return lo * (1 - frac) + hi * frac


def _interp(table: NDArray, log_floor: NDArray) -> NDArray:
    """Row-wise linear interpolation of ``table`` [D, X] on ``X_GRID`` at ``log_floor`` [D, G]
    (or [1, G], the same for every row), clamped to the grid."""
    return _interp_at(table, *_grid_positions(log_floor))


def _effect_tables(p: GmmParams, g: NDArray, s: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """A second-price crowd under the effects, on ``X_GRID`` [D, X]: P(no bid ≥ f),
    P(exactly one bid ≥ f) and E[second bid; second bid ≥ f], mixed over the nodes (at node n
    the bidders are a Poisson crowd of rate lam·u_n whose values are the unshocked ones × e^{z_n})."""
    x = X_GRID
    lam = p.lam[:, None]
    none, one, tail = np.zeros_like(s), np.zeros_like(s), np.zeros_like(s)
    for z, u, w in zip(*effect_nodes(p.shock_sd, p.dispersion), strict=True):
        ls = lam * u * s
        e = np.exp(-ls)
        at = _grid_positions((x - z)[None, :])  # a floor f is f·e^{−z} in the node's unshocked values
        none += w * _interp_at(e, *at)
        one += w * _interp_at(ls * e, *at)
        tail += w * math.exp(z) * _interp_at(_upper_integral(x, np.exp(x)[None, :] * lam * u * g * e * ls), *at)
    return none, one, tail


@dataclass(frozen=True, slots=True)
class RevenueCurve:
    """Expected revenue per request R(f) and fill rate as continuous functions of the floor.

    Precomputed tail integrals on ``X_GRID`` for every draw; evaluation at any log floor
    interpolates them. Shapes: [D, len(X_GRID)].
    """

    second_price: bool
    lam: NDArray[np.float64]
    survival: NDArray[np.float64]
    tail: NDArray[np.float64]
    #: A single bidder: fills with probability lam·S(f) and pays the floor.
    single_bid: bool = False
    #: Under per-request effects (a second-price crowd): P(no bid ≥ f) and P(exactly one bid ≥ f).
    none: NDArray[np.float64] | None = None
    one: NDArray[np.float64] | None = None

    @classmethod
    def of(cls, p: GmmParams, second_price: bool, single_bid: bool = False) -> RevenueCurve:
        x = X_GRID
        z = _z(x, p)
        g = ((p.pi / p.sd)[:, None, :] @ _phi(z))[:, 0]
        s = _mixture_survival(ndtr(-z), p)
        single = second_price and single_bid
        if _with_effects(p, second_price, single):
            none, one, tail = _effect_tables(p, g, s)
            return cls(second_price, p.lam, s, tail, False, none, one)
        lam = p.lam[:, None]
        top = np.exp(-lam * s)
        # Price density (in log price) times price: first price pays the top bid, second
        # price the second bid (when above the floor).
        integrand = np.exp(x)[None, :] * lam * g * top * (lam * s if second_price else 1.0)
        tail = _upper_integral(x, integrand)
        return cls(second_price, p.lam, s, np.zeros_like(tail) if single else tail, single)

    def fill_rate(self, log_floor: NDArray) -> NDArray:
        """P(fill | floor) [D, G]."""
        if self.none is not None:
            return 1.0 - _interp(self.none, log_floor)
        ls = self.lam[:, None] * _interp(self.survival, log_floor)
        return ls if self.single_bid else 1.0 - np.exp(-ls)

    @property
    def n_draws(self) -> int:
        return len(self.lam)

    def pay_cdf(self, log_price: NDArray) -> NDArray:
        """P(pay ≤ x) [D, G] at log prices x at or above the floor: the top bid's CDF when the
        network pays its bid, P(at most one bid above x) when it pays the second bid (always,
        for a single bidder: it pays the floor)."""
        if self.single_bid:
            return np.ones(np.broadcast_shapes((len(self.lam), 1), np.shape(log_price)))
        if self.none is not None:
            return _interp(self.none, log_price) + _interp(self.one, log_price)
        ls = self.lam[:, None] * _interp(self.survival, log_price)
        return np.exp(-ls) * (1.0 + ls) if self.second_price else np.exp(-ls)

    def price_above(self, log_floor: NDArray) -> NDArray:
        """Mean price of a fill above the floor, E[price | price > f], at log floors [D, G]:
        the top bid (first price) or the second bid (second price) given it clears f."""
        above = 1.0 - self.pay_cdf(log_floor)
        mean = _interp(self.tail, log_floor) / np.maximum(above, 1e-300)
        return np.where(above > 1e-12, np.maximum(mean, np.exp(log_floor)), np.exp(log_floor))

    def revenue(self, log_floor: NDArray) -> NDArray:
        """Expected revenue per request (CPM) at log floors [D, G]."""
        r = _interp(self.tail, log_floor)
        if self.one is not None:
            return r + np.exp(log_floor) * _interp(self.one, log_floor)
        if self.second_price:
            ls = self.lam[:, None] * _interp(self.survival, log_floor)
            r = r + np.exp(log_floor) * (ls if self.single_bid else ls * np.exp(-ls))
        return r


def best_floor(curve: RevenueCurve, floor_min: float, floor_max: float, n_grid: int = 48) -> tuple[NDArray, NDArray]:
    """Floor maximising each draw's R(f) within [floor_min, floor_max], and that revenue ([D] each).

    A log-spaced grid finds the best region; golden-section search on the continuous
    curve then refines inside the bracket, so floors are not restricted to grid points.
    A floor of 0 (no floor) is a candidate when floor_min is 0.
    """
    d = len(curve.lam)
    lo = math.log(max(floor_min, math.exp(LOG_PRICE_MIN)))
    hi = math.log(max(floor_max, math.exp(lo)))
    grid = np.linspace(lo, hi, n_grid) if hi > lo else np.array([lo])
    values = curve.revenue(np.broadcast_to(grid, (d, len(grid))))
    j = np.argmax(values, axis=1)
    if len(grid) > 1:
        step = grid[1] - grid[0]
        a = np.maximum(grid[j] - step, lo)
        b = np.minimum(grid[j] + step, hi)
        ratio = (math.sqrt(5) - 1) / 2
        for _ in range(18):
            c1 = b - ratio * (b - a)
            c2 = a + ratio * (b - a)
            r1 = curve.revenue(c1[:, None])[:, 0]
            r2 = curve.revenue(c2[:, None])[:, 0]
            left = r1 >= r2
            b = np.where(left, c2, b)
            a = np.where(left, a, c1)
        best_log = 0.5 * (a + b)
    else:
        best_log = grid[j]
    best_rev = curve.revenue(best_log[:, None])[:, 0]
    floor = np.clip(np.exp(best_log), floor_min, floor_max)
    if floor_min <= 0.0:
        # "No floor" is a genuine option: compare with the floor at the bottom of the price range.
        no_floor = curve.revenue(np.full((d, 1), X_GRID[0]))[:, 0]
        use_zero = no_floor > best_rev
        floor = np.where(use_zero, 0.0, floor)
        best_rev = np.where(use_zero, no_floor, best_rev)
    return floor, best_rev


# ------------------------------------------------------------------ floor-responsive bidders
#: Shading factors a first-price network's bidders may use when they respond to the floor
#: (1 = they do not respond: the floor only cuts fills).
RESPONSE_SHADINGS = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
#: Prior probability of each shading: even odds that bidders respond to the floor at all.
RESPONSE_PRIOR = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
#: At-floor share of a non-responsive first-price network's fills (the detection tolerance).
_AT_FLOOR_NOISE = 0.005


@dataclass(frozen=True, slots=True)
class ResponsiveCurve:
    """A first-price network whose bidders respond to the floor.

    ``base`` describes the top *bid* B (shaded value) as learned; with shading ``s`` [D] a
    bidder whose value clears the floor f bids at least f, so the network fills iff
    ``B ≥ s·f`` and pays ``max(B, f)``:

        P(fill | f) = P(B ≥ s f),   R(f) = f · (P(B ≥ s f) − P(B ≥ f)) + E[B; B ≥ f].

    ``s = 1`` is the plain first-price curve (the floor only cuts fills).
    """

    base: RevenueCurve
    shading: NDArray[np.float64]

    @property
    def second_price(self) -> bool:
        return False

    def fill_rate(self, log_floor: NDArray) -> NDArray:
        return self.base.fill_rate(log_floor + np.log(self.shading)[:, None])

    @property
    def n_draws(self) -> int:
        return len(self.base.lam)

    def pay_cdf(self, log_price: NDArray) -> NDArray:
        """Above the floor the network pays max(B, f) = B: the top bid's CDF."""
        return self.base.pay_cdf(log_price)

    def revenue(self, log_floor: NDArray) -> NDArray:
        lifted = self.fill_rate(log_floor) - self.base.fill_rate(log_floor)
        return np.exp(log_floor) * np.maximum(lifted, 0.0) + self.base.revenue(log_floor)


def shading_posterior(stats: NDArray[np.float64], curve: RevenueCurve) -> NDArray[np.float64]:
    """Posterior over ``RESPONSE_SHADINGS`` [S] of a first-price network from its statistics [F, B].

    Fills at the floor say how often the top bid lay in ``[s f, f)`` among fills, i.e.
    ``q(s, f) = (P(B ≥ s f) − P(B ≥ f)) / P(B ≥ s f)`` under the fitted bid curve (one draw);
    the binomial likelihood of at-floor counts per floor bin, with a small share of
    at-floor fills allowed to any network (the detection tolerance), times the prior.
    """
    fills = stats[FILLS]
    used = fills > 0
    if not used.any():
        return RESPONSE_PRIOR.copy()
    at = np.minimum(stats[ATFLOOR, used], fills[used])
    n = fills[used]
    x = LOG_CENTERS[used]
    shift = np.log(RESPONSE_SHADINGS)[:, None]
    lo = curve.fill_rate(np.broadcast_to(x[None, :] + shift, (len(RESPONSE_SHADINGS), len(x))).reshape(1, -1))
    hi = curve.fill_rate(x[None, :])[0]
    lo = lo.reshape(len(RESPONSE_SHADINGS), len(x))
    q = np.where(lo > 1e-12, np.clip((lo - hi[None, :]) / np.maximum(lo, 1e-12), 0.0, 1.0), 0.0)
    q = _AT_FLOOR_NOISE + (1 - 2 * _AT_FLOOR_NOISE) * q
    ll = (at[None, :] * np.log(q) + (n - at)[None, :] * np.log1p(-q)).sum(axis=1)
    post = np.log(RESPONSE_PRIOR) + ll
    post = np.exp(post - post.max())
    return post / post.sum()
