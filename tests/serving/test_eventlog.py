"""Event log: append/recover, rotation, compaction, torn tails, resynchronisation past
damage, failing writes and fsyncs, group commit, record codecs."""

from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np
import pytest

from bandit.errors import InvalidState, StorageFailure
from serving import eventlog
from serving.eventlog import HEADER, EventLog
from serving.records import (
    APPLIED,
    EVENTS,
    MODEL,
    PLACEMENT,
    EventRecord,
    decode_applied,
    decode_json,
    decode_with_state,
    encode_applied,
    encode_json,
    encode_with_state,
    events_in,
)


def _payload(i: int) -> bytes:
    return f"record-{i}-".encode() * (1 + i % 7)


def _fill(directory, n: int, **kwargs) -> EventLog:
    log = EventLog(directory, **kwargs)
    log.open()
    for i in range(1, n + 1):
        assert log.append(EVENTS if i % 2 else PLACEMENT, _payload(i)) == i
    return log


def _read_all(directory, after: int = 0, **kwargs) -> tuple[EventLog, list]:
    log = EventLog(directory, **kwargs)
    recs = [(r.lsn, r.kind, bytes(r.payload)) for r in log.recover(after)]
    return log, recs


def test_append_then_recover_returns_every_record_in_order(tmp_path):
    _fill(tmp_path, 20).close()
    log, recs = _read_all(tmp_path)
    assert [r[0] for r in recs] == list(range(1, 21))
    assert all(r[2] == _payload(r[0]) for r in recs)
    assert [r[1] for r in recs[:2]] == [EVENTS, PLACEMENT]
    log.open()
    assert log.append(APPLIED, b"x") == 21


def test_recover_skips_records_a_snapshot_covers(tmp_path):
    _fill(tmp_path, 10).close()
    _, recs = _read_all(tmp_path, after=7)
    assert [r[0] for r in recs] == [8, 9, 10]


def test_segments_rotate_at_the_size_limit_and_recover_across_them(tmp_path):
    log = _fill(tmp_path, 60, segment_max_bytes=300)
    sizes = [p.stat().st_size for _, p in log.segments()]
    log.close()
    assert len(sizes) > 5
    assert all(s <= 300 for s in sizes[:-1])  # records here are < 300 bytes each
    _, recs = _read_all(tmp_path, segment_max_bytes=300)
    assert [r[0] for r in recs] == list(range(1, 61))
    assert all(r[2] == _payload(r[0]) for r in recs)


def test_a_single_record_larger_than_a_segment_gets_its_own_segment(tmp_path):
    log = EventLog(tmp_path, segment_max_bytes=64)
    log.open()
    log.append(EVENTS, b"a" * 500)
    log.append(EVENTS, b"b" * 10)
    log.close()
    _, recs = _read_all(tmp_path)
    assert [len(r[2]) for r in recs] == [500, 10]
    assert len(eventlog.list_segments(tmp_path)) == 2


def test_compaction_deletes_only_segments_fully_covered(tmp_path):
    log = _fill(tmp_path, 60, segment_max_bytes=300)
    segments = log.segments()
    firsts = [f for f, _ in segments]
    covered = firsts[3] + 1  # part of the 4th segment
    removed = log.compact(covered)
    assert [p.name for p in removed] == [p.name for _, p in segments[:3]]
    assert [f for f, _ in log.segments()] == firsts[3:]
    # Everything after the covered position is still there and the log keeps going.
    assert log.append(EVENTS, b"more") == 61
    log.close()
    _, recs = _read_all(tmp_path, after=covered, segment_max_bytes=300)
    assert [r[0] for r in recs] == list(range(covered + 1, 62))


def test_compaction_never_deletes_the_open_segment(tmp_path):
    log = _fill(tmp_path, 5)
    assert log.compact(10**9) == []
    assert len(log.segments()) == 1
    log.close()


def test_a_gap_between_snapshot_and_log_is_refused(tmp_path):
    log = _fill(tmp_path, 60, segment_max_bytes=300)
    first_segments = log.segments()
    log.compact(first_segments[2][0] - 1)
    log.close()
    with pytest.raises(InvalidState, match="missing"):
        list(EventLog(tmp_path).recover(0))


