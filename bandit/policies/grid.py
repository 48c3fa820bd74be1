"""Shared machinery of the grid baselines: each (network, floor level) is one arm.

Floors live on a small per-network grid (log-spaced between the network's floor bounds);
an arm's statistics are read from the binned :class:`bandit.stats.SufficientStats` at the
floor bin of its level. A grid policy turns those arm statistics into a
:class:`GridChoice` — P(network) before the share contract, P(level | network), and a
per-arm reward estimate — and this module turns the choice into a decision table.

Rewards are revenue per request in CPM (the price when filled, 0 otherwise). Each segment
learns from its own statistics only (a segment not seen yet is served by the placement's
table); sharing strength across segments and floors is left to the GMM policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit.allocation import (
    AUCTION_CODES,
    SUMMARY_FIELDS,
    SegmentTable,
    discrete_quantile,
    floor_bin_propensity,
    precision_steps,
    round_to_steps,
    step_range,
)
from bandit.errors import InvalidConfig
from bandit.policies.common import detect_auction
from bandit.policy import Policy
from bandit.stats import (
    ATFLOOR,
    FILLS,
    LOG_CENTERS,
    PRICE,
    REQUESTS,
    REVENUE,
    REVENUE_SQ,
    log_price,
    price_bin,
)
from bandit.types import NetworkConfig, PlacementConfig

DEFAULT_FLOOR_LEVELS = 8
MAX_FLOOR_LEVELS = 64
#: Lowest floor of the log spacing (CPM); a lower ``floor_min_cpm`` is kept as its own level.
LOG_SPACING_MIN_CPM = 0.05


def network_floor_levels(network: NetworkConfig, levels: int, precision: float = 0.0) -> NDArray[np.float64]:
    """Ascending floors of one network, at most ``levels`` of them, one per statistics bin.

    Log-spaced between ``max(floor_min, 0.05)`` and ``floor_max``; ``floor_min`` itself is
    always a level. Levels are multiples of ``precision`` (the placement's
    ``floor_precision_cpm``; 0: any), so a served floor is the level itself and its events
    land in the level's bin. Levels falling in the same floor bin would share statistics, so
    only the lowest floor of each bin is kept (a narrow floor range gives fewer levels).
    """
    lo, hi = network.floor_min_cpm, network.floor_max_cpm
    start = max(lo, LOG_SPACING_MIN_CPM)
    if levels == 1 or hi <= lo:
        candidates = np.array([lo])
    elif start >= hi:
        candidates = np.array([lo, hi])
    else:
        n_spaced = levels - 1 if start > lo else levels
        spaced = np.geomspace(start, hi, n_spaced) if n_spaced > 1 else np.array([hi])
        candidates = np.concatenate([[lo], spaced]) if start > lo else spaced
        candidates = np.clip(candidates, lo, hi)
        candidates[-1] = hi
    steps = precision_steps(precision)
    if steps:
        candidates = round_to_steps(candidates, steps, *step_range(lo, hi, steps))
    bins = price_bin(log_price(candidates))
    _, first = np.unique(bins, return_index=True)
    return candidates[np.sort(first)]


@dataclass(frozen=True, slots=True)
class FloorGrid:
    """Floor levels of all networks, padded to a rectangle ``[N, M]``.

    ``valid[i, j]`` marks real levels; padding repeats a network's last level and is never
    chosen. ``bins[i, j]`` is the statistics floor bin of ``floors[i, j]``.
    """

    floors: NDArray[np.float64]
    valid: NDArray[np.bool_]
    bins: NDArray[np.int64]

    @classmethod
    def build(cls, placement: PlacementConfig, levels: int) -> FloorGrid:
        precision = placement.floor_precision_cpm
        per_network = [network_floor_levels(n, levels, precision) for n in placement.networks]
        m = max(len(f) for f in per_network)
        floors = np.array([np.pad(f, (0, m - len(f)), mode="edge") for f in per_network])
        valid = np.arange(m)[None, :] < np.array([len(f) for f in per_network])[:, None]
        return cls(floors, valid, price_bin(log_price(floors)))


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Weighted statistics per arm, each ``[N, M]``: requests, fills, revenue, revenue²."""

    requests: NDArray[np.float64]
    fills: NDArray[np.float64]
    revenue: NDArray[np.float64]
    revenue_sq: NDArray[np.float64]

    @classmethod
    def read(cls, stats: NDArray[np.float64], grid: FloorGrid) -> ArmStats:
        """Arm statistics from segment statistics ``[N, F, B]`` at each level's floor bin."""

        def field(f: int) -> NDArray[np.float64]:
            return np.take_along_axis(stats[:, f, :], grid.bins, axis=1) * grid.valid

        return cls(field(REQUESTS), field(FILLS), field(REVENUE), field(REVENUE_SQ))

    def mean_reward(self) -> NDArray[np.float64]:
        """Empirical revenue per request [N, M] (0 for untried arms)."""
        return np.divide(self.revenue, self.requests, out=np.zeros_like(self.revenue), where=self.requests > 0)

    def reward_se(self) -> NDArray[np.float64]:
        """Standard error of the empirical revenue per request [N, M] (0 for untried arms)."""
        n = np.maximum(self.requests, 1e-300)
        mean = self.mean_reward()
        var = np.maximum(self.revenue_sq / n - mean**2, 0.0)
        return np.where(self.requests > 0, np.sqrt(var / n), 0.0)

    def fill_rate(self) -> NDArray[np.float64]:
        """Empirical fill rate [N, M] (0 for untried arms)."""
        return np.divide(self.fills, self.requests, out=np.zeros_like(self.fills), where=self.requests > 0)


