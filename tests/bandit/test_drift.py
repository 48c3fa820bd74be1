"""The change detector's deviation: real changes stand out, moved floors alone do not."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from bandit import EventBatch
from bandit.drift import FloorHistory, batch_deviation, cusum_step
from bandit.stats import SufficientStats, accumulate, log_price, price_bin
from tests.bandit.auctions import sample_auctions

T0 = 1.8e9
TRUTH = dict(lam=3.0, pi=[1.0], mu=[math.log(1.5)], sd=[0.5], second_price=True)


def _history(rng, floors, **truth):
    filled, revenue = sample_auctions(rng, floors, **truth)
    return accumulate(np.zeros(len(floors), np.int64), 1, floors, filled, revenue, np.ones(len(floors)))[0]


def _batch(rng, floors, **truth):
    filled, revenue = sample_auctions(rng, floors, **truth)
    return floors, filled, revenue


@pytest.mark.parametrize("seed", range(5))
def test_unchanged_market_at_new_floors_is_not_a_change(seed):
    """History at floors around 1 CPM; the batch at floors 3-4 CPM fills less, as it should."""
    rng = np.random.default_rng(seed)
    history = _history(rng, rng.uniform(0.5, 1.5, 5000), **TRUTH)
    dev = batch_deviation(history, *_batch(rng, rng.uniform(3.0, 4.0, 500), **TRUTH))
    assert dev is None or abs(dev.z) < 4


@pytest.mark.parametrize("seed", range(5))
def test_demand_arriving_is_seen_even_at_floors_without_history(seed):
    rng = np.random.default_rng(seed)
    nobody = {**TRUTH, "lam": 0.0}
    history = _history(rng, rng.uniform(0.1, 1.0, 2000), **nobody)
    dev = batch_deviation(history, *_batch(rng, rng.uniform(2.0, 3.0, 20), **TRUTH))
    assert dev is not None and dev.z > 10 and dev.relative > 1


@pytest.mark.parametrize("seed", range(5))
def test_prices_halving_is_a_negative_deviation(seed):
    rng = np.random.default_rng(seed)
    floors = rng.uniform(0.8, 1.2, 4000)
    history = _history(rng, floors, **TRUTH)
    halved = {**TRUTH, "mu": [math.log(0.75)]}
    dev = batch_deviation(history, *_batch(rng, rng.uniform(0.8, 1.2, 400), **halved))
    assert dev is not None and dev.z < -10 and dev.relative < -0.3


def test_cusum_accumulates_beyond_its_slack_and_resets_at_zero():
    state = np.zeros(2)
    for _ in range(3):
        state = cusum_step(state, 5.0, slack=3.0)
    assert state[0] == pytest.approx(6.0) and state[1] == 0.0
    assert cusum_step(state, -20.0, slack=3.0).tolist() == [0.0, 17.0]


@pytest.mark.parametrize("n_events", [10, 5000])  # fewer events than (cell, bin) pairs, and many more
def test_history_read_from_the_statistics_equals_each_cells_dense_history(n_events):
    """Reads at each event's floor bin from the sparse statistics (each (cell, bin) pair read
    once when events outnumber the pairs) equal the one-cell form on the dense cell."""
    rng = np.random.default_rng(n_events)
    stats = SufficientStats(2, 3600.0)
    for k in range(3):
        n = 3000
        floors = np.exp(rng.uniform(-2, 3, n))
        filled, revenue = sample_auctions(rng, floors, **TRUTH)
        stats.add(EventBatch(("a", "b"), rng.integers(0, 2, n), rng.integers(0, 2, n), floors, filled, revenue,
                             np.full(n, T0 + 600.0 * k)))  # fmt: skip
    keys = np.array([3, 0, 2])  # cells (row * 2 + network) in any order
    cell = rng.integers(0, len(keys), n_events)
    bins = price_bin(log_price(np.exp(rng.uniform(-2, 3, n_events))))
    got = FloorHistory.of_stats(stats, keys, cell, bins, 0.7)
    for c, key in enumerate(keys.tolist()):
        mine = cell == c
        want = FloorHistory.of_cell(stats.cell(*divmod(key, 2)) * 0.7, bins[mine])
        for f in fields(FloorHistory):
            np.testing.assert_array_equal(getattr(got, f.name)[mine], getattr(want, f.name), err_msg=f.name)
