"""The in-process runner: delayed feedback, trajectories, capture, common random numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from bandit import make_policy
from bandit.policy import DecisionBatch
from simulator import Market, capture, run, summarize
from simulator.runner import SegmentCapture, regret_split, table_report


@pytest.fixture(scope="module")
def core() -> Market:
    return Market("core_stationary")


def oracle_static(market: Market):
    """The oracle's allocation as a static policy, serving the oracle's own (unrounded) floors."""
    alloc = market.oracle_at(market.scenario.start_ts)
    j = int(np.argmax(alloc.weights))
    nid = market.placement.network_ids[j]
    placement = dataclasses.replace(market.placement, floor_precision_cpm=0.0)
    return make_policy("static", placement, weights=only(market, nid), floors={nid: float(alloc.floors[j])})


def only(market: Market, network: str) -> dict[str, float]:
    """Static weights sending all traffic to one network (unlisted networks default to 1)."""
    return {nid: float(nid == network) for nid in market.placement.network_ids}


def test_static_policy_runs_and_records_a_trajectory(core):
    policy = make_policy("static", core.placement)
    traj = run(policy, core, 20_000, seed=1, batch_size=2000)
    assert traj.height == 10
    assert traj["requests_total"].to_list() == list(range(2000, 20_001, 2000))
    for col in (
        "ts",
        "hour",
        "revenue",
        "expected_revenue",
        "oracle_revenue",
        "capture",
        "cumulative_capture",
        "share_admob",
        "floor_adfit",
        "fills",
        "model_version",
    ):
        assert col in traj.columns
    shares = traj.select(pl.col("^share_.*$")).to_numpy()
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert np.all(np.abs(shares - 0.25) < 0.05)  # equal static weights
    assert np.allclose(traj["floor_admob"].to_numpy(), core.placement.networks[0].floor_min_cpm)
    assert 0.5 < capture(traj) < 1.0
    assert np.all(np.diff(traj["ts"].to_numpy()) > 0)
    assert traj["hour"][-1] == pytest.approx(2.0, abs=0.1)  # 10,000 requests per hour


def test_oracle_allocation_captures_everything(core):
    traj = run(oracle_static(core), core, 30_000, seed=2)
    assert capture(traj) == pytest.approx(1.0, rel=1e-9)
    s = summarize(traj)
    # Realised revenue is an unbiased draw of the expected revenue.
    assert s["revenue_per_request"] == pytest.approx(s["expected_revenue_per_request"], rel=0.02)


def test_capture_over_a_request_range(core):
    traj = run(make_policy("static", core.placement), core, 20_000, seed=3, batch_size=1000)
    last = traj.tail(5)
    assert capture(traj, last=5000) == pytest.approx(last["expected_revenue"].sum() / last["oracle_revenue"].sum())
    mid = traj.filter((pl.col("requests_total") > 4000) & (pl.col("requests_total") <= 8000))
    assert capture(traj, start=4000, stop=8000) == pytest.approx(
        mid["expected_revenue"].sum() / mid["oracle_revenue"].sum()
    )


def test_regret_split_separates_the_network_choice_from_the_floor(core):
    alloc = core.oracle_at(core.scenario.start_ts)
    # The worst network whose best floor is inside its bounds (a floor that matters).
    inside = [j for j, n in enumerate(core.placement.networks) if core.best_floor(0, 0, j)[0] > 2 * n.floor_min_cpm]
    worst = min(inside, key=lambda j: core.best_floor(0, 0, j)[1])
    assert worst != int(np.argmax(alloc.weights))
    nid = core.placement.network_ids[worst]
    best_floor, best_revenue, _ = core.best_floor(0, 0, worst)
    placement = dataclasses.replace(core.placement, floor_precision_cpm=0.0)
    # The worst network at its best floor: every lost cent is the network choice.
    at_best = run(
        make_policy("static", placement, weights=only(core, nid), floors={nid: best_floor}), core, 6000, seed=4
    )
    network, floor = regret_split(at_best)
    assert floor == pytest.approx(0.0, abs=1e-12)
    assert network == pytest.approx(1 - best_revenue / alloc.revenue_per_request, rel=1e-9)
    # The same network at twice its best floor: the network part stays, the floor adds its own.
    too_high = run(
        make_policy("static", placement, weights=only(core, nid), floors={nid: 2 * best_floor}), core, 6000, seed=4
    )
    network2, floor2 = regret_split(too_high, start=2000)
    assert network2 == pytest.approx(network, rel=1e-9)
    assert floor2 > 0.01
    assert network2 + floor2 == pytest.approx(1 - capture(too_high, start=2000), rel=1e-9)
    # The oracle's own allocation loses nothing on either account.
    assert regret_split(run(oracle_static(core), core, 4000, seed=5)) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_record_every_and_batch_seconds(core):
    traj = run(
        make_policy("static", core.placement),
        core,
        12_000,
        seed=4,
        batch_size=1000,
        record_every=4000,
    )
    assert traj["requests"].to_list() == [4000, 4000, 4000]
    timed = run(make_policy("static", core.placement), core, 12_000, seed=4, batch_seconds=300)
    assert timed["requests"].sum() == 12_000
    edges = core.scenario.start_ts + 300 * np.arange(1, timed.height + 1)
    assert np.all(timed["ts"].to_numpy()[:-1] < edges[:-1])  # each batch ends before its boundary
    assert np.mean(timed["requests"].to_numpy()[:-1]) == pytest.approx(10_000 / 12, rel=0.1)


class GreedyProbe:
    """A trivial learning policy: after feedback, sends everything to the network with the
    best observed revenue per request at floor 0 (a check of the delayed-feedback loop)."""

    def __init__(self, market: Market) -> None:
        self.n = market.n_networks
        self.revenue = np.zeros(self.n)
        self.count = np.zeros(self.n)
        self.updates: list[int] = []
        self.last_ts = -np.inf

    def decide_indexed(self, segments, segment_index, *, rng=None):
        k = len(segment_index)
        if self.count.min() < 1:
            net = rng.integers(0, self.n, k)
        else:
            net = np.full(k, int(np.argmax(self.revenue / self.count)))
        return DecisionBatch(
            net,
            np.zeros(k),
            np.ones(k),
            np.ones(k),
            tuple(segments),
            segment_index,
            str(len(self.updates)),
        )

    def update(self, batch):
        assert batch.ts.min() > self.last_ts  # feedback arrives in time order, once
        self.last_ts = float(batch.ts.max())
        self.updates.append(len(batch))
        self.revenue += np.bincount(batch.network, weights=batch.revenue_cpm, minlength=self.n)
        self.count += np.bincount(batch.network, minlength=self.n)


def test_runner_feeds_back_every_batch_and_learning_shows(core):
    probe = GreedyProbe(core)
    traj = run(probe, core, 10_000, seed=5, batch_size=500)
    assert probe.updates == [500] * 20
    assert traj["model_version"].to_list() == [str(i) for i in range(20)]
    assert capture(traj, last=5000) > capture(traj, start=0, stop=500) + 0.05


def test_same_seed_same_requests_and_bids_for_different_policies(core):
    seen: dict[str, list] = {"a": [], "b": []}
    lo_floor, hi_floor = 0.5, 2.0
    admob = only(core, "admob")
    pa = make_policy("static", core.placement, weights=admob, floors={"admob": lo_floor})
    pb = make_policy("static", core.placement, weights=admob, floors={"admob": hi_floor})
    run(pa, core, 8000, seed=7, on_batch=seen["a"].append)
    run(pb, core, 8000, seed=7, on_batch=seen["b"].append)
    for ra, rb in zip(seen["a"], seen["b"], strict=True):
        assert np.array_equal(ra.requests.key, rb.requests.key)
        assert np.array_equal(ra.requests.ts, rb.requests.ts)
        assert np.array_equal(ra.oracle_revenue, rb.oracle_revenue)
        # Same bidders: the high floor fills exactly where the top bid clears it.
        top, _ = core.bids(ra.requests, 0)
        assert np.array_equal(rb.outcome.filled, ra.outcome.filled & (top >= hi_floor))
        both = rb.outcome.filled
        assert np.allclose(rb.outcome.revenue[both], np.maximum(ra.outcome.revenue[both], hi_floor))
    other = []
    run(pa, core, 2000, seed=8, on_batch=other.append)
    assert not np.array_equal(other[0].requests.key, seen["a"][0].requests.key)


def test_trajectory_is_reproducible(core):
    a = run(make_policy("static", core.placement, seed=1), core, 6000, seed=11)
    b = run(make_policy("static", core.placement, seed=1), core, 6000, seed=11)
    assert a.equals(b)


def test_drift_shows_in_the_trajectory():
    market = Market("core_drift")
    traj = run(oracle_static(market), market, 200_000, seed=6, batch_size=5000)
    before = capture(traj, start=0, stop=145_000)
    after = capture(traj, start=160_000, stop=200_000)
    assert before == pytest.approx(1.0, rel=1e-9)
    assert after < 0.6  # the old best allocation now earns about half of the new best


def test_only_the_followed_segments_get_tables_and_their_report_values_them_exactly():
    market = Market("segments")
    policy = make_policy("grid_ts", market.placement, seed=0)
    during = SegmentCapture(market)
    traj = run(policy, market, 8000, seed=0, batch_size=2000, refresh_segments={"KR|ios", "US|ios"}, on_batch=during)
    assert sorted(policy.segments) == ["KR|ios", "US|ios"]
    # The per-segment sums add up to the trajectory's.
    assert during.expected.sum() == pytest.approx(traj["expected_revenue"].sum())
    assert during.oracle.sum() == pytest.approx(traj["oracle_revenue"].sum())
    assert policy.stats.segment_row("JP|android") is not None  # learned, not rebuilt
    report = table_report(policy, market, ["KR|ios", "JP|android"], n_decisions=20_000, during=during)
    assert report["run_capture"].to_list() == [during.capture("KR|ios"), during.capture("JP|android")]
    assert report["segment"].to_list() == ["KR|ios", "JP|android"]
    # JP|android has no table of its own: it is served (and valued) as the placement's.
    jp = report.row(1, named=True)
    assert jp["capture"] == pytest.approx(jp["pooled_capture"], abs=0.03)
    ids = market.placement.network_ids
    for row in report.iter_rows(named=True):
        assert sum(row[f"weight_{n}"] for n in ids) == pytest.approx(1.0)
        assert 0.0 < row["capture"] <= 1.0 + 1e-9
        best = int(np.argmax(market.oracle_at(market.scenario.start_ts, row["segment"]).revenue))
        assert row["oracle_network"] == ids[best]
