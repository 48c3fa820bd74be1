"""Durable, append-only record log: checksummed frames of opaque bytes in rotating segments.

Layout: ``<dir>/<first lsn, 20 digits>.log`` segment files, each a sequence of records

    magic "ADBR" | kind u8 | 3 pad | payload length u32 | lsn u64 | crc32 u32 | payload

(little-endian; the crc covers the 20 header bytes before it and the payload). Log
sequence numbers (lsn) count records from 1, one more per record, across segments. The
log knows nothing of payloads: ``kind`` is a byte its user gives meaning to
(:mod:`serving.records`).

Recovery (:meth:`EventLog.recover`) never drops a valid record:

* bytes that hold no valid record are skipped by *resynchronising* on the next offset
  where a magic marker starts a header whose length fits and whose crc verifies;
* what those bytes cost is read off the lsns on both sides (a gap of k numbers is k
  records lost) and reported as a :class:`~serving.quarantine.Damage` — kind
  ``damaged`` (records lost), ``stray`` (nothing lost: an unacknowledged partial write)
  or ``missing`` (a gap with no bytes left) — after the bytes are moved to the
  quarantine and cut out of the segment;
* only an incomplete last record of the last segment (a *torn tail*: fewer bytes than a
  header, a header whose record runs past the end, or zeros) is simply cut, logged with
  its byte count.

Writers call :meth:`EventLog.write` (ordered, no fsync) then :meth:`EventLog.sync_to`;
concurrent callers share one fsync (group commit). A failed write is cut back to the
last whole record; a failed fsync leaves the records since the last good one of unknown
durability, so the log is *broken*: every write and sync raises
:class:`~bandit.errors.StorageFailure` until a repair (at most every
``REPAIR_INTERVAL_S``) has cut the segment back to its durable part and re-written those
records, from memory, into a fresh segment and synced it. Nothing after a failure ever
sits behind a torn record.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from bandit.errors import InvalidState, StorageFailure
from serving import faults
from serving.quarantine import Damage, Quarantine

MAGIC = b"ADBR"
HEADER = struct.Struct("<4sB3xIQI")
_CRC_SPAN = HEADER.size - 4
#: Largest payload accepted.
MAX_PAYLOAD = 1 << 30
SEGMENT_SUFFIX = ".log"
#: While the log is broken, the shortest time between two repair attempts.
REPAIR_INTERVAL_S = 0.5
#: ``count(kind, payload)``: how many items (e.g. outcome events) a possibly damaged
#: record held, or None when it cannot tell. Lets damage reports count what was lost.
Counter = Callable[[int, memoryview], "int | None"]

log = logging.getLogger(__name__)

#: Names kept importable from here; they live in :mod:`serving.records` now.
_MOVED = frozenset(
    {
        "EVENTS", "APPLIED", "PLACEMENT", "MODEL", "KINDS", "EventRecord", "encode_applied",
        "decode_applied", "encode_json", "decode_json", "encode_with_state", "decode_with_state",
    }
)  # fmt: skip


def __getattr__(name: str) -> object:
    if name in _MOVED:
        from serving import records

        return getattr(records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record read back: its sequence number, kind, payload and place in its segment."""

    lsn: int
    kind: int
    payload: memoryview
    offset: int = 0

    @property
    def end(self) -> int:
        return self.offset + HEADER.size + len(self.payload)


