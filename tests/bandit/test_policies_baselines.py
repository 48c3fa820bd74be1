"""The grid baselines (ε-greedy, UCB1, grid Thompson sampling): share contracts, floor bounds,
honest propensities, and learning on a tiny synthetic market."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bandit import EventBatch, InvalidConfig, PlacementConfig, make_policy
from bandit.policies.grid import network_floor_levels
from bandit.stats import log_price, price_bin

BASELINES = ("epsilon_greedy", "grid_ts", "ucb1")
T0 = 1.8e9


def two_networks(**extra: dict) -> PlacementConfig:
    nets = [
        {"id": "alpha", "floor_min_cpm": 0.0, "floor_max_cpm": 10.0, **extra.get("alpha", {})},
        {"id": "beta", "floor_min_cpm": 0.0, "floor_max_cpm": 10.0, **extra.get("beta", {})},
    ]
    return PlacementConfig.from_dict("p1", {"networks": nets})


class TinyMarket:
    """Each network fills with probability ``fill`` when the floor is at most its fixed ``price``,
    and then pays that price. Revenue per request of a network: fill · price (any floor ≤ price)."""

    def __init__(
        self, cfg: PlacementConfig, price: list[float], fill: list[float], seed: int
    ) -> None:
        self.cfg = cfg
        self.price = np.array(price)
        self.fill = np.array(fill)
        self.rng = np.random.default_rng(seed)
        self.t = T0

    def outcomes(self, decisions) -> EventBatch:
        n = len(decisions)
        net = decisions.network
        price = self.price[net]
        filled = (self.rng.random(n) < self.fill[net]) & (decisions.floor_cpm <= price)
        self.t += 60.0
        return EventBatch.from_arrays(
            self.cfg,
            segments=decisions.segments,
            segment_index=decisions.segment_index,
            network=net,
            floor_cpm=decisions.floor_cpm,
            filled=filled,
            revenue_cpm=np.where(filled, price, 0.0),
            ts=np.full(n, self.t),
        )


def run(
    name: str,
    cfg: PlacementConfig,
    market: TinyMarket,
    batches: int,
    size: int,
    seed: int,
    **params,
):
    """Drive a policy through ``batches`` rounds; returns it and each round's decisions."""
    policy = make_policy(name, cfg, seed=seed, **params)
    rng = np.random.default_rng(seed + 1000)
    history = []
    for _ in range(batches):
        decisions = policy.decide_batch(n=size, rng=rng)
        policy.update(market.outcomes(decisions))
        history.append(decisions)
    return policy, history


@pytest.mark.parametrize("name", BASELINES)
def test_learns_the_better_network(name: str) -> None:
    """Over 6 seeds (the better network alternating), the better network gets most of the late
    traffic. A policy that ignored the data would give it about half (each network has 8 levels)."""
    late_shares = []
    for seed in range(6):
        better = seed % 2
        price, fill = [1.0, 1.0], [0.3, 0.3]
        price[better], fill[better] = 2.0, 0.6  # 1.2 vs 0.3 CPM per request
        cfg = two_networks()
        market = TinyMarket(cfg, price, fill, seed)
        _, history = run(name, cfg, market, batches=40, size=200, seed=seed)
        late = np.concatenate([d.network for d in history[-10:]])
        late_shares.append(float(np.mean(late == better)))
    assert min(late_shares) > 0.6, late_shares
    assert np.mean(late_shares) > 0.8, late_shares


@pytest.mark.parametrize("name", BASELINES)
def test_learns_a_floor_that_keeps_fills(name: str) -> None:
    """One network paying 2 CPM: floors above 2 never fill, so they should be mostly avoided."""
    cfg = PlacementConfig.from_dict("p1", {"networks": [{"id": "solo", "floor_max_cpm": 10.0}]})
    bad_share = []
    for seed in range(5):
        market = TinyMarket(cfg, [2.0], [0.7], seed)
        _, history = run(name, cfg, market, batches=80, size=100, seed=seed)
        late = np.concatenate([d.floor_cpm for d in history[-20:]])
        bad_share.append(float(np.mean(late > 2.0)))
    # 2 of the 8 levels (4.6 and 10 CPM) are above the price: 25 % of traffic without learning.
    assert max(bad_share) < 0.15, bad_share


