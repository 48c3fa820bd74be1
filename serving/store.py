"""PolicyStore: the live state of the service — placements, their experiment variants and
policies, the durable event log, de-duplication and snapshots.

How an outcome event travels:

1. ``ingest`` validates each event on its own (bad ones are listed in ``rejected`` and
   change nothing), drops repeated ``event_id`` s (:mod:`serving.dedupe`) and appends the
   accepted ones as one columnar record to the event log (:mod:`serving.eventlog`); it
   returns once that record is fsynced (concurrent ingests share one fsync).
2. A background *applier* takes the records written since its last pass (every
   ``apply_every_s``, or as long as the last pass took when refits are slower),
   groups their events by (placement, variant) and updates each variant's *learner*
   policy once per group, then writes an ``APPLIED`` marker to the log saying which
   records formed that group.
3. Decisions never touch a learner: after an update the applier publishes a copy of the
   learner (sharing its statistics, which deciding does not read) that ``decide`` uses
   without any lock, with a per-thread random generator. Decisions therefore never wait
   for an fsync or a refit.
4. Snapshots (periodic, and on ``close``) form chains (:mod:`serving.snapshots`): a base
   holds every learner's ``state()``, the placements, experiments, outcome counters and the
   de-duplication window; each later delta holds only what changed since the file before
   it (the changed statistics cells, rebuilt tables and refit bookkeeping, the event hashes
   added), with the log position it covers. Capturing is short — ingest waits while the
   log position and the de-duplication window's additions are read, the applier while the
   learners' changes are copied, decisions never — and the file is written and fsynced
   outside every lock but the snapshot lock. A new base starts a chain once the deltas
   reach ``snapshot_max_deltas`` or ``snapshot_delta_share`` of the base's bytes (or after
   a failed write); log segments covered by the older of the two bases kept are then
   deleted, so one unreadable file never loses an event.
5. ``open`` loads the newest readable chain and replays the log after it, applying the
   events in the groups the ``APPLIED`` markers recorded, consecutive ones merged up to
   ``replay_group_events`` (the same events in the same order, alike at every restart; with
   0, group by group: bit-for-bit the statistics of a store that never stopped). Events
   written after the last marker (a crash) are applied on open and marked then. Stale
   tables are refit for at most ``open_refit_budget_s``; the applier refits the rest in
   slices of ``refit_budget_s`` while decisions use the restored tables.

Placement changes, experiment changes and model swaps are log records too: they first
apply all pending events, then take effect, in log order, on replay as live.

Limits (:mod:`serving.limits`): a placement over the service's limits is refused; an
event whose segment would exceed its placement's segment limits is logged under the
nearest pooled segment (step 1, under the state lock, so admission follows log order and
the log holds the key each event is learned under).

Online A/B: :mod:`serving.variants`. A variant's learned statistics survive a placement
replacement when the network ids and segment fields are unchanged; its outcome counters
(the experiment report) survive while its policy and parameters are unchanged.

The store is the façade that owns the locks, the threads and the lifecycle; the work is
done by :mod:`serving.live` (slots and placement entries, model swaps),
:mod:`serving.decisions` (deciding, decision ids), :mod:`serving.intake` (ingest
validation), :mod:`serving.applier` (learning events in groups, refits),
:mod:`serving.report` (A/B report, metrics), :mod:`serving.snapshots` (what a snapshot
holds), :mod:`serving.recovery` (snapshot choice, replay) and :mod:`serving.history` (the
console's time series, recorded every ``history_every_s`` by a thread of its own, which
takes each slot's ``learn_lock`` briefly and no other).

Lock order: ``_state_lock`` (writers of the log: ingest, config changes, snapshot
capture) → ``_apply_lock`` (anything that updates or replaces learners) → a slot's
``learn_lock`` → the log's own locks.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bandit import ALL_SEGMENTS, Allocation, PlacementConfig
from bandit.drift import ChangeAlarm
from bandit.errors import InvalidConfig, StorageFailure
from serving import decisions, recovery, report, snapshots
from serving.allocator import fewer_page_faults, return_free_memory
from serving.applier import Applier
from serving.archive import OutcomeArchive
from serving.decision_ids import DecisionSigner, Verdict, load_or_create_key
from serving.decisions import DecisionRecord
from serving.dedupe import DAY_SECONDS, DedupeWindow, event_hashes, first_occurrences
from serving.eventlog import EventLog, storage_failure
from serving.history import EXPERIMENT_FIELDS, HistoryRecorder, WindowTally
from serving.intake import FLOORS_ID_MAX_AGE_S, prepare_events
from serving.limits import OUTCOME, Limits, check_placement
from serving.live import PlacementEntry, build_entry, normalise_state, placement_entry, with_model
from serving.placement_config import ServicePlacement
from serving.plans import TOP_PLANS, top_plans
from serving.quarantine import Damage, Quarantine
from serving.records import (
    APPLIED,
    EVENTS,
    KIND_NAMES,
    MODEL,
    PLACEMENT,
    EventRecord,
    encode_applied,
    encode_json,
    encode_with_state,
    events_in,
)
from serving.state_check import check_model_state
from serving.validation import DEFAULT_MAX_EVENT_SKEW_S
from serving.variants import ExperimentConfig, VariantConfig

__all__ = [
    "DecisionRecord",
    "ExperimentConfig",
    "IngestResult",
    "PolicyStore",
    "VariantConfig",
]

log = logging.getLogger(__name__)

#: Base snapshots kept on disk (with their deltas); log segments are compacted up to the oldest.
SNAPSHOTS_KEPT = 2
#: On open, live groups are replayed merged into groups of up to this many events (the default
#: of ``replay_group_events``), and events after the last APPLIED marker learned in groups of it.
REPLAY_GROUP_EVENTS = 2_500_000
#: The applier gives the free heap back to the system at most this often (s): refits replace
#: tables, and what the old ones held otherwise stays with the process
#: (:func:`serving.allocator.return_free_memory`, ~10 ms at 10,000 segments × 20 networks).
TRIM_EVERY_S = 10.0


@dataclass
class ChainOnDisk:
    """The snapshot chain the next delta extends: its base's lsn and bytes, its last file's
    lsn, and how many deltas (and bytes of them) follow the base."""

    base_lsn: int
    end_lsn: int
    base_bytes: int
    deltas: int = 0
    delta_bytes: int = 0


@dataclass
class SnapshotCapture:
    """A snapshot's content, captured under the store's locks, to be written outside them."""

    covered: int
    base: bool
    meta: dict
    arrays: dict[str, np.ndarray]
    written: int
    dedupe: DedupeWindow | None  # a frozen copy, for a base: its arrays are made off the locks


@dataclass(frozen=True)
class IngestResult:
    """What ``ingest`` did: events accepted, duplicates dropped, rejected (index, reason)."""

    accepted: int
    duplicates: int
    rejected: list[tuple[int, str]] = field(default_factory=list)
    #: Rejected for their floors id: it did not verify, or a page's event had none.
    refused_ids: int = 0

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{"index": i, "error": e} for i, e in self.rejected],
        }


# ------------------------------------------------------------------------- the store
class PolicyStore:
    """Placements, variants and live policies over a durable event log (module docstring).

    ``state_dir`` holds ``log/`` (event log segments), ``snapshots/`` and a ``LOCK`` file
    that keeps a second process from opening the same directory. ``clock`` (seconds since
    the epoch) drives de-duplication and snapshot timing; tests may replace it.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike,
        *,
        default_policy: str = "ts_gmm",
        default_params: Mapping[str, Any] | None = None,
        dedupe_days: float = 7.0,
        snapshot_every_s: float = 60.0,
        snapshot_every_events: int = 1_000_000,
        snapshot_max_deltas: int = 10,
        snapshot_delta_share: float = 0.5,
        segment_max_bytes: int = 64 * 2**20,
        apply_every_s: float = 0.05,
        refit_every_s: float = 1.0,
        refit_budget_s: float = 1.0,
        open_refit_budget_s: float = 5.0,
        replay_group_events: int = REPLAY_GROUP_EVENTS,
        archive_part_events: int = 500_000,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
        max_event_skew_s: float = DEFAULT_MAX_EVENT_SKEW_S,
        decision_key: bytes | None = None,
        limits: Limits | None = None,
        floors_id_max_age_s: float = FLOORS_ID_MAX_AGE_S,
        history_every_s: float | None = None,
        history_max_points: int = 2880,
        history_max_segments: int = 16,
    ) -> None:
        if not (dedupe_days > 0):
            raise InvalidConfig(f"dedupe_days must be > 0, got {dedupe_days}")
        if not (apply_every_s > 0) or not (snapshot_every_s > 0) or snapshot_every_events < 1:
            raise InvalidConfig("apply_every_s, snapshot_every_s and snapshot_every_events must be > 0")
        self.state_dir = Path(state_dir)
        self.default_policy = default_policy
        self.default_params = dict(default_params or {})
        self.dedupe_days = float(dedupe_days)
        self.snapshot_every_s = float(snapshot_every_s)
        self.snapshot_every_events = int(snapshot_every_events)
        if snapshot_max_deltas < 0 or not (snapshot_delta_share >= 0):
            raise InvalidConfig("snapshot_max_deltas and snapshot_delta_share must be >= 0")
        self.snapshot_max_deltas = int(snapshot_max_deltas)
        self.snapshot_delta_share = float(snapshot_delta_share)
        self.apply_every_s = float(apply_every_s)
        self.refit_every_s = float(refit_every_s)
        if not (refit_budget_s > 0) or not (open_refit_budget_s >= 0) or replay_group_events < 0:
            raise InvalidConfig("refit_budget_s must be > 0, open_refit_budget_s and replay_group_events >= 0")
        self.refit_budget_s = float(refit_budget_s)
        self.open_refit_budget_s = float(open_refit_budget_s)
        self.replay_group_events = int(replay_group_events)
        self.fsync = bool(fsync)
        self._clock = clock
        if not (max_event_skew_s >= 0):
            raise InvalidConfig(f"max_event_skew_s must be >= 0, got {max_event_skew_s}")
        self.max_event_skew_s = float(max_event_skew_s)
        if not (floors_id_max_age_s > 0):
            raise InvalidConfig(f"floors_id_max_age_s must be > 0, got {floors_id_max_age_s}")
        self.floors_id_max_age_s = float(floors_id_max_age_s)
        self.limits = limits or Limits()
        self._decision_key = decision_key
        self._signer: DecisionSigner | None = None  # made by open(): the key may live in the state dir
        self._quarantine = Quarantine(self.state_dir / "quarantine", fsync=fsync)
        self._log = EventLog(
            self.state_dir / "log",
            segment_max_bytes=segment_max_bytes,
            fsync=fsync,
            quarantine=self._quarantine,
            count=events_in,
            kind_names=KIND_NAMES,
        )
        self._snap_dir = self.state_dir / "snapshots"
        self._archive_part_events = int(archive_part_events)
        self._dedupe = DedupeWindow(self.dedupe_days * DAY_SECONDS, n_buckets=7)
        self._entries: dict[str, PlacementEntry] = {}
        self._applier = Applier(self._log, count=self._count)  # its archive is made by open()
        self._state_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._local = threading.local()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock_fd: int | None = None
        self._opened = False
        self._closing = False
        self._closed = False
        self._counts = {
            "accepted": 0,
            "duplicate": 0,
            "rejected": 0,
            "written": 0,
            "applied": 0,
            "replayed": 0,
            "apply_errors": 0,
            "snapshot_failures": 0,
            "unverified_decision": 0,
            "refused_floors_id": 0,
            "removed_variant": 0,
            "removed_variant_skipped": 0,
        }
        self._snapshot_lsn = 0
        self._snapshot_time: float | None = None
        self._chain: ChainOnDisk | None = None  # None: the next snapshot is a base
        #: Test hook: called with the path about to be written, outside every lock but the snapshot lock.
        self._before_snapshot_write: Callable[[Path], None] | None = None
        self._snapshot_written = 0
        self.open_seconds: float | None = None
        if history_every_s is not None and not (history_every_s > 0):
            raise InvalidConfig(f"history_every_s must be > 0, got {history_every_s}")
        self.history_every_s = history_every_s
        #: The console's time series (:mod:`serving.history`); ``None`` when ``history_every_s`` is.
        self._history = None
        if history_every_s is not None:
            self._history = HistoryRecorder(
                self.state_dir / "history", max_points=history_max_points, max_segments=history_max_segments
            )
        self._last_accepted_at: float | None = None

    def __enter__(self) -> PolicyStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Create the directories, load the newest snapshot, replay the log after it, and
        start the applier and snapshot threads."""
        if self._opened:
            raise RuntimeError("PolicyStore.open() was already called")
        started = time.perf_counter()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._snap_dir.mkdir(exist_ok=True)
        self._acquire_dir_lock()
        try:
            recovery.clean_temporary_files(self.state_dir)
            self._signer = DecisionSigner(self._decision_key or load_or_create_key(self.state_dir))
            self._applier.archive = OutcomeArchive(self.state_dir / "outcomes", self._archive_part_events)
            with fewer_page_faults():  # temporaries reuse freed memory, in small pages
                chain = recovery.load_chain(self._snap_dir, self._quarantine)
                covered_lsn = self._restore(chain).covered_lsn if chain is not None else 0
                del chain  # the snapshot's arrays (~0.5 GB at scale): the replay reuses their memory
                self._replay(covered_lsn)
            if self._history is not None:
                self._take_windows()  # what replay re-learned was recorded before the restart
                self._history.load()
        except BaseException:
            self._log.close()
            self._release_dir_lock()
            raise
        self._opened = True
        self._stop.clear()
        loops = [(self._apply_loop, "applier"), (self._snapshot_loop, "snapshotter")]
        if self._history is not None:
            loops.append((self._history_loop, "history"))
        for target, name in loops:
            t = threading.Thread(target=target, name=f"adbandit-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.open_seconds = time.perf_counter() - started

    def close(self) -> None:
        """Apply pending events, write a final snapshot, stop the threads (idempotent)."""
        if not self._opened or self._closed:
            return
        with self._state_lock:
            self._closing = True  # new writes fail from here on
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads.clear()
        if self._history is not None:
            try:
                with self._apply_lock:
                    self._apply_pending_locked()
                self.record_history()  # the last window, so a restart loses none of it
            except Exception:  # the history misses a window; closing goes on
                log.exception("recording the last history window failed")
        try:
            self._snapshot(only_if_changed=True)
        finally:
            self._closed = True
            self._log.close()
            self._release_dir_lock()

    @property
    def is_open(self) -> bool:
        return self._opened and not self._closing

    def _check_open(self) -> None:
        if not self.is_open:
            raise RuntimeError("the PolicyStore is not open")

    # -------------------------------------------------------------- durability
    @property
    def storage_failure(self) -> str | None:
        """Why the state dir cannot be written right now (``None`` while it can)."""
        return self._log.failure

    def damage(self, *, unacknowledged: bool = False) -> list[Damage]:
        """Damage found in the state dir by recoveries so far (``serving.quarantine``);
        with ``unacknowledged``, only the errors an operator has not acknowledged."""
        return self._quarantine.unacknowledged() if unacknowledged else self._quarantine.entries()

    def acknowledge_damage(self) -> list[Damage]:
        """Mark every reported damage as seen by an operator (the state is no longer degraded)."""
        done = self._quarantine.acknowledge(self._clock())
        for d in done:
            log.warning("damage acknowledged: %s", d.message())
        return done

    def _acquire_dir_lock(self) -> None:
        fd = os.open(self.state_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InvalidConfig(
                f"state directory {str(self.state_dir)!r} is in use by another process or store"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_dir_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---------------------------------------------------------------- placements
    def put_placement(self, config: PlacementConfig, experiment: ExperimentConfig | None = None) -> bool:
        """Create or replace a placement (durable before return); True if it was created.

        Without ``experiment`` a new placement gets one champion variant with the
        store's default policy and an existing one keeps its experiment. A config over
        the store's limits raises :class:`InvalidConfig` naming the limit, changing nothing.
        """
        self._check_open()
        config = ServicePlacement.of(config)
        check_placement(config, self.limits)
        return self._put_placement(config, experiment)

    def _put_placement(self, config: ServicePlacement, experiment: ExperimentConfig | None) -> bool:
        self._check_open()
        self._learn_pending()  # most pending events are learned before ingest is held up
        with self._state_lock:
            with self._apply_lock:
                old = self._entries.get(config.id)
                if experiment is None:
                    experiment = (
                        old.experiment if old else ExperimentConfig.single(self.default_policy, self.default_params)
                    )
                self._apply_pending_locked()
                entry = build_entry(config, experiment, old)
                body = {
                    "placement": config.id,
                    "config": config.to_dict(),
                    "experiment": experiment.to_dict(),
                }
                lsn = self._log.write(PLACEMENT, encode_json(body))
                self._install(entry)
            self._log.sync_to(lsn)
        return old is None

    def get_placement(self, placement_id: str) -> PlacementConfig:
        return self._entry(placement_id).config

    def list_placements(self) -> list[PlacementConfig]:
        return [e.config for _, e in sorted(self._entries.items())]

    def set_experiment(self, placement_id: str, experiment: ExperimentConfig) -> None:
        """Change a placement's variants or traffic split (durable before return)."""
        # The config is unchanged: a limit lowered since it was created does not refuse it.
        self._put_placement(ServicePlacement.of(self._entry(placement_id).config), experiment)

    def get_experiment(self, placement_id: str) -> ExperimentConfig:
        return self._entry(placement_id).experiment

    def _entry(self, placement_id: str) -> PlacementEntry:
        return placement_entry(self._entries, placement_id)

    def _install(self, entry: PlacementEntry) -> None:
        self._entries = {**self._entries, entry.config.id: entry}

    # ----------------------------------------------------------------- decisions
    def _rng(self) -> np.random.Generator:
        rng = getattr(self._local, "rng", None)
        if rng is None:
            rng = self._local.rng = np.random.default_rng()
        return rng

    def decide(
        self,
        placement_id: str,
        request_id: str,
        context: Mapping[str, Any] | None,
        user_id: str | None = None,
    ) -> DecisionRecord:
        """Network and floor for one request; the variant is chosen by hashing ``user_id``
        (else ``context["user_id"]``, else ``request_id``) with the placement id."""
        entry = self._entry(placement_id)
        assert self._signer is not None
        return decisions.decide(
            entry, request_id, context, user_id, rng=self._rng(), signer=self._signer, limits=self.limits
        )

    def decide_batch(
        self, placement_id: str, requests: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[DecisionRecord]:
        """Decisions for ``(request_id, context)`` pairs, in request order."""
        entry = self._entry(placement_id)
        assert self._signer is not None
        return decisions.decide_batch(entry, requests, rng=self._rng(), signer=self._signer, limits=self.limits)

    def allocation(self, placement_id: str, segment: str | None = None, variant: str = "champion") -> Allocation:
        """Current weights and floors of a variant (``"champion"``: the experiment's champion)."""
        slot = self._entry(placement_id).slot(variant, champion_alias=True)
        with slot.learn_lock:
            alloc = slot.learner.allocation(segment or ALL_SEGMENTS)
        return replace(alloc, model_version=slot.model_version(slot.learner))

    def allocation_plans(
        self, placement_id: str, segment: str | None = None, variant: str = "champion", top: int = TOP_PLANS
    ) -> tuple[Allocation, list[dict]]:
        """:meth:`allocation` of a waterfall or auction placement and, read under the same
        lock, its ``top`` most probable plans (:func:`serving.plans.top_plans`)."""
        entry = self._entry(placement_id)
        slot = entry.slot(variant, champion_alias=True)
        with slot.learn_lock:
            alloc = slot.learner.allocation(segment or ALL_SEGMENTS)
            plans = top_plans(slot.learner.table(segment or ALL_SEGMENTS), entry.config.network_ids, top)
        return replace(alloc, model_version=slot.model_version(slot.learner)), plans

    def verify_decision(self, decision_id: str, placement_id: str, network: str, floor_cpm: float) -> Verdict:
        """Whether ``decision_id`` was issued by this service for that placement, network and
        floor (:meth:`serving.decision_ids.DecisionSigner.verify`)."""
        entry = self._entry(placement_id)
        assert self._signer is not None
        return self._signer.verify(decision_id, placement_id, network, floor_cpm, entry.networks)

    def verify_plan_decision(
        self, decision_id: str, placement_id: str, responses: Sequence[tuple[str, float]]
    ) -> Verdict:
        """Whether ``decision_id`` is a plan this service issued for that placement whose offers
        include every (network, floor_cpm) of ``responses``
        (:meth:`serving.decision_ids.DecisionSigner.verify_plan`)."""
        self._entry(placement_id)
        assert self._signer is not None
        return self._signer.verify_plan(decision_id, placement_id, responses)

    def issue_floors_id(self, variant: str, model_version: str, fallback: bool = False) -> str:
        """A floors id for one model group of a Prebid floors document, issued now
        (:meth:`serving.decision_ids.DecisionSigner.issue_floors`)."""
        assert self._signer is not None
        return self._signer.issue_floors(variant, model_version, issued_at=self._clock(), fallback=fallback)

    def built_at(self, placement_id: str, variant: str = "champion") -> float:
        """When (epoch seconds) the variant's served model was last built: its last refit, or
        when it was loaded, swapped or created in this process."""
        return self._entry(placement_id).slot(variant, champion_alias=True).built_at

    def policy_state(self, placement_id: str, variant: str = "champion") -> dict[str, np.ndarray]:
        """A copy of a variant's live policy state (``bandit.save_state`` / ``swap_model`` input)."""
        slot = self._entry(placement_id).slot(variant, champion_alias=True)
        with slot.learn_lock:
            return slot.learner.state()

    def segments(self, placement_id: str, variant: str = "champion") -> list[str]:
        """Segments for which a variant has learned its own allocation (from its outcomes)."""
        slot = self._entry(placement_id).slot(variant, champion_alias=True)
        with slot.learn_lock:
            return list(slot.learner.segments)

    # -------------------------------------------------------------------- ingest
    def ingest(
        self,
        events: Sequence[object],
        *,
        page: bool = False,
        requests: Sequence[tuple[float, float] | None] | None = None,
    ) -> IngestResult:
        """Validate, de-duplicate and durably log outcome events (raw JSON objects).
        ``page``: posted by a page without the write key, so each event needs a floors id
        that verifies (:mod:`serving.intake`). ``requests``: per event, the request and
        joined revenue it had in the outcome archive, or ``None`` (:func:`serving.intake.prepare_events`).

        Each event is checked on its own: invalid ones are returned in ``rejected`` as
        (index, reason) and change no state. A repeated ``event_id`` (within the window,
        or earlier in the same call) counts once in ``duplicates`` and is not learned again.
        Accepted events are fsynced before this returns and learned within ``apply_every_s``.
        """
        self._check_open()
        signer = self._signer
        assert signer is not None
        pooled: dict[tuple[str, str], int] = {}
        while True:
            entries = self._entries
            prep = prepare_events(
                events,
                entries,
                now=self._clock(),
                max_skew_s=self.max_event_skew_s,
                signer=signer,
                limits=self.limits,
                floors_max_age_s=self.floors_id_max_age_s,
                page=page,
                requests=requests,
            )
            lsn = 0
            with self._state_lock:
                if self._entries is not entries:
                    continue  # a placement changed meanwhile: validate again
                self._check_open()
                # A broken log holds records of unknown durability: answer nothing (not even
                # "duplicate") until they are re-written.
                self._log.check_writable()
                now = self._clock()
                hashes = event_hashes(prep.event_ids)
                self._dedupe.expire(now)
                dup = ~first_occurrences(hashes) | self._dedupe.contains(hashes)
                keep = ~dup
                n_keep = int(keep.sum())
                accepted, duplicates = prep.counts(keep)
                if n_keep:
                    # Segments beyond the limits are learned at their pooled level; admitted
                    # here, in log order, and taken back if the log refuses the record.
                    pooled, admitted = prep.admit_segments(keep, entries, self.limits)
                    # A later notice of a plan decision joins the request of its first one
                    # (serving.intake): read from the window before this call's ids join it.
                    record = prep.record(now, hashes, keep, prep.joins(keep, hashes, self._dedupe.contains))
                    try:
                        lsn = self._log.write(EVENTS, record.encode())
                    except BaseException:
                        for index, taken in admitted:
                            index.undo(taken)
                        raise
                    self._dedupe.add(record.event_hash, now)
                    self._applier.enqueue(lsn, record)
                    self._count(written=n_keep)
                elif len(keep):
                    lsn = self._log.last_lsn  # duplicates are acknowledged once their first copy is durable
            break
        if lsn:
            self._log.sync_to(lsn)
        for (placement_id, limit), n in pooled.items():
            entries[placement_id].segments.count(limit, OUTCOME, n)
        if n_keep:
            self._last_accepted_at = self._clock()
        self._count(
            accepted=accepted,
            duplicate=duplicates,
            rejected=len(prep.rejected),
            unverified_decision=prep.unverified,
            refused_floors_id=prep.refused_ids,
            removed_variant=prep.removed_variant,
        )
        if prep.unverified:
            log.warning(
                "outcome decision ids not verified; events learned without propensities",
                extra={"fields": {"events": prep.unverified, "first_reason": prep.first_unverified}},
            )
        return IngestResult(accepted, duplicates, prep.rejected, prep.refused_ids)

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                self._counts[k] += v

    # ------------------------------------------------------------------ applying
    def flush(self) -> int:
        """Learn every accepted event now (instead of at the next applier pass); returns
        how many events were applied."""
        self._check_open()
        with self._apply_lock:
            n = self._apply_pending_locked()
            self._refit_stale()
            return n

    def _learn_pending(self) -> None:
        """Learn the accepted events now, leaving refits to the applier (before a change that
        holds ingest up: a refit backlog after a restart must not hold up a placement change)."""
        with self._apply_lock:
            self._apply_pending_locked()

    def _apply_loop(self) -> None:
        """Apply pending events every ``apply_every_s``, or, when refits take longer than
        that, wait as long as the last pass took: the applier then uses at most half the
        interpreter, leaving the rest to ingest and decisions, and learns bigger groups."""
        wait = self.apply_every_s
        trimmed = time.perf_counter()
        while not self._stop.wait(wait):
            started = time.perf_counter()
            try:
                with self._apply_lock:
                    self._apply_pending_locked()
                    self._refit_stale(self.refit_every_s, self.refit_budget_s)
            except Exception:  # the applier must survive and retry
                log.exception("applying outcome events failed")
            if started - trimmed >= TRIM_EVERY_S:
                return_free_memory()
                trimmed = started
            wait = max(self.apply_every_s, time.perf_counter() - started)

    def _apply_pending_locked(self) -> int:
        """Apply all records written so far as one group and mark it in the log."""
        return self._applier.apply_pending(self._entries)

    def _apply_group(self, records: Sequence[tuple[int, EventRecord]]) -> int:
        """Learn ``records`` as one group (:meth:`serving.applier.Applier.apply_group`)."""
        return self._applier.apply_group(records, self._entries)

    def _apply_groups(self, groups: Sequence[Sequence[tuple[int, EventRecord]]]) -> int:
        """Learn consecutive live groups as one (:meth:`serving.applier.Applier.apply_groups`)."""
        return self._applier.apply_groups(groups, self._entries)

    def _refit_stale(self, min_age_s: float = 0.0, budget_s: float = math.inf) -> None:
        """Refit and publish the stale segments (:meth:`serving.applier.Applier.refit_stale`)."""
        self._applier.refit_stale(self._entries, min_age_s, budget_s)

    # ------------------------------------------------------------------- models
    def swap_model(self, placement_id: str, variant: str, state: Mapping[str, np.ndarray]) -> str:
        """Replace a variant's live policy by ``bandit.policy_from_state(state)``, atomically:
        decisions switch from the old policy to the new one between two requests.

        The state's placement must have the same networks (ids, bounds, shares) and
        segment fields as the placement; its id may differ (it is rewritten). The
        variant's outcome counters are kept. Returns the new model version.
        """
        self._check_open()
        entry = self._entry(placement_id)
        entry.slot(variant)
        check_model_state(
            state,
            entry.config,
            now=self._clock(),
            max_skew_s=self.max_event_skew_s,
            max_segments=entry.segments.limit(self.limits),
        )
        normalised = normalise_state(state, entry.config)
        self._learn_pending()
        with self._state_lock:
            with self._apply_lock:
                self._apply_pending_locked()
                entry = self._entry(placement_id)
                normalised = normalise_state(state, entry.config)
                entry.slot(variant)
                payload = encode_with_state({"placement": placement_id, "variant": variant}, normalised)
                lsn = self._log.write(MODEL, payload)
                version = self._install_model(placement_id, variant, normalised)
            self._log.sync_to(lsn)
        return version

    def _install_model(self, placement_id: str, variant: str, state: Mapping[str, np.ndarray]) -> str:
        entry, version = with_model(self._entry(placement_id), variant, state)
        self._install(entry)
        return version

    # ----------------------------------------------------------------- reporting
    def experiment_report(self, placement_id: str) -> dict:
        """Per variant: decisions, outcome events (requests), revenue per request (CPM)
        and, against the champion, the lift with its 95% CI and p-value (Welch / Fieller,
        :func:`bandit.abstats.unpaired_lift`; ``None`` until both have >= 2 events)."""
        return report.experiment_report(placement_id, self._entry(placement_id))

    def metrics(self) -> dict:
        """Counters and gauges for ``/metrics`` (event counts are since this process started;
        requests and revenue per request cover everything learned)."""
        with self._stats_lock:
            counts = dict(self._counts)
        entries = self._entries
        age = None if self._snapshot_time is None else max(self._clock() - self._snapshot_time, 0.0)
        with self._state_lock:  # ingest changes the window under this lock
            dedupe_entries, dedupe_bytes = len(self._dedupe), self._dedupe.nbytes
        return report.metrics_snapshot(
            counts=counts,
            entries=entries,
            log=self._log,
            snapshot_lsn=self._snapshot_lsn,
            snapshot_age=age,
            dedupe_entries=dedupe_entries,
            dedupe_bytes=dedupe_bytes,
            damage=self._quarantine.entries(),
            limits=self.limits,
        )

    # ------------------------------------------------------------------- history
    def history(self, placement_id: str, segment: str = ALL_SEGMENTS, since: float | None = None) -> dict:
        """The console's time series of one placement and segment after ``since`` (epoch
        seconds): points, alarms, the segments recorded and the data health
        (:meth:`serving.history.HistoryRecorder.read`)."""
        entry = self._entry(placement_id)
        history = self._history or HistoryRecorder(self.state_dir / "history")  # none kept: an empty one
        return {
            "placement": placement_id,
            "segment": segment,
            "every_s": self.history_every_s,
            "segments": history.segments(placement_id) or [ALL_SEGMENTS],
            "champion": entry.champion,
            **history.read(placement_id, segment, since),
            "health": self.data_health(),
        }

    def data_health(self) -> dict:
        """Service-wide: events written but not learned yet (log lag), events accepted,
        rejected and duplicate since this process started, and when events were last accepted."""
        with self._stats_lock:
            counts = dict(self._counts)
        return {
            "log_lag_events": counts["written"] - counts["applied"],
            "events_accepted_total": counts["accepted"],
            "events_rejected_total": counts["rejected"],
            "events_duplicate_total": counts["duplicate"],
            "last_accepted_at": self._last_accepted_at,
            "now": self._clock(),
        }

    def _take_windows(self) -> list[tuple[str, PlacementEntry, WindowTally, list[ChangeAlarm]]]:
        """Per placement: the outcomes and change alarms of all its variants since the last take."""
        taken = []
        for placement_id, entry in self._entries.items():
            window, alarms = WindowTally(), []
            for slot in entry.slots.values():
                with slot.learn_lock:
                    window.merge(slot.window.take())
                    alarms += slot.learner.take_alarms()
            taken.append((placement_id, entry, window, alarms))
        return taken

    def record_history(self) -> None:
        """One history point per recorded series of every placement (:mod:`serving.history`)."""
        history = self._history
        assert history is not None
        now = self._clock()
        for placement_id, entry, window, alarms in self._take_windows():
            slot = entry.slot(entry.champion)
            allocations = {}
            for segment in history.segments_to_record(placement_id, window):
                with slot.learn_lock:
                    allocation = slot.learner.allocation(segment)
                allocations[segment] = {n.network: (n.weight, n.floor_cpm) for n in allocation.networks}
            history.record(now, placement_id, window, alarms, allocations, _experiment_figures(placement_id, entry))

    def _history_loop(self) -> None:
        assert self.history_every_s is not None
        while not self._stop.wait(self.history_every_s):
            try:
                self.record_history()
            except Exception:  # the console misses a point; the next tick tries again
                log.exception("recording the history failed")

    # ----------------------------------------------------------------- snapshots
    def snapshot(self, *, full: bool = False) -> None:
        """Write a snapshot now — a delta of the current chain, or with ``full`` (or when a
        new chain is due) a base — and compact the log behind the older base kept."""
        self._check_open()
        self._snapshot(only_if_changed=False, full=full)

    def _snapshot_loop(self) -> None:
        interval = min(1.0, max(self.snapshot_every_s / 4.0, 0.01))
        while not self._stop.wait(interval):
            try:
                if not self._log.probe():  # while writes fail: notice when they work again
                    continue
                if self._log.last_lsn <= self._snapshot_lsn:
                    continue
                with self._stats_lock:
                    since = self._counts["written"] - self._snapshot_written
                age = self._clock() - (self._snapshot_time or 0.0)
                if age >= self.snapshot_every_s or since >= self.snapshot_every_events:
                    self._snapshot(only_if_changed=True)
            except Exception as exc:  # keep trying; the log still holds everything
                self._count(snapshot_failures=1)
                if isinstance(exc, (OSError, StorageFailure)):
                    log.error("snapshot failed (older snapshots and the log are kept): %s", exc)
                else:
                    log.exception("snapshot failed")

    def _snapshot(self, *, only_if_changed: bool, full: bool = False) -> None:
        with self._snapshot_lock:
            with self._apply_lock:
                self._apply_pending_locked()  # most pending events are learned before ingest is held up
            try:
                capture = self._capture(only_if_changed=only_if_changed, full=full)
                if capture is not None:
                    self._write_snapshot(capture)
            except BaseException:
                self._chain = None  # the learners' changes since the last file are lost: start a new chain
                raise
            finally:
                capture = None  # its arrays (a base: the whole policy) are freed before the trim
                return_free_memory()

    def _capture(self, *, only_if_changed: bool, full: bool) -> SnapshotCapture | None:
        """What the next snapshot holds. Ingest waits while pending events are applied and the
        log position and de-duplication additions are read; the applier also while the
        learners' states or changes are copied; decisions never."""
        self._state_lock.acquire()
        self._apply_lock.acquire()
        try:
            try:
                self._apply_pending_locked()
                # Everything the snapshot covers is archived before its log segments go.
                try:
                    self._applier.flush_archive()
                except OSError as exc:
                    raise storage_failure(exc, "writing the outcome archive") from None
                covered = self._log.last_lsn
                if only_if_changed and covered == self._snapshot_lsn and self._snapshot_time is not None:
                    return None
                chain = self._chain
                base = full or chain is None or covered <= chain.end_lsn or self._chain_full(chain)
                frozen = self._dedupe.frozen() if base else None
                added = self._dedupe.take_added()
                with self._stats_lock:
                    written = self._counts["written"]
            finally:
                self._state_lock.release()
            meta, arrays = snapshots.capture_live(self._entries, self._applier.stale_segments, base=base)
        finally:
            self._apply_lock.release()
        if not base:
            arrays.update(added)
        return SnapshotCapture(covered, base, meta, arrays, written, frozen)

    def _chain_full(self, chain: ChainOnDisk) -> bool:
        """Whether the next snapshot starts a new chain: enough deltas, or bytes of them."""
        many = chain.deltas >= self.snapshot_max_deltas
        return many or chain.delta_bytes >= self.snapshot_delta_share * chain.base_bytes

    def _write_snapshot(self, capture: SnapshotCapture) -> None:
        """Write a captured snapshot (no store lock held: decisions, ingest and learning go on),
        read it back, and extend the chain with it; after a base, prune and compact the log."""
        if capture.dedupe is not None:
            capture.arrays.update(capture.dedupe.state())
        self._log.sync_to(capture.covered)
        chain = self._chain
        base_lsn = None if capture.base or chain is None else chain.base_lsn
        prev_lsn = None if base_lsn is None or chain is None else chain.end_lsn
        now = self._clock()
        path = snapshots.snapshot_path(self._snap_dir, capture.covered, base_lsn)
        if self._before_snapshot_write is not None:
            self._before_snapshot_write(path)
        try:
            snapshots.write_snapshot(
                self._snap_dir,
                capture.covered,
                capture.meta,
                capture.arrays,
                fsync=self.fsync,
                created=now,
                base_lsn=base_lsn,
                prev_lsn=prev_lsn,
            )
        except OSError as exc:  # nothing older was touched; the log still holds everything
            raise storage_failure(exc, "writing a snapshot") from None
        try:
            snapshots.read_snapshot(path, arrays=False)  # only a file that reads back joins the chain
        except recovery.READ_ERRORS as exc:
            path.unlink(missing_ok=True)
            raise StorageFailure(f"snapshot {path.name} did not read back ({exc}); the log keeps everything") from None
        size = path.stat().st_size
        if base_lsn is None:
            self._chain = ChainOnDisk(capture.covered, capture.covered, size)
        else:
            assert chain is not None
            self._chain = replace(
                chain, end_lsn=capture.covered, deltas=chain.deltas + 1, delta_bytes=chain.delta_bytes + size
            )
        self._snapshot_lsn = capture.covered
        self._snapshot_time = now
        self._snapshot_written = capture.written
        if base_lsn is None:
            snapshots.prune(self._snap_dir, keep=SNAPSHOTS_KEPT)
            bases = snapshots.list_bases(self._snap_dir)
            # Segments go only once an older base covers them too: if any file of the newest
            # chain is ever unreadable, the older base, its deltas and the log rebuild everything.
            if len(bases) >= SNAPSHOTS_KEPT:
                self._log.compact(bases[0][0])

    def _restore(self, chain: recovery.Chain) -> recovery.Chain:
        """Install the placements of a snapshot chain; returns the chain as far as it applied."""
        chain, self._entries, stale = recovery.restore_chain(chain, self._quarantine)
        for slot, segments in stale:
            self._applier.mark_stale(slot, segments)
        self._dedupe.load_state(chain.base.arrays)
        for delta in chain.deltas:
            self._dedupe.add_state(delta.arrays)
        self._dedupe.take_added()  # the next delta holds what is added from here on
        self._snapshot_lsn = chain.covered_lsn
        self._snapshot_time = chain.created
        if chain.intact:
            sizes = [d.path.stat().st_size for d in chain.deltas]
            base_bytes = chain.base.path.stat().st_size
            self._chain = ChainOnDisk(chain.base.covered_lsn, chain.covered_lsn, base_bytes, len(sizes), sum(sizes))
        return chain

    # -------------------------------------------------------------------- replay
    def _replay(self, covered_lsn: int) -> None:
        """Re-apply the log after ``covered_lsn`` in the groups it was applied live, merged up to
        ``replay_group_events`` (:func:`serving.recovery.replay`), then learn and mark what came
        after the last marker; refit stale segments for at most ``open_refit_budget_s`` (the
        applier refits the rest in the background)."""
        done = recovery.replay(
            self._log,
            covered_lsn,
            apply_group=self._apply_groups,
            on_placement=self._replay_placement,
            on_model=self._replay_model,
            group_events=self.replay_group_events,
        )
        self._count(written=done.events, replayed=done.events)
        self._log.open()
        # Events after the last marker (a crash): learn them now, in bounded groups, and
        # mark the groups so that a later replay repeats exactly these updates.
        for group in recovery.groups(done.unmarked, REPLAY_GROUP_EVENTS):
            self._apply_group(group)
            self._log.write(APPLIED, encode_applied(group[-1][0]))
        for hashes, t in recovery.group_by_bucket(done.seen, self._dedupe.bucket_seconds):
            self._dedupe.add(hashes, t)
        self._dedupe.expire(self._clock())
        self._refit_stale(budget_s=self.open_refit_budget_s)
        for entry in self._entries.values():
            for slot in entry.slots.values():
                slot.publish()

    def _replay_placement(self, body: dict) -> None:
        config = ServicePlacement.from_dict(body["placement"], body["config"])
        experiment = ExperimentConfig.from_dict(body["experiment"])
        self._install(build_entry(config, experiment, self._entries.get(config.id)))

    def _replay_model(self, header: dict, state: dict[str, np.ndarray]) -> None:
        self._install_model(header["placement"], header["variant"], state)


def _experiment_figures(placement_id: str, entry: PlacementEntry) -> dict[str, list[float | None]] | None:
    """The live experiment's report as history keeps it (:data:`serving.history.EXPERIMENT_FIELDS`
    per variant other than the champion); ``None`` without an experiment (one variant)."""
    if len(entry.experiment.variants) < 2:
        return None
    rows = report.experiment_report(placement_id, entry)["variants"]
    return {name: [row[field] for field in EXPERIMENT_FIELDS] for name, row in rows.items() if name != entry.champion}
