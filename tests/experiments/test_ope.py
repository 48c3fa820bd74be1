"""Off-policy evaluation: estimators against brute force and a market with known truth."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.special import ndtr

from bandit import InvalidOutcome, PlacementConfig, make_policy
from bandit.policies.grid import FloorGrid
from experiments.ope import (
    LoggedDecisions,
    action_probabilities,
    evaluate,
    reward_model,
    simulate_logs,
    true_value,
)
from simulator.market import Market
from simulator.runner import build_policy, run

PLACEMENT = PlacementConfig.from_dict(
    "p1",
    {"networks": [{"id": "alpha"}, {"id": "beta"}, {"id": "gamma"}], "segment_by": ["os"]},
)
SEGMENTS = ("ios", "android")
SEGMENT_SHARE = np.array([0.4, 0.6])
# Top bid of (segment, network) is lognormal(MU, SIGMA); a first-price fill pays the bid.
MU = np.array([[0.2, 0.6, -0.3], [0.5, 0.0, 0.3]])
SIGMA = np.array([[0.6, 0.9, 0.5], [0.7, 0.5, 1.0]])
GRID = np.geomspace(0.2, 5.0, 6)


def expected_revenue(seg: int, net: int, floor: float) -> float:
    """E[bid · 1{bid >= floor}] for a lognormal bid."""
    mu, s = MU[seg, net], SIGMA[seg, net]
    return float(np.exp(mu + s * s / 2) * ndtr((mu + s * s - np.log(floor)) / s))


def uniform_logs(n: int, rng: np.random.Generator) -> LoggedDecisions:
    """A logger choosing network and floor level uniformly at random."""
    seg = rng.choice(2, n, p=SEGMENT_SHARE)
    net = rng.integers(0, 3, n)
    floor = GRID[rng.integers(0, len(GRID), n)]
    bid = np.exp(MU[seg, net] + SIGMA[seg, net] * rng.standard_normal(n))
    reward = np.where(bid >= floor, bid, 0.0)
    return LoggedDecisions(
        SEGMENTS,
        seg,
        net,
        floor,
        np.full(n, 1 / 3),
        np.full(n, 1 / len(GRID)),
        reward,
    )


def target_policy():
    weights = {"alpha": 0.2, "beta": 0.5, "gamma": 0.3}
    floors = {"alpha": float(GRID[2]), "beta": float(GRID[1]), "gamma": float(GRID[3])}
    truth = sum(
        SEGMENT_SHARE[s] * sum(weights[k] * expected_revenue(s, i, floors[k]) for i, k in enumerate(weights))
        for s in range(2)
    )
    return make_policy("static", PLACEMENT, weights=weights, floors=floors), truth


def test_action_probabilities_of_a_static_policy_put_its_weight_on_its_floor_bin() -> None:
    policy, _ = target_policy()
    probs = action_probabilities(policy, SEGMENTS)
    assert probs.shape == (2, 3, 128)
    np.testing.assert_allclose(probs.sum(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(probs[0].sum(axis=1), [0.2, 0.5, 0.3])
    assert (probs[0] > 0).sum() == 3


def test_ips_equals_brute_force_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    logs = uniform_logs(500, rng)
    policy, _ = target_policy()
    w_net = np.array([0.2, 0.5, 0.3])
    target_floor = GRID[[2, 1, 3]]
    pi = w_net[logs.network] * (logs.floor_cpm == target_floor[logs.network])
    w = pi / (1 / 3 / len(GRID))
    est = evaluate(logs, policy)
    assert est["ips"].value == pytest.approx(np.mean(w * logs.reward), rel=1e-12)
    assert est["snips"].value == pytest.approx(np.sum(w * logs.reward) / np.sum(w), rel=1e-12)
    assert est["ips"].ess == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-12)


def test_reward_model_is_the_cell_mean_when_cells_are_large() -> None:
    rng = np.random.default_rng(1)
    logs = uniform_logs(20000, rng)
    q = reward_model(logs, np.arange(len(logs)), 3, shrinkage=0.0)
    fbin = logs.floor_bin
    cell = (logs.segment_index == 1) & (logs.network == 2) & (logs.floor_cpm == GRID[0])
    assert q[1, 2, fbin[cell][0]] == pytest.approx(logs.reward[cell].mean(), rel=1e-12)


def test_intervals_cover_the_true_value_over_seeds() -> None:
    policy, truth = target_policy()
    n_seeds = 60
    covered = dict.fromkeys(("ips", "snips", "dr"), 0)
    widths = dict.fromkeys(covered, 0.0)
    for seed in range(n_seeds):
        logs = uniform_logs(3000, np.random.default_rng(100 + seed))
        est = evaluate(logs, policy, seed=seed, estimators=list(covered))
        for k, e in est.items():
            covered[k] += e.ci_low <= truth <= e.ci_high
            widths[k] += (e.ci_high - e.ci_low) / n_seeds
    for k in covered:
        assert covered[k] / n_seeds >= 0.85, (k, covered[k])
    assert widths["dr"] < widths["ips"]  # the reward model removes variance


def test_from_frame_reads_ids_segments_and_revenue() -> None:
    frame = pl.DataFrame(
        {
            "placement": ["p1", "p1", "other"],
            "network": ["beta", "alpha", "zzz"],
            "floor_cpm": [1.0, 2.0, 3.0],
            "propensity": [0.5, 0.25, 1.0],
            "floor_propensity": [1.0, 0.5, 1.0],
            "filled": [True, False, True],
            "revenue_cpm": [1.5, 0.0, 9.0],
            "segment": ["ios", "android", "ios"],
        }
    )
    logs = LoggedDecisions.from_frame(PLACEMENT, frame)
    assert len(logs) == 2
    assert logs.network.tolist() == [1, 0]
    assert [logs.segments[i] for i in logs.segment_index] == ["ios", "android"]
    assert logs.reward.tolist() == [1.5, 0.0]
    np.testing.assert_allclose(logs.logging_probability, [0.5, 0.125])


def test_from_frame_derives_segments_from_context() -> None:
    frame = pl.DataFrame(
        {
            "network": ["gamma"],
            "floor_cpm": [1.0],
            "propensity": [0.5],
            "floor_propensity": [1.0],
            "filled": [True],
            "revenue_cpm": [1.5],
            "ts": ["2026-11-21T10:00:00Z"],
            "context": [{"os": "ios"}],
        }
    )
    logs = LoggedDecisions.from_frame(PLACEMENT, frame)
    assert logs.segments == ("ios",) and logs.network.tolist() == [2]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("propensity", 0.0, "propensity and floor_propensity must lie in"),
        ("floor_propensity", 1.5, "propensity and floor_propensity must lie in"),
        ("revenue_cpm", -1.0, "reward must be finite"),
    ],
)
def test_from_frame_rejects_bad_rows(column: str, value: float, message: str) -> None:
    body = {
        "network": ["alpha"],
        "floor_cpm": [1.0],
        "propensity": [0.5],
        "floor_propensity": [1.0],
        "revenue_cpm": [1.0],
        "segment": ["ios"],
    }
    body[column] = [value]
    with pytest.raises(InvalidOutcome, match=message):
        LoggedDecisions.from_frame(PLACEMENT, pl.DataFrame(body))


def test_from_frame_names_missing_columns() -> None:
    with pytest.raises(InvalidOutcome, match="floor_propensity"):
        LoggedDecisions.from_frame(PLACEMENT, pl.DataFrame({"network": ["alpha"], "floor_cpm": [1.0]}))


@pytest.mark.parametrize("mode", ["waterfall", "auction"])
def test_plan_placements_are_refused_with_the_reason(mode: str) -> None:
    """A waterfall or auction request is a plan of several offers with one propensity: the
    single-offer estimators would misweigh it, so a candidate of such a placement is refused,
    naming the mode and what to use instead (its logs still read: one request per plan)."""
    planned = PlacementConfig.from_dict("p1", {**PLACEMENT.to_dict(), "mode": mode})
    body = {"network": ["alpha"], "floor_cpm": [1.0], "propensity": [0.5], "floor_propensity": [1.0],
            "revenue_cpm": [1.0], "segment": ["ios"]}  # fmt: skip
    logs = LoggedDecisions.from_frame(planned, pl.DataFrame(body))
    assert len(logs) == 1
    with pytest.raises(InvalidOutcome, match=f"'p1' is a {mode} placement.*adbandit ab"):
        evaluate(logs, make_policy("ts_gmm", planned, seed=0))


def test_simulated_market_intervals_cover_the_ground_truth() -> None:
    """Log with a uniform explorer (epsilon_greedy, ε = 1) in the simulator, evaluate two
    fixed candidates — a static allocation on the explorer's floor grid and a grid_ts policy
    trained on other traffic, then frozen — and compare with ``market.expected`` truth."""
    market = Market("stationary")
    placement = market.placement
    logger = make_policy("epsilon_greedy", placement, epsilon=1.0, seed=0)
    grid = FloorGrid.build(placement, 8)
    ids = placement.network_ids
    static = make_policy(
        "static",
        placement,
        weights={k: 1.0 + i for i, k in enumerate(ids)},
        floors={k: float(grid.floors[i, 3 + i % 3]) for i, k in enumerate(ids)},
    )
    trained = build_policy("grid_ts", market, seed=99)
    run(trained, market, 6000, seed=99)
    n_seeds = 40
    for candidate in (static, trained):
        truth = true_value(candidate, market, 100_000, seed=12345)
        covered = dict.fromkeys(("ips", "snips", "dr"), 0)
        for seed in range(n_seeds):
            logs = simulate_logs(logger, market, 5000, seed=seed)
            for k, e in evaluate(logs, candidate, seed=seed, estimators=list(covered)).items():
                covered[k] += e.ci_low <= truth <= e.ci_high
        for k, c in covered.items():
            assert c / n_seeds >= 0.85, (candidate.name, k, c)


def test_log_collector_gathers_a_learning_runs_decisions() -> None:
    from experiments.ope import LogCollector

    market = Market("core_stationary")
    collector = LogCollector()
    run(build_policy("epsilon_greedy", market, seed=1), market, 5000, seed=1, batch_size=1000, on_batch=collector)
    logs = collector.logs()
    assert len(logs) == 5000
    assert np.all((logs.logging_probability > 0) & (logs.logging_probability <= 1))
    est = evaluate(logs, make_policy("static", market.placement))
    assert np.isfinite(est["dr"].value) and est["dr"].se > 0