CONTRACT = PlacementConfig.from_dict(
    "p1",
    {
        "networks": [
            {"id": "best", "floor_min_cpm": 0.2, "floor_max_cpm": 5.0, "max_share": 0.6},
            {"id": "middle", "floor_min_cpm": 0.0, "floor_max_cpm": 3.0, "min_share": 0.25},
            {"id": "worst", "floor_min_cpm": 1.0, "floor_max_cpm": 1.0, "max_share": 0.1},
        ],
        "segment_by": ["country"],
    },
)


def contract_policy(name: str, seed: int):
    market = TinyMarket(CONTRACT, [3.0, 1.0, 1.0], [0.8, 0.5, 0.1], seed)
    policy = make_policy(name, CONTRACT, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(25):
        keys = rng.choice(["KR", "US"], 300).tolist()
        policy.update(market.outcomes(policy.decide_batch(keys, rng=rng)))
    return policy


@pytest.mark.parametrize("name", BASELINES)
def test_share_contract_and_floor_bounds_hold_exactly(name: str) -> None:
    lo = np.array([n.min_share for n in CONTRACT.networks])
    hi = np.array([n.max_share for n in CONTRACT.networks])
    for seed in range(3):
        fresh = make_policy(name, CONTRACT, seed=seed)
        learned = contract_policy(name, seed)
        for policy in (fresh, learned):
            for seg in ("*", "KR", "US", "never-seen"):
                w = np.array([n.weight for n in policy.allocation(seg).networks])
                assert abs(w.sum() - 1.0) <= 1e-12
                assert np.all(w >= lo - 1e-12) and np.all(w <= hi + 1e-12), (seg, w)
                for n, cfg in zip(policy.allocation(seg).networks, CONTRACT.networks, strict=True):
                    for f in (n.floor_cpm, n.floor_p10_cpm, n.floor_p90_cpm):
                        assert cfg.floor_min_cpm <= f <= cfg.floor_max_cpm
                    # <= 8 levels: the most likely has mass > 10 %, so it lies in [p10, p90].
                    assert n.floor_p10_cpm <= n.floor_cpm <= n.floor_p90_cpm
        # The learned policy pushes the best network to its cap; the rest goes to the networks
        # by their chance of being next best, never giving the worst more than the middle one.
        w = np.array([n.weight for n in learned.allocation("KR").networks])
        assert w[0] == pytest.approx(0.6, abs=1e-9) and w[1] >= w[2], w
        decisions = learned.decide_batch(["KR", "US", "other"] * 500, rng=np.random.default_rng(1))
        for i, cfg in enumerate(CONTRACT.networks):
            floors = decisions.floor_cpm[decisions.network == i]
            assert np.all((floors >= cfg.floor_min_cpm) & (floors <= cfg.floor_max_cpm))
            # The levels are multiples of the placement's precision (cents), served as they are.
            assert set(np.unique(floors)) <= set(network_floor_levels(cfg, 8, 0.01))


@pytest.mark.parametrize("name", BASELINES)
def test_propensities_match_decision_frequencies(name: str) -> None:
    for seed in range(3):
        policy = contract_policy(name, seed)
        table = policy.table("KR")
        n = 40_000
        d = policy.decide_batch(["KR"] * n, rng=np.random.default_rng(seed + 7))
        # Reported propensities are the table's probabilities of the chosen network and floor bin.
        np.testing.assert_allclose(d.propensity, table.weights[d.network])
        bins = price_bin(log_price(d.floor_cpm))
        for k in range(n):
            if k % 997:  # a spread-out subset keeps the loop cheap
                continue
            i = d.network[k]
            same_bin = price_bin(log_price(table.floors[i])) == bins[k]
            assert d.floor_propensity[k] == pytest.approx(table.floor_probs[i][same_bin].sum())
        # Empirical frequencies of (network, floor) agree with weight · P(floor | network).
        expected: dict[tuple[int, float], float] = {}
        for i in range(table.floors.shape[0]):
            for f, p in zip(table.floors[i], table.floor_probs[i], strict=True):
                expected[(i, float(f))] = expected.get((i, float(f)), 0.0) + table.weights[i] * p
        cells = [c for c, p in expected.items() if p > 0]
        observed = {c: 0 for c in cells}
        for i, f in zip(d.network.tolist(), d.floor_cpm.tolist(), strict=True):
            observed[(i, f)] += 1  # a KeyError would mean a zero-probability decision
        obs = np.array([observed[c] for c in cells])
        exp = np.array([expected[c] for c in cells]) * n
        if len(cells) > 1:
            assert sps.chisquare(obs, exp / exp.sum() * n).pvalue > 1e-4
        # The one-request path draws from the same table.
        single = [
            policy.decide({"country": "KR"}, rng=np.random.default_rng(s)) for s in range(400)
        ]
        ids = CONTRACT.network_ids
        for s in single[:50]:
            assert s.propensity == pytest.approx(table.weights[ids.index(s.network)])
        share = np.mean([s.network == "best" for s in single])
        assert (
            abs(share - table.weights[0])
            < 4 * math.sqrt(table.weights[0] * (1 - table.weights[0]) / 400) + 1e-9
        )


def test_untried_arms_come_first() -> None:
    cfg = two_networks()
    for name in ("epsilon_greedy", "ucb1"):
        params = {"epsilon": 0.0} if name == "epsilon_greedy" else {}
        policy = make_policy(name, cfg, seed=0, **params)
        table = policy.table("*")
        np.testing.assert_allclose(table.weights, [0.5, 0.5])  # 8 untried arms each
        np.testing.assert_allclose(table.floor_probs, np.full((2, 8), 1 / 8))
        # Try every arm of alpha once (reward 5 CPM): only beta's untried arms remain first.
        floors = table.floors[0]
        policy.update(
            EventBatch.from_arrays(
                cfg,
                segments=("*",),
                segment_index=np.zeros(8, int),
                network=np.zeros(8, int),
                floor_cpm=floors,
                filled=np.ones(8, bool),
                revenue_cpm=np.full(8, 5.0),
                ts=np.full(8, T0),
            )
        )
        np.testing.assert_allclose(policy.table("*").weights, [0.0, 1.0], err_msg=name)


def test_epsilon_greedy_spreads_epsilon_over_all_arms() -> None:
    cfg = two_networks()
    policy = make_policy("epsilon_greedy", cfg, seed=0, epsilon=0.2)
    floors = policy.table("*").floors
    # Every arm tried; alpha's lowest floor pays 3, every other arm 1 per request.
    reward = np.ones((2, 8))
    reward[0, 0] = 3.0
    policy.update(
        EventBatch.from_arrays(
            cfg,
            segments=("*",),
            segment_index=np.zeros(16, int),
            network=np.repeat([0, 1], 8),
            floor_cpm=floors.ravel(),
            filled=np.ones(16, bool),
            revenue_cpm=reward.ravel(),
            ts=np.full(16, T0),
        )
    )
    table = policy.table("*")
    joint = table.weights[:, None] * table.floor_probs
    expected = np.full((2, 8), 0.2 / 16)
    expected[0, 0] += 0.8
    np.testing.assert_allclose(joint, expected)
    summary = policy.allocation().networks[0]
    assert summary.floor_cpm == 0.0 and summary.expected_revenue_cpm == pytest.approx(3.0)
    assert summary.fill_rate == 1.0


def test_ucb1_prefers_the_less_tried_of_two_equal_arms_and_splits_ties() -> None:
    cfg = PlacementConfig.from_dict("p1", {"networks": [{"id": "a"}, {"id": "b"}]})
    policy = make_policy("ucb1", cfg, seed=0, floor_levels=1)
    # Both arms (floor 0) have mean 0.5; b has been tried 10x less, so its index is higher.
    events = []
    for net, n in ((0, 1000), (1, 100)):
        filled = np.arange(n) % 2 == 0
        events.append(
            EventBatch.from_arrays(
                cfg,
                segments=("*",),
                segment_index=np.zeros(n, int),
                network=np.full(n, net),
                floor_cpm=np.zeros(n),
                filled=filled,
                revenue_cpm=filled * 1.0,
                ts=np.full(n, T0),
            )
        )
    policy.update(EventBatch.concat(events))
    np.testing.assert_allclose(policy.table("*").weights, [0.0, 1.0])
    policy.update(EventBatch.concat([events[1]] * 9))  # b: 100 + 900 requests
    np.testing.assert_allclose(policy.table("*").weights, [0.5, 0.5])  # equal counts → tie split


def test_grid_ts_posterior_summary_tracks_the_truth() -> None:
    cfg = PlacementConfig.from_dict("p1", {"networks": [{"id": "a", "floor_max_cpm": 10.0}]})
    policy = make_policy("grid_ts", cfg, seed=3, floor_levels=1)  # the single level: floor 0
    rng = np.random.default_rng(0)
    n = 5000
    filled = rng.random(n) < 0.4
    price = rng.uniform(1.0, 3.0, n)
    policy.update(
        EventBatch.from_arrays(
            cfg,
            segments=("*",),
            segment_index=np.zeros(n, int),
            network=np.zeros(n, int),
            floor_cpm=np.zeros(n),
            filled=filled,
            revenue_cpm=np.where(filled, price, 0.0),
            ts=np.full(n, T0),
        )
    )
    a = policy.allocation().networks[0]
    truth = np.mean(np.where(filled, price, 0.0))
    assert a.fill_rate == pytest.approx(filled.mean(), abs=0.005)
    assert a.expected_revenue_cpm == pytest.approx(truth, rel=0.03)
    assert 0.0 < a.revenue_sd_cpm < 0.05
    # Fills above a floor of 0, none at it: a floor that never binds cannot tell the types apart.
    assert (a.auction, a.auction_confidence) == ("second", 0.5)


BAD_PARAMS = [
    ("epsilon_greedy", {"epsilon": 1.5}, "epsilon"),
    ("epsilon_greedy", {"epsilon": math.nan}, "epsilon"),
    ("ucb1", {"c": -1.0}, "c must be"),
    ("grid_ts", {"draws": 3}, "draws"),
    ("grid_ts", {"draws": 100.5}, "draws"),
    ("grid_ts", {"floor_levels": 0}, "floor_levels"),
    ("ucb1", {"floor_levels": 2.5}, "floor_levels"),
    ("epsilon_greedy", {"floor_levels": True}, "floor_levels"),
    ("grid_ts", {"no_such_param": 1}, "bad parameters"),
]


@pytest.mark.parametrize(("name", "params", "fragment"), BAD_PARAMS)
def test_bad_parameters_are_refused(name: str, params: dict, fragment: str) -> None:
    with pytest.raises(InvalidConfig, match=fragment):
        make_policy(name, two_networks(), **params)


def test_narrow_floor_ranges_give_fewer_levels() -> None:
    cfg = PlacementConfig.from_dict(
        "p1",
        {
            "networks": [
                {"id": "wide", "floor_max_cpm": 50.0},
                {"id": "fixed", "floor_min_cpm": 2.0, "floor_max_cpm": 2.0},
            ]
        },
    )
    for name in BASELINES:
        policy = make_policy(name, cfg, seed=0)
        table = policy.table("*")
        assert table.floor_probs[1, 0] == pytest.approx(1.0)  # one real level, the rest padding
        d = policy.decide_batch(n=2000, rng=np.random.default_rng(0))
        assert set(d.floor_cpm[d.network == 1].tolist()) == {2.0}
        levels = network_floor_levels(cfg.networks[0], 8)
        assert len(levels) == 8 and levels[0] == 0.0 and levels[-1] == 50.0
        assert len(set(price_bin(log_price(levels)).tolist())) == 8


@pytest.mark.parametrize("name", BASELINES)
def test_served_floors_are_learned_in_their_own_level(name: str) -> None:
    """Each level is a multiple of the placement's floor precision, so the floor served (its
    level, rounded to cents) falls in the level's own statistics bin: every level an arm was
    tried at gets its events, none lands in a neighbour's bin and leaves its arm unlearned."""
    cfg = PlacementConfig.from_dict(
        "p1", {"networks": [{"id": "alpha", "floor_min_cpm": 0.01, "floor_max_cpm": 7.3}]}
    )
    policy = make_policy(name, cfg, seed=0)
    levels = policy.grid.floors[0][policy.grid.valid[0]]
    np.testing.assert_array_equal(np.floor(levels * 100 + 0.5) / 100, levels)
    served = policy.decide_batch(n=4000, rng=np.random.default_rng(0)).floor_cpm
    assert set(price_bin(log_price(np.unique(served))).tolist()) <= set(policy.grid.bins[0].tolist())
    unrounded = network_floor_levels(cfg.networks[0], 8)
    assert not np.array_equal(np.floor(unrounded * 100 + 0.5) / 100, unrounded)  # the case arises
