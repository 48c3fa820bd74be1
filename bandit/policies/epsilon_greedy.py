"""ε-greedy over a per-network grid of floors: the simplest learning baseline.

Each (network, floor level) is an arm scored by its empirical revenue per request.
Probability ``1 − ε`` goes to the greedy arm (untried arms first, ties split), ``ε`` is
spread uniformly over all arms. The resulting P(network) is then projected onto the
placement's share contract; P(level | network) is kept.
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
    greedy_probs,
    joint_to_choice,
)
from bandit.types import PlacementConfig

DEFAULT_EPSILON = 0.1


def epsilon_greedy_joint(
    mean: NDArray[np.float64], tried: NDArray[np.bool_], valid: NDArray[np.bool_], epsilon: float
) -> NDArray[np.float64]:
    """Joint arm probabilities [N, M]: ``(1 − ε)·greedy + ε·uniform`` over the valid arms."""
    uniform = valid / valid.sum()
    return (1.0 - epsilon) * greedy_probs(mean, tried, valid) + epsilon * uniform


class EpsilonGreedyPolicy(GridPolicy):
    """ε-greedy (see the module docstring). Parameters: ``epsilon`` (default 0.1),
    ``floor_levels`` (grid size per network, default 8)."""

    name = "epsilon_greedy"

    def __init__(
        self,
        placement: PlacementConfig,
        *,
        epsilon: float = DEFAULT_EPSILON,
        floor_levels: int = DEFAULT_FLOOR_LEVELS,
        half_life_hours: float = math.inf,
        seed: int | None = None,
    ) -> None:
        self.epsilon = check_number(epsilon, "epsilon", 0.0, 1.0)
        super().__init__(
            placement,
            floor_levels=floor_levels,
            half_life_hours=half_life_hours,
            seed=seed,
            epsilon=self.epsilon,
        )

    def _choose(self, arms: ArmStats, stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> GridChoice:
        valid = self.grid.valid
        mean = arms.mean_reward()
        tried = arms.requests > 0
        joint = epsilon_greedy_joint(mean, tried, valid, self.epsilon)
        # A network without mass (ε = 0) still needs floors if the contract forces traffic on it.
        fallback = np.stack([greedy_probs(mean[i], tried[i], valid[i]) for i in range(len(mean))])
        network, level = joint_to_choice(joint, fallback)
        return GridChoice(network, level, mean, arms.reward_se(), arms.fill_rate())
