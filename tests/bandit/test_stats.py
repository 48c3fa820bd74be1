"""Sufficient statistics: equal to a brute-force loop, independent of order and batching,
mergeable by addition, and discounted by half-lives."""

from __future__ import annotations

import bisect
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandit import POLICIES, EventBatch, PlacementConfig, make_policy
from bandit.stats import (
    AT_FLOOR_ATOL,
    AT_FLOOR_RTOL,
    FIELDS,
    LOG_EDGES,
    N_BINS,
    PRICE_MIN,
    SufficientStats,
)
from bandit.types import MAX_CPM

CFG = PlacementConfig.from_dict(
    "p1", {"networks": [{"id": "a"}, {"id": "b"}, {"id": "c"}], "segment_by": ["country"]}
)
SEGMENTS = ("KR", "US", "JP")
T0 = 1.8e9
HOUR = 3600.0
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_events(rng: np.random.Generator, n: int, t_span_hours: float = 0.0) -> list[tuple]:
    """Event tuples (segment, network, floor, filled, revenue, ts) with at-floor fills,
    fills above the floor, no-fills, floors of 0 and prices at both ends of the range."""
    out = []
    for _ in range(n):
        floor = float(rng.choice([0.0, rng.uniform(0.005, 0.02), rng.lognormal(0, 1.5), MAX_CPM]))
        kind = rng.integers(4)
        filled = kind > 0
        if kind == 1:
            revenue = floor  # second price with a single bidder: pays the floor
        elif kind == 3:
            revenue = min(floor + 0.01, MAX_CPM)  # ... or the floor plus a cent
        elif kind == 2:
            revenue = float(min(floor + rng.lognormal(0, 1), MAX_CPM))
        else:
            revenue = 0.0
        ts = T0 + float(rng.uniform(0, t_span_hours)) * HOUR
        out.append((str(rng.choice(SEGMENTS)), int(rng.integers(3)), floor, filled, revenue, ts))
    return out


def to_batch(events: list[tuple]) -> EventBatch:
    keys = sorted({e[0] for e in events})
    return EventBatch.from_arrays(
        CFG,
        segments=keys,
        segment_index=np.array([keys.index(e[0]) for e in events], dtype=np.int64),
        network=np.array([e[1] for e in events], dtype=np.int64),
        floor_cpm=np.array([e[2] for e in events]),
        filled=np.array([e[3] for e in events], dtype=bool),
        revenue_cpm=np.array([e[4] for e in events]),
        ts=np.array([e[5] for e in events]),
    )


def brute_bin(cpm: float) -> tuple[int, float]:
    """(bin, log price) by search over the bin edges — independent of the vectorised formula."""
    log_cpm = math.log(min(max(cpm, PRICE_MIN), MAX_CPM))
    return min(max(bisect.bisect_right(LOG_EDGES.tolist(), log_cpm) - 1, 0), N_BINS - 1), log_cpm


def brute_force(events: list[tuple], half_life_hours: float = math.inf) -> dict[str, np.ndarray]:
    """Per segment [N, F, B] statistics by a plain Python loop over events."""
    f = {name: i for i, name in enumerate(FIELDS)}
    t_ref = max(e[5] for e in events)
    out: dict[str, np.ndarray] = {}
    for seg, net, floor, filled, revenue, ts in events:
        w = 1.0 if math.isinf(half_life_hours) else 0.5 ** ((t_ref - ts) / (half_life_hours * HOUR))
        cell = out.setdefault(seg, np.zeros((3, len(FIELDS), N_BINS)))[net]
        fb, logf = brute_bin(floor)
        cell[f["requests"], fb] += w
        if not filled:
            cell[f["nofill_logf"], fb] += w * logf
            continue
        cell[f["fills"], fb] += w
        cell[f["revenue"], fb] += w * revenue
        cell[f["revenue_sq"], fb] += w * revenue * revenue
        if revenue <= floor + max(AT_FLOOR_RTOL * floor, AT_FLOOR_ATOL) + 1e-12:
            cell[f["atfloor"], fb] += w
            cell[f["atfloor_logf"], fb] += w * brute_bin(max(revenue, floor))[1]  # the price paid
        else:
            pb, logp = brute_bin(revenue)
            cell[f["price"], pb] += w
            cell[f["price_logp"], pb] += w * logp
    return out


