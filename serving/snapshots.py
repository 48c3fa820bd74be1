"""Snapshots of the whole store — policy states, placements, experiments, de-dup window — as
a *chain*: a whole (base) snapshot followed by incremental ones (deltas).

* A **base** is one ``.npz`` (no pickle) named after the last log record it covers,
  ``snapshot-<lsn, 20 digits>.npz``; snapshots written before deltas existed are bases.
* A **delta** ``snapshot-<lsn>-of-<base lsn>.npz`` holds what changed since the previous
  file of its chain (``prev_lsn`` in its meta): per variant, the policy's changes
  (:meth:`bandit.policy.Policy.take_changes`: statistics of the changed cells, rebuilt
  tables, the refit bookkeeping and fits of the segments concerned) — or the whole state of
  a policy new since then (a swapped model, a replaced placement) — the event hashes added
  to the de-duplication window, and the whole (small) meta: placements, experiments, outcome
  counters and stale segments. Base plus deltas restore exactly the state a base written
  at the last delta would hold.

Every file is written through :func:`bandit.save_state` (temp file, fsync, rename) followed
by an fsync of the directory. Its ``meta`` entry is JSON (format version, kind, covered lsn,
creation time, placements with their experiments and variants); the other entries are arrays,
each policy under its own key prefix. zip's per-entry crc32 catches a damaged file; recovery
(:func:`serving.recovery.load_chain`) then uses the chain up to the last good file and replays
the log after it, or falls back to the previous base. A failed write leaves no temporary
file and never touches older files.

:func:`capture_live` turns the store's live placements (:mod:`serving.live`) into that
meta and those arrays (whole states for a base, changes for a delta); :func:`restore_live`
builds them back from a chain.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit import Policy, load_state, policy_from_state, save_state
from bandit.errors import InvalidState
from serving import faults
from serving.eventlog import fsync_dir
from serving.live import PlacementEntry, VariantSlot
from serving.placement_config import ServicePlacement
from serving.variants import ExperimentConfig

FORMAT_VERSION = 1
PREFIX = "snapshot-"
SUFFIX = ".npz"
DELTA_MARK = "-of-"
BASE, DELTA = "base", "delta"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """A loaded snapshot file: what it covers, its JSON meta and its arrays."""

    path: Path
    covered_lsn: int
    created: float
    meta: dict
    arrays: dict[str, np.ndarray]

    @property
    def is_delta(self) -> bool:
        return self.meta.get("kind", BASE) == DELTA

    @property
    def base_lsn(self) -> int:
        """Covered lsn of the base of this file's chain (its own for a base)."""
        return int(self.meta.get("base_lsn", self.covered_lsn))

    @property
    def prev_lsn(self) -> int | None:
        """Covered lsn of the file a delta follows (``None`` for a base)."""
        return int(self.meta["prev_lsn"]) if self.is_delta else None

    def prefixed(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays stored under ``prefix`` (e.g. one policy's state), prefix removed."""
        return {k[len(prefix) :]: v for k, v in self.arrays.items() if k.startswith(prefix)}


@dataclass(frozen=True, order=True)
class SnapshotFile:
    """A snapshot file by its name: the lsn it covers and the lsn of its chain's base
    (equal for a base). Sorts by covered lsn, a base before a delta covering the same."""

    covered_lsn: int
    is_delta: bool
    base_lsn: int
    path: Path

    @classmethod
    def parse(cls, path: Path) -> SnapshotFile | None:
        if not (path.name.startswith(PREFIX) and path.name.endswith(SUFFIX)):
            return None
        stem = path.name[len(PREFIX) : -len(SUFFIX)]
        covered, _, base = stem.partition(DELTA_MARK)
        if not covered.isdigit() or (base and not base.isdigit()) or (_ and not base):
            return None
        return cls(int(covered), bool(base), int(base or covered), path)


def snapshot_path(directory: Path, covered_lsn: int, base_lsn: int | None = None) -> Path:
    """Path of a base (``base_lsn`` None) or of a delta of the base covering ``base_lsn``."""
    delta = "" if base_lsn is None else f"{DELTA_MARK}{base_lsn:020d}"
    return directory / f"{PREFIX}{covered_lsn:020d}{delta}{SUFFIX}"


def list_files(directory: Path) -> list[SnapshotFile]:
    """Snapshot files, bases and deltas, oldest first (temp files ignored)."""
    files = [SnapshotFile.parse(p) for p in directory.glob(f"{PREFIX}*{SUFFIX}")] if directory.is_dir() else []
    return sorted(f for f in files if f is not None)


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """Snapshot files (bases and deltas) as (covered lsn, path), oldest first."""
    return [(f.covered_lsn, f.path) for f in list_files(directory)]


def list_bases(directory: Path) -> list[tuple[int, Path]]:
    """Base snapshot files as (covered lsn, path), oldest first."""
    return [(f.covered_lsn, f.path) for f in list_files(directory) if not f.is_delta]


def write_snapshot(
    directory: Path,
    covered_lsn: int,
    meta: Mapping,
    arrays: Mapping[str, np.ndarray],
    *,
    fsync: bool = True,
    created: float | None = None,
    base_lsn: int | None = None,
    prev_lsn: int | None = None,
) -> Path:
    """Write a base snapshot, or with ``base_lsn`` and ``prev_lsn`` a delta following the file
    covering ``prev_lsn`` of that base's chain, atomically (``created``: seconds since the
    epoch, default now)."""
    directory.mkdir(parents=True, exist_ok=True)
    created = time.time() if created is None else float(created)
    body = {"format": FORMAT_VERSION, "covered_lsn": covered_lsn, "created": created, **meta}
    if base_lsn is None:
        body["kind"] = BASE
    else:
        body.update(kind=DELTA, base_lsn=int(base_lsn), prev_lsn=int(prev_lsn if prev_lsn is not None else base_lsn))
    state = {"meta": np.array(json.dumps(body)), **arrays}
    path = snapshot_path(directory, covered_lsn, base_lsn)
    tmp = path.with_name(path.name + ".tmp")
    try:
        faults.check("snapshot")
        if fsync:
            save_state(path, state)
            fsync_dir(directory)
        else:
            with open(tmp, "wb") as fh:
                np.savez(fh, **state)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk keeps no half-written snapshot
        raise
    return path


def read_snapshot(path: Path, *, arrays: bool = True) -> Snapshot:
    """Load and check one snapshot file (raises InvalidState). Without ``arrays`` every array
    is read and checked but none kept (the snapshot's ``state`` is empty): a base at 10,000
    segments × 20 networks is ~0.65 GB, which a check read whole would hold a second time."""
    state = load_state(path, keep=None if arrays else ("meta",))
    try:
        meta = json.loads(str(state.pop("meta")))
    except ValueError as exc:
        raise InvalidState(f"snapshot {path.name}: unreadable meta: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise InvalidState(f"snapshot {path.name} has format {meta.get('format')}, expected {FORMAT_VERSION}")
    return Snapshot(path, int(meta["covered_lsn"]), float(meta["created"]), meta, state)


def prune(directory: Path, keep: int = 2) -> list[Path]:
    """Delete all but the ``keep`` newest bases, the deltas of the bases deleted (and of none
    kept), and stale temp files."""
    files = list_files(directory)
    bases = [f for f in files if not f.is_delta]
    kept = {f.covered_lsn for f in bases[max(len(bases) - keep, 0) :]}
    removed = [f.path for f in files if f.base_lsn not in kept]
    removed += [p for p in directory.glob(f"{PREFIX}*{SUFFIX}.tmp")]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


# ------------------------------------------------------------ the store's content
def capture_live(
    entries: Mapping[str, PlacementEntry],
    stale_segments: Callable[[VariantSlot], list[str]],
    *,
    base: bool = True,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Meta and arrays of every placement and learner (the caller holds the apply lock); every
    learner is checkpointed (:meth:`bandit.policy.Policy.checkpoint`).

    Placement ``p``'s slot ``s`` stores its learner's state under the prefix ``p{p}.s{s}.``
    — for a delta (``base`` false) its changes since the last capture (``"changes": true``),
    or its whole state when it has no checkpoint (a policy new since then); the meta keeps its
    variant, model tag, outcome counters and ``stale_segments(slot)``. The arrays are copies:
    they may be written while the learners keep learning.
    """
    arrays: dict[str, np.ndarray] = {}
    placements = []
    for p, (pid, entry) in enumerate(sorted(entries.items())):
        slots = []
        for s, (name, slot) in enumerate(entry.slots.items()):
            prefix = f"p{p}.s{s}."
            learner = slot.learner
            part = None if base else learner.take_changes()
            changes = part is not None
            if part is None:
                part = learner.state()
                learner.checkpoint()
            for key, value in part.items():
                arrays[prefix + key] = value
            slots.append(
                {
                    "variant": name,
                    "prefix": prefix,
                    "changes": changes,
                    "tag": slot.tag,
                    "requests": slot.requests,
                    "revenue": slot.revenue,
                    "revenue_sq": slot.revenue_sq,
                    "decisions": slot.decisions,
                    # Segments whose tables lag their statistics (refits are throttled):
                    # refit after a restore, so tables and statistics agree again.
                    "stale": stale_segments(slot),
                }
            )
        placements.append(
            {
                "placement": pid,
                "config": entry.config.to_dict(),
                "experiment": entry.experiment.to_dict(),
                "slots": slots,
            }
        )
    return {"placements": placements}, arrays


class DeltaRefused(InvalidState):
    """A delta of a chain that does not apply to the state before it (``index``: its place)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index


def restore_policies(base: Snapshot, deltas: Sequence[Snapshot]) -> dict[tuple[str, str], Policy]:
    """Each (placement, variant)'s learner after ``base`` and ``deltas``, checkpointed.

    Raises :class:`DeltaRefused` naming the first delta that does not apply."""
    policies: dict[tuple[str, str], Policy] = {}
    for index, snap in enumerate([base, *deltas]):
        for p in snap.meta["placements"]:
            for s in p["slots"]:
                key = (p["placement"], s["variant"])
                part = snap.prefixed(s["prefix"])
                if not s.get("changes"):
                    policies[key] = policy_from_state(part)
                    continue
                try:
                    policies[key].apply_changes(part)
                except (InvalidState, KeyError, ValueError) as exc:
                    name = snap.path.name
                    raise DeltaRefused(index - 1, f"{name}: changes of {key[0]}/{key[1]} do not apply: {exc}") from None
    for policy in policies.values():
        policy.checkpoint()
    return policies


def restore_live(
    base: Snapshot, deltas: Sequence[Snapshot] = ()
) -> tuple[dict[str, PlacementEntry], list[tuple[VariantSlot, list[str]]]]:
    """The placements captured by :func:`capture_live` in ``base`` and ``deltas`` (its chain,
    in order; the placements, experiments and counters are the last file's), and each
    slot's stale segments."""
    policies = restore_policies(base, deltas)
    snap = deltas[-1] if deltas else base
    entries = {}
    stale = []
    for p in snap.meta["placements"]:
        config = ServicePlacement.from_dict(p["placement"], p["config"])
        experiment = ExperimentConfig.from_dict(p["experiment"])
        slots = {}
        for s in p["slots"]:
            slot = VariantSlot(
                experiment.variant(s["variant"]),
                policies[(p["placement"], s["variant"])],
                s["tag"],
            )
            slot.requests = int(s["requests"])
            slot.revenue = float(s["revenue"])
            slot.revenue_sq = float(s["revenue_sq"])
            slot.decisions = int(s.get("decisions", 0))
            stale.append((slot, list(s.get("stale") or ())))
            slots[slot.variant.name] = slot
        entries[config.id] = PlacementEntry.create(config, experiment, slots)
    return entries, stale
