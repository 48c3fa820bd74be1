"""Fault injection on the files of a stopped server: damage in the middle of a log segment
(before and after the newest snapshot), a torn tail, damaged / empty / half-written
snapshots. Each test restarts the real server on a damaged copy of one state dir and
asserts exactly which acknowledged events it counts: all of them, except those of a
record proven damaged, whose count the service reports (``/healthz``, ``/metrics``, the
admin damage list, ``adbandit store verify``).

The state dir (built once per module): 18 acknowledged batches of 50 events, one log
record each; snapshot S1 after batch 6, S2 after batch 12; killed with SIGKILL after
batch 18 (no final snapshot). So batches 1-6 are covered by both snapshots, 7-12 only by
S2, 13-18 by none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adbandit import cli
from serving import eventlog, snapshots
from serving.dedupe import event_hashes
from serving.records import EVENTS, EventRecord
from tests.serving.faultkit import BATCH, Server, batch

BATCHES = 18
TOTAL = BATCHES * BATCH
ALL_EVENTS = [e for b in range(1, BATCHES + 1) for e in batch(f"b{b}")]


@pytest.fixture(scope="module")
def base_state(tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("faults-log") / "state"
    server = Server(state)
    try:
        server.setup()
        for b in range(1, BATCHES + 1):
            server.ack(batch(f"b{b}"))
            if b in (6, 12):
                assert server.client.post("/v1/admin/snapshot").status_code == 200
        assert server.wait_learned(TOTAL) == TOTAL
    finally:
        server.kill()
    assert len(snapshots.list_snapshots(state / "snapshots")) == 2
    return state


@pytest.fixture
def state(base_state, tmp_path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(base_state, copy)
    return copy


def segment(state: Path) -> Path:
    [(_, path)] = eventlog.list_segments(state / "log")  # 64 MiB segments: one here
    return path


def record_of_batch(path: Path, b: int) -> eventlog.LogRecord:
    """The events record that holds batch ``b`` (found by its first event's hash)."""
    first = event_hashes([f"b{b}-0"])[0]
    records, regions = eventlog.scan_segment(path.read_bytes())
    assert not regions
    for rec in records:
        if rec.kind == EVENTS and np.asarray(EventRecord.decode(rec.payload).event_hash)[0] == first:
            return rec
    raise AssertionError(f"batch {b} not in the log")


def damage(path: Path, rec: eventlog.LogRecord, how: str) -> None:
    data = bytearray(path.read_bytes())
    at = rec.offset
    if how == "garbage-in-payload":
        data[at + eventlog.HEADER.size + 100 : at + eventlog.HEADER.size + 108] = b"\xde\xad\xbe\xef" * 2
    elif how == "zeroed-header":
        data[at : at + eventlog.HEADER.size] = bytes(eventlog.HEADER.size)
    elif how == "flipped-bit":
        data[at + eventlog.HEADER.size + len(rec.payload) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def verify(state: Path, capsys) -> tuple[int, dict]:
    code = cli.main(["store", "verify", "--state-dir", str(state), "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("how", ["garbage-in-payload", "zeroed-header", "flipped-bit"])
def test_damage_after_the_newest_snapshot_costs_exactly_the_damaged_record(state, how, capsys):
    path = segment(state)
    victim = record_of_batch(path, 15)
    damage(path, victim, how)
    code, report = verify(state, capsys)
    assert code == 1 and report["would_lose"]["records"] == 1 and report["would_lose"]["events"] == BATCH

    server = Server(state)
    try:
        health = server.health().json()
        assert health["status"] == "degraded"
        [line] = health["damage"]
        assert path.name in line and f"offset {victim.offset}" in line and f"{BATCH} events lost" in line
        assert server.metric("adbandit_store_damaged_events") == BATCH
        assert server.metric("adbandit_store_damage_unacknowledged") == 1
        # Every acknowledged event but the 50 of the damaged record, once; the records after it too.
        assert server.learned() == server.requests() == TOTAL - BATCH
        lost = batch("b15")
        kept = [e for e in ALL_EVENTS if e not in lost]
        assert server.repost(kept) == (0, len(kept))
        assert server.repost(lost) == (BATCH, 0)  # nothing of them remains: the ad server may resend
        assert server.wait_learned(TOTAL) == TOTAL
        [entry] = server.client.get("/v1/admin/damage").json()["damage"]
        assert (entry["kind"], entry["first_lost_lsn"], entry["records_lost"]) == ("damaged", victim.lsn, 1)
        quarantined = state / "quarantine" / entry["quarantined"]
        assert quarantined.stat().st_size == entry["bytes"] >= len(victim.payload)
        ack = server.client.post("/v1/admin/acknowledge-damage").json()
        assert ack["acknowledged"] == 1
        after = server.health().json()
        assert after["status"] == "ok" and after["damage"] == []
    finally:
        server.stop()
    assert f"offset {victim.offset}" in server.stderr and "event log damage" in server.stderr

    # The damaged bytes are gone from the segment; a restart finds nothing new, counts nothing twice.
    assert eventlog.scan_segment(path.read_bytes())[1] == []
    assert verify(state, capsys)[0] == 0
    if how != "garbage-in-payload":
        return  # one restart is enough to show it
    server = Server(state)
    try:
        assert server.health().json()["status"] == "ok"
        assert server.learned() == server.requests() == TOTAL
    finally:
        server.stop()


@pytest.mark.parametrize("victim_batch", [3, 9], ids=["covered-by-both-snapshots", "covered-by-the-newest"])
def test_damage_before_the_newest_snapshot_loses_nothing_and_keeps_every_later_record(state, victim_batch, capsys):
    path = segment(state)
    victim = record_of_batch(path, victim_batch)
    damage(path, victim, "garbage-in-payload")
    code, report = verify(state, capsys)
    assert code == 1 and report["would_lose"] == {**report["would_lose"], "records": 1, "events": 0}
    server = Server(state)
    try:
        # The snapshot holds what the damaged record taught; every later record is replayed.
        assert server.learned() == server.requests() == TOTAL
        assert server.repost(ALL_EVENTS) == (0, TOTAL)
        health = server.health().json()
        assert health["status"] == "degraded" and "0 events lost" in health["damage"][0]
        assert server.metric("adbandit_store_damaged_records") == 1
        assert server.metric("adbandit_store_damaged_events") == 0
    finally:
        server.stop()


def test_a_torn_tail_is_cut_logged_with_its_byte_count_and_does_not_degrade(state, capsys):
    path = segment(state)
    whole = eventlog.encode_record(10**6, EVENTS, bytes(record_of_batch(path, 18).payload))
    torn = whole[: len(whole) // 2]
    with open(path, "ab") as fh:
        fh.write(torn)
    code, report = verify(state, capsys)
    assert code == 0 and report["would_lose"]["torn_tail_bytes"] == len(torn)
    server = Server(state)
    try:
        assert server.health().json()["status"] == "ok"
        assert server.learned() == TOTAL
        assert server.metric("adbandit_store_torn_tail_bytes") == len(torn)
        assert server.repost(ALL_EVENTS) == (0, TOTAL)
    finally:
        server.stop()
    assert f"torn tail of {len(torn)} bytes" in server.stderr


@pytest.mark.parametrize("how", ["empty", "half-written", "flipped-byte", "only-snapshot"])
def test_an_unreadable_newest_snapshot_falls_back_to_the_older_one_and_the_log(state, how, capsys):
    older, newest = (p for _, p in snapshots.list_snapshots(state / "snapshots"))
    data = newest.read_bytes()
    if how == "empty":
        newest.write_bytes(b"")
    elif how == "half-written":
        newest.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0xFF
        newest.write_bytes(bytes(flipped))
        if how == "only-snapshot":
            older.unlink()  # the log alone must rebuild everything
    code, report = verify(state, capsys)
    assert code == 1 and [s["sound"] for s in report["snapshots"]][-1] is False
    server = Server(state)
    try:
        assert server.learned() == server.requests() == TOTAL
        assert server.repost(ALL_EVENTS) == (0, TOTAL)
        health = server.health().json()
        assert health["status"] == "degraded" and newest.name in health["damage"][0]
    finally:
        server.stop()
    assert (state / "quarantine" / f"{newest.name}.bad").exists()
    assert newest.name not in {p.name for _, p in snapshots.list_snapshots(state / "snapshots")}