def _last_segment(directory):
    return eventlog.list_segments(directory)[-1][1]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:-3], id="payload-cut"),
        pytest.param(lambda data: data[: len(data) - len(_payload(12)) - HEADER.size + 5], id="header-cut"),
        pytest.param(lambda data: data + b"\0" * 40, id="zero-fill"),
        pytest.param(lambda data: data + b"garbage", id="stray-bytes"),
    ],
)
def test_a_torn_tail_is_detected_truncated_and_never_misread(tmp_path, damage):
    _fill(tmp_path, 12).close()
    path = _last_segment(tmp_path)
    intact = path.read_bytes()
    path.write_bytes(damage(intact))
    log, recs = _read_all(tmp_path)
    survivors = [r[0] for r in recs]
    # Only whole, checksummed records come back: all 12, or 11 when the last one was hit.
    assert survivors in (list(range(1, 12)), list(range(1, 13)))
    assert all(r[2] == _payload(r[0]) for r in recs)
    assert log.truncated, "the damage must be reported"
    log.open()
    assert log.append(EVENTS, b"after-crash") == survivors[-1] + 1
    log.close()
    _, again = _read_all(tmp_path)
    assert [r[0] for r in again] == [*survivors, survivors[-1] + 1]
    assert again[-1][2] == b"after-crash"


