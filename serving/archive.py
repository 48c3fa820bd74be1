"""The outcome archive: what the service keeps for off-policy evaluation and re-training.

Every learned outcome event, with the propensities of the decision it answers and, for
continuous floors, the density of its log floor (carried in its signed ``decision_id``,
see :mod:`serving.decision_ids`; NaN for events without a verified one), as Parquet parts
under ``state_dir/outcomes``. The event log is compacted after snapshots; the archive is
the lasting outcome history
(``adbandit ope --logs state/outcomes/*.parquet``). Parts are named by the log positions
they cover and written atomically, so replaying the log after a crash never archives an
event twice.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from serving.records import EventRecord

log = logging.getLogger(__name__)
_PART = re.compile(r"outcomes-(\d{12})-(\d{12})\.parquet$")


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
            try:
                self.flush()
            except OSError as exc:  # a full disk: keep buffering; the snapshot retries (and waits)
                log.error("outcome archive part not written (kept in memory): %s", exc)

    def flush(self) -> Path | None:
        """Write the buffered records as one Parquet part (atomic); returns its path."""
        if not self._buffer:
            return None
        import polars as pl

        first, last = self._buffer[0][0], self._buffer[-1][0]
        frame = pl.concat([_frame(rec) for _, rec in self._buffer], how="vertical")
        path = self.directory / f"outcomes-{first:012d}-{last:012d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        try:
            frame.write_parquet(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
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
            "floor_density": np.full(len(rec), np.nan) if rec.floor_density is None else np.asarray(rec.floor_density),
        }
    )