@dataclass(frozen=True, slots=True)
class Region:
    """Bytes ``[offset, offset + length)`` of a segment that hold no valid record."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def encode_record(lsn: int, kind: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Header + payload of one record."""
    head = HEADER.pack(MAGIC, kind, len(payload), lsn, 0)[:_CRC_SPAN]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, struct.pack("<I", crc), payload))


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segment files as (first lsn, path), oldest first."""
    out = []
    for p in directory.glob(f"*{SEGMENT_SUFFIX}"):
        stem = p.name[: -len(SEGMENT_SUFFIX)]
        if stem.isdigit():
            out.append((int(stem), p))
    return sorted(out)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _datasync(fd: int) -> None:
    faults.check("fsync")
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    if faults.enabled():
        if (code := faults.injected("write-partial")) is not None:
            os.write(fd, view[: len(view) // 2])
            raise OSError(code, f"{os.strerror(code)} (injected)")
        faults.check("write")
    while view:
        view = view[os.write(fd, view) :]


def storage_failure(exc: OSError, doing: str) -> StorageFailure:
    """The error a request gets when the disk fails under it."""
    name = errno.errorcode.get(exc.errno or 0, "error")
    return StorageFailure(
        f"storage failure ({name}: {exc.strerror or exc}) while {doing}; nothing of this request "
        f"was stored, retry later"
    )


# ------------------------------------------------------------------------ scanning
def record_at(view: memoryview, pos: int) -> LogRecord | None:
    """The valid record starting at ``pos`` (header fits, crc verifies), else ``None``."""
    end = len(view)
    if end - pos < HEADER.size:
        return None
    magic, kind, length, lsn, crc = HEADER.unpack_from(view, pos)
    if magic != MAGIC or kind == 0 or length > MAX_PAYLOAD or pos + HEADER.size + length > end:
        return None
    payload = view[pos + HEADER.size : pos + HEADER.size + length]
    if zlib.crc32(payload, zlib.crc32(view[pos : pos + _CRC_SPAN])) != crc:
        return None
    return LogRecord(lsn, kind, payload, pos)


def _header_at(view: memoryview, pos: int) -> tuple[int, int, int] | None:
    """(lsn, kind, payload length) of a header at ``pos`` whose magic is intact (crc unchecked)."""
    if len(view) - pos < HEADER.size:
        return None
    magic, kind, length, lsn, _ = HEADER.unpack_from(view, pos)
    return (lsn, kind, length) if magic == MAGIC and kind else None


def resync(data: bytes, view: memoryview, start: int) -> int:
    """Offset of the next valid record at or after ``start`` (``len(data)`` if none)."""
    pos = start
    while (pos := data.find(MAGIC, pos)) >= 0:
        if record_at(view, pos) is not None:
            return pos
        pos += 1
    return len(data)


def scan_segment(data: bytes) -> tuple[list[LogRecord], list[Region]]:
    """Valid records of one segment's bytes, and the regions between them that hold none."""
    view = memoryview(data)
    records: list[LogRecord] = []
    regions: list[Region] = []
    pos, end = 0, len(data)
    while pos < end:
        rec = record_at(view, pos)
        if rec is not None:
            records.append(rec)
            pos = rec.end
            continue
        nxt = resync(data, view, pos + 1)
        regions.append(Region(pos, nxt - pos))
        pos = nxt
    return records, regions


def is_torn(view: memoryview, region: Region) -> bool:
    """Whether the last bytes of a log look like an interrupted append: fewer bytes than a
    header, a header whose record runs past the end, or zeros (a file extended before its
    data reached the disk). A complete record with a bad crc is damage, not a torn tail."""
    if region.length < HEADER.size:
        return True
    head = _header_at(view, region.offset)
    if head is not None and head[2] <= MAX_PAYLOAD and region.offset + HEADER.size + head[2] > region.end:
        return True
    return not any(view[region.offset : region.end])


@dataclass
class SegmentScan:
    """One segment as recovery reads it: its valid records in lsn order, the byte regions
    to cut out, the damage found (with what it cost) and the lsn expected next."""

    first: int
    path: Path
    data: bytes
    records: list[LogRecord]
    cuts: list[Region]
    damage: list[Damage] = field(default_factory=list)
    next_lsn: int = 0


