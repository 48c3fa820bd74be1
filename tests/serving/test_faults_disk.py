"""Fault injection on a full or failing disk, against the real server process.

Faults come from :mod:`serving.faults`: the server runs with ``ADBANDIT_FAULT_FILE`` and
each event-log write, fsync and snapshot write first reads that file, so a test fills
the disk (``write-partial ENOSPC``: half a record reaches the file, then ENOSPC), breaks
it (``fsync EIO``) or fails snapshots, and gives the space back, while the server runs.
Each test asserts exactly which events the state counts after a SIGKILL and a restart:
every acknowledged event once, none of a refused request unless it was re-sent.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from bandit.errors import StorageFailure
from serving import snapshots
from serving.faults import ENV
from serving.store import PolicyStore
from tests.serving.faultkit import BATCH, PLACEMENT, Server, batch

FAULTS = {"write": "write-partial ENOSPC", "fsync": "fsync EIO"}


def start(tmp_path: Path) -> tuple[Server, Path]:
    fault_file = tmp_path / "faults"
    fault_file.write_text("")
    return Server(tmp_path / "state", env={ENV: str(fault_file)}), fault_file


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_disk_refuses_with_507_and_nothing_acknowledged_after_it_is_lost(tmp_path, fault):
    server, fault_file = start(tmp_path)
    try:
        server.setup()
        before = [batch(f"a{k}") for k in range(3)]
        for events in before:
            server.ack(events)
        fault_file.write_text(FAULTS[fault])
        refused = batch("refused")
        r = server.client.post("/v1/outcomes", json=refused)
        assert r.status_code == 507 and r.headers["retry-after"].isdigit()
        assert "nothing of this request was stored" in r.json()["detail"]
        health = server.health()
        assert health.status_code == 503 and "cannot be written" in health.json()["detail"]
        # Configuration changes fail the same way and change nothing.
        body = {"networks": [{"id": "alpha"}, {"id": "beta"}, {"id": "gamma"}]}
        assert server.client.put(f"/v1/placements/{PLACEMENT}", json=body).status_code == 507
        experiment = {"variants": [{"name": "champion", "traffic": 100, "policy": "grid_ts"}]}
        assert server.client.put(f"/v1/placements/{PLACEMENT}/experiment", json=experiment).status_code == 507
        assert server.metric("adbandit_store_storage_failing") == 1
        fault_file.write_text("")  # space is back
        assert server.wait_ready().status_code == 200
        assert [n["id"] for n in server.client.get(f"/v1/placements/{PLACEMENT}").json()["networks"]] == [
            "alpha",
            "beta",
        ]
        after = [batch(f"z{k}") for k in range(3)]
        for events in after:
            server.ack(events)
        # The refused request may be re-sent: counted once whether or not the repair kept it.
        accepted, duplicates = server.repost(refused)
        assert accepted + duplicates == BATCH and (fault == "fsync" or accepted == BATCH)
        server.kill()
        assert "storage failure" in server.stderr
    finally:
        if server.process.poll() is None:
            server.kill()

    acknowledged = [e for events in (*before, *after, refused) for e in events]
    server = Server(tmp_path / "state")
    try:
        assert server.learned() == server.requests() == len(acknowledged)
        assert server.repost(acknowledged) == (0, len(acknowledged))
        assert server.health().json()["status"] == "ok"
        # The partial record was cut back when the write failed: nothing sat behind torn bytes.
        assert server.client.get("/v1/admin/damage").json()["damage"] == []
    finally:
        server.stop()


class Streamer(threading.Thread):
    """Posts fresh batches until the server goes away; remembers acknowledged, refused (507)
    and merely attempted events."""

    def __init__(self, index: int, base: str) -> None:
        super().__init__(daemon=True)
        self.index = index
        self.base = base
        self.acked: list[dict] = []
        self.attempted: list[dict] = []
        self.refused = 0
        self.failure: str | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            for k in range(100_000):
                events = batch(f"w{self.index}-{k}", 20)
                self.attempted.extend(events)
                try:
                    r = client.post("/v1/outcomes", json=events)
                except httpx.TransportError:
                    return  # killed
                if r.status_code == 507:
                    self.refused += 1
                    time.sleep(0.01)  # back off, as Retry-After asks (shortened for the test)
                    continue
                if r.status_code != 200 or r.json() != {"accepted": 20, "duplicates": 0, "rejected": []}:
                    self.failure = f"{r.status_code}: {r.text}"
                    return
                self.acked.extend(events)


def _wait(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_four_writers_through_a_full_disk_and_sigkill_lose_no_acknowledged_event(tmp_path, fault):
    server, fault_file = start(tmp_path)
    streamers = [Streamer(i, server.base) for i in range(4)]
    try:
        server.setup()
        for s in streamers:
            s.start()

        def acked() -> int:
            return sum(len(s.acked) for s in streamers)

        assert _wait(lambda: acked() >= 400)
        fault_file.write_text(FAULTS[fault])
        assert _wait(lambda: sum(s.refused for s in streamers) >= 8)
        fault_file.write_text("")
        resumed = acked()
        assert _wait(lambda: acked() >= resumed + 600)  # writes resume once space is back
        server.kill()
        for s in streamers:
            s.join(timeout=30)
        assert all(s.failure is None for s in streamers), [s.failure for s in streamers]
    finally:
        if server.process.poll() is None:
            server.kill()

    acked_events = [e for s in streamers for e in s.acked]
    attempted = [e for s in streamers for e in s.attempted]
    acked_ids = {e["event_id"] for e in acked_events}
    unacked = [e for e in attempted if e["event_id"] not in acked_ids]
    server = Server(tmp_path / "state")
    try:
        recovered = server.learned()
        assert len(acked_events) <= recovered <= len(attempted)
        assert server.repost(acked_events) == (0, len(acked_events))
        accepted, duplicates = server.repost(unacked)
        assert duplicates == recovered - len(acked_events) and accepted == len(attempted) - recovered
        assert server.wait_learned(len(attempted)) == len(attempted)
        assert server.requests() == len(attempted)
        refused = sum(s.refused for s in streamers)
        print(f"[{fault}] acknowledged {len(acked_events)}, recovered {recovered}, attempted {len(attempted)}, "
              f"refused requests {refused}")  # fmt: skip
    finally:
        server.stop()


def test_a_failing_snapshot_keeps_older_snapshots_and_segments_and_stray_temp_files_go_at_start(tmp_path):
    server, fault_file = start(tmp_path)
    state = tmp_path / "state"
    try:
        server.setup()
        server.ack(batch("s1"))
        assert server.client.post("/v1/admin/snapshot").status_code == 200
        server.ack(batch("s2"))
        kept = sorted(p.name for p in (state / "snapshots").iterdir())
        segments = sorted(p.name for p in (state / "log").glob("*.log"))
        fault_file.write_text("snapshot ENOSPC")
        r = server.client.post("/v1/admin/snapshot")
        assert r.status_code == 507 and "snapshot" in r.json()["detail"]
        assert sorted(p.name for p in (state / "snapshots").iterdir()) == kept
        assert sorted(p.name for p in (state / "log").glob("*.log")) == segments
        assert server.health().status_code == 200  # the log still takes writes
        server.ack(batch("s3"))
        server.kill()
    finally:
        if server.process.poll() is None:
            server.kill()
    debris = [
        state / "snapshots" / "snapshot-00000000000000000099.npz.tmp",
        state / "log" / "00000000000000000001.log.tmp",
        state / "outcomes" / "outcomes-000000000001-000000000002.parquet.tmp",
    ]
    for p in debris:
        p.write_bytes(b"half")
    server = Server(state)
    try:
        assert server.learned() == 3 * BATCH
        assert not any(p.exists() for p in debris)
    finally:
        server.stop()


def test_a_half_written_snapshot_is_removed_and_the_older_one_kept(tmp_path, monkeypatch):
    """In process: the snapshot writer dies mid-file with ENOSPC."""
    import errno

    store = PolicyStore(tmp_path, snapshot_every_s=3600)
    store.open()
    try:
        from bandit import PlacementConfig

        store.put_placement(PlacementConfig.from_dict(PLACEMENT, {"networks": [{"id": "alpha"}, {"id": "beta"}]}))
        store.ingest(batch("h1"))
        store.snapshot()
        before = snapshots.list_snapshots(tmp_path / "snapshots")

        def half(path, state):
            Path(f"{path}.tmp").write_bytes(b"PK\x03\x04" + bytes(100))
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(snapshots, "save_state", half)
        store.ingest(batch("h2"))
        with pytest.raises(StorageFailure, match="ENOSPC"):
            store.snapshot()
        assert snapshots.list_snapshots(tmp_path / "snapshots") == before
        assert not list((tmp_path / "snapshots").glob("*.tmp"))
        monkeypatch.undo()
        assert store.ingest(batch("h3")).accepted == BATCH
    finally:
        store.close()
    store = PolicyStore(tmp_path)
    store.open()
    try:
        assert store.experiment_report(PLACEMENT)["variants"]["champion"]["requests"] == 3 * BATCH
    finally:
        store.close()


# ------------------------------------------------------------------- in process
def _store(state_dir: Path, **kwargs) -> PolicyStore:
    from bandit import PlacementConfig
    from serving.variants import ExperimentConfig

    store = PolicyStore(state_dir, snapshot_every_s=3600, **kwargs)
    store.open()
    if PLACEMENT not in {p.id for p in store.list_placements()}:
        store.put_placement(
            PlacementConfig.from_dict(PLACEMENT, {"networks": [{"id": "alpha"}, {"id": "beta"}]}),
            ExperimentConfig.single("static", {}),
        )
    return store


def _requests(store: PolicyStore) -> int:
    store.flush()
    return store.experiment_report(PLACEMENT)["variants"]["champion"]["requests"]


def test_after_a_failed_fsync_nothing_is_acknowledged_not_even_a_duplicate_until_repaired(tmp_path, monkeypatch):
    import errno

    from serving import eventlog

    store = _store(tmp_path / "live")
    try:
        store.ingest(batch("a"))
        real, failing = eventlog._datasync, [True]

        def sync(fd: int) -> None:
            if failing[0]:
                raise OSError(errno.EIO, "Input/output error")
            real(fd)

        monkeypatch.setattr(eventlog, "_datasync", sync)
        monkeypatch.setattr(eventlog, "REPAIR_INTERVAL_S", 0.0)
        with pytest.raises(StorageFailure, match="EIO"):
            store.ingest(batch("b"))
        # b sits in the page cache of a file whose fsync failed: a retry must not hear "duplicate".
        with pytest.raises(StorageFailure):
            store.ingest(batch("b"))
        with pytest.raises(StorageFailure):
            store.ingest(batch("a"))
        assert store.storage_failure is not None and store.metrics()["storage_failing"]
        failing[0] = False
        result = store.ingest(batch("b"))  # the repair re-wrote b from memory and synced it
        assert (result.accepted, result.duplicates) == (0, BATCH)
        assert store.storage_failure is None
        shutil.copytree(tmp_path / "live", tmp_path / "crashed", ignore=shutil.ignore_patterns("LOCK"))
    finally:
        store.close()
    crashed = _store(tmp_path / "crashed")
    try:
        assert _requests(crashed) == 2 * BATCH
        assert crashed.damage() == []
    finally:
        crashed.close()


def test_an_applied_marker_the_disk_refused_is_written_later_and_replay_learns_each_event_once(tmp_path, monkeypatch):
    from serving import faults

    fault_file = tmp_path / "faults"
    fault_file.write_text("")
    monkeypatch.setattr(faults, "_path", fault_file)
    store = _store(tmp_path / "live")
    try:
        store.ingest(batch("a"))
        fault_file.write_text("write ENOSPC")
        store.flush()  # learns a; its APPLIED marker cannot be written
        with pytest.raises(StorageFailure):
            store.ingest(batch("refused"))
        fault_file.write_text("")
        store.ingest(batch("b"))
        assert _requests(store) == 2 * BATCH  # the marker now written covers a and b
        shutil.copytree(tmp_path / "live", tmp_path / "crashed", ignore=shutil.ignore_patterns("LOCK"))
    finally:
        store.close()
    crashed = _store(tmp_path / "crashed")
    try:
        assert _requests(crashed) == 2 * BATCH
        assert crashed.ingest(batch("refused")).accepted == BATCH
    finally:
        crashed.close()
