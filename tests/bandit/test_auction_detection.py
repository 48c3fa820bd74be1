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
    return market_stats(floors, values[:, -1], values[:, -2], second)


def market_stats(floors: np.ndarray, top: np.ndarray, runner_up: np.ndarray, second: bool) -> np.ndarray:
    """Statistics [F, B] of auctions with these floors and best two values."""
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


def explored(rng: np.random.Generator, binding: int, around: float = 0.6) -> np.ndarray:
    """Floors: 20,000 requests at 0.1 CPM (below every bid) and ``binding`` around ``around``
    (0.6 CPM cuts 4% of the top bids, 0.9 CPM 40%)."""
    floors = [np.full(20_000, 0.1), around * np.exp(0.1 * rng.standard_normal(binding))]
    return rng.permutation(np.concatenate(floors))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_second_price_network_mostly_served_below_its_bids_is_still_second_price(seed) -> None:
    rng = np.random.default_rng(seed)
    stats = auction_stats(rng, explored(rng, 600), second=True)
    kind, confidence = detect_auction(stats, "auto")
    assert (kind, confidence > 0.99) == ("second", True)
    # Across all its fills the at-floor share is below the threshold: only the binding floors show it.
    assert stats[ATFLOOR].sum() < 0.02 * stats[FILLS].sum()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("binding", "around"), [(600, 0.9), (20_000, 0.6)])
def test_a_first_price_network_is_first_price_once_floors_bind_whatever_else_it_was_served(
    seed, binding, around
) -> None:
    """Floors that cut 40% of its bids settle it within 600 auctions; floors that cut 4% take
    many more (each miss of the floor says little)."""
    rng = np.random.default_rng(seed)
    stats = auction_stats(rng, explored(rng, binding, around), second=False)
    kind, confidence = detect_auction(stats, "auto")
    assert (kind, confidence > 0.99) == ("first", True)


@pytest.mark.parametrize("seed", SEEDS)
def test_floors_below_every_bid_cannot_tell_the_auctions_apart(seed) -> None:
    """Neither type fills at a floor below both best bids: no verdict (second price assumed)."""
    for second in (False, True):
        rng = np.random.default_rng(seed)
        assert detect_auction(auction_stats(rng, explored(rng, 0), second=second), "auto") == ("second", 0.5)


def test_a_second_price_network_with_few_binding_fills_is_not_taken_for_first_price() -> None:
    """Taken for first price, a network gets floors at its lower bound, where it never fills at
    the floor again: a verdict that could not be undone. With 20,000 fills far below its bids
    and 30 auctions at binding floors (their fills at the floor by chance as few as they come),
    a second-price network must stay second price in every one of 200 markets: the odds of
    first price reach 10^4 with probability at most 10^-4."""
    first = []
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        stats = auction_stats(rng, explored(rng, 30, around=0.5), second=True)
        first.append(detect_auction(stats, "auto")[0] == "first")
    assert sum(first) == 0, sum(first)
    # The unluckiest case: 30 binding auctions of which not one fills at the floor (each
    # would with a chance of ~15%), behind the 20,000 below the bids.
    rng = np.random.default_rng(0)
    values = np.sort(0.8 * np.exp(0.35 * rng.standard_normal((20_300, 2))), axis=1)
    floors = np.concatenate([np.full(20_000, 0.1), 0.5 * np.exp(0.1 * rng.standard_normal(300))])
    top, runner_up = values[:, -1], values[:, -2]
    at_floor = (top >= floors) & (runner_up - floors <= np.maximum(0.01, 0.005 * floors))  # the stats' window
    below_bids, binding = np.flatnonzero((floors == 0.1) & ~at_floor), np.flatnonzero((floors > 0.1) & ~at_floor)
    keep = np.concatenate([below_bids, binding[:30]])
    stats = market_stats(floors[keep], top[keep], runner_up[keep], second=True)
    assert stats[ATFLOOR].sum() == 0
    kind, confidence = detect_auction(stats, "auto")
    assert kind == "second", confidence


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
