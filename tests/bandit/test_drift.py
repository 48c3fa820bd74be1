"""The change detector's deviation: real changes stand out, moved floors alone do not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandit.drift import batch_deviation, cusum_step
from bandit.stats import accumulate
from tests.bandit.auctions import sample_auctions

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
