"""Incremental snapshots: a base plus deltas restores exactly the state of the store that
wrote them; a damaged delta falls back to the chain before it plus the log; chains are
compacted into a new base; writing a snapshot never holds up decisions, ingest or learning."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from bandit import load_state, save_state
from bandit.errors import StorageFailure
from serving import snapshots
from serving.placement_config import ServicePlacement
from serving.store import ExperimentConfig, PolicyStore
from tests.serving.test_store import assert_same_stats, crash_copy, events, placement, stats


def open_store(path, **kw) -> PolicyStore:
    kw.setdefault("default_policy", "ts_gmm")
    kw.setdefault("snapshot_max_deltas", 100)
    kw.setdefault("snapshot_delta_share", 100.0)
    kw.setdefault("snapshot_every_s", 1e10)  # no periodic snapshots: each test takes its own
    kw.setdefault("snapshot_every_events", 10**9)
    kw.setdefault("replay_group_events", 0)  # bit-for-bit replays
    store = PolicyStore(path, **kw)
    store.open()
    return store


def whole_state(store: PolicyStore, pid: str = "p1", variant: str = "champion") -> dict[str, np.ndarray]:
    state = store.policy_state(pid, variant)
    meta = json.loads(str(state.pop("meta")))
    state["meta_updates_rng"] = np.array(json.dumps([meta["updates"], meta["rng"]]))
    return state


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        np.testing.assert_array_equal(b[key], value, err_msg=key)


def kinds(path) -> list[str]:
    return ["delta" if f.is_delta else "base" for f in snapshots.list_files(path / "snapshots")]


def drive(store: PolicyStore, rng: np.random.Generator, rounds: range, n: int = 150) -> None:
    for r in rounds:
        store.ingest(events(rng, n, r * 1000, t0=1_790_000_000.0 + r * 600.0))
        store.flush()


def test_a_base_plus_deltas_restores_exactly_the_state_of_the_store_that_wrote_them(tmp_path):
    live = open_store(tmp_path / "live")
    live.put_placement(placement(), ExperimentConfig.single("ts_gmm", {"half_life_hours": 1.0}))
    live.put_placement(placement("p2", networks=("x", "y")), ExperimentConfig.single("static"))
    rng = np.random.default_rng(11)
    drive(live, rng, range(2))
    live.snapshot()
    for k in range(3):
        drive(live, rng, range(2 + k, 3 + k))
        live.ingest(events(rng, 40, 50_000 + 100 * k, pid="p2", networks=("x", "y")))
        live.flush()
        live.snapshot()
    assert kinds(tmp_path / "live") == ["base", "delta", "delta", "delta"]
    crash_copy(tmp_path / "live", tmp_path / "crashed")
    restored = open_store(tmp_path / "crashed")
    assert restored.metrics()["events_replayed_total"] == 0  # the chain covers everything
    for pid in ("p1", "p2"):
        assert_same_state(whole_state(live, pid), whole_state(restored, pid))
        assert restored.experiment_report(pid) == live.experiment_report(pid)
    # The de-duplication window came back from the deltas too.
    again = events(np.random.default_rng(11), 150, 0, t0=1_790_000_000.0)
    assert restored.ingest(again).duplicates == 150
    restored.close()
    live.close()


def test_deltas_of_a_placement_with_service_settings_apply_on_restart(tmp_path):
    """Bidder codes, net revenue and limits live in the service's placement, not in the
    policy's: the deltas of such a placement restore it too (none is refused as damage)."""
    body = {"networks": [{"id": "alpha", "floor_max_cpm": 20.0, "bidder": "appnexus"},
                         {"id": "beta", "floor_max_cpm": 20.0, "revenue": "net"},
                         {"id": "house", "floor_max_cpm": 20.0}],
            "segment_by": ["country", "os"], "limits": {"max_segments": 1000}}  # fmt: skip
    config = ServicePlacement.from_dict("p1", body)
    assert config.bidders and config.net_revenue and config.limits
    live = open_store(tmp_path / "live")
    live.put_placement(config, ExperimentConfig.single("ts_gmm"))
    rng = np.random.default_rng(5)
    drive(live, rng, range(2))
    live.snapshot()
    drive(live, rng, range(2, 4))
    live.snapshot()
    assert kinds(tmp_path / "live") == ["base", "delta"]
    crash_copy(tmp_path / "live", tmp_path / "crashed")
    restored = open_store(tmp_path / "crashed")
    assert restored.damage() == []
    assert restored.metrics()["events_replayed_total"] == 0
    assert_same_state(whole_state(live), whole_state(restored))
    restored.close()
    live.close()


