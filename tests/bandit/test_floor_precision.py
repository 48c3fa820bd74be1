"""Floors rounded to the placement's precision (default cents) before a decision's
propensities are computed: the served floor is the logged one, and its propensity and
density are those of the rounded floor (checked against Monte Carlo frequencies)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bandit import NetworkConfig, PlacementConfig, make_policy
from bandit.allocation import SegmentTable, round_table
from bandit.errors import InvalidConfig
from bandit.modes import EXPLORED_PLANS
from bandit.policies.ts_gmm import AUCTION_EXPLORE, EXPLORE_FACTORS
from bandit.registry import policy_from_state
from bandit.stats import log_price, price_bin
from experiments.jitter import JitteredPolicy
from tests.bandit.test_ts_gmm import _feed, _truth

NETWORKS = (NetworkConfig("a", 0.1, 20.0), NetworkConfig("b", 0.05, 5.0), NetworkConfig("c", 0.0, 2.0))


def placement(precision: float = 0.01, mode: str = "single") -> PlacementConfig:
    return PlacementConfig("p", NETWORKS, (), "USD", mode, floor_precision_cpm=precision)


def on_grid(floors: np.ndarray, steps: int) -> bool:
    """Floors are exact multiples k / steps (the float nearest the decimal, e.g. 0.29, not 0.29000000000000004)."""
    return bool(np.all(np.floor(floors * steps + 0.5) / steps == floors))


@pytest.mark.parametrize(
    ("precision", "match"),
    [
        (-0.01, "floor_precision_cpm must be 0"),
        (0.03, "1/n CPM for a whole n"),
        (2.0, "1/n CPM for a whole n"),
        (1e-5, "1/n CPM for a whole n"),
        (math.nan, "floor_precision_cpm must be 0"),
        (True, "floor_precision_cpm must be 0"),
        ("0.01", "floor_precision_cpm must be 0"),
    ],
)
def test_an_invalid_precision_is_refused_with_what_is_expected(precision, match) -> None:
    with pytest.raises(InvalidConfig, match=match):
        placement(precision)


def test_floor_bounds_without_a_multiple_of_the_precision_are_refused() -> None:
    with pytest.raises(InvalidConfig, match=r"network 'x': floor bounds \[0.101, 0.109\] hold no multiple"):
        PlacementConfig("p", (NetworkConfig("x", 0.101, 0.109),))
    PlacementConfig("p", (NetworkConfig("x", 0.101, 0.109),), floor_precision_cpm=0.001)  # finer: fine


def test_the_default_precision_serialises_as_before_and_others_round_trip() -> None:
    assert "floor_precision_cpm" not in placement().to_dict()  # stored placements compare as before
    for precision in (0.0, 0.05, 0.001, 1.0):
        config = placement(precision)
        assert PlacementConfig.from_dict("p", config.to_dict()) == config
        assert config.floor_steps_per_cpm == (round(1 / precision) if precision else 0)


@pytest.fixture(scope="module")
def learned():
    """A ts_gmm policy (log-normal floor jitter) learned on brute-force auctions."""
    policy = make_policy("ts_gmm", placement(), seed=1)
    _feed(policy, np.random.default_rng(0), [_truth(0.3), _truth(0.25), _truth(0.2)], 3000, batches=4)
    return policy


def test_jittered_decisions_serve_floors_in_cents_and_log_exactly_those(learned) -> None:
    db = learned.decide_batch(n=20_000, rng=np.random.default_rng(5))
    assert on_grid(db.floor_cpm, 100)
    assert all(len(repr(f).partition(".")[2]) <= 2 for f in db.floor_cpm.tolist())  # JSON shows 0.23, not 0.2300…01
    lo = np.array([n.floor_min_cpm for n in NETWORKS])[db.network]
    hi = np.array([n.floor_max_cpm for n in NETWORKS])[db.network]
    assert np.all((db.floor_cpm >= lo) & (db.floor_cpm <= hi))
    assert len(np.unique(db.floor_cpm)) > 10  # still explored continuously, then rounded
    table = learned.table("*")
    np.testing.assert_array_equal(db.floor_propensity, table.floor_bin_probability(db.network, db.floor_cpm))
    np.testing.assert_array_equal(db.floor_density, table.logged_floor_density(db.network, db.floor_cpm))
    for k in range(50):  # the one-request path serves and logs the same way
        d = learned.decide(segment="*", rng=np.random.default_rng(k))
        j = learned.placement.network_index(d.network)
        assert round(d.floor_cpm, 2) == d.floor_cpm
        assert d.floor_density == table.logged_floor_density(np.array([j]), np.array([d.floor_cpm]))[0]


def _monte_carlo(policy, n: int, steps: int, seed: int = 7) -> None:
    """Frequencies of (network, served floor) and of (network, floor bin) over ``n`` decisions
    against the decisions' own probabilities: propensity × cell probability (= propensity ×
    logged density × the cell's width in log floor) and propensity × floor_propensity."""
    db = policy.decide_batch(n=n, rng=np.random.default_rng(seed))
    table = policy.table("*")
    assert on_grid(db.floor_cpm, steps)
    lower, upper = table.floor_cell_span(db.network, db.floor_cpm)
    cell_p = np.where(
        np.isfinite(db.floor_density),
        db.floor_density * (upper - lower),
        table.floor_cell_probability(db.network, db.floor_cpm),
    )
    np.testing.assert_allclose(cell_p, table.floor_cell_probability(db.network, db.floor_cpm), rtol=1e-12)
    for key, prob in (
        (np.rint(db.floor_cpm * steps), db.propensity * cell_p),
        (price_bin(log_price(db.floor_cpm)), db.propensity * db.floor_propensity),
    ):
        pairs, first, counts = np.unique(
            np.stack([db.network, key.astype(np.int64)], axis=1), axis=0, return_index=True, return_counts=True
        )
        expected = n * prob[first]
        z = (counts - expected) / np.sqrt(expected * (1 - prob[first]))
        assert np.abs(z).max() < 4.5, (pairs[np.argmax(np.abs(z))], counts[np.argmax(np.abs(z))], expected.max())
        # Every (network, floor) that can be served was served about as often as it should:
        # the decisions' probabilities of the values seen sum to (almost) all of the mass.
        assert prob[first].sum() == pytest.approx(1.0, abs=3e-3)


