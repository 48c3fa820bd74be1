"""Auction auto-detection (:func:`bandit.policies.common.detect_auction`) on statistics of
brute-force auctions: a second-price network fills at the floor where its floor binds, and
the many fills of floors far below its bids (exploration, a floor left at its lower bound)
must not hide that."""

from __future__ import annotations

import numpy as np
import pytest

from bandit import EventBatch, PlacementConfig
from bandit.policies.common import detect_auction
from bandit.stats import ATFLOOR, FILLS, SufficientStats

CFG = PlacementConfig.from_dict("p", {"networks": [{"id": "net"}]})
SEEDS = range(5)


def auction_stats(rng: np.random.Generator, floors: np.ndarray, second: bool, buyers: int = 2) -> np.ndarray:
    """Statistics [F, B] of one network whose ``buyers`` buyers have log-normal values
    (median 0.8 CPM, log-sd 0.35), one auction per floor: second price pays max(second value,
    floor), first price the top value, when the top value clears the floor."""
    values = np.sort(0.8 * np.exp(0.35 * rng.standard_normal((len(floors), buyers))), axis=1)
    top, runner_up = values[:, -1], values[:, -2]
    filled = top >= floors
    revenue = np.where(filled, np.maximum(runner_up, floors) if second else top, 0.0)
    n = len(floors)
    stats = SufficientStats(1)
    stats.add(
        EventBatch.from_arrays(
            CFG,
            segments=["*"],
            segment_index=np.zeros(n, dtype=np.int64),
            network=np.zeros(n, dtype=np.int64),
            floor_cpm=floors,
            filled=filled,
            revenue_cpm=revenue,
            ts=np.full(n, 1.8e9),
        )
    )
    return stats.cell(stats.segment_row("*"), 0)


def explored(rng: np.random.Generator, binding: int) -> np.ndarray:
    """Floors: 20,000 requests at 0.1 CPM (below every bid) and ``binding`` around 0.6 CPM."""
    return rng.permutation(np.concatenate([np.full(20_000, 0.1), 0.6 * np.exp(0.1 * rng.standard_normal(binding))]))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_second_price_network_mostly_served_below_its_bids_is_still_second_price(seed) -> None:
    rng = np.random.default_rng(seed)
    stats = auction_stats(rng, explored(rng, 600), second=True)
    kind, confidence = detect_auction(stats, "auto")
    assert (kind, confidence > 0.99) == ("second", True)
    # Across all its fills the at-floor share is below the threshold: only the binding floors show it.
    assert stats[ATFLOOR].sum() < 0.02 * stats[FILLS].sum()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binding", [0, 600, 20_000])
def test_a_first_price_network_is_first_price_at_every_mix_of_floors(seed, binding) -> None:
    rng = np.random.default_rng(seed)
    kind, confidence = detect_auction(auction_stats(rng, explored(rng, binding), second=False), "auto")
    assert (kind, confidence > 0.99) == ("first", True)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_second_price_network_at_binding_floors_is_second_price(seed) -> None:
    rng = np.random.default_rng(seed)
    stats = auction_stats(rng, 0.6 * np.exp(0.1 * rng.standard_normal(2_000)), second=True)
    assert detect_auction(stats, "auto") == ("second", 1.0)


def test_too_few_fills_assume_second_price_and_a_configured_type_is_kept() -> None:
    rng = np.random.default_rng(0)
    stats = auction_stats(rng, np.full(10, 0.1), second=False)
    assert detect_auction(stats, "auto") == ("second", 0.5)
    assert detect_auction(stats, "first") == ("first", 1.0)
