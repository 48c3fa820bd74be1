"""Durable, append-only event log: checksummed records in rotating segment files.

Layout: ``<dir>/<first lsn, 20 digits>.log`` segment files, each a sequence of records

    magic "ADBR" | kind u8 | 3 pad | payload length u32 | lsn u64 | crc32 u32 | payload

(little-endian; the crc covers the 20 header bytes before it and the payload). Log
sequence numbers (lsn) count records from 1 without gaps across segments. On
:meth:`EventLog.recover` a record that is cut short, has a bad magic or a bad crc at the
end of the last segment is a torn write from a crash: the segment is truncated there
and the log continues from the last good record. The same damage anywhere else is
corruption and raises :class:`bandit.errors.InvalidState` rather than being misread.

Writers call :meth:`EventLog.write` (ordered, no fsync) then :meth:`EventLog.sync_to`;
concurrent callers share one fsync (group commit): the first waiter syncs everything
written so far and the others find their record already durable.

Accepted outcome events travel as :class:`EventRecord`: one record per ingest batch, in
columns (a small JSON header with the string tables, then raw numpy arrays), so replaying
ten million events is a few thousand ``frombuffer`` calls.
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit.errors import InvalidState

MAGIC = b"ADBR"
HEADER = struct.Struct("<4sB3xIQI")
_CRC_SPAN = HEADER.size - 4
#: Largest payload accepted (a record this long at the tail is treated as torn).
MAX_PAYLOAD = 1 << 30
SEGMENT_SUFFIX = ".log"

#: Record kinds.
EVENTS = 1  #: accepted outcome events (:class:`EventRecord`)
APPLIED = 2  #: the live policies learned every events record up to an lsn, as one group
PLACEMENT = 3  #: a placement was created or replaced, or its experiment changed (JSON)
MODEL = 4  #: a variant's policy was replaced by a given state (JSON header + npz)
KINDS = (EVENTS, APPLIED, PLACEMENT, MODEL)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record read back: its sequence number, kind and payload bytes."""

    lsn: int
    kind: int
    payload: memoryview


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
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def scan_segment(data: bytes | memoryview) -> tuple[list[LogRecord], int, str | None]:
    """Records of one segment's bytes, the offset just after the last good one, and why
    reading stopped early (``None`` when the whole segment is valid)."""
    view = memoryview(data)
    records: list[LogRecord] = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < HEADER.size:
            return records, pos, f"{end - pos} stray bytes at offset {pos}"
        magic, kind, length, lsn, crc = HEADER.unpack_from(view, pos)
        if magic != MAGIC or kind not in KINDS or length > MAX_PAYLOAD:
            return records, pos, f"no record header at offset {pos}"
        stop = pos + HEADER.size + length
        if stop > end:
            return records, pos, f"record {lsn} at offset {pos} is cut short"
        payload = view[pos + HEADER.size : stop]
        if zlib.crc32(payload, zlib.crc32(view[pos : pos + _CRC_SPAN])) != crc:
            return records, pos, f"record {lsn} at offset {pos} fails its crc32"
        records.append(LogRecord(lsn, kind, payload))
        pos = stop
    return records, pos, None