def test_a_rounded_floors_propensity_and_density_match_its_monte_carlo_frequency(learned) -> None:
    _monte_carlo(learned, 400_000, 100)


@pytest.mark.parametrize("precision", [0.5, 0.05])
def test_coarse_steps_and_the_grid_edges_match_their_monte_carlo_frequency(precision) -> None:
    """Steps as wide as the jitter, and floors at the bounds (the first and last cells take
    every draw beyond them): b's floors (bounds [0.05, 5]) at 0.06 and 4.8 jitter into both."""
    config = placement(precision)
    base = make_policy("static", config, weights={"a": 0.5, "b": 0.3, "c": 0.2}, floors={"a": 1.0, "b": 0.06, "c": 0.0})
    policy = JitteredPolicy(base, np.array([0.3, 0.5, 0.3]))
    _monte_carlo(policy, 300_000, round(1 / precision))
    base = make_policy("static", config, weights={"a": 0.5, "b": 0.5, "c": 0.0}, floors={"a": 1.0, "b": 4.8})
    _monte_carlo(JitteredPolicy(base, 0.3), 300_000, round(1 / precision))


def test_fixed_floors_are_rounded_and_identical_ones_merge() -> None:
    """Without jitter the candidate floors are rounded when the table is made; two that round
    to the same cent become one floor with both probabilities, and bins follow the rounding."""
    table = SegmentTable(
        weights=np.array([0.6, 0.4]),
        floors=np.array([[1.004, 0.996, 1.2, 0.0], [0.0449, 0.2, 0.2, 0.2]]),
        floor_probs=np.array([[0.2, 0.3, 0.4, 0.1], [0.5, 0.5, 0.0, 0.0]]),
        floor_propensity=np.ones((2, 4)),
        summary=np.zeros((2, 8)),
    )
    bounds = np.log([[0.5, 20.0], [0.05, 5.0]])
    out = round_table(table, 0.01, bounds)
    np.testing.assert_array_equal(out.floors, [[1.0, 1.0, 1.2, 0.0], [0.05, 0.2, 0.2, 0.2]])
    np.testing.assert_allclose(out.floor_probs, [[0.5, 0.0, 0.4, 0.1], [0.5, 0.5, 0.0, 0.0]])
    bins = price_bin(log_price(out.floors))
    for i, j in np.ndindex(out.floors.shape):
        assert out.floor_propensity[i, j] == pytest.approx(out.floor_probs[i][bins[i] == bins[i, j]].sum())
    again = round_table(out, 0.01, bounds)  # idempotent
    for name in ("floors", "floor_probs", "floor_propensity", "floor_bounds"):
        np.testing.assert_array_equal(getattr(again, name), getattr(out, name))
    u = np.random.default_rng(0).random(200_000)
    net, floor, _, _ = out.sample(u)
    assert np.mean((net == 0) & (floor == 1.0)) == pytest.approx(0.6 * 0.5, abs=0.005)
    assert set(np.unique(floor[net == 0])) == {0.0, 1.0, 1.2}  # the merged 0.996 is never served apart


