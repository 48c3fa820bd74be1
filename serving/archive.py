"""What the service keeps for off-policy evaluation and re-training.

- :class:`DecisionMemo`: the propensities of recent decisions by ``decision_id`` (bounded,
  in memory), so an outcome event can be stored with the probabilities with which its
  decision was taken. Decisions older than the memo (or from before a restart) get NaN.
- :class:`OutcomeArchive`: every learned outcome event, with those propensities, as
  Parquet parts under ``state_dir/outcomes``. The event log is compacted after snapshots;
  the archive is the lasting outcome history (``adbandit ope --logs state/outcomes/*.parquet``).
  Parts are named by the log positions they cover and written atomically, so replaying
  the log after a crash never archives an event twice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serving.eventlog import EventRecord

_PART = re.compile(r"outcomes-(\d{12})-(\d{12})\.parquet$")
_UNKNOWN = complex(float("nan"), float("nan"))


class DecisionMemo:
    """decision_id → (propensity, floor_propensity) of the last ``capacity`` decisions or so.

    Two generations of dicts: when the newer one is full it becomes the older one, so
    memory stays bounded and the most recent ``capacity / 2`` to ``capacity`` decisions are
    always remembered. Reads and writes are single dict operations (safe across threads).
    A pair is held as one complex number: an atomic object the garbage collector never
    scans, which keeps a million entries off the decision path's cost.
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        self._half = max(int(capacity) // 2, 1)
        self._new: dict[str, complex] = {}
        self._old: dict[str, complex] = {}

    def add(self, decision_ids: Sequence[str], propensity: Sequence[float], floor_propensity: Sequence[float]) -> None:
        self._insert(zip(decision_ids, map(complex, propensity, floor_propensity), strict=True))

    def _insert(self, pairs) -> None:
        self._new.update(pairs)
        if len(self._new) >= self._half:
            # The newest half-capacity become the older generation (dicts keep insertion order).
            newest = self._new if len(self._new) == self._half else dict(list(self._new.items())[-self._half :])
            self._old, self._new = newest, {}

    def add_arrays(self, decision_ids: Sequence[str], propensity: np.ndarray, floor_propensity: np.ndarray) -> None:
        """:meth:`add` for numpy columns (the pairs are built in one vectorised step)."""
        self._insert(zip(decision_ids, (propensity + 1j * floor_propensity).tolist(), strict=True))

    def get(self, decision_id: str | None) -> tuple[float, float]:
        """(propensity, floor_propensity) of a decision, NaN for an unknown one."""
        pair = self._new.get(decision_id) or self._old.get(decision_id) or _UNKNOWN if decision_id else _UNKNOWN
        return pair.real, pair.imag


class OutcomeArchive:
    """Parquet parts of learned outcome events (one row per event; see module docstring)."""

    def __init__(self, directory: Path, part_events: int = 500_000) -> None:
        self.directory = directory
        self.part_events = int(part_events)
        self._buffer: list[tuple[int, EventRecord]] = []
        self._buffered = 0
        directory.mkdir(parents=True, exist_ok=True)
        ends = [int(m.group(2)) for p in directory.iterdir() if (m := _PART.match(p.name))]
        self.archived_lsn = max(ends, default=0)

    def add(self, lsn: int, record: EventRecord) -> None:
        """Buffer a log record (records already archived are ignored); write a part when full."""
        if lsn <= self.archived_lsn or (self._buffer and lsn <= self._buffer[-1][0]):
            return
        self._buffer.append((lsn, record))
        self._buffered += len(record)
        if self._buffered >= self.part_events:
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered records as one Parquet part (atomic); returns its path."""
        if not self._buffer:
            return None
        import polars as pl

        first, last = self._buffer[0][0], self._buffer[-1][0]
        frame = pl.concat([_frame(rec) for _, rec in self._buffer], how="vertical")
        path = self.directory / f"outcomes-{first:012d}-{last:012d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        frame.write_parquet(tmp)
        os.replace(tmp, path)
        self.archived_lsn = last
        self._buffer.clear()
        self._buffered = 0
        return path


def _frame(rec: EventRecord):  # -> polars.DataFrame
    import polars as pl

    def decoded(table: tuple[str, ...], codes: np.ndarray) -> pl.Series:
        return pl.Series(list(table), dtype=pl.String).gather(codes.astype(np.int64))

    return pl.DataFrame(
        {
            "event_hash": np.asarray(rec.event_hash),
            "ts": pl.Series(rec.ts * 1e6).cast(pl.Int64).cast(pl.Datetime("us", "UTC")),
            "placement": decoded(rec.placements, rec.placement),
            "variant": decoded(rec.variants, rec.variant),
            "segment": decoded(rec.segments, rec.segment),
            "network": decoded(rec.networks, rec.network),
            "floor_cpm": np.asarray(rec.floor_cpm),
            "filled": np.asarray(rec.filled),
            "revenue_cpm": np.asarray(rec.revenue_cpm),
            "propensity": np.asarray(rec.propensity),
            "floor_propensity": np.asarray(rec.floor_propensity),
        }
    )