def test_deltas_hold_only_what_changed(tmp_path):
    store = open_store(tmp_path)
    store.put_placement(placement())
    rng = np.random.default_rng(12)
    drive(store, rng, range(3), n=600)
    store.snapshot()
    one = events(rng, 5, 90_000)
    for e in one:
        e["context"] = {"country": "KR", "os": "ios"}
    store.ingest(one)
    store.flush()
    store.snapshot()
    (_, base), (_, delta) = snapshots.list_snapshots(tmp_path / "snapshots")
    assert kinds(tmp_path) == ["base", "delta"]
    rows = list(load_state(base)["p0.s0.stats_segments"])
    cells = load_state(delta)["p0.s0.stats_cells"]
    assert set((cells // 3).tolist()) == {rows.index("KR|ios")}  # one segment's cells, of 3 × 6
    assert delta.stat().st_size < base.stat().st_size / 2
    store.close()


@pytest.mark.parametrize("damaged", [1, 2])
def test_a_damaged_delta_falls_back_to_the_chain_before_it_and_the_log(tmp_path, damaged):
    live = open_store(tmp_path / "live", default_policy="static")
    live.put_placement(placement())
    rng = np.random.default_rng(13)
    for k in range(4):  # a base and three deltas, 100 events after each
        drive(live, rng, range(k, k + 1), n=100)
        live.snapshot()
    drive(live, rng, range(4, 5), n=100)
    expected = stats(live)
    crash_copy(tmp_path / "live", tmp_path / "copy")
    live.close()
    files = snapshots.list_files(tmp_path / "copy" / "snapshots")
    assert [f.is_delta for f in files] == [False, True, True, True]
    bad = files[damaged].path
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    store = open_store(tmp_path / "copy", default_policy="static")
    assert_same_stats(stats(store), expected)
    # Everything after the last good file was replayed from the log: 100 events per file lost.
    assert store.metrics()["events_replayed_total"] == 100 * (5 - damaged)
    quarantine = tmp_path / "copy" / "quarantine"
    assert (quarantine / f"{bad.name}.bad").exists()
    assert all((quarantine / f"{f.path.name}.unused").exists() for f in files[damaged + 1 :])
    assert [d.kind for d in store.damage()] == ["snapshot"]
    assert store.ingest(events(np.random.default_rng(13), 100, 0)).duplicates == 100
    store.snapshot()  # the chain on disk was cut: a new one starts
    assert kinds(tmp_path / "copy")[-1] == "base"
    store.close()
    reopened = open_store(tmp_path / "copy", default_policy="static")
    assert_same_stats(stats(reopened), expected)
    reopened.close()


def test_chains_are_compacted_into_a_new_base_and_the_log_behind_the_older_base_goes(tmp_path):
    store = open_store(tmp_path, default_policy="static", snapshot_max_deltas=2, segment_max_bytes=4096)
    store.put_placement(placement())
    rng = np.random.default_rng(14)
    for k in range(6):
        drive(store, rng, range(k, k + 1), n=60)
        store.snapshot()
    # base, delta, delta, base, delta, delta: the first chain is kept as the fallback.
    assert kinds(tmp_path) == ["base", "delta", "delta", "base", "delta", "delta"]
    drive(store, rng, range(6, 7), n=60)
    store.snapshot()  # a third base: the first chain goes, the log up to the second base
    files = snapshots.list_files(tmp_path / "snapshots")
    assert kinds(tmp_path) == ["base", "delta", "delta", "base"]
    from serving import eventlog

    assert eventlog.list_segments(tmp_path / "log")[0][0] > files[0].covered_lsn - 5
    expected = stats(store)
    store.close()
    reopened = open_store(tmp_path, default_policy="static")
    assert_same_stats(stats(reopened), expected)
    reopened.close()


def test_deltas_grow_into_a_new_base_by_their_bytes(tmp_path):
    store = open_store(tmp_path, default_policy="static", snapshot_delta_share=1e-9)
    store.put_placement(placement())
    rng = np.random.default_rng(15)
    for k in range(3):
        drive(store, rng, range(k, k + 1), n=60)
        store.snapshot()
    assert kinds(tmp_path) == ["base", "delta", "base"]
    store.close()


def test_a_failed_delta_write_starts_a_new_chain(tmp_path, monkeypatch):
    state = tmp_path / "state"
    store = open_store(state, default_policy="static")
    store.put_placement(placement())
    rng = np.random.default_rng(16)
    drive(store, rng, range(1))
    store.snapshot()
    drive(store, rng, range(1, 2))

    def full_disk(path, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshots, "save_state", full_disk)
    with pytest.raises(StorageFailure, match="ENOSPC"):
        store.snapshot()
    monkeypatch.undo()
    # The learners' changes since the base went with the failed file: a delta now would miss them.
    drive(store, rng, range(2, 3))
    store.snapshot()
    assert kinds(state) == ["base", "base"]
    expected = stats(store)
    crash_copy(state, tmp_path / "copy")
    store.close()
    reopened = open_store(tmp_path / "copy", default_policy="static")
    assert reopened.metrics()["events_replayed_total"] == 0
    assert_same_stats(stats(reopened), expected)
    reopened.close()


def test_a_whole_snapshot_of_the_earlier_format_still_loads(tmp_path):
    store = open_store(tmp_path, default_policy="static")
    store.put_placement(placement())
    drive(store, np.random.default_rng(17), range(2))
    expected = stats(store)
    store.close()
    [(_, path)] = snapshots.list_snapshots(tmp_path / "snapshots")
    state = load_state(path)
    meta = json.loads(str(state["meta"]))
    del meta["kind"]  # written before chains existed
    state["meta"] = np.array(json.dumps(meta))
    save_state(path, state)
    reopened = open_store(tmp_path, default_policy="static")
    assert_same_stats(stats(reopened), expected)
    assert reopened.metrics()["events_replayed_total"] == 0
    reopened.close()


def test_decisions_ingest_and_learning_go_on_while_a_snapshot_is_written(tmp_path):
    store = open_store(tmp_path, default_policy="static", apply_every_s=0.01)
    store.put_placement(placement())
    store.ingest(events(np.random.default_rng(18), 50, 0))
    store.flush()
    store.snapshot()
    writing = threading.Event()
    release = threading.Event()

    def slow_disk(path):
        writing.set()
        release.wait(10.0)

    store._before_snapshot_write = slow_disk
    store.ingest(events(np.random.default_rng(19), 50, 1000))
    writer = threading.Thread(target=store.snapshot)
    writer.start()
    try:
        assert writing.wait(10.0), "the snapshot should be writing now"
        decisions = [store.decide("p1", f"r{i}", {"country": "KR", "os": "ios"}) for i in range(20)]
        result = store.ingest(events(np.random.default_rng(20), 50, 2000))
        store.flush()  # learning takes the apply lock: the write does not hold it
        learned = store.allocation("p1").effective_events
        assert not release.is_set() and writer.is_alive()  # all of that while the write waited
    finally:
        release.set()
        writer.join(10.0)
    assert len(decisions) == 20 and result.accepted == 50
    assert learned == 150
    assert kinds(tmp_path) == ["base", "delta"]
    store.close()
