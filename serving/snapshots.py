"""Atomic snapshots of the whole store: policy states, placements, experiments, de-dup window.

A snapshot is one ``.npz`` (no pickle) named after the last log record it covers,
``snapshot-<lsn, 20 digits>.npz``, written through :func:`bandit.save_state` (temp file,
fsync, rename) followed by an fsync of the directory. Its ``meta`` entry is JSON (format
version, covered lsn, creation time, placements with their experiments and variants);
the other entries are arrays, each policy state under its own key prefix. zip's per-entry
crc32 catches a damaged file, and the loader then falls back to the previous snapshot
(:func:`serving.recovery.load_snapshot` moves the damaged one to the quarantine). A failed
write leaves no temporary file and never touches older snapshots.

:func:`capture_live` turns the store's live placements (:mod:`serving.live`) into that
meta and those arrays; :func:`restore_live` builds them back from a loaded snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit import load_state, policy_from_state, save_state
from bandit.errors import InvalidState
from serving import faults
from serving.eventlog import fsync_dir
from serving.live import PlacementEntry, VariantSlot
from serving.placement_config import ServicePlacement
from serving.variants import ExperimentConfig

FORMAT_VERSION = 1
PREFIX = "snapshot-"
SUFFIX = ".npz"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """A loaded snapshot: what it covers, its JSON meta and its arrays."""

    path: Path
    covered_lsn: int
    created: float
    meta: dict
    arrays: dict[str, np.ndarray]

    def prefixed(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays stored under ``prefix`` (e.g. one policy's state), prefix removed."""
        return {k[len(prefix) :]: v for k, v in self.arrays.items() if k.startswith(prefix)}


def snapshot_path(directory: Path, covered_lsn: int) -> Path:
    return directory / f"{PREFIX}{covered_lsn:020d}{SUFFIX}"


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """Snapshot files as (covered lsn, path), oldest first (temp files ignored)."""
    out = []
    for p in directory.glob(f"{PREFIX}*{SUFFIX}"):
        stem = p.name[len(PREFIX) : -len(SUFFIX)]
        if stem.isdigit():
            out.append((int(stem), p))
    return sorted(out)


def write_snapshot(
    directory: Path,
    covered_lsn: int,
    meta: Mapping,
    arrays: Mapping[str, np.ndarray],
    *,
    fsync: bool = True,
    created: float | None = None,
) -> Path:
    """Write a snapshot atomically (``created``: seconds since the epoch, default now)."""
    directory.mkdir(parents=True, exist_ok=True)
    created = time.time() if created is None else float(created)
    body = {"format": FORMAT_VERSION, "covered_lsn": covered_lsn, "created": created, **meta}
    state = {"meta": np.array(json.dumps(body)), **arrays}
    path = snapshot_path(directory, covered_lsn)
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


def read_snapshot(path: Path) -> Snapshot:
    """Load and check one snapshot file (raises InvalidState)."""
    state = load_state(path)
    try:
        meta = json.loads(str(state.pop("meta")))
    except ValueError as exc:
        raise InvalidState(f"snapshot {path.name}: unreadable meta: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise InvalidState(f"snapshot {path.name} has format {meta.get('format')}, expected {FORMAT_VERSION}")
    return Snapshot(path, int(meta["covered_lsn"]), float(meta["created"]), meta, state)


def load_newest(directory: Path) -> Snapshot | None:
    """The newest snapshot that reads back cleanly (older ones are the fallback)."""
    for _, path in reversed(list_snapshots(directory)):
        try:
            return read_snapshot(path)
        except (InvalidState, KeyError, OSError, ValueError) as exc:
            log.error("skipping unreadable snapshot %s: %s", path, exc)
    return None


def prune(directory: Path, keep: int = 2) -> list[Path]:
    """Delete all but the ``keep`` newest snapshots (and stale temp files)."""
    snaps = list_snapshots(directory)
    removed = [p for _, p in snaps[: max(len(snaps) - keep, 0)]]
    removed += [p for p in directory.glob(f"{PREFIX}*{SUFFIX}.tmp")]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


# ------------------------------------------------------------ the store's content
def capture_live(
    entries: Mapping[str, PlacementEntry], stale_segments: Callable[[VariantSlot], list[str]]
) -> tuple[dict, dict[str, np.ndarray]]:
    """Meta and arrays of every placement and learner (the caller holds the apply lock).

    Placement ``p``'s slot ``s`` stores its learner's state under the prefix ``p{p}.s{s}.``;
    the meta keeps its variant, model tag, outcome counters and ``stale_segments(slot)``.
    """
    arrays: dict[str, np.ndarray] = {}
    placements = []
    for p, (pid, entry) in enumerate(sorted(entries.items())):
        slots = []
        for s, (name, slot) in enumerate(entry.slots.items()):
            prefix = f"p{p}.s{s}."
            for key, value in slot.learner.state().items():
                arrays[prefix + key] = value
            slots.append(
                {
                    "variant": name,
                    "prefix": prefix,
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


def restore_live(snap: Snapshot) -> tuple[dict[str, PlacementEntry], list[tuple[VariantSlot, list[str]]]]:
    """The placements captured in ``snap`` by :func:`capture_live`, and each slot's stale segments."""
    entries = {}
    stale = []
    for p in snap.meta["placements"]:
        config = ServicePlacement.from_dict(p["placement"], p["config"])
        experiment = ExperimentConfig.from_dict(p["experiment"])
        slots = {}
        for s in p["slots"]:
            slot = VariantSlot(
                experiment.variant(s["variant"]),
                policy_from_state(snap.prefixed(s["prefix"])),
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