class EventLog:
    """Append-only record log in ``directory`` (see the module docstring).

    Use: :meth:`recover` (iterate it to the end), then :meth:`open`, then
    :meth:`write` / :meth:`sync_to` / :meth:`append` from any thread.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        segment_max_bytes: int = 64 * 2**20,
        fsync: bool = True,
    ) -> None:
        if segment_max_bytes < HEADER.size:
            raise ValueError(f"segment_max_bytes must be >= {HEADER.size}")
        self.directory = Path(directory)
        self.segment_max_bytes = int(segment_max_bytes)
        self.fsync = bool(fsync)
        self._lock = threading.Lock()  # order of writes, rotation
        self._sync = threading.Condition()  # group commit
        self._syncing = False
        self._fd: int | None = None
        self._segment_first = 0
        self._size = 0
        self._next_lsn = 1
        self._written = 0
        self._synced = 0
        self._recovered = False
        self._last_in_files = 0
        #: fsyncs of log records so far (group commit makes this far fewer than appends).
        self.fsyncs = 0
        self.truncated: list[tuple[Path, int, str]] = []

    # ----------------------------------------------------------------- reading
    def recover(self, after_lsn: int = 0) -> Iterator[LogRecord]:
        """Records with lsn > ``after_lsn`` in order; truncates a torn tail.

        ``after_lsn`` is what a snapshot already covers: older records are checked but
        not yielded, and a log that starts after ``after_lsn + 1`` is a gap (InvalidState).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = list_segments(self.directory)
        last_lsn = None
        start = 0
        for i in range(len(segments)):
            if i + 1 < len(segments) and segments[i + 1][0] <= after_lsn + 1:
                start = i + 1
        if segments and segments[start][0] > after_lsn + 1:
            raise InvalidState(
                f"event log {str(self.directory)!r} starts at record {segments[start][0]} but the "
                f"state covers only up to {after_lsn}: records are missing"
            )
        for i in range(start, len(segments)):
            first, path = segments[i]
            records, good, problem = scan_segment(path.read_bytes())
            expected = first if last_lsn is None else last_lsn + 1
            if first != expected:
                raise InvalidState(f"event log segment {path.name} should start at record {expected}")
            for k, rec in enumerate(records):
                if rec.lsn != first + k:
                    raise InvalidState(f"event log {path.name}: record {rec.lsn} out of sequence")
            if problem is not None:
                if i != len(segments) - 1:
                    raise InvalidState(f"event log segment {path.name} is corrupt: {problem}")
                self._truncate(path, good, problem)
            for rec in records:
                if rec.lsn > after_lsn:
                    yield rec
            if records:
                last_lsn = records[-1].lsn
            elif last_lsn is None:
                last_lsn = first - 1
        self._last_in_files = last_lsn or 0
        self._next_lsn = max(after_lsn, self._last_in_files) + 1
        self._written = self._synced = self._next_lsn - 1
        self._recovered = True

    def _truncate(self, path: Path, size: int, problem: str) -> None:
        with open(path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())
        self.truncated.append((path, size, problem))

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
        if segments and self._last_in_files + 1 == self._next_lsn:
            first, path = segments[-1]
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._segment_first = first
            self._size = path.stat().st_size
        else:
            self._new_segment(self._next_lsn)

    def _new_segment(self, first_lsn: int) -> None:
        path = self.directory / segment_name(first_lsn)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment_first = first_lsn
        self._size = 0
        if self.fsync:
            fsync_dir(self.directory)

    def _rotate(self, first_lsn: int) -> None:
        """Close the full segment (made durable first) and start a new one."""
        assert self._fd is not None
        if self.fsync:
            os.fsync(self._fd)
            with self._sync:
                self._synced = max(self._synced, self._written)
        os.close(self._fd)
        self._new_segment(first_lsn)

    def write(self, kind: int, payload: bytes | bytearray | memoryview) -> int:
        """Append one record (not yet fsynced); returns its lsn."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"log record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        with self._lock:
            if self._fd is None:
                raise RuntimeError("event log is not open")
            lsn = self._next_lsn
            data = encode_record(lsn, kind, payload)
            if self._size > 0 and self._size + len(data) > self.segment_max_bytes:
                self._rotate(lsn)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(data)
            self._next_lsn = lsn + 1
            self._written = lsn
        return lsn

    def sync_to(self, lsn: int) -> None:
        """Return once every record up to ``lsn`` is on disk (one fsync serves all waiters)."""
        if not self.fsync:
            return
        with self._sync:
            while self._synced < lsn:
                if not self._syncing:
                    self._syncing = True
                    break
                self._sync.wait()
            else:
                return
        target = 0
        try:
            with self._lock:
                if self._fd is None:
                    raise RuntimeError("event log is not open")
                target = self._written
                fd = os.dup(self._fd)  # a rotation may close the original meanwhile
            try:
                _datasync(fd)
                self.fsyncs += 1
            finally:
                os.close(fd)
        finally:
            with self._sync:
                self._synced = max(self._synced, target)
                self._syncing = False
                self._sync.notify_all()

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
        """Make everything written durable and close the open segment."""
        if self._fd is None:
            return
        self.sync_to(self.last_lsn)
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


# ------------------------------------------------------------------ payloads
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_hash", "<u8"),
    ("ts", "<f8"),
    ("floor_cpm", "<f8"),
    ("revenue_cpm", "<f8"),
    ("propensity", "<f8"),
    ("floor_propensity", "<f8"),
    ("segment", "<u4"),
    ("placement", "<u2"),
    ("variant", "<u2"),
    ("network", "<u2"),
    ("filled", "|b1"),
)
#: Optional columns after the fixed ones, named in the record header when present (records
#: written before a column existed decode with NaN there).
_OPTIONAL_COLUMNS: tuple[tuple[str, str], ...] = (("floor_density", "<f8"),)
_U32 = struct.Struct("<I")


def _or_nan(values: Sequence[float] | None, n: int) -> NDArray[np.float64]:
    return np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64).reshape(n)


def _has_values(col: NDArray[np.float64] | None) -> bool:
    return col is not None and len(col) > 0 and bool(np.isfinite(col).any())


@dataclass(frozen=True)
class EventRecord:
    """Accepted outcome events of one ingest call, as columns of shape [n].

    ``placement``, ``variant``, ``segment`` and ``network`` are codes into the string
    tables of the same names; ``event_hash`` is the 64-bit hash of the event id;
    ``ingest_time`` is when the service accepted them (the de-duplication clock);
    ``propensity``/``floor_propensity`` are those of the decision the event answers (NaN
    when the service does not know the decision), kept for off-policy evaluation.
    """

    ingest_time: float
    placements: tuple[str, ...]
    variants: tuple[str, ...]
    segments: tuple[str, ...]
    networks: tuple[str, ...]
    event_hash: NDArray[np.uint64]
    ts: NDArray[np.float64]
    floor_cpm: NDArray[np.float64]
    revenue_cpm: NDArray[np.float64]
    propensity: NDArray[np.float64]
    floor_propensity: NDArray[np.float64]
    segment: NDArray[np.uint32]
    placement: NDArray[np.uint16]
    variant: NDArray[np.uint16]
    network: NDArray[np.uint16]
    filled: NDArray[np.bool_]
    #: Density of log floor given the network of the decision (continuous floors); NaN if unknown.
    floor_density: NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.event_hash)

    @classmethod
    def from_columns(
        cls,
        ingest_time: float,
        *,
        placement: Sequence[str],
        variant: Sequence[str],
        segment: Sequence[str],
        network: Sequence[str],
        event_hash: NDArray[np.uint64],
        ts: Sequence[float],
        floor_cpm: Sequence[float],
        revenue_cpm: Sequence[float],
        filled: Sequence[bool],
        propensity: Sequence[float] | None = None,
        floor_propensity: Sequence[float] | None = None,
        floor_density: Sequence[float] | None = None,
    ) -> EventRecord:
        """Build from per-event string columns (coded into tables in order of appearance)."""
        tables = []
        codes = []
        for col, dtype in (
            (placement, np.uint16),
            (variant, np.uint16),
            (segment, np.uint32),
            (network, np.uint16),
        ):
            table: dict[str, int] = {}
            code = np.fromiter((table.setdefault(v, len(table)) for v in col), dtype, len(col))
            if len(table) > np.iinfo(dtype).max:
                raise ValueError("too many distinct values in one event record")
            tables.append(tuple(table))
            codes.append(code)
        n = len(event_hash)
        return cls(
            float(ingest_time),
            *tables,
            event_hash=np.asarray(event_hash, dtype=np.uint64),
            ts=np.asarray(ts, dtype=np.float64).reshape(n),
            floor_cpm=np.asarray(floor_cpm, dtype=np.float64).reshape(n),
            revenue_cpm=np.asarray(revenue_cpm, dtype=np.float64).reshape(n),
            propensity=_or_nan(propensity, n),
            floor_propensity=_or_nan(floor_propensity, n),
            segment=codes[2],
            placement=codes[0],
            variant=codes[1],
            network=codes[3],
            filled=np.asarray(filled, dtype=np.bool_).reshape(n),
            floor_density=_or_nan(floor_density, n),
        )

    def encode(self) -> bytes:
        n = len(self)
        optional = [(name, dtype) for name, dtype in _OPTIONAL_COLUMNS if _has_values(getattr(self, name))]
        head = {
            "n": n,
            "ingest_time": self.ingest_time,
            "placements": self.placements,
            "variants": self.variants,
            "segments": self.segments,
            "networks": self.networks,
        }
        if optional:
            head["optional"] = [name for name, _ in optional]
        header = json.dumps(head, separators=(",", ":")).encode()
        pad = b"\0" * (-(len(header) + _U32.size) % 8)
        parts = [_U32.pack(len(header) + len(pad)), header, pad]
        for name, dtype in _COLUMNS:
            col = getattr(self, name)
            if len(col) != n:
                raise ValueError(f"event record column {name} has {len(col)} rows, expected {n}")
            parts.append(np.ascontiguousarray(col, dtype=dtype).tobytes())
        for name, dtype in optional:
            parts.append(np.ascontiguousarray(getattr(self, name), dtype=dtype).tobytes())
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> EventRecord:
        """Inverse of :meth:`encode`; columns are read-only views of ``payload``."""
        view = memoryview(payload)
        try:
            (hlen,) = _U32.unpack_from(view, 0)
            header = json.loads(bytes(view[_U32.size : _U32.size + hlen]).rstrip(b"\0"))
            n = int(header["n"])
            pos = _U32.size + hlen
            cols: dict[str, Any] = {}
            for name, dtype in _COLUMNS:
                arr = np.frombuffer(view, dtype=dtype, count=n, offset=pos)
                pos += arr.nbytes
                cols[name] = arr
            dtypes = dict(_OPTIONAL_COLUMNS)
            for name in header.get("optional", ()):
                arr = np.frombuffer(view, dtype=dtypes[name], count=n, offset=pos)
                pos += arr.nbytes
                cols[name] = arr
        except (ValueError, KeyError, struct.error) as exc:
            raise InvalidState(f"unreadable event record: {exc}") from None
        if pos != len(view):
            raise InvalidState("event record has trailing bytes")
        cols["event_hash"] = cols["event_hash"].view(np.uint64)
        return cls(
            float(header["ingest_time"]),
            tuple(header["placements"]),
            tuple(header["variants"]),
            tuple(header["segments"]),
            tuple(header["networks"]),
            **cols,
        )


def encode_applied(lsn: int) -> bytes:
    return struct.pack("<Q", lsn)


def decode_applied(payload: bytes | memoryview) -> int:
    return struct.unpack("<Q", payload)[0]


def encode_json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def decode_json(payload: bytes | memoryview) -> dict:
    try:
        return json.loads(bytes(payload))
    except ValueError as exc:
        raise InvalidState(f"unreadable log record: {exc}") from None


def encode_with_state(header: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> bytes:
    """A JSON header followed by a policy state as an ``.npz`` (no pickle)."""
    head = encode_json(header)
    buf = io.BytesIO()
    np.savez(buf, **state)
    return b"".join((_U32.pack(len(head)), head, buf.getvalue()))


def decode_with_state(payload: bytes | memoryview) -> tuple[dict, dict[str, np.ndarray]]:
    view = memoryview(payload)
    (hlen,) = _U32.unpack_from(view, 0)
    header = decode_json(view[_U32.size : _U32.size + hlen])
    try:
        with np.load(io.BytesIO(bytes(view[_U32.size + hlen :])), allow_pickle=False) as npz:
            state = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InvalidState(f"unreadable policy state in the log: {exc}") from None
    return header, state