def as_dict(stats: SufficientStats) -> dict[str, np.ndarray]:
    return {s: stats.to_dense()[stats.segment_row(s)] for s in stats.segments}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float = 1e-9) -> None:
    assert sorted(a) == sorted(b)
    for seg in a:
        for f, name in enumerate(FIELDS):
            np.testing.assert_allclose(
                a[seg][:, f], b[seg][:, f], rtol=rtol, atol=1e-9, err_msg=f"{seg} field {name}"
            )


@pytest.mark.parametrize("half_life_hours", [math.inf, 6.0])
def test_stats_equal_brute_force_loop(half_life_hours: float) -> None:
    events = random_events(np.random.default_rng(7), 3000, t_span_hours=24.0)
    stats = SufficientStats(3, half_life_hours * HOUR)
    stats.add(to_batch(events))
    expected = brute_force(events, half_life_hours)
    assert_same(as_dict(stats), expected)
    # Every field is exercised (a field silently left at zero would pass a sum check).
    for f in range(len(FIELDS)):
        assert np.abs(stats.to_dense()[:, :, f]).sum() > 0, FIELDS[f]
    assert stats.t_ref == max(e[5] for e in events)


def test_requests_add_up_and_the_placement_level_is_the_sum() -> None:
    events = random_events(np.random.default_rng(3), 500)
    stats = SufficientStats(3)
    stats.add(to_batch(events))
    assert stats.to_dense()[:, :, 0].sum() == pytest.approx(500)
    np.testing.assert_allclose(stats.placement_level(), sum(brute_force(events).values()))


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 120),
    n_splits=st.integers(0, 6),
    half_life_hours=st.sampled_from([math.inf, 0.5, 12.0]),
    data=st.data(),
)
def test_any_order_and_any_batching_give_the_same_stats(
    seed: int, n: int, n_splits: int, half_life_hours: float, data: st.DataObject
) -> None:
    events = random_events(np.random.default_rng(seed), n, t_span_hours=48.0)
    whole = SufficientStats(3, half_life_hours * HOUR)
    whole.add(to_batch(events))

    order = data.draw(st.permutations(range(n)))
    shuffled = [events[i] for i in order]
    cuts = sorted(data.draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=n_splits)))
    parts = [p for p in np.split(np.arange(n), cuts) if len(p)]
    split = SufficientStats(3, half_life_hours * HOUR)
    for p in parts:
        split.add(to_batch([shuffled[i] for i in p]))

    assert split.t_ref == whole.t_ref
    assert_same(as_dict(split), as_dict(whole))


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 120),
    half_life_hours=st.sampled_from([math.inf, 1.0, 24.0]),
    data=st.data(),
)
def test_merged_partial_aggregates_equal_one_big_aggregate(
    seed: int, n: int, half_life_hours: float, data: st.DataObject
) -> None:
    events = random_events(np.random.default_rng(seed), n, t_span_hours=24.0)
    workers = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    parts = [[e for e, w in zip(events, workers, strict=True) if w == k] for k in range(3)]

    big = SufficientStats(3, half_life_hours * HOUR)
    big.add(to_batch(events))
    merged = SufficientStats(3, half_life_hours * HOUR)
    for part in parts:
        partial = SufficientStats(3, half_life_hours * HOUR)
        if part:
            partial.add(to_batch(part))
        merged.merge(partial)
    assert merged.t_ref == big.t_ref
    assert_same(as_dict(merged), as_dict(big))