def test_plan_floors_are_rounded_and_identical_plans_merge() -> None:
    table = SegmentTable(
        weights=np.array([0.5, 0.5]),
        floors=np.ones((2, 1)),
        floor_probs=np.ones((2, 1)),
        floor_propensity=np.ones((2, 1)),
        summary=np.zeros((2, 8)),
        plan_tiers=np.array([[0, 1], [0, 1], [1, 0], [-1, -1]]),
        plan_floors=np.array([[1.001, 2.0], [0.999, 2.004], [1.0, 3.0], [0.0, 0.0]]),
        plan_probs=np.array([0.25, 0.25, 0.5, 0.0]),
    )
    out = round_table(table, 0.01, np.log([[0.5, 20.0], [0.5, 20.0]]))
    np.testing.assert_array_equal(out.plan_tiers, [[0, 1], [1, 0], [-1, -1], [-1, -1]])
    np.testing.assert_array_equal(out.plan_floors, [[1.0, 2.0], [1.0, 3.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(out.plan_probs, [0.5, 0.5, 0.0, 0.0])


def test_waterfall_plans_serve_floors_in_cents() -> None:
    policy = make_policy("ts_gmm", placement(mode="waterfall"), seed=2)
    plans = policy.decide_plans(["*"], np.zeros(2000, dtype=np.int64), rng=np.random.default_rng(0))
    assert on_grid(plans.floor_cpm[plans.tiers >= 0], 100)
    table = policy.table("*")
    live = table.plan_probs > 0
    keys = np.concatenate([table.plan_tiers[live], table.plan_floors[live]], axis=1)
    assert len(np.unique(keys, axis=0)) == live.sum()  # no two listed plans are the same


def test_state_round_trips_with_rounded_tables(learned) -> None:
    again = policy_from_state(learned.state())
    for seg in ("*",):
        a, b = learned.table(seg), again.table(seg)
        assert b.floor_precision == a.floor_precision == 0.01
        np.testing.assert_array_equal(a.floors, b.floors)
        np.testing.assert_array_equal(a.floor_probs, b.floor_probs)
    x = learned.decide_batch(n=500, rng=np.random.default_rng(3))
    y = again.decide_batch(n=500, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(x.floor_cpm, y.floor_cpm)
    np.testing.assert_array_equal(x.floor_density, y.floor_density)


def test_precision_zero_keeps_floors_unrounded() -> None:
    policy = make_policy("ts_gmm", placement(0.0), seed=1)
    db = policy.decide_batch(n=2000, rng=np.random.default_rng(0))
    assert not on_grid(db.floor_cpm, 100)
    table = policy.table("*")
    np.testing.assert_array_equal(db.floor_density, table.log_floor_density(db.network, db.floor_cpm))


def _zero_floor_table(precision: float, zero_share: float) -> SegmentTable:
    """One jittered network as ``ts_gmm`` builds it for ``floor_min_cpm`` 0: a candidate floor
    of 0 (the lowest grid point stands for floor_min_cpm: a point mass, not jittered) beside a
    jittered candidate at 1 CPM, jitter bounds from ``PRICE_MIN`` (so the grid of served floors
    starts at its first multiple above 0, not at 0), rounded as the policy serves it."""
    table = SegmentTable(
        weights=np.array([1.0]),
        floors=np.array([[0.0, 1.0]]),
        floor_probs=np.array([[zero_share, 1.0 - zero_share]]),
        floor_propensity=np.ones((1, 2)),
        summary=np.zeros((1, 8)),
        floor_log_sd=np.array([0.05]),
        floor_bounds=np.log([[0.01, 50.0]]),
    )
    return round_table(table, precision, np.array([[-np.inf, math.log(50.0)]]))


@pytest.mark.parametrize("precision", [0.01, 0.05])
@pytest.mark.parametrize("zero_share", [1.0, 0.4])
def test_a_floor_of_0_served_by_a_jittered_network_has_the_probability_of_its_bin(precision, zero_share) -> None:
    """A served floor of 0 is in the first statistics bin (``price_bin`` clamps it there), so
    its floor_propensity is that bin's probability, the point mass at 0 included, also when
    the network's grid of rounded floors starts above 0. It was left out: a ts_gmm network
    whose floors were all 0 logged floor propensity 0, and a model swap's trial decisions
    refused the model (bench_scale --only snapshots)."""
    table = _zero_floor_table(precision, zero_share)
    rng = np.random.default_rng(0)
    n = 100_000
    _, floor, _, fprop = table.sample(rng.random(n), rng.random(n))
    zero = floor == 0.0
    assert zero.mean() == pytest.approx(zero_share, abs=0.005)
    assert np.all(fprop > 0)
    # The point mass at 0 is a cell of its own: no jittered draw rounds to 0 (they stop at the grid).
    np.testing.assert_allclose(table.floor_cell_probability(np.zeros(1, np.int64), np.zeros(1)), [zero_share])
    bins = price_bin(log_price(floor))
    for b in np.unique(bins):  # each bin's logged propensity is its Monte Carlo frequency
        in_bin = bins == b
        assert np.all(fprop[in_bin] == fprop[in_bin][0])
        assert in_bin.mean() == pytest.approx(fprop[in_bin][0], abs=0.005)


def test_ts_gmm_logs_the_probability_of_a_served_floor_of_0s_bin() -> None:
    """Bids around 1 cent: ts_gmm serves floor_min_cpm (0) most of the time, on a jittered
    network; the decisions' floor propensity of the first bin is its frequency."""
    policy = make_policy("ts_gmm", PlacementConfig("p", (NetworkConfig("a", 0.0, 5.0),)), seed=1)
    _feed(policy, np.random.default_rng(0), [_truth(0.01)], 2000, batches=4)
    db = policy.decide_batch(n=20_000, rng=np.random.default_rng(1))
    first = price_bin(log_price(db.floor_cpm)) == 0
    assert (db.floor_cpm == 0.0).mean() > 0.1
    assert first.mean() == pytest.approx(db.floor_propensity[first][0], abs=0.01)
    assert np.all(db.floor_propensity > 0)


@pytest.mark.parametrize("precision", [0.0, 0.01])
def test_a_batch_of_decisions_gets_the_same_floor_probabilities_as_each_decision_alone(precision) -> None:
    """A large batch evaluates each distinct (network, floor) pair once
    (``DISTINCT_EDGES_MIN``): its propensities and densities are exactly those of the
    same decisions taken one at a time, with repeats, zero floors and both bounds; so are the
    decisions of the one-request path (:meth:`SegmentTable.decide_one`, scalar arithmetic),
    including floors of a few cents, whose statistics bins hold no multiple of a cent."""
    table = SegmentTable(
        weights=np.array([0.4, 0.3, 0.2, 0.1]),
        floors=np.array([[0.0, 1.0, 1.3], [0.2, 0.25, 0.3], [2.0, 2.0, 2.0], [0.02, 0.03, 0.0]]),
        floor_probs=np.array([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0], [0.5, 0.3, 0.2]]),
        floor_propensity=np.ones((4, 3)),
        summary=np.zeros((4, 8)),
        floor_log_sd=np.array([0.1, 0.15, 0.0, 0.6]),
        floor_bounds=np.log([[0.01, 50.0], [0.05, 5.0], [0.5, 20.0], [0.005, 1.0]]),
    )
    if precision:
        table = round_table(table, precision, table.floor_bounds)
    rng = np.random.default_rng(3)
    net, floor, _, fprop = table.sample(rng.random(2_000), rng.random(2_000))
    if precision:  # rounded floors repeat (unrounded ones share their bins' edges)
        assert len(set(zip(net.tolist(), floor.tolist(), strict=True))) < 500
    density = table.logged_floor_density(net, floor)
    u, v = np.random.default_rng(3).random((2, 2_000))
    alone = [table.sample(u[i : i + 1], v[i : i + 1]) for i in range(2_000)]
    np.testing.assert_array_equal(fprop, [a[3][0] for a in alone])
    one_by_one = [table.logged_floor_density(net[i : i + 1], floor[i : i + 1])[0] for i in range(2_000)]
    np.testing.assert_array_equal(density, one_by_one)
    scalar = np.array([table.decide_one(u[i].item(), v[i].item()) for i in range(2_000)])
    np.testing.assert_array_equal(scalar, np.stack([net, floor, table.weights[net], fprop, density], axis=1))
    assert np.isnan(density).any() and (net == 3).sum() > 100


def test_auction_plans_explore_lower_floors_and_a_shorter_older_table_still_stacks() -> None:
    """An auction's table carries, next to its plans, variants of the most probable one with
    one network's floor lowered (served in cents like the rest); a state whose tables have
    plans of another length (written before auctions explored) stacks and loads alike."""
    policy = make_policy("ts_gmm", placement(mode="auction"), seed=2)
    table = policy.table("*")
    live = table.plan_probs > 0
    calls = len(NETWORKS)  # placement(mode="auction") calls every network

    def variants(source: int) -> list[int]:
        found = []
        for j in range(calls):
            others = np.delete(np.arange(calls), j)
            for factor in EXPLORE_FACTORS:
                want = max(table.plan_floors[source, j] * factor, NETWORKS[j].floor_min_cpm)
                rows = np.flatnonzero(
                    live
                    & (table.plan_floors[:, others] == table.plan_floors[source, others]).all(axis=1)
                    & (np.abs(table.plan_floors[:, j] - want) <= 0.0101)  # both floors in cents
                )
                found.extend(rows.tolist())
        return found

    sources = {i: v for i in np.flatnonzero(live) if len(v := variants(i)) == calls * len(EXPLORE_FACTORS)}
    assert len(sources) == EXPLORED_PLANS, sorted(sources)
    for source, rows in sources.items():
        each = table.plan_probs[source] / (1 - AUCTION_EXPLORE) * AUCTION_EXPLORE / len(rows)
        np.testing.assert_allclose(table.plan_probs[rows], each, rtol=1e-9)
    assert on_grid(table.plan_floors[table.plan_tiers >= 0], 100)
    keep = len(table.plan_probs) // 2  # an older, shorter table
    policy._tables["x|y"] = replace(
        table,
        plan_tiers=table.plan_tiers[:keep],
        plan_floors=table.plan_floors[:keep],
        plan_probs=table.plan_probs[:keep],
    )
    again = policy_from_state(policy.state())
    for seg in ("*", "x|y"):
        a, b = policy.table(seg), again.table(seg)
        assert len(b.plan_probs) == len(table.plan_probs)
        np.testing.assert_array_equal(b.plan_probs[: len(a.plan_probs)], a.plan_probs)
        np.testing.assert_array_equal(b.plan_floors[: len(a.plan_floors)], a.plan_floors)
