"""UCB1 over a per-network grid of floors.

Each (network, floor level) is an arm; its index is

    mean_a + c · scale · sqrt(2 ln n / n_a)

with ``mean_a`` the empirical revenue per request, ``n_a`` its (discounted) requests,
``n`` the requests of all arms of the segment and ``scale`` a robust reward scale: the
90th percentile of fill prices of the whole placement (UCB1 assumes rewards in [0, 1];
revenue per request lies in [0, price]). Untried arms come first; ties are split evenly.
The table puts all mass on the maximising arm(s); networks without it (traffic forced by
the share contract) use their own best-index level.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from bandit.policies.grid import (
    DEFAULT_FLOOR_LEVELS,
    ArmStats,
    GridChoice,
    GridPolicy,
    check_number,
    fill_price_quantile,
    greedy_probs,
    joint_to_choice,
)
from bandit.types import PlacementConfig

DEFAULT_C = 1.0
SCALE_QUANTILE = 0.9


def ucb_index(arms: ArmStats, c: float, scale: float) -> NDArray[np.float64]:
    """UCB1 index [N, M] of tried arms (untried arms get +inf)."""
    n_a = arms.requests
    log_n = max(float(np.log(max(n_a.sum(), 1.0))), 0.0)
    bonus = np.divide(2.0 * log_n, n_a, out=np.full_like(n_a, np.inf), where=n_a > 0)
    return arms.mean_reward() + c * scale * np.sqrt(bonus)


class UCB1Policy(GridPolicy):
    """UCB1 (see the module docstring). Parameters: ``c`` (exploration weight, default 1),
    ``floor_levels`` (grid size per network, default 8)."""

    name = "ucb1"

    def __init__(
        self,
        placement: PlacementConfig,
        *,
        c: float = DEFAULT_C,
        floor_levels: int = DEFAULT_FLOOR_LEVELS,
        half_life_hours: float = math.inf,
        seed: int | None = None,
    ) -> None:
        self.c = check_number(c, "c", 0.0, 1e6)
        super().__init__(
            placement,
            floor_levels=floor_levels,
            half_life_hours=half_life_hours,
            seed=seed,
            c=self.c,
        )

    def _choose(self, arms: ArmStats, stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> GridChoice:
        valid = self.grid.valid
        tried = arms.requests > 0
        scale = fill_price_quantile(pooled, SCALE_QUANTILE)
        index = ucb_index(arms, self.c, scale)
        joint = greedy_probs(index, tried, valid)
        fallback = np.stack([greedy_probs(index[i], tried[i], valid[i]) for i in range(len(index))])
        network, level = joint_to_choice(joint, fallback)
        return GridChoice(network, level, arms.mean_reward(), arms.reward_se(), arms.fill_rate())
