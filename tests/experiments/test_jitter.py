"""The jitter wrapper: continuous floors around any policy's floors."""

from __future__ import annotations

import numpy as np
import pytest

from bandit import InvalidConfig, InvalidState, make_policy
from experiments.jitter import JitteredPolicy
from simulator.market import Market
from simulator.runner import run


def test_jittered_decisions_stay_in_bounds_and_carry_their_density() -> None:
    market = Market("core_stationary")
    base = make_policy("static", market.placement, floors={"admob": 2.0})
    policy = JitteredPolicy(base, [0.3, 0.0, 0.3, 0.3])
    db = policy.decide_batch(n=20_000, rng=np.random.default_rng(0))
    lo, hi = np.exp(policy.floor_bounds.T)
    assert np.all((db.floor_cpm >= lo[db.network] * (1 - 1e-12)) & (db.floor_cpm <= hi[db.network] * (1 + 1e-12)))
    admob = db.network == 0
    assert np.log(db.floor_cpm[admob]).std() == pytest.approx(0.3, rel=0.05)
    assert np.all(db.floor_cpm[db.network == 1] == 0.05)  # sd 0: adfit keeps its fixed floor
    assert np.isnan(db.floor_density[db.network == 1]).all() and np.all(db.floor_density[admob] > 0)
    one = policy.decide(segment="*", rng=np.random.default_rng(1))
    assert one.network != "adfit" or np.isnan(one.floor_density)


def test_the_wrapper_follows_its_learning_base_and_has_no_state_of_its_own() -> None:
    market = Market("core_stationary")
    base = make_policy("grid_ts", market.placement, seed=0)
    policy = JitteredPolicy(base, 0.2)
    before = policy.table("*")
    run(policy, market, 2000, seed=0, batch_size=1000)
    assert base.updates == 2 and policy.table("*") is not before
    np.testing.assert_array_equal(policy.table("*").weights, base.table("*").weights)
    with pytest.raises(InvalidState, match="save its base policy"):
        policy.state()
    with pytest.raises(InvalidConfig, match="floor_log_sd"):
        JitteredPolicy(base, -0.1)