def walk(
    directory: Path,
    *,
    start_lsn: int = 1,
    covered_lsn: int = 0,
    known_lost: Iterable[tuple[int, int]] = (),
    count: Counter | None = None,
    kind_names: Mapping[int, str] | None = None,
    now: float | None = None,
) -> Iterator[SegmentScan]:
    """Scan the segments from the one holding ``start_lsn`` on, classifying damage.

    ``covered_lsn``: what the loaded snapshot covers (events of records up to it are not
    lost when their record is); ``known_lost``: lsn ranges already reported (gaps there
    are expected); ``count``: see :data:`Counter`; ``kind_names`` name record kinds in
    reports. Reads one segment at a time.
    """
    segments = list_segments(directory)
    start = 0
    for i, (first, _) in enumerate(segments):
        if first <= start_lsn:
            start = i
    segments = segments[start:]
    known = sorted(known_lost)
    now = time.time() if now is None else now
    expected: int | None = None
    for i, (first, path) in enumerate(segments):
        last = i == len(segments) - 1
        data = path.read_bytes()
        view = memoryview(data)
        records, regions = scan_segment(data)
        if expected is None:
            expected = first
        scan = SegmentScan(first, path, data, [], [])

        def report(
            region: Region | None,
            lost_first: int,
            lost_last: int | None,
            at: int,
            scan: SegmentScan = scan,
            view: memoryview = view,
        ) -> None:
            d = _classify(
                scan.path.name, view, region, lost_first, lost_last, at, covered_lsn, known, count, kind_names, now
            )
            if d is not None:
                scan.damage.append(d)
            if region is not None:
                scan.cuts.append(region)

        pending: Region | None = None
        items = sorted([(r.offset, r) for r in records] + [(g.offset, g) for g in regions], key=lambda t: t[0])
        for _, item in items:
            if isinstance(item, LogRecord) and item.lsn >= expected:
                if pending is not None or item.lsn > expected:
                    report(pending, expected, item.lsn - 1, item.offset)
                    pending = None
                scan.records.append(item)
                expected = item.lsn + 1
                continue
            # bytes without a valid record, or a stale copy of a record already read
            length = item.length if isinstance(item, Region) else item.end - item.offset
            start = item.offset if pending is None else pending.offset
            pending = Region(start, item.offset + length - start)
        if pending is not None:
            if not last:
                next_first = segments[i + 1][0]
                report(pending, expected, next_first - 1, pending.offset)
                expected = max(expected, next_first)
            elif is_torn(view, pending):
                scan.damage.append(
                    Damage(
                        f"{path.name}@{pending.offset}-lsn{expected}", "torn", path.name, pending.offset,
                        pending.length, None, None, 0, 0, covered_lsn,
                        "incomplete last record of the log (a crash mid-append)", detected=now,
                    )
                )  # fmt: skip
                scan.cuts.append(pending)
            else:
                head = _header_at(view, pending.offset)
                whole = (
                    head is not None and head[0] == expected and pending.offset + HEADER.size + head[2] == pending.end
                )
                report(pending, expected, expected if whole else None, pending.offset)
                if whole:
                    expected += 1
        scan.next_lsn = expected
        yield scan


def _classify(
    name: str,
    view: memoryview,
    region: Region | None,
    lost_first: int,
    lost_last: int | None,
    at: int,
    covered_lsn: int,
    known: list[tuple[int, int]],
    count: Counter | None,
    kind_names: Mapping[int, str] | None,
    now: float,
) -> Damage | None:
    """What a damaged region (or a gap without bytes) cost, as a ledger entry."""
    n_lost = None if lost_last is None else max(lost_last - lost_first + 1, 0)
    if region is None:
        if n_lost == 0 or any(a <= lost_first and lost_last <= b for a, b in known):  # type: ignore[operator]
            return None
        kind, offset, size = "missing", at, 0
        ident = f"{name}@{at}-lsn{lost_first}-{lost_last}-missing"
    else:
        kind, offset, size = ("stray" if n_lost == 0 else "damaged"), region.offset, region.length
        ident = f"{name}@{region.offset}-lsn{lost_first}"  # the lsn keeps ids unique after cuts
    details = []
    if n_lost == 0:
        events: int | None = 0
        details.append("no record lost (an unacknowledged partial write)")
    else:
        uncovered_first = max(lost_first, covered_lsn + 1)
        if lost_last is not None and uncovered_first > lost_last:
            events = 0
        else:
            events = None if region is None else _count_lost(view, region, lost_first, lost_last, covered_lsn, count)
        if lost_first <= covered_lsn:
            details.append(f"records up to lsn {covered_lsn} were learned before the snapshot that covers them")
        kinds = _kinds_in(view, region, lost_first, lost_last) if region is not None else None
        if kinds:
            names = kind_names or {}
            details.append("lost record kinds: " + ", ".join(names.get(k, f"kind {k}") for k in kinds))
    return Damage(
        ident, kind, name, offset, size,
        None if n_lost == 0 else lost_first, None if n_lost in (0, None) else lost_last,
        n_lost, events, covered_lsn, "; ".join(details) or "cannot tell what the bytes held", detected=now,
    )  # fmt: skip


