"""Recovery of a state dir: pick the newest sound snapshot, replay the log after it.

* :func:`clean_temporary_files` removes ``*.tmp`` files a crash or a full disk left behind
  (half-written snapshots, archive parts, segment rewrites).
* :func:`load_chain` returns the newest snapshot chain that reads back cleanly: the newest
  sound base and its deltas up to the first that is damaged (empty, half written, a flipped
  bit) or does not link to the file before it. A damaged file is moved to the quarantine and
  reported, the deltas after it are set aside too (they follow a missing link); their
  content is in the log, which is replayed from the end of the chain. A damaged base falls
  back to the previous base and its chain (the log is kept back to it).
  :func:`restore_chain` builds the live placements from a chain, cutting it before a delta
  that does not apply.
* :func:`replay` reads the log after the snapshot (the log cuts out damage and reports
  it, see :mod:`serving.eventlog`) and re-applies it in the groups the live store applied,
  as the ``APPLIED`` markers recorded — consecutive groups merged into one of at most
  ``group_events`` events (0: each group alone, bit-for-bit what the live store learned;
  a merged group is what a live store whose applier had taken those groups at once would
  learn: the same statistics for policies whose learning does not depend on batching, and
  for ``ts_gmm`` change detection and hour levels learned per merged group). The merging
  depends only on the log, so every restart from the same snapshot learns the same. Events
  after the last marker are handed back (:class:`Replayed`) to be learned and marked in
  bounded groups.

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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bandit.errors import InvalidState
from serving import snapshots
from serving.eventlog import EventLog, list_segments, walk
from serving.quarantine import Damage, Quarantine
from serving.records import (
    APPLIED,
    EVENTS,
    KIND_NAMES,
    MODEL,
    PLACEMENT,
    EventRecord,
    decode_applied,
    decode_json,
    decode_with_state,
    events_in,
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


#: What reading a damaged snapshot file raises.
READ_ERRORS = (InvalidState, KeyError, OSError, ValueError)


@dataclass(frozen=True)
class Chain:
    """A base snapshot and the deltas of its chain that read back and link, in order;
    ``intact`` is false when deltas of it on disk were left out."""

    base: snapshots.Snapshot
    deltas: list[snapshots.Snapshot]
    intact: bool = True

    @property
    def last(self) -> snapshots.Snapshot:
        return self.deltas[-1] if self.deltas else self.base

    @property
    def covered_lsn(self) -> int:
        return self.last.covered_lsn

    @property
    def created(self) -> float:
        return self.last.created


@dataclass
class ChainPick:
    """The chain :func:`pick_chain` chose, the files it found damaged (with the error) and the
    deltas it could not use (after a damaged one, or not linking)."""

    chain: Chain | None
    damaged: list[tuple[snapshots.SnapshotFile, str]] = field(default_factory=list)
    unusable: list[snapshots.SnapshotFile] = field(default_factory=list)


def pick_chain(files: Sequence[snapshots.SnapshotFile], read: Callable[[Path], snapshots.Snapshot]) -> ChainPick:
    """The newest base that ``read`` reads back, with its deltas in order up to the first
    damaged or unlinked one (``files`` as :func:`serving.snapshots.list_files` lists them).
    Deltas newer than the chain that are not in it (their base is damaged or missing) are
    found damaged or unusable too."""
    pick = _pick_base_chain(files, read)
    end = pick.chain.covered_lsn if pick.chain is not None else 0
    seen = {f.path for f, _ in pick.damaged} | {f.path for f in pick.unusable}
    seen |= {d.path for d in pick.chain.deltas} if pick.chain is not None else set()
    for f in files:
        if f.is_delta and f.covered_lsn > end and f.path not in seen:
            try:
                read(f.path)
            except READ_ERRORS as exc:
                pick.damaged.append((f, str(exc)))
            else:
                pick.unusable.append(f)
    return pick


def _pick_base_chain(files: Sequence[snapshots.SnapshotFile], read: Callable[[Path], snapshots.Snapshot]) -> ChainPick:
    pick = ChainPick(None)
    for bf in reversed([f for f in files if not f.is_delta]):
        try:
            base = read(bf.path)
        except READ_ERRORS as exc:
            pick.damaged.append((bf, str(exc)))
            continue
        deltas: list[snapshots.Snapshot] = []
        broken = False
        for f in files:
            if not f.is_delta or f.base_lsn != bf.covered_lsn:
                continue
            if broken:
                pick.unusable.append(f)
                continue
            try:
                delta = read(f.path)
            except READ_ERRORS as exc:
                pick.damaged.append((f, str(exc)))
                broken = True
                continue
            if not delta.is_delta or delta.prev_lsn != (deltas[-1] if deltas else base).covered_lsn:
                pick.unusable.append(f)
                broken = True
                continue
            deltas.append(delta)
        pick.chain = Chain(base, deltas, intact=not broken)
        return pick
    return pick


def load_chain(directory: Path, quarantine: Quarantine | None = None) -> Chain | None:
    """The newest snapshot chain that reads back cleanly (:func:`pick_chain`). Damaged files
    are moved to ``quarantine`` (when given) and reported, unusable deltas moved there too,
    so a later snapshot never prunes the sound files they would otherwise shadow."""
    pick = pick_chain(snapshots.list_files(directory), snapshots.read_snapshot)
    for f, error in pick.damaged:
        _report_damage(quarantine, f, f"unreadable snapshot ({error})")
    for f in pick.unusable:
        log.warning("snapshot %s follows a damaged or missing delta: set aside, the log replays it", f.path.name)
        if quarantine is not None:
            quarantine.move(f.path, f"{f.path.name}.unused")
    return pick.chain


def _report_damage(quarantine: Quarantine | None, f: snapshots.SnapshotFile, what: str) -> None:
    path = f.path
    size = path.stat().st_size if path.exists() else 0
    damage = Damage(
        f"{path.name}@{time.time():.0f}", "snapshot", path.name, 0, size, None, None, 0, 0, f.covered_lsn,
        f"{what}; recovery falls back to the snapshots before it and the log",
    )  # fmt: skip
    log.error("snapshot damage: %s", damage.message())
    if quarantine is not None:
        name = quarantine.move(path, f"{path.name}.bad")
        quarantine.record(Damage.from_dict({**damage.to_dict(), "quarantined": name}))


def restore_chain(chain: Chain, quarantine: Quarantine | None = None) -> tuple[Chain, dict, list]:
    """The live placements of ``chain`` (:func:`serving.snapshots.restore_live`) and the chain
    they come from: cut before a delta that does not apply (reported as damage, it and the
    deltas after it moved to the quarantine)."""
    while True:
        try:
            entries, stale = snapshots.restore_live(chain.base, chain.deltas)
            return chain, entries, stale
        except snapshots.DeltaRefused as exc:
            if exc.index < 0:
                raise
            refused = chain.deltas[exc.index]
            _report_damage(quarantine, snapshots.SnapshotFile.parse(refused.path), f"snapshot does not apply ({exc})")
            for later in chain.deltas[exc.index + 1 :]:
                if quarantine is not None:
                    quarantine.move(later.path, f"{later.path.name}.unused")
            chain = Chain(chain.base, chain.deltas[: exc.index], intact=False)


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
    apply_group: Callable[[list[Group]], object],
    on_placement: Callable[[dict], None],
    on_model: Callable[[dict, dict[str, np.ndarray]], None],
    group_events: int = 0,
) -> Replayed:
    """Re-apply the log after ``covered_lsn`` as it was applied live, consecutive groups
    merged up to ``group_events`` events (module docstring). ``apply_group`` gets the live
    groups that form one replay group, in order."""
    out = Replayed()
    buffered: Group = []  # records no marker covers yet
    merged: list[Group] = []  # marked groups learned together at the next flush
    merged_events = 0

    def learn() -> None:
        nonlocal merged, merged_events
        if merged:
            apply_group(merged)
            merged, merged_events = [], 0

    def mark(upto: int | None) -> None:
        nonlocal buffered, merged_events
        take = [r for r in buffered if upto is None or r[0] <= upto]
        if not take:
            return
        buffered = [r for r in buffered if upto is not None and r[0] > upto]
        n = sum(len(events) for _, events in take)
        if merged and merged_events + n > group_events:
            learn()
        merged.append(take)
        merged_events += n

    for rec in event_log.recover(covered_lsn):
        if rec.kind == EVENTS:
            events = EventRecord.decode(rec.payload)
            buffered.append((rec.lsn, events))
            out.seen.append((events.event_hash, events.ingest_time))
            out.events += len(events)
        elif rec.kind == APPLIED:
            mark(decode_applied(rec.payload))
        elif rec.kind == PLACEMENT:
            mark(None)
            learn()
            on_placement(decode_json(rec.payload))
        elif rec.kind == MODEL:
            mark(None)
            learn()
            on_model(*decode_with_state(rec.payload))
    learn()
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


# ---------------------------------------------------------------------- verification
@dataclass
class SegmentReport:
    """One log segment as ``store verify`` found it."""

    name: str
    bytes: int
    records: int
    events: int
    first_lsn: int | None
    last_lsn: int | None
    damage: list[Damage]


@dataclass
class VerifyReport:
    """What ``adbandit store verify`` found: sound and damaged snapshots and segments, the
    damage already quarantined, and what the next start would cut or lose."""

    state_dir: str
    snapshots: list[dict] = field(default_factory=list)
    segments: list[SegmentReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    quarantined: list[Damage] = field(default_factory=list)
    stray_tmp: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def damage(self) -> list[Damage]:
        return [d for s in self.segments for d in s.damage]

    @property
    def damaged(self) -> bool:
        """Anything beyond a torn tail: damaged/missing records, unreadable snapshots, a gap."""
        return (
            bool(self.problems)
            or any(d.kind != "torn" for d in self.damage)
            or any(not s["sound"] for s in self.snapshots)
        )

    def to_dict(self) -> dict:
        lost = [d for d in self.damage if d.kind not in ("torn", "stray")]
        return {
            "state_dir": self.state_dir,
            "sound": not self.damaged,
            "snapshots": self.snapshots,
            "segments": [
                {**{k: v for k, v in vars(s).items() if k != "damage"}, "damage": [d.to_dict() for d in s.damage]}
                for s in self.segments
            ],
            "problems": self.problems,
            "would_lose": {
                "records": sum(d.records_lost or 0 for d in lost),
                "records_uncounted": sum(1 for d in lost if d.records_lost is None),
                "events": sum(d.events_lost or 0 for d in lost),
                "events_uncounted": sum(1 for d in lost if d.events_lost is None),
                "torn_tail_bytes": sum(d.bytes for d in self.damage if d.kind == "torn"),
                "stray_bytes": sum(d.bytes for d in self.damage if d.kind == "stray"),
            },
            "quarantined": [d.to_dict() for d in self.quarantined],
            "stray_tmp": self.stray_tmp,
            "seconds": self.seconds,
        }

    def lines(self) -> list[str]:
        """The report for a terminal."""
        out = [f"state dir {self.state_dir}"]
        for s in self.snapshots:
            state = f"sound, covers lsn {s['covered_lsn']}" if s["sound"] else f"DAMAGED: {s['error']}"
            out.append(f"  snapshot {s['name']}: {state}")
        if not self.snapshots:
            out.append("  no snapshot: the whole log is replayed")
        for seg in self.segments:
            lsns = "no records" if seg.first_lsn is None else f"lsn {seg.first_lsn}..{seg.last_lsn}"
            state = (
                "sound" if not seg.damage else ("torn tail" if all(d.kind == "torn" for d in seg.damage) else "DAMAGED")
            )
            out.append(
                f"  segment {seg.name}: {seg.bytes} bytes, {seg.records} records, {seg.events} events, {lsns}: {state}"
            )
            out.extend(f"    {d.message()}" for d in seg.damage)
        out.extend(f"  PROBLEM: {p}" for p in self.problems)
        for d in self.quarantined:
            ack = "acknowledged" if d.acknowledged is not None else "NOT acknowledged"
            out.append(f"  quarantined earlier ({ack}): {d.message()}")
        if self.stray_tmp:
            out.append(f"  stray temporary files (removed at the next start): {', '.join(self.stray_tmp)}")
        w = self.to_dict()["would_lose"]
        unknown = " (+ records of unknown count)" if w["records_uncounted"] else ""
        out.append(
            f"next start would lose {w['records']} records{unknown} holding {w['events']} events"
            f"{' (+ uncounted)' if w['events_uncounted'] else ''}, cut {w['torn_tail_bytes']} torn-tail bytes "
            f"and quarantine {w['stray_bytes']} stray bytes"
        )
        out.append(f"verdict: {'DAMAGED' if self.damaged else 'sound'} ({self.seconds:.2f} s)")
        return out


def verify(state_dir: Path) -> VerifyReport:
    """Scan every snapshot and log segment of ``state_dir`` without changing anything.

    Safe while a server runs on it (the log's last record may then look torn)."""
    started = time.perf_counter()
    report = VerifyReport(str(state_dir))
    snap_dir, log_dir = state_dir / "snapshots", state_dir / "log"
    read: dict[Path, snapshots.Snapshot | Exception] = {}
    for f in snapshots.list_files(snap_dir):
        entry = {"name": f.path.name, "sound": True, "covered_lsn": f.covered_lsn, "error": None}
        try:
            read[f.path] = snapshots.read_snapshot(f.path)
        except READ_ERRORS as exc:
            read[f.path] = exc
            entry.update(sound=False, error=str(exc))
        report.snapshots.append(entry)

    def cached(path: Path) -> snapshots.Snapshot:
        got = read[path]
        if isinstance(got, Exception):
            raise got
        return got

    chain = pick_chain(snapshots.list_files(snap_dir), cached).chain
    covered = chain.covered_lsn if chain is not None else 0
    quarantine = Quarantine(state_dir / "quarantine")
    report.quarantined = quarantine.entries()
    for sub in TEMP_DIRS:
        if (state_dir / sub).is_dir():
            report.stray_tmp += [str(p.relative_to(state_dir)) for p in (state_dir / sub).glob("*.tmp")]
    segments = list_segments_of(log_dir)
    if segments and segments[0] > covered + 1:
        report.problems.append(
            f"the log starts at lsn {segments[0]} but the newest sound snapshot covers only up to {covered}: "
            f"records {covered + 1}..{segments[0] - 1} are missing (the store refuses to start)"
        )
    if log_dir.is_dir():
        for scan in walk(
            log_dir,
            start_lsn=1,
            covered_lsn=covered,
            known_lost=quarantine.lost_ranges(),
            count=events_in,
            kind_names=KIND_NAMES,
        ):
            events = sum(events_in(r.kind, r.payload) or 0 for r in scan.records if r.kind == EVENTS)
            report.segments.append(
                SegmentReport(
                    scan.path.name,
                    len(scan.data),
                    len(scan.records),
                    events,
                    scan.records[0].lsn if scan.records else None,
                    scan.records[-1].lsn if scan.records else None,
                    scan.damage,
                )
            )
    report.seconds = time.perf_counter() - started
    return report


def list_segments_of(directory: Path) -> list[int]:
    return [first for first, _ in list_segments(directory)] if directory.is_dir() else []
