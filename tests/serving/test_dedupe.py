"""De-duplication: window semantics against a brute-force model, expiry, state, restarts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit import PlacementConfig
from serving.dedupe import DedupeWindow, event_hashes, first_occurrences
from serving.store import ExperimentConfig, PolicyStore

DAY = 86400.0


def test_event_hashes_are_stable_and_distinct():
    a = event_hashes(["e1", "e2", "e1"])
    assert a.dtype == np.uint64
    assert a[0] == a[2] != a[1]
    assert np.array_equal(a, event_hashes(["e1", "e2", "e1"]))
    assert len(np.unique(event_hashes([f"id-{i}" for i in range(100_000)]))) == 100_000


def test_first_occurrences_marks_only_the_first_of_repeats():
    h = np.array([5, 3, 5, 5, 9, 3], dtype=np.uint64)
    assert first_occurrences(h).tolist() == [True, True, False, False, True, False]
    assert first_occurrences(np.empty(0, np.uint64)).tolist() == []


def test_repeats_within_a_batch_and_across_batches_are_duplicates():
    w = DedupeWindow(7 * DAY)
    h = event_hashes(["a", "b", "a", "c"])
    assert w.check_and_add(h, 1000.0).tolist() == [False, False, True, False]
    assert w.check_and_add(event_hashes(["c", "d", "d"]), 1001.0).tolist() == [True, False, True]
    assert len(w) == 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 300), max_size=60), min_size=1, max_size=40))
def test_window_matches_a_python_set_when_nothing_expires(batches):
    """Many small runs (merged like a binary counter) behave exactly like one set."""
    w = DedupeWindow(7 * DAY)
    seen: set[int] = set()
    for k, batch in enumerate(batches):
        h = np.array(batch, dtype=np.uint64)
        expected = []
        local: set[int] = set()
        for x in batch:
            expected.append(x in seen or x in local)
            local.add(x)
        assert w.check_and_add(h, 1000.0 + k).tolist() == expected
        seen |= local
    assert len(w) == len(seen)


def test_ids_are_forgotten_after_the_window_and_not_before():
    window = 7 * DAY
    w = DedupeWindow(window)  # buckets of one day
    t0 = 100 * DAY + 3600.0  # one hour into a day bucket
    w.add(event_hashes(["old"]), t0)
    # Still remembered for the whole window ...
    assert w.contains(event_hashes(["old"])).tolist() == [True]
    w.expire(t0 + window - 1.0)
    assert w.contains(event_hashes(["old"])).tolist() == [True]
    # ... and at most one bucket (a day) longer.
    w.expire(t0 + window + DAY)
    assert w.contains(event_hashes(["old"])).tolist() == [False]
    assert len(w) == 0


def test_check_and_add_expires_old_buckets_by_ingest_time():
    w = DedupeWindow(7 * DAY)
    w.check_and_add(event_hashes(["x"]), 0.0)
    assert w.check_and_add(event_hashes(["x"]), 3 * DAY).tolist() == [True]
    assert w.check_and_add(event_hashes(["x"]), 20 * DAY).tolist() == [False]


def test_state_round_trip_keeps_membership_and_ages():
    w = DedupeWindow(7 * DAY)
    for day in range(5):
        w.add(event_hashes([f"d{day}-{i}" for i in range(50)]), day * DAY + 10)
    back = DedupeWindow(7 * DAY)
    back.load_state(w.state())
    probe = event_hashes([f"d{day}-{i}" for day in range(5) for i in range(50)] + ["never"])
    assert np.array_equal(back.contains(probe), w.contains(probe))
    assert back.contains(probe).sum() == 250
    back.expire(8 * DAY)  # day 0 is gone, days 1.. stay
    assert back.contains(event_hashes(["d0-1", "d1-1"])).tolist() == [False, True]


def test_a_state_plus_the_ids_added_since_equals_the_window_that_kept_going():
    """What an incremental snapshot holds of the window: the ids added since the last one."""
    day = 86400.0
    live = DedupeWindow(7 * day, 7)
    rng = np.random.default_rng(5)
    live.add(rng.integers(0, 2**63, 500, dtype=np.uint64), 0.5 * day)
    saved = live.frozen().state()  # a frozen copy: its state is computed later, off the lock
    live.take_added()
    for t in (0.7 * day, 1.5 * day, 1.6 * day):
        live.add(rng.integers(0, 2**63, 300, dtype=np.uint64), t)
    late = live.frozen()
    live.add(rng.integers(0, 2**63, 10, dtype=np.uint64), 2.5 * day)  # after the copy: not in it
    restored = DedupeWindow(7 * day, 7)
    restored.load_state(saved)
    restored.add_state(live.take_added())
    for key, value in live.state().items():
        np.testing.assert_array_equal(restored.state()[key], value, err_msg=key)
    assert len(late) == len(live) - 10
    assert len(live.take_added()["dedupe_added_hashes"]) == 0  # taken: the next delta starts empty


def test_state_loaded_into_a_narrower_window_never_forgets_early():
    w = DedupeWindow(7 * DAY)
    w.add(event_hashes(["a"]), 10 * DAY + 5.0)
    narrow = DedupeWindow(7 * DAY, n_buckets=168)  # hourly buckets
    narrow.load_state(w.state())
    narrow.expire(10 * DAY + 7 * DAY + 3600.0)  # 7 days after the *end* of the saved bucket not yet
    assert narrow.contains(event_hashes(["a"])).tolist() == [True]


# ------------------------------------------------------------------ through the store
def _placement() -> PlacementConfig:
    return PlacementConfig.from_dict("p1", {"networks": [{"id": "alpha"}, {"id": "beta"}]})


def _event(i: int | str, **kw) -> dict:
    body = {
        "event_id": f"e{i}",
        "ts": "2026-11-21T10:00:00Z",
        "placement": "p1",
        "network": "alpha",
        "floor_cpm": 1.0,
        "filled": True,
        "revenue_cpm": 2.0,
    }
    body.update(kw)
    return body


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _store(path, clock=None, **kw) -> PolicyStore:
    store = PolicyStore(path, default_policy="static", clock=clock or Clock(1.8e9), **kw)
    store.open()
    return store


def test_dedupe_survives_a_clean_restart(tmp_path):
    store = _store(tmp_path)
    store.put_placement(_placement(), ExperimentConfig.single("static"))
    assert store.ingest([_event(i) for i in range(10)]).accepted == 10
    store.close()
    store = _store(tmp_path)
    result = store.ingest([_event(i) for i in range(5, 15)])
    assert (result.accepted, result.duplicates) == (5, 5)
    store.flush()
    assert store.experiment_report("p1")["variants"]["champion"]["requests"] == 15
    store.close()


@pytest.mark.parametrize("snapshot_first", [False, True])
def test_dedupe_survives_a_crash(tmp_path, snapshot_first):
    """A copy of the directory taken while the store runs is what a crash leaves."""
    store = _store(tmp_path / "live")
    store.put_placement(_placement(), ExperimentConfig.single("static"))
    store.ingest([_event(i) for i in range(10)])
    if snapshot_first:
        store.snapshot()
    store.ingest([_event(i) for i in range(10, 20)])
    shutil.copytree(tmp_path / "live", tmp_path / "crashed", ignore=shutil.ignore_patterns("LOCK"))
    store.close()
    crashed = _store(tmp_path / "crashed")
    result = crashed.ingest([_event(i) for i in range(25)])
    assert (result.accepted, result.duplicates) == (5, 20)
    crashed.close()


def test_dedupe_window_expires_through_the_store(tmp_path):
    clock = Clock(1.8e9)
    store = _store(tmp_path, clock=clock, dedupe_days=1.0)
    store.put_placement(_placement(), ExperimentConfig.single("static"))
    assert store.ingest([_event("a")]).accepted == 1
    clock.t += 0.5 * DAY
    assert store.ingest([_event("a")]).duplicates == 1
    store.close()
    clock.t += 2 * DAY  # beyond the window (and the restart does not bring it back)
    store = _store(tmp_path, clock=clock, dedupe_days=1.0)
    assert store.ingest([_event("a")]).accepted == 1
    assert store.metrics()["dedupe_entries"] == 1
    store.close()


def test_repeated_id_in_one_batch_counts_once(tmp_path):
    store = _store(tmp_path)
    store.put_placement(_placement(), ExperimentConfig.single("static"))
    result = store.ingest([_event(1), _event(1), _event(2), _event(1, filled=False, revenue_cpm=0.0)])
    assert (result.accepted, result.duplicates, result.rejected) == (2, 2, [])
    store.flush()
    assert store.experiment_report("p1")["variants"]["champion"]["requests"] == 2
    store.close()


def test_an_invalid_event_does_not_consume_its_event_id(tmp_path):
    store = _store(tmp_path)
    store.put_placement(_placement(), ExperimentConfig.single("static"))
    bad = store.ingest([_event(1, network="nope")])
    assert bad.accepted == 0 and bad.rejected[0][0] == 0
    assert store.ingest([_event(1)]).accepted == 1
    store.close()