def test_a_flipped_bit_in_the_last_whole_record_is_damage_not_a_torn_tail(tmp_path):
    _fill(tmp_path, 12).close()
    path = _last_segment(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x5A
    path.write_bytes(bytes(data))
    log, recs = _read_all(tmp_path)
    assert [r[0] for r in recs] == list(range(1, 12))
    assert not log.truncated
    [d] = log.damage
    assert (d.kind, d.first_lost_lsn, d.last_lost_lsn, d.records_lost) == ("damaged", 12, 12, 1)
    log.open()
    assert log.append(EVENTS, b"next") == 13  # lsn 12 stays a reported gap


def _offset_of(path, lsn: int) -> int:
    return _offset_of_in(path.read_bytes(), lsn)


DAMAGE = {
    "garbage-in-payload": lambda data, at: (
        data[: at + HEADER.size + 2] + b"\xde\xad\xbe\xef" + data[at + HEADER.size + 6 :]
    ),
    "zeroed-header": lambda data, at: data[:at] + b"\0" * HEADER.size + data[at + HEADER.size :],
    "flipped-bit-in-lsn": lambda data, at: data[: at + 12] + bytes([data[at + 12] ^ 0x04]) + data[at + 13 :],
    "garbage-inserted": lambda data, at: data[:at] + b"ADBR" + b"\x01" * 60 + data[at:],
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("where", ["first-segment", "last-segment"])
def test_damage_mid_segment_skips_exactly_the_damaged_record_and_is_reported_once(tmp_path, damage, where):
    _fill(tmp_path, 60, segment_max_bytes=600).close()
    segments = eventlog.list_segments(tmp_path)
    first, path = segments[0] if where == "first-segment" else segments[-1]
    victim = first + 1
    data = path.read_bytes()
    path.write_bytes(DAMAGE[damage](data, _offset_of(path, victim)))
    log, recs = _read_all(tmp_path, segment_max_bytes=600)
    lost = [] if damage == "garbage-inserted" else [victim]
    assert [r[0] for r in recs] == [i for i in range(1, 61) if i not in lost]
    assert all(r[2] == _payload(r[0]) for r in recs)
    [d] = log.damage
    assert d.file == path.name and d.offset == _offset_of_in(data, victim)
    assert d.records_lost == len(lost) and d.kind == ("stray" if not lost else "damaged")
    assert (log.directory / "quarantine" / d.quarantined).stat().st_size == d.bytes > 0
    assert d.is_error == bool(lost) and (d.acknowledged is None) == bool(lost)
    log.open()
    assert log.append(EVENTS, b"after") == 61
    log.close()
    # The damaged bytes are gone from the segment; the gap is known and not reported again.
    again, recs2 = _read_all(tmp_path, segment_max_bytes=600)
    assert [r[0] for r in recs2] == [*[r[0] for r in recs], 61] and again.damage == []
    assert len(again.quarantine.entries()) == 1


def _offset_of_in(data: bytes, lsn: int) -> int:
    records, _ = eventlog.scan_segment(data)
    return next(r.offset for r in records if r.lsn == lsn)


def test_a_missing_segment_is_reported_as_lost_records_not_a_refusal(tmp_path):
    _fill(tmp_path, 60, segment_max_bytes=600).close()
    segments = eventlog.list_segments(tmp_path)
    (first, gone), (next_first, _) = segments[1], segments[2]
    gone.unlink()
    log, recs = _read_all(tmp_path, segment_max_bytes=600)
    assert [r[0] for r in recs] == [i for i in range(1, 61) if not first <= i < next_first]
    [d] = log.damage
    assert (d.kind, d.first_lost_lsn, d.last_lost_lsn) == ("missing", first, next_first - 1)


def test_a_failed_partial_write_is_cut_back_and_the_log_continues(tmp_path, monkeypatch):
    log = _fill(tmp_path, 5)
    real = os.write

    def full_disk(fd, data):
        real(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageFailure, match="ENOSPC"):
        log.append(EVENTS, b"refused" * 10)
    assert log.failure is not None and log.last_lsn == 5
    monkeypatch.setattr(os, "write", real)
    assert log.append(EVENTS, b"after-space-returned") == 6
    assert log.failure is None
    log.close()
    after, recs = _read_all(tmp_path)
    assert [r[0] for r in recs] == [1, 2, 3, 4, 5, 6] and recs[-1][2] == b"after-space-returned"
    assert after.damage == []


def test_a_failed_fsync_breaks_the_log_until_a_repair_rewrites_the_unsynced_records(tmp_path, monkeypatch):
    log = _fill(tmp_path, 5)
    real = eventlog._datasync
    failing = True

    def sync(fd):
        if failing:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(eventlog, "_datasync", sync)
    lsn = log.write(EVENTS, b"unsure")
    with pytest.raises(StorageFailure, match="EIO"):
        log.sync_to(lsn)
    assert log.synced_lsn == 5 and log.failure is not None
    with pytest.raises(StorageFailure):
        log.write(EVENTS, b"refused")  # broken: nothing more until the repair
    assert log.last_lsn == 6
    failing = False
    monkeypatch.setattr(eventlog, "REPAIR_INTERVAL_S", 0.0)
    log._next_repair = 0.0
    assert log.append(EVENTS, b"after") == 7
    assert log.synced_lsn == 7 and log.failure is None
    log.close()
    again, recs = _read_all(tmp_path)
    assert [(r[0], r[2]) for r in recs][-2:] == [(6, b"unsure"), (7, b"after")]
    assert again.damage == []


def test_writes_without_fsync_are_still_recovered_after_close(tmp_path):
    _fill(tmp_path, 5, fsync=False).close()
    _, recs = _read_all(tmp_path)
    assert len(recs) == 5


def test_concurrent_appends_share_fsyncs_and_all_survive(tmp_path, monkeypatch):
    calls = []
    real = eventlog._datasync

    def slow_sync(fd):
        calls.append(fd)
        time.sleep(0.002)
        real(fd)

    monkeypatch.setattr(eventlog, "_datasync", slow_sync)
    log = EventLog(tmp_path)
    log.open()
    per_thread, n_threads = 40, 8
    lsns: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(per_thread):
            lsn = log.append(EVENTS, f"{k}:{i}".encode())
            assert log.synced_lsn >= lsn  # durable before append returns
            with lock:
                lsns.append(lsn)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    total = per_thread * n_threads
    assert sorted(lsns) == list(range(1, total + 1))
    assert len(calls) < total / 2, f"{len(calls)} fsyncs for {total} appends: no group commit"
    _, recs = _read_all(tmp_path)
    assert sorted(bytes(r[2]).decode() for r in recs) == sorted(
        f"{k}:{i}" for k in range(n_threads) for i in range(per_thread)
    )


def test_rotation_while_other_threads_sync_loses_nothing(tmp_path):
    log = EventLog(tmp_path, segment_max_bytes=2000)
    log.open()

    def worker(k: int) -> None:
        for i in range(100):
            log.append(EVENTS, f"{k}-{i}".encode() * 5)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    _, recs = _read_all(tmp_path, segment_max_bytes=2000)
    assert [r[0] for r in recs] == list(range(1, 401))
    assert len(eventlog.list_segments(tmp_path)) >= 5


def test_event_record_round_trips_exactly():
    rng = np.random.default_rng(3)
    n = 257
    rec = EventRecord.from_columns(
        1.7e9,
        placement=[["p1", "p2"][i % 2] for i in range(n)],
        variant=[["champion", "challenger", "holdout"][i % 3] for i in range(n)],
        segment=[f"KR|{i % 5}" for i in range(n)],
        network=[["alpha", "beta"][i % 2] for i in range(n)],
        event_hash=rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2),
        ts=1.7e9 + rng.random(n),
        floor_cpm=rng.random(n),
        revenue_cpm=rng.random(n),
        filled=rng.random(n) < 0.5,
    )
    back = EventRecord.decode(rec.encode())
    assert back.ingest_time == rec.ingest_time
    for name in ("placements", "variants", "segments", "networks"):
        assert getattr(back, name) == getattr(rec, name)
    for name in (
        "event_hash",
        "ts",
        "floor_cpm",
        "revenue_cpm",
        "segment",
        "placement",
        "variant",
        "network",
        "filled",
    ):
        a, b = getattr(rec, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.placements == ("p1", "p2") and back.placement[:4].tolist() == [0, 1, 0, 1]


def test_request_columns_round_trip_and_a_record_of_only_later_notices_keeps_its_nan_request_column():
    """A record whose rows all join earlier requests (later OpenRTB notices) must still say
    "no request starts here": its request column of NaN is written, not dropped as absent
    (absent means every row is a request of its own); records without them stay as before."""
    cols = dict(placement=["au"] * 2, variant=["champion"] * 2, segment=["KR"] * 2, network=["a", "b"],
                event_hash=np.array([1, 2], np.uint64), ts=[1.0, 2.0], floor_cpm=[1.0, 2.0],
                revenue_cpm=[0.0, 3.5], filled=[False, True])  # fmt: skip
    joined = EventRecord.from_columns(5.0, **cols, request_revenue_cpm=[np.nan] * 2, joined_revenue_cpm=[0.0, 3.5])
    back = EventRecord.decode(joined.encode())
    assert np.isnan(back.request_revenue_cpm).all() and back.joined_revenue_cpm.tolist() == [0.0, 3.5]
    assert events_in(EVENTS, joined.encode()) == 2
    started = EventRecord.decode(EventRecord.from_columns(5.0, **cols, request_revenue_cpm=[3.5, np.nan]).encode())
    assert started.request_revenue_cpm[0] == 3.5 and started.joined_revenue_cpm is None
    plain = EventRecord.decode(EventRecord.from_columns(5.0, **cols).encode())
    assert plain.request_revenue_cpm is None and plain.joined_revenue_cpm is None


def test_event_record_with_no_rows_round_trips():
    rec = EventRecord.from_columns(
        5.0, placement=[], variant=[], segment=[], network=[], event_hash=np.empty(0, np.uint64),
        ts=[], floor_cpm=[], revenue_cpm=[], filled=[],
    )  # fmt: skip
    assert len(EventRecord.decode(rec.encode())) == 0


def test_truncated_event_record_payload_raises():
    rec = EventRecord.from_columns(
        5.0, placement=["p"], variant=["v"], segment=["*"], network=["a"],
        event_hash=np.array([7], np.uint64), ts=[1.0], floor_cpm=[1.0], revenue_cpm=[0.0], filled=[False],
    )  # fmt: skip
    with pytest.raises(InvalidState):
        EventRecord.decode(rec.encode()[:-4])


def test_other_payload_codecs_round_trip():
    assert decode_applied(encode_applied(2**40 + 3)) == 2**40 + 3
    assert decode_json(encode_json({"a": [1, "x"]})) == {"a": [1, "x"]}
    state = {"meta": np.array('{"k": 1}'), "w": np.arange(6.0).reshape(2, 3)}
    header, back = decode_with_state(encode_with_state({"variant": "v", "kind": MODEL}, state))
    assert header == {"variant": "v", "kind": MODEL}
    assert str(back["meta"]) == '{"k": 1}' and np.array_equal(back["w"], state["w"])


def test_write_after_close_raises(tmp_path):
    log = _fill(tmp_path, 1)
    log.close()
    log.close()  # idempotent
    with pytest.raises(RuntimeError):
        log.write(EVENTS, b"x")
    assert os.listdir(tmp_path)
