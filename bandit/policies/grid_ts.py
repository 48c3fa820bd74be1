"""Plain grid Thompson sampling: the baseline the censored-GMM policy must beat.

Each (network, floor level) is an arm with its own, independent posterior; nothing is
shared between floor levels (a no-fill at one floor says nothing about another floor),
which is exactly the weakness the Gaussian-mixture price model addresses.

Per arm, from the weighted statistics at the level's floor bin:

- fill θ ~ Beta(1 + fills, 1 + requests − fills);
- price given fill: Normal–Inverse-Gamma on the price paid, prior mean
  ``μ0 = max(floor, m)`` (``m``: the network's mean fill price over all floors of the
  segment, else of the placement), prior scale ``s0 = max(μ0, 1 CPM)``, ``κ0 = 1``,
  ``α0 = 2``, ``β0 = s0²`` (so the prior mean of σ² is ``s0²``), conjugate update with the
  fills' count, sum and sum of squares; the mean price draw is clipped at the floor
  (a fill never pays less than its floor);
- value = θ · mean price, in CPM per request.

With ``draws`` joint posterior draws from the policy's own generator:
P(network) = P(the network's best arm is the best of all), projected onto the share
contract; P(level | network) = P(level is that network's best arm). Sampling decisions
from the table is then probability matching, i.e. Thompson sampling by its marginals.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from bandit.allocation import matched_shares, shares_bind
from bandit.errors import InvalidConfig
from bandit.policies.grid import DEFAULT_FLOOR_LEVELS, ArmStats, GridChoice, GridPolicy
from bandit.stats import FILLS, REVENUE
from bandit.types import PlacementConfig

DEFAULT_DRAWS = 1024
PRIOR_KAPPA = 1.0
PRIOR_ALPHA = 2.0
#: Smallest prior price scale (CPM), used when there is no price data at all.
PRIOR_SCALE_MIN = 1.0


def network_mean_price(stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean fill price per network [N] over all floors (segment, else placement, else 0)."""
    out = np.zeros(stats.shape[0])
    for source in (pooled, stats):  # the segment's own figure wins when it has fills
        fills = source[:, FILLS, :].sum(axis=1)
        revenue = source[:, REVENUE, :].sum(axis=1)
        out = np.where(fills > 0, revenue / np.maximum(fills, 1e-300), out)
    return out


def price_posterior(
    arms: ArmStats, floors: NDArray[np.float64], prior_mean: NDArray[np.float64]
) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """Normal–Inverse-Gamma posterior (μn, κn, αn, βn) of the fill price per arm, each [N, M].

    ``prior_mean`` [N] is the network's mean price; the arm's prior mean is the larger of it
    and the arm's floor.
    """
    mu0 = np.maximum(floors, prior_mean[:, None])
    beta0 = np.maximum(mu0, PRIOR_SCALE_MIN) ** 2
    k = arms.fills
    safe_k = np.maximum(k, 1e-300)
    mean = np.where(k > 0, arms.revenue / safe_k, mu0)
    ss = np.where(k > 0, np.maximum(arms.revenue_sq - arms.revenue * mean, 0.0), 0.0)
    kappa = PRIOR_KAPPA + k
    mu = (PRIOR_KAPPA * mu0 + k * mean) / kappa
    alpha = PRIOR_ALPHA + 0.5 * k
    beta = beta0 + 0.5 * ss + PRIOR_KAPPA * k * (mean - mu0) ** 2 / (2.0 * kappa)
    return mu, kappa, alpha, beta


def value_draws(
    arms: ArmStats,
    floors: NDArray[np.float64],
    prior_mean: NDArray[np.float64],
    draws: int,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Posterior draws of revenue per request, shape [draws, N, M]."""
    shape = (draws, *floors.shape)
    theta = rng.beta(1.0 + arms.fills, 1.0 + np.maximum(arms.requests - arms.fills, 0.0), size=shape)
    mu, kappa, alpha, beta = price_posterior(arms, floors, prior_mean)
    sigma2 = beta / rng.gamma(alpha, size=shape)
    price = mu + np.sqrt(sigma2 / kappa) * rng.standard_normal(shape)
    return theta * np.maximum(price, floors)


def best_arm_probabilities(values: NDArray[np.float64], valid: NDArray[np.bool_]) -> tuple[NDArray, NDArray]:
    """From draws [D, N, M]: P(network's best arm is the best of all) [N] and
    P(level is the network's best) [N, M], as frequencies over the draws."""
    d, n, m = values.shape
    values = np.where(valid, values, -np.inf)
    best_level = values.argmax(axis=2)  # [D, N]
    best_value = np.take_along_axis(values, best_level[:, :, None], axis=2)[:, :, 0]
    winner = best_value.argmax(axis=1)  # [D]
    network = np.bincount(winner, minlength=n) / d
    flat = (np.arange(n)[None, :] * m + best_level).ravel()
    level = np.bincount(flat, minlength=n * m).reshape(n, m) / d
    return network, level


class GridThompsonPolicy(GridPolicy):
    """Thompson sampling over a per-network grid of floors (see the module docstring).

    Parameters: ``floor_levels`` (grid size per network, default 8), ``draws`` (Monte Carlo
    posterior draws per table, default 1024).
    """

    name = "grid_ts"

    def __init__(
        self,
        placement: PlacementConfig,
        *,
        draws: int = DEFAULT_DRAWS,
        floor_levels: int = DEFAULT_FLOOR_LEVELS,
        half_life_hours: float = math.inf,
        seed: int | None = None,
    ) -> None:
        if isinstance(draws, bool) or not isinstance(draws, int) or not 16 <= draws <= 1_000_000:
            raise InvalidConfig(f"draws must be an integer in [16, 1000000], got {draws!r}")
        self.draws = draws
        super().__init__(
            placement,
            floor_levels=floor_levels,
            half_life_hours=half_life_hours,
            seed=seed,
            draws=draws,
        )

    def _choose(self, arms: ArmStats, stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> GridChoice:
        floors = self.grid.floors
        values = value_draws(arms, floors, network_mean_price(stats, pooled), self.draws, self._rng)
        network, level = best_arm_probabilities(values, self.grid.valid)
        if shares_bind(self._lo, self._hi):
            best = np.where(self.grid.valid, values, -np.inf).max(axis=2)  # [D, N]
            network = matched_shares(best, self._lo, self._hi)
        fill = (1.0 + arms.fills) / (2.0 + np.maximum(arms.requests, arms.fills))
        return GridChoice(network, level, values.mean(axis=0), values.std(axis=0), fill)