def _chain(
    view: memoryview, region: Region, lost_first: int, lost_last: int | None
) -> list[tuple[int, int, int]] | None:
    """The damaged records' headers (lsn, kind, offset), if they still chain exactly
    through the region with the lost lsns in order; else None."""
    out = []
    pos, lsn = region.offset, lost_first
    while pos < region.end:
        head = _header_at(view, pos)
        if head is None or head[0] != lsn or pos + HEADER.size + head[2] > region.end:
            return None
        out.append((lsn, head[1], pos))
        pos += HEADER.size + head[2]
        lsn += 1
    if lost_last is not None and lsn - 1 != lost_last:
        return None
    return out


def _kinds_in(view: memoryview, region: Region, lost_first: int, lost_last: int | None) -> list[int] | None:
    chain = _chain(view, region, lost_first, lost_last)
    return None if chain is None else sorted({k for _, k, _ in chain})


def _count_lost(
    view: memoryview, region: Region, lost_first: int, lost_last: int | None, covered_lsn: int, count: Counter | None
) -> int | None:
    if count is None:
        return None
    chain = _chain(view, region, lost_first, lost_last)
    if chain is None:
        if lost_last != lost_first or region.length < HEADER.size:
            return None
        # Exactly one record was here, its header unreadable: the region is that record.
        head = _header_at(view, region.offset)
        return count(0 if head is None else head[1], view[region.offset + HEADER.size : region.end])
    total = 0
    for lsn, kind, pos in chain:
        if lsn <= covered_lsn:
            continue
        length = HEADER.unpack_from(view, pos)[2]
        n = count(kind, view[pos + HEADER.size : pos + HEADER.size + length])
        if n is None:
            return None
        total += n
    return total


