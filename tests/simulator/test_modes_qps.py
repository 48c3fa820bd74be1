"""Per-network QPS caps of the waterfall and auction runs (simulator/modes.py): calls over a
network's cap in a second are no-bids, deterministic and independent of how requests are
batched; the oracles' assumed answer share matches the simulated one; and a policy learns
to leave out a capped network (scenario ``auction_qps``)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bandit.errors import InvalidConfig
from simulator.market import Market
from simulator.modes import Oracle, QpsLedger, play, run_plans
from simulator.runner import build_policy
from simulator.scenario import Scenario, load_scenario


def capped(name: str, caps: dict[int, float]) -> Market:
    sc = load_scenario(name)
    nets = [dataclasses.replace(n, qps_cap=caps.get(j, math.inf)) for j, n in enumerate(sc.networks)]
    return Market(dataclasses.replace(sc, networks=tuple(nets)))


def every_network(market: Market, n: int, floor: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, market.n_networks), dtype=np.int64), np.full((n, market.n_networks), floor)


def test_an_auction_network_answers_at_most_its_cap_per_second_in_arrival_order():
    market = capped("auction_5", {0: 2.0})
    req = market.requests(20_000, 3)
    tiers, floors = every_network(market, len(req))
    _, called, pay = play(market, req, tiers, floors, QpsLedger(market.qps_cap))
    _, _, free = play(market, req, tiers, floors)
    second = np.floor(req.ts).astype(np.int64)
    answered = np.bincount(second - second.min(), weights=pay[:, 0] > 0)
    assert answered.max() <= 2 and called[:, 0].all()  # called, but no-bids beyond the cap
    # The first two calls of each second are answered as without a cap, the rest are no-bids.
    rank = np.arange(len(req)) - np.searchsorted(second, second, side="left")
    assert np.array_equal(pay[rank < 2, 0], free[rank < 2, 0])
    assert (pay[rank >= 2, 0] == 0).all()
    assert np.array_equal(pay[:, 1:], free[:, 1:])  # uncapped networks unchanged
    # Deterministic, and the same however the requests are split into batches.
    ledger = QpsLedger(market.qps_cap)
    parts = [play(market, req.take(s), tiers[s], floors[s], ledger)[2] for s in (slice(0, 6_001), slice(6_001, None))]
    assert np.array_equal(np.vstack(parts), pay)


def test_the_oracles_answer_share_is_the_simulated_one():
    market = capped("auction_5", {0: 2.0, 3: 4.0})
    req = market.requests(200_000, 5)
    tiers, floors = every_network(market, len(req), floor=0.05)
    _, _, pay = play(market, req, tiers, floors, QpsLedger(market.qps_cap))
    _, _, free = play(market, req, tiers, floors)
    share = market.qps_answer_share(0)
    for j in (0, 3):
        simulated = (pay[:, j] > 0).sum() / (free[:, j] > 0).sum()
        assert simulated == pytest.approx(share[j], abs=0.01), (j, simulated, share[j])
    assert share[1] == 1.0 and 0.5 < share[0] < share[3] < 1.0


def test_a_waterfall_counts_only_the_tiers_it_reaches():
    market = capped("waterfall_4", {1: 1.0})
    req = market.requests(20_000, 7)
    tiers = np.full((len(req), market.n_networks), -1, dtype=np.int64)
    tiers[:, 0], tiers[:, 1] = 0, 1  # network 1 is the second tier, called only when 0 does not fill
    floors = np.full(tiers.shape, 1.0)
    _, called, pay = play(market, req, tiers, floors, QpsLedger(market.qps_cap))
    second = np.floor(req.ts).astype(np.int64)
    reached = called[:, 1]
    assert not reached[pay[:, 0] > 0].any()
    answered = np.bincount(second - second.min(), weights=reached & (pay[:, 1] > 0))
    assert answered.max() <= 1 and answered.sum() > 100
    # Each second's first reached call is answered as without a cap.
    _, _, free = play(market, req, tiers, floors)
    first = np.zeros(len(req), dtype=bool)
    rows = np.flatnonzero(reached)
    first[rows[np.unique(second[rows], return_index=True)[1]]] = True
    assert np.array_equal(pay[first, 1], free[first, 1]) and (pay[reached & ~first, 1] == 0).all()


def test_qps_cap_is_validated_and_needs_a_multi_network_mode():
    body = {
        "name": "x",
        "networks": [{"id": "a", "auction": "first", "bidders": 1.0, "value_log_means": [0.0],
                      "value_log_sds": [0.5], "qps_cap": 5}],
    }  # fmt: skip
    with pytest.raises(InvalidConfig, match="qps_cap is enforced by waterfall and auction runs"):
        Scenario.from_dict(body, "x")
    assert Scenario.from_dict({**body, "mode": "auction"}, "x").networks[0].qps_cap == 5
    body["networks"][0]["qps_cap"] = 0
    with pytest.raises(InvalidConfig, match="qps_cap"):
        Scenario.from_dict({**body, "mode": "auction"}, "x")


def test_a_policy_learns_to_leave_out_a_network_over_its_cap():
    """auction_qps: admob answers a third of its calls. Uncapped, the oracle calls it; capped,
    the oracle leaves it out, and so does the policy after 30,000 requests, close to the oracle."""
    market = Market("auction_qps")
    free = capped("auction_qps", {})
    assert Oracle(free).plan(0, 0).tiers[0] >= 0
    oracle = Oracle(market)
    assert oracle.plan(0, 0).tiers[0] == -1
    for seed in (0, 1):
        policy = build_policy("ts_gmm", market, seed=seed)
        frame = run_plans(policy, market, 30_000, seed=seed, oracle=oracle)
        assert frame["cumulative_capture"][-1] >= 0.95, frame["cumulative_capture"][-1]
        plans = policy.decide_plans(("*",), np.zeros(5_000, dtype=np.int64), rng=np.random.default_rng(seed))
        assert (plans.tiers[:, 0] >= 0).mean() < 0.1