@pytest.mark.parametrize("name", ["static", "epsilon_greedy"])
@pytest.mark.parametrize("half_life_hours", [math.inf, 3.0])
def test_policy_merge_equals_one_policy_fed_everything(name: str, half_life_hours: float) -> None:
    events = random_events(np.random.default_rng(11), 600, t_span_hours=10.0)
    one = make_policy(name, CFG, half_life_hours=half_life_hours, seed=1)
    one.update(to_batch(events))
    left = make_policy(name, CFG, half_life_hours=half_life_hours, seed=1)
    right = make_policy(name, CFG, half_life_hours=half_life_hours, seed=2)
    left.update(to_batch(events[::2]))
    right.update(to_batch(events[1::2]))
    left.merge(right)
    assert_same(as_dict(left.stats), as_dict(one.stats))
    # Deterministic tables follow the statistics: the merged policy decides like the big one.
    for seg in ("*", *SEGMENTS):
        a, b = left.allocation(seg).to_dict(), one.allocation(seg).to_dict()
        for na, nb in zip(a["networks"], b["networks"], strict=True):
            assert na["weight"] == pytest.approx(nb["weight"], abs=1e-9)
            assert na["floor_cpm"] == pytest.approx(nb["floor_cpm"])
            assert na["expected_revenue_cpm"] == pytest.approx(nb["expected_revenue_cpm"], rel=1e-9)


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), half_life_hours=st.floats(0.1, 1000.0))
def test_one_half_life_halves_an_aggregate(seed: int, half_life_hours: float) -> None:
    events = random_events(np.random.default_rng(seed), 50, t_span_hours=5.0)
    stats = SufficientStats(3, half_life_hours * HOUR)
    stats.add(to_batch(events))
    before = stats.to_dense().copy()
    later = stats.t_ref + half_life_hours * HOUR
    np.testing.assert_allclose(stats.decayed_to(later), 0.5 * before, rtol=1e-9)
    # A new event one half-life later halves what was held and adds itself with weight 1.
    new = ("KR", 0, 1.0, False, 0.0, later)
    stats.add(to_batch([new]))
    expected = 0.5 * before
    row = stats.segment_row("KR")
    fb, logf = brute_bin(1.0)
    expected[row, 0, 0, fb] += 1.0  # requests
    expected[row, 0, 4, fb] += logf  # nofill_logf
    np.testing.assert_allclose(stats.to_dense(), expected, rtol=1e-9, atol=1e-12)
    assert stats.t_ref == later


def test_events_older_than_the_reference_are_discounted_on_arrival() -> None:
    stats = SufficientStats(3, 2 * HOUR)
    stats.add(to_batch([("KR", 1, 1.0, True, 2.0, T0 + 4 * HOUR)]))
    stats.add(to_batch([("KR", 1, 1.0, True, 2.0, T0)]))  # late, 2 half-lives old
    fb, _ = brute_bin(1.0)
    assert stats.to_dense()[0, 1, 0, fb] == pytest.approx(1.25)
    assert stats.t_ref == T0 + 4 * HOUR


def test_state_round_trip_of_stats() -> None:
    stats = SufficientStats(3, 5 * HOUR)
    stats.add(to_batch(random_events(np.random.default_rng(0), 200, 3.0)))
    again = SufficientStats.from_state(stats.state())
    assert again.segments == stats.segments
    assert again.t_ref == stats.t_ref
    assert again.half_life_seconds == stats.half_life_seconds
    np.testing.assert_array_equal(again.to_dense(), stats.to_dense())


def test_merge_rejects_other_networks() -> None:
    with pytest.raises(ValueError, match="different networks"):
        SufficientStats(3).merge(SufficientStats(2))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_splits=st.integers(1, 5), data=st.data())
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_learns_the_same_statistics_whatever_the_batch_order(
    name: str, seed: int, n_splits: int, data: st.DataObject
) -> None:
    """Through ``Policy.update`` (not only ``SufficientStats``). ts_gmm's change detector reacts
    to the order in which changes are seen — that is its job — and so do its hour-of-day
    levels (an online estimate), so both are off here. Tables are rebuilt once at the end
    (the statistics are what is compared; a refit per part would only cost time)."""
    params = {"change_threshold": 0.0, "level_events": 0.0} if name == "ts_gmm" else {}
    events = random_events(np.random.default_rng(seed), 200, t_span_hours=24.0)
    whole = make_policy(name, CFG, half_life_hours=6.0, seed=1, **params)
    whole.update(to_batch(events))
    order = data.draw(st.permutations(range(len(events))))
    cuts = sorted(data.draw(st.lists(st.integers(1, len(events) - 1), min_size=n_splits, max_size=n_splits)))
    batched = make_policy(name, CFG, half_life_hours=6.0, seed=1, **params)
    for part in np.split(np.asarray(order), cuts):
        if len(part):
            batched.update(to_batch([events[i] for i in part]), refresh=False)
    batched.refresh(list(batched.stats.segments))
    order_a = [whole.stats.segments.index(s) for s in batched.stats.segments]
    np.testing.assert_allclose(batched.stats.to_dense(), whole.stats.to_dense()[order_a], rtol=1e-9, atol=1e-9)