# ------------------------------------------------------------------------- the log
class EventLog:
    """Append-only record log in ``directory`` (see the module docstring).

    Use: :meth:`recover` (iterate it to the end), then :meth:`open`, then
    :meth:`write` / :meth:`sync_to` / :meth:`append` from any thread. Damaged bytes go to
    ``quarantine`` (default ``<directory>/quarantine``); ``count`` lets damage reports
    say how many items the lost records held.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        segment_max_bytes: int = 64 * 2**20,
        fsync: bool = True,
        quarantine: Quarantine | None = None,
        count: Counter | None = None,
        kind_names: Mapping[int, str] | None = None,
    ) -> None:
        if segment_max_bytes < HEADER.size:
            raise ValueError(f"segment_max_bytes must be >= {HEADER.size}")
        self.directory = Path(directory)
        self.segment_max_bytes = int(segment_max_bytes)
        self.fsync = bool(fsync)
        self.quarantine = quarantine or Quarantine(self.directory / "quarantine", fsync=fsync)
        self.count = count
        self.kind_names = kind_names
        self._lock = threading.Lock()  # order of writes, rotation, repair
        self._sync = threading.Condition()  # group commit
        self._syncing = False
        self._fd: int | None = None
        self._open = False
        self._generation = 0  # bumped whenever the open segment changes
        self._segment_first = 0
        self._size = 0  # end of the last whole record in the open segment
        self._synced_size = 0  # bytes of the open segment known to be durable
        self._unsynced: collections.deque[tuple[int, bytes]] = collections.deque()
        self._next_lsn = 1
        self._written = 0
        self._synced = 0
        self._recovered = False
        self._last_in_files = 0
        self._failure: OSError | None = None
        self._broken = False
        self._next_repair = 0.0
        #: fsyncs of log records so far (group commit makes this far fewer than appends).
        self.fsyncs = 0
        #: failed writes and fsyncs so far.
        self.storage_errors = 0
        #: torn tails cut by the last recovery: (segment, new size, description).
        self.truncated: list[tuple[Path, int, str]] = []
        #: damage found by the last recovery (torn tails included).
        self.damage: list[Damage] = []

    # ----------------------------------------------------------------- reading
    def recover(self, after_lsn: int = 0) -> Iterator[LogRecord]:
        """Records with lsn > ``after_lsn`` in order, after cutting out what is damaged.

        ``after_lsn`` is what a snapshot already covers: older records of its segment are
        checked but not yielded. A log that starts after ``after_lsn + 1`` is a gap the
        snapshot cannot bridge (InvalidState: the store refuses to start).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink()
        segments = list_segments(self.directory)
        covering = [first for first, _ in segments if first <= after_lsn + 1]
        if segments and not covering:
            raise InvalidState(
                f"event log {str(self.directory)!r} starts at record {segments[0][0]} but the snapshot "
                f"covers only up to {after_lsn}: records are missing (restore the snapshot or segments "
                f"that cover them, or move the snapshots away to start from the log alone)"
            )
        self.truncated, self.damage = [], []
        last = after_lsn
        scans = walk(
            self.directory,
            start_lsn=after_lsn + 1,
            covered_lsn=after_lsn,
            known_lost=self.quarantine.lost_ranges(),
            count=self.count,
            kind_names=self.kind_names,
        )
        for scan in scans:
            self._settle(scan)
            for rec in scan.records:
                if rec.lsn > after_lsn:
                    yield rec
            last = max(last, scan.next_lsn - 1)
        self._last_in_files = last
        self._next_lsn = max(after_lsn, last) + 1
        self._written = self._synced = self._next_lsn - 1
        self._recovered = True

    def _settle(self, scan: SegmentScan) -> None:
        """Quarantine and report the damage of one segment, then cut it out of the file."""
        view = memoryview(scan.data)
        for d in scan.damage:
            stored = d
            if d.bytes:
                name = f"{d.id}.bad"
                self.quarantine.keep(name, view[d.offset : d.offset + d.bytes])
                stored = Damage.from_dict({**d.to_dict(), "quarantined": name})
            stored = self.quarantine.record(stored)
            self.damage.append(stored)
            if d.kind == "torn":
                log.warning("event log: cut a torn tail of %d bytes at %s offset %d", d.bytes, scan.path.name, d.offset)
                self.truncated.append((scan.path, d.offset, d.message()))
            elif d.is_error:
                log.error("event log damage: %s", d.message())
            else:
                log.warning("event log: %s", d.message())
        if not scan.cuts:
            return
        cuts = sorted(scan.cuts, key=lambda r: r.offset)
        if len(cuts) == 1 and cuts[0].end == len(scan.data):
            with open(scan.path, "r+b") as fh:
                fh.truncate(cuts[0].offset)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            return
        keep, pos = [], 0
        for cut in cuts:
            keep.append(view[pos : cut.offset])
            pos = cut.end
        keep.append(view[pos:])
        tmp = scan.path.with_name(scan.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            for part in keep:
                fh.write(part)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, scan.path)
        if self.fsync:
            fsync_dir(self.directory)

    # ----------------------------------------------------------------- writing
    def open(self) -> None:
        """Open the newest segment for appending (after :meth:`recover` ran to the end)."""
        if not self._recovered:
            for _ in self.recover(self._next_lsn - 1):
                pass
        segments = list_segments(self.directory)
        if segments and segments[-1][1].stat().st_size == 0 and segments[-1][0] != self._next_lsn:
            segments.pop()[1].unlink()
        # Keep appending to the newest segment only if it ends right before the next
        # record (a snapshot may cover more than the files hold, e.g. after a torn tail).
        if segments and self._last_in_files + 1 == self._next_lsn and segments[-1][0] <= self._next_lsn:
            first, path = segments[-1]
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._segment_first = first
            self._size = self._synced_size = path.stat().st_size
        else:
            self._new_segment(self._next_lsn)
        self._open = True

    def _new_segment(self, first_lsn: int) -> None:
        path = self.directory / segment_name(first_lsn)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment_first = first_lsn
        self._size = self._synced_size = 0
        self._generation += 1
        if self.fsync:
            fsync_dir(self.directory)

    def _rotate(self, first_lsn: int) -> None:
        """Close the full segment (made durable first) and start a new one."""
        assert self._fd is not None
        try:
            if self.fsync:
                _datasync(self._fd)
                self._mark_synced(self._written)
            os.close(self._fd)
            self._fd = None
            self._new_segment(first_lsn)
        except OSError:
            self._broken = True
            raise

    def _mark_synced(self, lsn: int, size: int | None = None, generation: int | None = None) -> None:
        """Records up to ``lsn`` are durable (and ``size`` bytes of segment ``generation``)."""
        with self._sync:
            self._synced = max(self._synced, lsn)
        while self._unsynced and self._unsynced[0][0] <= lsn:
            self._unsynced.popleft()
        if size is None:
            self._synced_size = self._size
        elif generation == self._generation:
            self._synced_size = max(self._synced_size, size)

    def write(self, kind: int, payload: bytes | bytearray | memoryview) -> int:
        """Append one record (not yet fsynced); returns its lsn.

        Raises :class:`StorageFailure` when the disk refuses it (nothing of it stays)."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"log record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        with self._lock:
            if not self._open:
                raise RuntimeError("event log is not open")
            if self._broken:
                self._repair_locked()
            lsn = self._next_lsn
            data = encode_record(lsn, kind, payload)
            try:
                if self._size > 0 and self._size + len(data) > self.segment_max_bytes:
                    self._rotate(lsn)
                assert self._fd is not None
                _write_all(self._fd, data)
            except OSError as exc:
                self._write_failed(exc)
                raise storage_failure(exc, "writing the event log") from None
            self._size += len(data)
            self._next_lsn = lsn + 1
            self._written = lsn
            if self.fsync:
                self._unsynced.append((lsn, data))
            else:
                self._mark_synced(lsn)
                self._failure = None
        return lsn

    def _write_failed(self, exc: OSError) -> None:
        """Cut a partly written record back to the last whole one (else: broken)."""
        self.storage_errors += 1
        self._failure = exc
        if self._broken or self._fd is None:
            self._broken = True
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._broken = True

    def sync_to(self, lsn: int) -> None:
        """Return once every record up to ``lsn`` is on disk (one fsync serves all waiters).

        Raises :class:`StorageFailure` if the disk fails (the records' durability is then
        unknown until a repair re-writes them)."""
        if not self.fsync:
            return
        while True:
            with self._sync:
                while self._synced < lsn and self._syncing:
                    self._sync.wait()
                if self._synced >= lsn:
                    return
                self._syncing = True
            try:
                self._sync_round()
            finally:
                with self._sync:
                    self._syncing = False
                    self._sync.notify_all()

    def _sync_round(self) -> None:
        with self._lock:
            if not self._open:
                raise RuntimeError("event log is not open")
            if self._broken or self._fd is None:
                self._repair_locked()
                return
            target, size, generation = self._written, self._size, self._generation
            fd = os.dup(self._fd)  # a rotation may close the original meanwhile
        try:
            try:
                _datasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with self._lock:
                self.storage_errors += 1
                self._failure = exc
                self._broken = True  # what the failed fsync covered may not be on disk
            raise storage_failure(exc, "syncing the event log") from None
        self.fsyncs += 1
        with self._lock:
            self._mark_synced(target, size, generation)
            if not self._broken:
                self._failure = None

    def _repair_locked(self) -> None:
        """Cut the open segment back to its durable bytes and re-write the records written
        since, from memory, into a fresh segment; sync it. Raises StorageFailure if the disk
        still fails (then tried again at most every ``REPAIR_INTERVAL_S``)."""
        now = time.monotonic()
        if now < self._next_repair and self._failure is not None:
            raise storage_failure(self._failure, "writing the event log")
        self._next_repair = now + REPAIR_INTERVAL_S
        try:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    os.close(fd)
                except OSError:
                    pass
            current = self.directory / segment_name(self._segment_first)
            if current.exists():
                fd = os.open(current, os.O_WRONLY)
                try:
                    os.ftruncate(fd, self._synced_size)
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            first = self._synced + 1 if self.fsync else self._next_lsn
            data = b"".join(d for _, d in self._unsynced)
            path = self.directory / segment_name(first)
            if path != current or self._synced_size == 0:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
                size = 0
            else:  # nothing to re-write: keep appending to the durable part
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                size = self._synced_size
            try:
                _write_all(fd, data)
                if self.fsync:
                    _datasync(fd)
                    fsync_dir(self.directory)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            self.storage_errors += 1
            self._failure = exc
            self._broken = True
            raise storage_failure(exc, "repairing the event log") from None
        rewritten = len(self._unsynced)
        self._fd = fd
        self._generation += 1
        self._segment_first = first if size == 0 else self._segment_first
        self._size = self._synced_size = size + len(data)
        self._mark_synced(self._written)
        self._broken = False
        self._failure = None
        log.warning("event log writable again: %d unsynced records re-written to %s", rewritten, path.name)

    def check_writable(self) -> None:
        """Raise StorageFailure while the log is broken (after one repair attempt)."""
        if self._broken:
            with self._lock:
                if self._broken and self._open:
                    self._repair_locked()

    def probe(self) -> bool:
        """While writes fail: whether the disk takes writes again (repairing the log if it
        is broken). True when the log is healthy."""
        if self._failure is None and not self._broken:
            return True
        with self._lock:
            try:
                if self._broken:
                    if self._open:
                        self._repair_locked()
                    return not self._broken
                probe = self.directory / ".probe.tmp"
                try:
                    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    try:
                        _write_all(fd, b"\0" * 65536)
                        if self.fsync:
                            _datasync(fd)
                    finally:
                        os.close(fd)
                finally:
                    probe.unlink(missing_ok=True)
            except (OSError, StorageFailure):
                return False
            self._failure = None
            return True

    @property
    def failure(self) -> str | None:
        """Why writes fail right now (``None`` when they do not)."""
        exc = self._failure
        if exc is None:
            return None
        return f"{errno.errorcode.get(exc.errno or 0, 'error')}: {exc.strerror or exc}"

    def append(self, kind: int, payload: bytes | bytearray | memoryview) -> int:
        """Write one record and make it durable; returns its lsn."""
        lsn = self.write(kind, payload)
        self.sync_to(lsn)
        return lsn

    @property
    def last_lsn(self) -> int:
        """Sequence number of the newest record written (0 for an empty log)."""
        return self._next_lsn - 1

    @property
    def synced_lsn(self) -> int:
        return self._synced if self.fsync else self._written

    def segments(self) -> list[tuple[int, Path]]:
        return list_segments(self.directory)

    def compact(self, covered_lsn: int) -> list[Path]:
        """Delete segments whose records all have lsn <= ``covered_lsn`` (never the open one)."""
        with self._lock:
            segments = list_segments(self.directory)
            removed = []
            for (first, path), (next_first, _) in pairwise(segments):
                if next_first - 1 <= covered_lsn and first != self._segment_first:
                    path.unlink()
                    removed.append(path)
            if removed and self.fsync:
                fsync_dir(self.directory)
        return removed

    def close(self) -> None:
        """Make everything written durable and close the open segment (a disk that still
        fails loses only records never acknowledged; that is logged)."""
        if not self._open:
            return
        try:
            self._next_repair = 0.0
            self.sync_to(self.last_lsn)
        except StorageFailure as exc:
            log.error("event log closed with records not on disk: %s", exc)
        finally:
            with self._lock:
                self._open = False
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
