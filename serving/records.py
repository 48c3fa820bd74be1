"""What the service writes into the event log: record kinds and their payload codecs.

The log (:mod:`serving.eventlog`) frames, checksums and syncs opaque bytes; this module
says what those bytes mean. Kinds:

* ``EVENTS``: accepted outcome events of one ingest call (:class:`EventRecord`), in
  columns (a small JSON header with the string tables, then raw numpy arrays), so
  replaying ten million events is a few thousand ``frombuffer`` calls;
* ``APPLIED``: the live policies learned every events record up to an lsn, as one group;
* ``PLACEMENT``: a placement was created or replaced, or its experiment changed (JSON);
* ``MODEL``: a variant's policy was replaced by a given state (JSON header + npz).
"""

from __future__ import annotations

import io
import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit.errors import InvalidState

#: Record kinds.
EVENTS = 1  #: accepted outcome events (:class:`EventRecord`)
APPLIED = 2  #: the live policies learned every events record up to an lsn, as one group
PLACEMENT = 3  #: a placement was created or replaced, or its experiment changed (JSON)
MODEL = 4  #: a variant's policy was replaced by a given state (JSON header + npz)
KINDS = (EVENTS, APPLIED, PLACEMENT, MODEL)
KIND_NAMES = {EVENTS: "events", APPLIED: "applied", PLACEMENT: "placement", MODEL: "model"}


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
#: ``request_revenue_cpm``: per row, the revenue of the request it starts, NaN on the other
#: rows of a multi-network outcome (absent: every row is one request, its reward).
#: ``joined_revenue_cpm``: per row, the revenue it adds to a request an earlier row started
#: (a later OpenRTB notice of the same plan decision, :mod:`serving.intake`), NaN elsewhere.
_OPTIONAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("floor_density", "<f8"),
    ("request_revenue_cpm", "<f8"),
    ("joined_revenue_cpm", "<f8"),
)
_U32 = struct.Struct("<I")


def _or_nan(values: Sequence[float] | None, n: int) -> NDArray[np.float64]:
    return np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64).reshape(n)


def _written(name: str, col: NDArray[np.float64] | None) -> bool:
    """Whether an optional column goes into the record: the density when some row has one;
    the request columns whenever given (a record of only later notices has a request column
    of NaN only, which says "no request starts here", unlike no column at all)."""
    if col is None or not len(col):
        return False
    return name != "floor_density" or bool(np.isfinite(col).any())


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
    #: Per row, the revenue of the request (decision) the row starts; NaN on the further rows
    #: of a waterfall or auction outcome, so the report counts it once. None: a row per request.
    request_revenue_cpm: NDArray[np.float64] | None = None
    #: Per row, the revenue it adds to the request of an earlier row (a later notice of the same
    #: plan decision: no request of its own); NaN on the other rows. None: no such row.
    joined_revenue_cpm: NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.event_hash)

    def request_revenues(self) -> NDArray[np.float64]:
        """Per row, the revenue of the request it starts (:attr:`request_revenue_cpm`; without
        it every row is a request, earning its revenue when filled)."""
        if self.request_revenue_cpm is None:
            return np.where(self.filled, self.revenue_cpm, 0.0)
        return np.asarray(self.request_revenue_cpm)

    def joined_revenues(self) -> NDArray[np.float64]:
        """Per row, what it adds to an earlier row's request (:attr:`joined_revenue_cpm`; NaN
        without it)."""
        return np.full(len(self), np.nan) if self.joined_revenue_cpm is None else np.asarray(self.joined_revenue_cpm)

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
        request_revenue_cpm: Sequence[float] | None = None,
        joined_revenue_cpm: Sequence[float] | None = None,
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
            request_revenue_cpm=None if request_revenue_cpm is None else _or_nan(request_revenue_cpm, n),
            joined_revenue_cpm=None if joined_revenue_cpm is None else _or_nan(joined_revenue_cpm, n),
        )

    def encode(self) -> bytes:
        n = len(self)
        optional = [(name, dtype) for name, dtype in _OPTIONAL_COLUMNS if _written(name, getattr(self, name))]
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


_ROW_BYTES = sum(np.dtype(dtype).itemsize for _, dtype in _COLUMNS)


def events_in(kind: int, payload: bytes | memoryview) -> int | None:
    """How many outcome events a (possibly damaged) record of ``kind`` held, or ``None``
    when that cannot be told. 0 for kinds that hold none. For ``EVENTS`` the count its
    JSON header states, else the count its size implies (header length + ``n`` rows of
    fixed width). ``kind`` 0 (the record's own header is unreadable): an events record
    only if both ways agree."""
    if kind not in (EVENTS, 0):
        return 0 if kind in KINDS else None
    view = memoryview(payload)
    if len(view) < _U32.size:
        return None
    (hlen,) = _U32.unpack_from(view, 0)
    rest = len(view) - _U32.size - hlen
    # Fixed columns, or fixed plus some of the optional ones.
    sizes = [np.dtype(dtype).itemsize for _, dtype in _OPTIONAL_COLUMNS]
    widths = sorted({_ROW_BYTES + sum(c) for k in range(len(sizes) + 1) for c in itertools.combinations(sizes, k)})
    by_size = next((rest // w for w in widths if rest >= 0 and rest % w == 0), None)
    try:
        n = json.loads(bytes(view[_U32.size : _U32.size + hlen]).rstrip(b"\0"))["n"]
        by_header = n if isinstance(n, int) and n >= 0 else None
    except (ValueError, KeyError, TypeError):
        by_header = None
    if kind == 0:
        return by_header if by_header is not None and by_header == by_size else None
    return by_header if by_header is not None else by_size