@dataclass(frozen=True, slots=True)
class GridChoice:
    """What a grid policy decided for one segment.

    ``network_probs`` [N] is P(network) before the share contract; ``level_probs`` [N, M]
    is P(level | network) (rows sum to 1, 0 on padding); ``expected`` / ``sd`` / ``fill``
    [N, M] are the per-arm revenue-per-request estimate, its uncertainty and the fill rate,
    used for the human-readable summary.
    """

    network_probs: NDArray[np.float64]
    level_probs: NDArray[np.float64]
    expected: NDArray[np.float64]
    sd: NDArray[np.float64]
    fill: NDArray[np.float64]


def split_ties(score: NDArray[np.float64], mask: NDArray[np.bool_], rtol: float = 1e-12) -> NDArray[np.float64]:
    """Uniform distribution over the maximisers of ``score`` among ``mask`` (same shape).

    Scores within ``rtol`` (relative) of the best count as tied. All-False mask → zeros.
    """
    if not mask.any():
        return np.zeros(score.shape)
    masked = np.where(mask, score, -np.inf)
    best = masked.max()
    if np.isfinite(best):
        tied = mask & (masked >= best - rtol * max(abs(best), 1.0))
    else:
        tied = mask & (masked == best)
    return tied / tied.sum()


def greedy_probs(score: NDArray[np.float64], tried: NDArray[np.bool_], valid: NDArray[np.bool_]) -> NDArray:
    """Uniform over untried valid arms if any, else over the maximisers of ``score`` (any shape)."""
    untried = valid & ~tried
    if untried.any():
        return untried / untried.sum()
    return split_ties(score, valid)


