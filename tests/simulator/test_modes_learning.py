"""Waterfall and parallel-auction placements learn their best plans (issue targets, 5 seeds).

Each scenario runs ts_gmm's plan Thompson sampling against the exact oracle
(:mod:`simulator.modes`) on 5 seeds, and the baseline an ad-ops team would configure knowing
the market: a waterfall ordered by eCPM with eCPM floors, an auction with one unified floor.
Targets: capture ≥ 98% of the oracle over the run and ≥ 99% over the last fifth (means over
seeds; no seed below 97.5% / 98.5%), and better than the baseline on every seed. Seeds run
in two spawned processes.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from simulator.market import Market
from simulator.modes import last_share_capture, run_plans, scenario_setup
from simulator.runner import build_policy

SEEDS = (0, 1, 2, 3, 4)
REQUESTS = {
    "waterfall_4": 100_000,
    "waterfall_8": 100_000,
    # a floor-responsive first-price tier: reached since plans read its observations under its shading
    "waterfall_responsive": 100_000,
    "auction_5": 100_000,
    "auction_20": 150_000,
    # a common value shock outside the model: reached since auctions explore lower floors
    "auction_segments": 150_000,
}


def _one(scenario: str, seed: int) -> tuple[float, float, float]:
    market, oracle, baseline = scenario_setup(scenario)
    n = REQUESTS[scenario]
    base = run_plans(baseline, market, n, seed=seed, oracle=oracle)
    learned = run_plans(build_policy("ts_gmm", market, seed=seed), market, n, seed=seed, oracle=oracle)
    return learned["cumulative_capture"][-1], last_share_capture(learned), base["cumulative_capture"][-1]


@pytest.fixture(scope="module")
def results() -> dict[str, np.ndarray]:
    jobs = [(sc, seed) for sc in REQUESTS for seed in SEEDS]
    # spawn, not fork: the suite's process runs Ray's threads, which a fork would copy mid-lock.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = list(pool.map(_one, *zip(*jobs, strict=True)))
    return {sc: np.array([r for (s, _), r in zip(jobs, out, strict=True) if s == sc]) for sc in REQUESTS}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(REQUESTS))
def test_plans_reach_the_oracle_and_beat_the_static_baseline(results, scenario):
    run, last, base = results[scenario].T
    print(f"{scenario}: run {run.round(4)}, last fifth {last.round(4)}, baseline {base.round(4)}")
    assert run.mean() >= 0.98 and run.min() >= 0.975, run
    assert last.mean() >= 0.99 and last.min() >= 0.985, last
    assert (run > base + 0.02).all(), (run, base)
    # The oracle is the best plan: a capture well above 1 would mean a broken oracle.
    assert last.max() <= 1.01, last


def test_a_waterfall_keeps_its_first_tier_share_contract():
    """adfit must lead at least 25% of the waterfalls (a contract); the learned plans hold it
    while the other 75% go to the best first tier."""
    import dataclasses

    from simulator.scenario import load_scenario

    scenario = load_scenario("waterfall_4")
    networks = list(scenario.networks)
    networks[1] = dataclasses.replace(networks[1], min_share=0.25)
    market = Market(dataclasses.replace(scenario, networks=tuple(networks)))
    for seed in (0, 1):
        policy = build_policy("ts_gmm", market, seed=seed)
        run_plans(policy, market, 20_000, seed=seed)
        plans = policy.decide_plans(("*",), np.zeros(20_000, dtype=np.int64), rng=np.random.default_rng(seed))
        first = np.bincount(np.argmax(plans.tiers == 0, axis=1), minlength=4) / 20_000
        assert first[1] >= 0.25 - 0.015, first  # sampling error of 20,000 draws: ~0.003
        assert first.max() > 0.5, first  # the rest goes to the best first tier, not spread evenly


def test_an_auction_keeps_its_call_share_contract_while_learning():
    """auction_5 with at most 2 calls, whose learned plans call adfit and inmobi on every
    request: with adfit on at most 50% of requests and pangle on at least 40%, the learned
    plans hold both (call shares of the served table) and still earn most of the
    unconstrained oracle's revenue (the contract has a price)."""
    import dataclasses

    from simulator.scenario import load_scenario

    scenario = dataclasses.replace(load_scenario("auction_5"), max_calls=2)
    networks = list(scenario.networks)
    networks[1] = dataclasses.replace(networks[1], max_share=0.5)
    networks[2] = dataclasses.replace(networks[2], min_share=0.4)
    market = Market(dataclasses.replace(scenario, networks=tuple(networks)))
    policy = build_policy("ts_gmm", market, seed=0)
    frame = run_plans(policy, market, 20_000, seed=0)
    plans = policy.decide_plans(("*",), np.zeros(20_000, dtype=np.int64), rng=np.random.default_rng(0))
    calls = (plans.tiers >= 0).mean(axis=0)
    assert calls[2] >= 0.4 - 0.015 and calls[1] <= 0.5 + 0.015, calls  # sampling error ~0.0035
    assert ((plans.tiers >= 0).sum(axis=1) <= 2).all()
    assert frame["cumulative_capture"][-1] >= 0.8, frame["cumulative_capture"][-1]