def test_dense_state_of_earlier_versions_loads_the_same_statistics() -> None:
    stats = SufficientStats(3, 5 * HOUR)
    stats.add(to_batch(random_events(np.random.default_rng(4), 300, 3.0)))
    dense = {
        "stats_data": stats.to_dense(),
        "stats_segments": np.array(stats.segments),
        "stats_t_ref": np.array(stats.t_ref),
        "stats_half_life": np.array(stats.half_life_seconds),
    }
    again = SufficientStats.from_state(dense)
    np.testing.assert_allclose(again.to_dense(), stats.to_dense(), rtol=1e-12)
    np.testing.assert_allclose(again.placement_level(), stats.placement_level(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(again.totals(), stats.to_dense().sum(axis=3), rtol=1e-9, atol=1e-9)


def test_a_cell_holds_only_the_bins_it_has_seen() -> None:
    stats = SufficientStats(3, 5 * HOUR)
    stats.add(to_batch([("KR", 0, 1.0, True, 2.0, T0), ("KR", 0, 1.0, False, 0.0, T0)]))
    # One floor bin and one price bin: a dense cell would hold 9 fields x 128 bins.
    assert stats.n_cells == 1
    assert stats.entries()["stats_floor_values"].shape == (1, 7)
    assert stats.entries()["stats_price_values"].shape == (1, 2)


def test_forgetting_a_cell_leaves_the_others_and_the_placement_level_consistent() -> None:
    stats = SufficientStats(3, 5 * HOUR)
    stats.add(to_batch(random_events(np.random.default_rng(5), 400, 3.0)))
    before = stats.to_dense()
    row = stats.segment_row(stats.segments[0])
    stats.scale_cell(row, 1, 0.25)
    expected = before.copy()
    expected[row, 1] *= 0.25
    np.testing.assert_allclose(stats.to_dense(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.placement_level(), expected.sum(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.totals(), expected.sum(axis=3), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("level", [0.8, 0.95, 1.0, 1.25])
def test_a_fill_a_cent_above_the_floor_stays_at_the_floor_in_rescaled_units(level: float) -> None:
    """Floors and prices divided by an hour level keep the at-floor tolerance in CPM: a
    second-price network that pays the floor plus one cent fills at the floor at any level,
    and two cents above the floor is a price above it."""
    floor = np.array([1.23, 1.23, 0.5])
    paid = np.array([1.24, 1.25, 0.51])
    stats = SufficientStats(3, 5 * HOUR)
    rescaled = to_batch([("KR", 0, f / level, True, p / level, T0) for f, p in zip(floor, paid, strict=True)])
    stats.add(dataclasses.replace(rescaled, cpm_per_unit=np.full(3, level)))
    cell = as_dict(stats)["KR"][0]
    f = {name: i for i, name in enumerate(FIELDS)}
    assert cell[f["atfloor"]].sum() == 2 and cell[f["price"]].sum() == 1
    # Without the unit the cent is judged in rescaled prices: below level 1 it reads as a
    # price above the floor.
    plain = SufficientStats(3, 5 * HOUR)
    plain.add(rescaled)
    expected_at = 2 if level >= 1 else 0
    assert as_dict(plain)["KR"][0][f["atfloor"]].sum() == expected_at


def test_taking_and_joining_batches_keeps_their_cpm_per_unit() -> None:
    """Rows taken from a rescaled batch keep their units; joined with a batch in CPM, those
    rows stand for 1 CPM a unit."""
    rescaled = dataclasses.replace(
        to_batch([("KR", 0, 1.0, True, 1.0, T0), ("US", 1, 2.0, False, 0.0, T0)]), cpm_per_unit=np.array([0.9, 1.1])
    )
    plain = to_batch([("JP", 2, 1.0, True, 1.5, T0)])
    np.testing.assert_array_equal(rescaled.take(np.array([1])).cpm_per_unit, [1.1])
    assert plain.take(np.array([0])).cpm_per_unit is None
    np.testing.assert_array_equal(EventBatch.concat([rescaled, plain]).cpm_per_unit, [0.9, 1.1, 1.0])
    assert EventBatch.concat([plain, plain]).cpm_per_unit is None