def joint_to_choice(
    joint: NDArray[np.float64], fallback: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Split joint arm probabilities [N, M] into P(network) [N] and P(level | network) [N, M].

    A network with no mass takes its level distribution from ``fallback`` [N, M] (rows sum
    to 1): it still needs floors when the share contract forces traffic onto it.
    """
    network = joint.sum(axis=1)
    level = np.where(network[:, None] > 0, joint / np.where(network > 0, network, 1.0)[:, None], fallback)
    return network / network.sum(), level


def fill_price_quantile(stats: NDArray[np.float64], q: float, default: float = 1.0) -> float:
    """q-quantile of the prices of fills (all networks) from statistics [N, F, B].

    Above-floor fills are binned by price, at-floor fills by floor; bin centres stand for
    their prices. Returns ``default`` when there are no fills.
    """
    hist = stats[:, PRICE, :].sum(axis=0) + stats[:, ATFLOOR, :].sum(axis=0)
    total = hist.sum()
    if total <= 0:
        return default
    k = int(np.searchsorted(np.cumsum(hist), q * total - 1e-12 * total, side="left"))
    return float(np.exp(LOG_CENTERS[min(k, len(hist) - 1)]))


def grid_summary(
    grid: FloorGrid, choice: GridChoice, stats: NDArray[np.float64], placement: PlacementConfig
) -> NDArray[np.float64]:
    """Summary rows [N, len(SUMMARY_FIELDS)]: the most likely floor, p10/p90 of the floor
    distribution, and revenue, sd and fill rate of the most likely level's arm."""
    out = np.zeros((len(placement.networks), len(SUMMARY_FIELDS)))
    for i, cfg in enumerate(placement.networks):
        probs = np.where(grid.valid[i], choice.level_probs[i], 0.0)
        j = int(np.argmax(probs))
        kind, confidence = detect_auction(stats[i], cfg.auction)
        out[i] = (
            grid.floors[i, j],
            discrete_quantile(grid.floors[i], probs, 0.1),
            discrete_quantile(grid.floors[i], probs, 0.9),
            choice.expected[i, j],
            choice.sd[i, j],
            choice.fill[i, j],
            AUCTION_CODES.index(kind),
            confidence,
        )
    return out


class GridPolicy(Policy):
    """Base of the grid baselines: subclasses implement :meth:`_choose`."""

    def __init__(
        self,
        placement: PlacementConfig,
        *,
        floor_levels: int,
        half_life_hours: float,
        seed: int | None,
        **own_params: Any,
    ) -> None:
        """``own_params``: the subclass's validated parameters, kept in the state as given."""
        if isinstance(floor_levels, bool) or not isinstance(floor_levels, int):
            raise InvalidConfig(f"floor_levels must be an integer, got {floor_levels!r}")
        if not 1 <= floor_levels <= MAX_FLOOR_LEVELS:
            raise InvalidConfig(f"floor_levels must be in [1, {MAX_FLOOR_LEVELS}], got {floor_levels}")
        self.grid = FloorGrid.build(placement, floor_levels)
        super().__init__(
            placement,
            half_life_hours=half_life_hours,
            seed=seed,
            floor_levels=floor_levels,
            **own_params,
        )

    def _choose(self, arms: ArmStats, stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> GridChoice:
        """Arm statistics (and the raw segment / placement statistics [N, F, B]) → choice."""
        raise NotImplementedError

    def _build_table(self, segment: str, stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> SegmentTable:
        choice = self._choose(ArmStats.read(stats, self.grid), stats, pooled)
        level_probs = np.where(self.grid.valid, choice.level_probs, 0.0)
        level_probs /= level_probs.sum(axis=1, keepdims=True)
        return SegmentTable(
            weights=self._constrain(choice.network_probs),
            floors=self.grid.floors.copy(),
            floor_probs=level_probs,
            floor_propensity=floor_bin_propensity(self.grid.floors, level_probs, self.grid.bins),
            summary=grid_summary(self.grid, choice, stats, self.placement),
        )


def check_number(value: Any, name: str, lo: float, hi: float = math.inf) -> float:
    """A finite number in [lo, hi] for a policy parameter, else :class:`InvalidConfig`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidConfig(f"{name} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidConfig(f"{name} must be in [{lo:g}, {hi:g}], got {value}")
    return float(value)
