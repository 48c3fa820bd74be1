"""Policy state: saved and loaded exactly for every registered policy, never pickled,
and refused with InvalidState when it is corrupt, of another schema or of an unknown policy."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from bandit import (
    POLICIES,
    EventBatch,
    InvalidState,
    PlacementConfig,
    load_state,
    make_policy,
    policy_from_state,
    save_state,
)
from bandit.policy import STATE_SCHEMA_VERSION

CFG = PlacementConfig.from_dict(
    "p1",
    {
        "networks": [
            {"id": "alpha", "floor_min_cpm": 0.0, "floor_max_cpm": 20.0},
            {"id": "beta", "floor_min_cpm": 0.3, "floor_max_cpm": 8.0, "min_share": 0.1},
            {"id": "house", "floor_min_cpm": 0.0, "floor_max_cpm": 0.0, "max_share": 0.5},
        ],
        "segment_by": ["country", "os"],
    },
)
SEGMENTS = ("KR|ios", "KR|android", "US|ios")


def synthetic_batch(rng: np.random.Generator, n: int, t0: float) -> EventBatch:
    """Events of a small market: second-price fills above random floors, some at the floor."""
    network = rng.integers(0, 3, n)
    floor = np.round(rng.choice([0.0, 0.5, 1.0, 2.0, 4.0], n), 2) * (network != 2)
    top = rng.lognormal(np.array([0.7, 0.3, -1.0])[network], 0.6)
    second = top * rng.uniform(0.3, 1.0, n)
    filled = top >= floor
    revenue = np.where(filled, np.maximum(second, floor), 0.0)
    return EventBatch.from_arrays(
        CFG,
        segments=SEGMENTS,
        segment_index=rng.integers(0, len(SEGMENTS), n),
        network=network,
        floor_cpm=floor,
        filled=filled,
        revenue_cpm=np.minimum(revenue, 1000.0),
        ts=t0 + rng.uniform(0, 3600.0, n),
    )


def trained(name: str) -> object:
    policy = make_policy(name, CFG, half_life_hours=24.0, seed=5)
    rng = np.random.default_rng(0)
    for k in range(3):
        policy.update(synthetic_batch(rng, 400, 1.8e9 + k * 3600.0))
    return policy


def assert_states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_same_decisions(a, b) -> None:
    keys = [SEGMENTS[i % 3] for i in range(300)] + ["unseen|segment"] * 20
    da = a.decide_batch(keys, rng=np.random.default_rng(42))
    db = b.decide_batch(keys, rng=np.random.default_rng(42))
    for name in ("network", "floor_cpm", "propensity", "floor_propensity"):
        np.testing.assert_array_equal(getattr(da, name), getattr(db, name), err_msg=name)
    assert da.model_version == db.model_version
    # The policies' own generators were restored too.
    for ctx in ({"country": "KR", "os": "ios"}, {"country": "US"}, None):
        assert a.decide(ctx) == b.decide(ctx)
    ia = a.decide_indexed(SEGMENTS, np.arange(60) % 3)
    ib = b.decide_indexed(SEGMENTS, np.arange(60) % 3)
    np.testing.assert_array_equal(ia.floor_cpm, ib.floor_cpm)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_state_round_trips_exactly(name: str, tmp_path) -> None:
    policy = trained(name)
    path = tmp_path / "policy.npz"
    save_state(path, policy.state())
    assert not (tmp_path / "policy.npz.tmp").exists()

    with np.load(path, allow_pickle=False) as npz:  # no pickled objects in the file
        raw = {k: npz[k] for k in npz.files}
    assert all(v.dtype != object for v in raw.values())

    restored = policy_from_state(load_state(path))
    assert type(restored) is type(policy)
    assert restored.placement == policy.placement
    assert restored.params == policy.params
    assert_states_equal(restored.state(), policy.state())
    assert restored.allocation("KR|ios") == policy.allocation("KR|ios")
    assert restored.allocation() == policy.allocation()
    assert_same_decisions(restored, policy)

    # Learning continues identically after the round trip (tables use the restored generator).
    more = synthetic_batch(np.random.default_rng(9), 300, 1.8e9 + 5 * 3600.0)
    policy.update(more)
    restored.update(more)
    assert_states_equal(restored.state(), policy.state())
    assert_same_decisions(restored, policy)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_fresh_policy_round_trips(name: str) -> None:
    policy = make_policy(name, CFG, seed=None)
    restored = policy_from_state(policy.state())
    assert_states_equal(restored.state(), policy.state())
    assert restored.allocation() == policy.allocation()


def with_meta(state: dict[str, np.ndarray], **changes: object) -> dict[str, np.ndarray]:
    meta = json.loads(str(state["meta"]))
    meta.update(changes)
    return {**state, "meta": np.array(json.dumps(meta))}


def test_wrong_schema_version_is_refused() -> None:
    state = trained("static").state()
    with pytest.raises(
        InvalidState, match=f"schema version 999, this build reads {STATE_SCHEMA_VERSION}"
    ):
        policy_from_state(with_meta(state, schema_version=999))


def test_unknown_policy_is_refused() -> None:
    state = trained("static").state()
    with pytest.raises(InvalidState, match="unknown policy 'no_such_policy'"):
        policy_from_state(with_meta(state, policy="no_such_policy"))


def test_unreadable_meta_is_refused() -> None:
    state = trained("static").state()
    with pytest.raises(InvalidState, match="meta"):
        policy_from_state({**state, "meta": np.array("{not json")})
    with pytest.raises(InvalidState, match="meta"):
        policy_from_state({**state, "meta": np.array("[1, 2]")})
    with pytest.raises(InvalidState, match="meta"):
        policy_from_state({k: v for k, v in state.items() if k != "meta"})


def test_state_missing_arrays_is_refused() -> None:
    state = trained("epsilon_greedy").state()
    with pytest.raises(InvalidState):
        policy_from_state({k: v for k, v in state.items() if k != "stats_floor_values"})


CORRUPTIONS = {
    "garbage bytes": lambda raw: b"this is not a policy state at all",
    "empty file": lambda raw: b"",
    "truncated": lambda raw: raw[: len(raw) // 2],
    "flipped bytes": lambda raw: raw[:200] + bytes(b ^ 0xFF for b in raw[200:400]) + raw[400:],
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_file_is_refused(corruption: str, tmp_path) -> None:
    path = tmp_path / "policy.npz"
    save_state(path, trained("static").state())
    path.write_bytes(CORRUPTIONS[corruption](path.read_bytes()))
    with pytest.raises(InvalidState):
        policy_from_state(load_state(path))


def test_a_damaged_array_is_found_even_when_not_kept(tmp_path) -> None:
    """``load_state(keep=...)`` reads every array (the check a written snapshot gets) and
    returns only those named."""
    path = tmp_path / "state.npz"
    pattern = np.arange(1000, dtype=np.float64) * 1.5
    save_state(path, {"meta": np.array("{}"), "big": pattern})
    assert set(load_state(path, keep=("meta",))) == {"meta"}
    raw = path.read_bytes()
    at = raw.index(pattern[500:510].tobytes())
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    with pytest.raises(InvalidState, match="cannot read"):
        load_state(path, keep=("meta",))


def test_npz_without_meta_is_refused(tmp_path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, x=np.arange(3))
    with pytest.raises(InvalidState, match="no meta"):
        load_state(path)
    with pytest.raises(InvalidState, match="cannot read"):
        load_state(tmp_path / "missing.npz")


def test_pickled_arrays_are_not_loaded(tmp_path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(path, meta=np.array("{}"), evil=np.array([{"a": 1}], dtype=object))
    assert zipfile.is_zipfile(path)
    with pytest.raises(InvalidState):
        load_state(path)
