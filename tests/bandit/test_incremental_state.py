"""Incremental policy state: a state saved at a checkpoint plus the changes taken since
(``Policy.take_changes``) restores exactly the state of the policy that kept learning, for
every registered policy; changes that do not follow the state they are applied to are refused."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bandit import POLICIES, EventBatch, InvalidState, make_policy, policy_from_state
from bandit.stats import RENORMALISE_HALF_LIVES, SufficientStats
from tests.bandit.test_state import CFG, synthetic_batch

T0 = 1.8e9


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        np.testing.assert_array_equal(b[key], value, err_msg=key)


def more_segments(batch: EventBatch, k: int) -> EventBatch:
    """``batch`` with one segment renamed, so every round brings a segment never seen."""
    segments = (*batch.segments[:-1], f"N{k}|ios")
    return replace(batch, segments=segments)


def learn(policy, rng: np.random.Generator, rounds: range) -> None:
    """Rounds of batches: new segments, a price break on the first network (the change
    detector forgets), hour levels, refreshes of some segments only."""
    for k in rounds:
        batch = more_segments(synthetic_batch(rng, 400, T0 + k * 3600.0), k)
        if k >= 3:
            batch = replace(batch, revenue_cpm=batch.revenue_cpm * np.where(batch.network == 0, 3.0, 1.0))
        touched = policy.update(batch, refresh=False)
        policy.refresh(touched[: len(touched) // 2 + 1])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_saved_state_plus_changes_equals_the_state_of_the_policy_that_kept_learning(name):
    params = {"level_events": 200.0, "change_threshold": 4.0} if name == "ts_gmm" else {}
    live = make_policy(name, CFG, half_life_hours=24.0, seed=5, **params)
    rng = np.random.default_rng(0)
    learn(live, rng, range(2))
    live.checkpoint()
    saved = live.state()
    deltas = []
    for rounds in (range(2, 4), range(4, 5), range(5, 5)):  # the last: nothing learned
        learn(live, rng, rounds)
        deltas.append(live.take_changes())
    if name == "ts_gmm":
        assert live.changes_detected > 0  # the break was seen: histories were forgotten
    restored = policy_from_state(saved)
    for delta in deltas:
        restored.apply_changes(delta)
    assert_same_state(live.state(), restored.state())
    # Both keep learning alike, and their next changes agree too.
    batch = synthetic_batch(rng, 300, T0 + 9 * 3600.0)
    live.update(batch)
    restored.update(batch)
    assert_same_state(live.state(), restored.state())
    assert_same_state(live.take_changes(), restored.take_changes())


def test_changes_are_smaller_than_the_state_when_few_segments_learn():
    policy = make_policy("ts_gmm", CFG, seed=1)
    rng = np.random.default_rng(1)
    many = tuple(f"S{i}|ios" for i in range(200))
    batch = synthetic_batch(rng, 4000, T0)
    policy.update(replace(batch, segments=many, segment_index=rng.integers(0, 200, 4000)))
    policy.checkpoint()
    small = synthetic_batch(rng, 50, T0 + 60.0)
    policy.update(replace(small, segments=many[:3]))
    changes = policy.take_changes()
    assert set(changes["table_segments"]) - {"*"} == set(many[:3])  # the placement level: when due
    assert len(np.unique(changes["stats_cells"] // len(CFG.networks))) == 3
    assert sum(v.nbytes for v in changes.values()) < sum(v.nbytes for v in policy.state().values()) / 10


def test_changes_that_skip_one_are_refused_and_change_nothing():
    live = make_policy("ts_gmm", CFG, seed=2)
    rng = np.random.default_rng(2)
    learn(live, rng, range(1))
    live.checkpoint()
    saved = live.state()
    learn(live, rng, range(1, 2))
    live.take_changes()
    learn(live, rng, range(2, 3))
    second = live.take_changes()
    restored = policy_from_state(saved)
    with pytest.raises(InvalidState, match="segments"):
        restored.apply_changes(second)
    assert_same_state(saved, restored.state())


def test_changes_of_another_policy_or_placement_are_refused():
    a = make_policy("ts_gmm", CFG, seed=3)
    a.checkpoint()
    a.update(synthetic_batch(np.random.default_rng(3), 100, T0))
    changes = a.take_changes()
    with pytest.raises(InvalidState, match="another placement"):
        make_policy("static", CFG).apply_changes(changes)
    other = replace(CFG, networks=(replace(CFG.networks[0], floor_max_cpm=7.0), *CFG.networks[1:]))
    with pytest.raises(InvalidState, match="another placement"):
        make_policy("ts_gmm", other, seed=3).apply_changes(changes)
    make_policy("ts_gmm", CFG, seed=3).apply_changes(changes)


def test_a_policy_without_checkpoint_has_no_changes_to_give():
    assert make_policy("ts_gmm", CFG).take_changes() is None


def test_statistics_changes_cover_a_renormalisation():
    """Every 256 half-lives all stored values are rescaled: every cell is then a changed one."""
    half_life = 3600.0
    live = SufficientStats(3, half_life)
    rng = np.random.default_rng(4)
    live.add(synthetic_batch(rng, 200, T0))
    saved = live.state()
    live.take_changes()
    late = synthetic_batch(rng, 5, T0 + (RENORMALISE_HALF_LIVES + 1) * half_life)
    live.add(replace(late, segment_index=np.zeros(5, np.int64)))  # one segment learns
    assert live.t_origin > T0 and math.isfinite(live.t_origin)
    restored = SufficientStats.from_state(saved)
    restored.apply_changed_state(live.changed_state(live.take_changes(), len(saved["stats_segments"])))
    assert_same_state(live.state(), restored.state())


def test_change_alarms_name_the_segment_network_and_gap_and_are_taken_once():
    """A price break raises alarms (kept out of the state) that say where and by how much."""
    policy = make_policy("ts_gmm", CFG, half_life_hours=24.0, seed=5, level_events=200.0, change_threshold=4.0)
    rng = np.random.default_rng(0)
    learn(policy, rng, range(2))
    assert policy.take_alarms() == []
    learn(policy, rng, range(2, 5))
    alarms = policy.take_alarms()
    assert len(alarms) == policy.changes_detected > 0
    first = CFG.network_ids[0]
    assert any(a.network == first and a.relative > 0.5 for a in alarms), alarms  # prices tripled
    assert all(a.ts >= T0 + 3 * 3600.0 for a in alarms)
    assert policy.take_alarms() == []
    assert "alarms" not in " ".join(policy.state())
    assert make_policy("static", CFG).take_alarms() == []
