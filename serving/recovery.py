"""Recovery of a state dir: pick the newest sound snapshot, replay the log after it.

* :func:`clean_temporary_files` removes ``*.tmp`` files a crash or a full disk left behind
  (half-written snapshots, archive parts, segment rewrites).
* :func:`load_snapshot` returns the newest snapshot that reads back cleanly; newer ones
  that do not (damaged, empty, half written) are moved to the quarantine and reported
  (their content is in the log: the older snapshot plus the log replay rebuild it).
* :func:`replay` reads the log after the snapshot (the log cuts out damage and reports
  it, see :mod:`serving.eventlog`) and re-applies it in exactly the groups the live store
  applied, as the ``APPLIED`` markers recorded; events after the last marker are handed
  back (:class:`Replayed`) to be learned and marked in bounded groups.

Every intact events record after the snapshot is learned exactly once: records up to
the snapshot's lsn are in the snapshot (it is written only after every record it covers
was applied and synced), later ones are applied at their marker, at a placement or model
change (which applies everything pending first, as live), or after the replay. A lost
``APPLIED`` marker only merges two groups; a lost events record is reported with its
event count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bandit.errors import InvalidState
from serving import snapshots
from serving.eventlog import EventLog
from serving.quarantine import Damage, Quarantine
from serving.records import (
    APPLIED,
    EVENTS,
    MODEL,
    PLACEMENT,
    EventRecord,
    decode_applied,
    decode_json,
    decode_with_state,
)

log = logging.getLogger(__name__)

#: Sub-directories of a state dir whose ``*.tmp`` files are debris after a crash.
TEMP_DIRS = ("", "log", "snapshots", "outcomes", "quarantine")

Group = list[tuple[int, EventRecord]]


def clean_temporary_files(state_dir: Path) -> list[Path]:
    """Delete stray ``*.tmp`` files of the state dir; returns them."""
    removed = []
    for sub in TEMP_DIRS:
        directory = state_dir / sub
        if directory.is_dir():
            for tmp in directory.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    if removed:
        log.warning("removed %d stray temporary files: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def load_snapshot(directory: Path, quarantine: Quarantine | None = None) -> snapshots.Snapshot | None:
    """The newest snapshot that reads back cleanly. Unreadable newer ones are moved to
    ``quarantine`` (when given) and reported, so a later snapshot never prunes the sound
    one they would otherwise shadow."""
    for covered, path in reversed(snapshots.list_snapshots(directory)):
        try:
            return snapshots.read_snapshot(path)
        except (InvalidState, KeyError, OSError, ValueError) as exc:
            size = path.stat().st_size if path.exists() else 0
            damage = Damage(
                f"{path.name}@0", "snapshot", path.name, 0, size, None, None, 0, 0, covered,
                f"unreadable snapshot ({exc}); recovery falls back to an older one and the log",
            )  # fmt: skip
            log.error("snapshot damage: %s", damage.message())
            if quarantine is not None:
                name = quarantine.move(path, f"{path.name}.bad")
                quarantine.record(Damage.from_dict({**damage.to_dict(), "quarantined": name}))
    return None


@dataclass
class Replayed:
    """What :func:`replay` read: events after the snapshot, their (hashes, ingest time) for
    the de-duplication window, and the events records after the last ``APPLIED`` marker."""

    events: int = 0
    seen: list[tuple[NDArray[np.uint64], float]] = field(default_factory=list)
    unmarked: Group = field(default_factory=list)


def replay(
    event_log: EventLog,
    covered_lsn: int,
    *,
    apply_group: Callable[[Group], object],
    on_placement: Callable[[dict], None],
    on_model: Callable[[dict, dict[str, np.ndarray]], None],
) -> Replayed:
    """Re-apply the log after ``covered_lsn`` exactly as it was applied live (module docstring)."""
    out = Replayed()
    buffered: Group = []

    def apply(upto: int | None) -> None:
        nonlocal buffered
        take = [r for r in buffered if upto is None or r[0] <= upto]
        if take:
            buffered = [r for r in buffered if upto is not None and r[0] > upto]
            apply_group(take)

    for rec in event_log.recover(covered_lsn):
        if rec.kind == EVENTS:
            events = EventRecord.decode(rec.payload)
            buffered.append((rec.lsn, events))
            out.seen.append((events.event_hash, events.ingest_time))
            out.events += len(events)
        elif rec.kind == APPLIED:
            apply(decode_applied(rec.payload))
        elif rec.kind == PLACEMENT:
            apply(None)
            on_placement(decode_json(rec.payload))
        elif rec.kind == MODEL:
            apply(None)
            on_model(*decode_with_state(rec.payload))
    out.unmarked = buffered
    return out


def groups(records: Group, max_events: int) -> Iterator[Group]:
    """``records`` in consecutive groups of at most ``max_events`` events (at least one record)."""
    while records:
        size, cut = 0, 0
        while cut < len(records) and (cut == 0 or size + len(records[cut][1]) <= max_events):
            size += len(records[cut][1])
            cut += 1
        yield records[:cut]
        records = records[cut:]


def group_by_bucket(
    seen: Sequence[tuple[NDArray[np.uint64], float]], bucket_seconds: float
) -> list[tuple[NDArray[np.uint64], float]]:
    """Replayed hashes concatenated per de-dup bucket (one sort per bucket, not per record)."""
    by_bucket: dict[int, list[NDArray[np.uint64]]] = {}
    times: dict[int, float] = {}
    for hashes, t in seen:
        b = math.floor(t / bucket_seconds)
        by_bucket.setdefault(b, []).append(hashes)
        times[b] = t
    return [(np.concatenate(parts), times[b]) for b, parts in by_bucket.items()]
