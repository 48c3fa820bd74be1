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
4. Snapshots (periodic, and on ``close``) write every learner's ``state()``, the
   placements, experiments, outcome counters and the de-duplication window, atomically,
   with the log position they cover; log segments covered by the older retained snapshot
   are then deleted.
5. ``open`` loads the newest readable snapshot and replays the log after it, applying the
   events in exactly the groups the ``APPLIED`` markers recorded, so the restarted store
   holds bit-for-bit the statistics of a store that never stopped. Events written after
   the last marker (a crash) are applied on open and marked then.

Placement changes, experiment changes and model swaps are log records too: they first
apply all pending events, then take effect, in log order, on replay as live.

Online A/B: :mod:`serving.variants`. A variant's learned statistics survive a placement
replacement when the network ids and segment fields are unchanged; its outcome counters
(the experiment report) survive while its policy and parameters are unchanged.

Lock order: ``_state_lock`` (writers of the log: ingest, config changes, snapshot
capture) → ``_apply_lock`` (anything that updates or replaces learners) → a slot's
``learn_lock`` → the log's own locks.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit import (
    ALL_SEGMENTS,
    Allocation,
    EventBatch,
    OutcomeEvent,
    PlacementConfig,
    Policy,
    make_policy,
    policy_from_state,
)
from bandit.errors import (
    AdbanditError,
    InvalidConfig,
    InvalidDecisionRequest,
    InvalidOutcome,
    InvalidState,
    StorageFailure,
    UnknownPlacement,
)
from bandit.io import state_meta
from experiments.abstats import unpaired_lift
from serving import recovery, snapshots
from serving.archive import OutcomeArchive
from serving.decision_ids import DecisionSigner, load_or_create_key
from serving.dedupe import DAY_SECONDS, DedupeWindow, event_hashes, first_occurrences
from serving.eventlog import EventLog, storage_failure
from serving.placement_config import ServicePlacement
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
from serving.validation import DEFAULT_MAX_EVENT_SKEW_S, check_event_time, check_fields, check_revenue
from serving.variants import (
    Assigner,
    ExperimentConfig,
    VariantConfig,
    stable_seed,
)

__all__ = [
    "DecisionRecord",
    "ExperimentConfig",
    "IngestResult",
    "PolicyStore",
    "VariantConfig",
]

log = logging.getLogger(__name__)

#: Snapshots kept on disk; log segments are compacted up to the oldest of them.
SNAPSHOTS_KEPT = 2
#: Distinct contexts whose segment key a placement caches.
SEGMENT_CACHE_SIZE = 100_000
#: On open, events written after the last APPLIED marker are learned in groups of this size.
REPLAY_GROUP_EVENTS = 1_000_000


@dataclass(frozen=True)
class DecisionRecord:
    """One served decision, as returned by ``POST /v1/decide``."""

    decision_id: str
    placement: str
    network: str
    floor_cpm: float
    propensity: float
    floor_propensity: float
    segment: str
    variant: str
    model_version: str
    #: Density of log floor given the network (continuous floors), NaN for discrete floors.
    floor_density: float = math.nan

    def to_dict(self) -> dict:
        return {
            "decision_id": self.decision_id,
            "placement": self.placement,
            "network": self.network,
            "floor_cpm": self.floor_cpm,
            "propensity": self.propensity,
            "floor_propensity": self.floor_propensity,
            "segment": self.segment,
            "variant": self.variant,
            "model_version": self.model_version,
        }


@dataclass(frozen=True)
class IngestResult:
    """What ``ingest`` did: events accepted, duplicates dropped, rejected (index, reason)."""

    accepted: int
    duplicates: int
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{"index": i, "error": e} for i, e in self.rejected],
        }


# ---------------------------------------------------------------------- live state
class _Slot:
    """One variant of one placement: its learner, the published copy that decides, and
    its outcome counters (requests, revenue and revenue² per request, in CPM)."""

    __slots__ = (
        "counter_lock",
        "decisions",
        "learn_lock",
        "learner",
        "refit_at",
        "requests",
        "revenue",
        "revenue_sq",
        "served",
        "tag",
        "variant",
    )

    def __init__(self, variant: VariantConfig, learner: Policy, tag: str = "") -> None:
        self.variant = variant
        self.learner = learner
        self.tag = tag
        self.learn_lock = threading.Lock()
        self.counter_lock = threading.Lock()
        self.requests = 0
        self.revenue = 0.0
        self.revenue_sq = 0.0
        self.decisions = 0
        self.served = serving_copy(learner)
        self.refit_at = time.monotonic()

    def publish(self) -> None:
        self.served = serving_copy(self.learner)

    def model_version(self, policy: Policy | None = None) -> str:
        version = (policy or self.served).model_version
        return f"{version}+{self.tag}" if self.tag else version

    def add_outcomes(self, batch: EventBatch) -> None:
        reward = np.where(batch.filled, batch.revenue_cpm, 0.0)
        self.requests += len(reward)
        self.revenue += float(reward.sum())
        self.revenue_sq += float(np.dot(reward, reward))

    def take_counters(self, other: _Slot) -> None:
        self.requests, self.revenue, self.revenue_sq = (
            other.requests,
            other.revenue,
            other.revenue_sq,
        )
        self.decisions = other.decisions

    def count_decisions(self, n: int) -> None:
        with self.counter_lock:
            self.decisions += n


@dataclass(frozen=True)
class _Entry:
    """A placement's live state; replaced as a whole when its config or experiment changes."""

    config: PlacementConfig
    experiment: ExperimentConfig
    slots: dict[str, _Slot]
    networks: dict[str, int]
    assign: Assigner
    champion: str
    segment_cache: dict[tuple, str] = field(default_factory=dict)

    @classmethod
    def create(cls, config: PlacementConfig, experiment: ExperimentConfig, slots: dict[str, _Slot]) -> _Entry:
        return cls(
            config,
            experiment,
            slots,
            {n: i for i, n in enumerate(config.network_ids)},
            Assigner(config.id, experiment),
            experiment.champion,
        )

    def segment_of(self, context: Mapping[str, Any]) -> str:
        """``config.segment_of(context)``, cached for contexts of string values."""
        fields = self.config.segment_by
        if not fields:
            return ALL_SEGMENTS
        key = tuple(map(context.get, fields))
        segment = self.segment_cache.get(key)
        if segment is None:
            segment = self.config.segment_of(context)
            # Only str/None keys: True == 1 == 1.0 would otherwise share an entry.
            if len(self.segment_cache) < SEGMENT_CACHE_SIZE and all(v is None or type(v) is str for v in key):
                self.segment_cache[key] = segment
        return segment

    def reports_net(self, network: str) -> bool:
        config = self.config
        return isinstance(config, ServicePlacement) and config.reports_net(network)


def serving_copy(policy: Policy) -> Policy:
    """A copy of ``policy`` for deciding while the original keeps learning.

    It shares the statistics object (``decide`` reads only the tables), so the copy
    costs the decision tables, not the statistics.
    """
    memo: dict[int, Any] = {id(policy.stats): policy.stats, id(policy.placement): policy.placement}
    return copy.deepcopy(policy, memo)


def state_tag(state: Mapping[str, np.ndarray]) -> str:
    """8 hex digits identifying a policy state (names its swapped-in model version)."""
    h = hashlib.blake2b(digest_size=4)
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass
class _Prepared:
    """Validated events of one ingest call, as columns, plus the rejected ones."""

    #: One tuple per valid event: (event_id, placement, variant, segment, network, ts,
    #: floor_cpm, revenue_cpm, filled, propensity, floor_propensity, floor_density).
    rows: list[tuple] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    #: Accepted events whose decision id did not verify (learned without propensities).
    unverified: int = 0
    #: Rejected events whose decision came from a variant no longer in the experiment.
    removed_variant: int = 0
    first_unverified: str = ""

    @property
    def event_ids(self) -> list[str]:
        return [r[0] for r in self.rows]

    def record(self, ingest_time: float, hashes: NDArray[np.uint64], keep: NDArray[np.bool_]) -> EventRecord:
        """The kept rows as one columnar log record."""
        rows = self.rows if keep.all() else [self.rows[i] for i in np.flatnonzero(keep).tolist()]
        _, placement, variant, segment, network, ts, floor, revenue, filled, prop, floor_prop, density = (
            zip(*rows, strict=True) if rows else ((),) * 12
        )
        return EventRecord.from_columns(
            ingest_time,
            placement=placement,
            variant=variant,
            segment=segment,
            network=network,
            event_hash=hashes[keep],
            ts=ts,
            floor_cpm=floor,
            revenue_cpm=revenue,
            filled=filled,
            propensity=prop,
            floor_propensity=floor_prop,
            floor_density=density,
        )


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
        segment_max_bytes: int = 64 * 2**20,
        apply_every_s: float = 0.05,
        refit_every_s: float = 1.0,
        archive_part_events: int = 500_000,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
        max_event_skew_s: float = DEFAULT_MAX_EVENT_SKEW_S,
        decision_key: bytes | None = None,
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
        self.apply_every_s = float(apply_every_s)
        self.refit_every_s = float(refit_every_s)
        self.fsync = bool(fsync)
        self._clock = clock
        if not (max_event_skew_s >= 0):
            raise InvalidConfig(f"max_event_skew_s must be >= 0, got {max_event_skew_s}")
        self.max_event_skew_s = float(max_event_skew_s)
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
        self._marker_due = 0  # an APPLIED marker the disk refused, written at the next chance
        self._snap_dir = self.state_dir / "snapshots"
        self._archive_part_events = int(archive_part_events)
        self._archive: OutcomeArchive | None = None  # made by open(), after the directory lock
        self._dedupe = DedupeWindow(self.dedupe_days * DAY_SECONDS, n_buckets=7)
        self._entries: dict[str, _Entry] = {}
        self._pending: deque[tuple[int, EventRecord]] = deque()
        self._stale: dict[int, tuple[_Slot, set[str]]] = {}
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
            "removed_variant": 0,
            "removed_variant_skipped": 0,
        }
        self._snapshot_lsn = 0
        self._snapshot_time: float | None = None
        self._snapshot_written = 0
        self.open_seconds: float | None = None

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
            self._archive = OutcomeArchive(self.state_dir / "outcomes", self._archive_part_events)
            snap = recovery.load_snapshot(self._snap_dir, self._quarantine)
            if snap is not None:
                self._restore(snap)
            self._replay(snap.covered_lsn if snap else 0)
        except BaseException:
            self._log.close()
            self._release_dir_lock()
            raise
        self._opened = True
        self._stop.clear()
        for target, name in ((self._apply_loop, "applier"), (self._snapshot_loop, "snapshotter")):
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
        store's default policy and an existing one keeps its experiment.
        """
        self._check_open()
        config = ServicePlacement.of(config)
        self.flush()  # most pending events are learned before ingest is held up
        with self._state_lock:
            with self._apply_lock:
                old = self._entries.get(config.id)
                if experiment is None:
                    experiment = (
                        old.experiment if old else ExperimentConfig.single(self.default_policy, self.default_params)
                    )
                self._apply_pending_locked()
                entry = self._build_entry(config, experiment, old)
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
        self.put_placement(self._entry(placement_id).config, experiment)

    def get_experiment(self, placement_id: str) -> ExperimentConfig:
        return self._entry(placement_id).experiment

    def _entry(self, placement_id: str) -> _Entry:
        entry = self._entries.get(placement_id)
        if entry is None:
            raise UnknownPlacement(f"placement {placement_id!r} does not exist")
        return entry

    def _slot(self, entry: _Entry, variant: str) -> _Slot:
        slot = entry.slots.get(variant)
        if slot is None:
            raise InvalidDecisionRequest(
                f"placement {entry.config.id!r} has no variant {variant!r}; variants: {list(entry.slots)}"
            )
        return slot

    def _make_policy(self, config: PlacementConfig, variant: VariantConfig) -> Policy:
        params = {"seed": stable_seed(config.id, variant.name), **variant.params}
        return make_policy(variant.policy, config, **params)

    def _build_entry(self, config: PlacementConfig, experiment: ExperimentConfig, old: _Entry | None) -> _Entry:
        """Slots for ``experiment`` on ``config``, carrying over what ``old`` learned.

        Same config and same policy + params: the slot is kept as is. Same network ids and
        segment fields: a new policy starts from the old one's statistics (``merge``).
        Outcome counters carry over while the policy and its parameters are unchanged.
        """
        keep_learned = (
            old is not None
            and old.config.network_ids == config.network_ids
            and old.config.segment_by == config.segment_by
        )
        slots: dict[str, _Slot] = {}
        for variant in experiment.variants:
            prev = old.slots.get(variant.name) if old is not None else None
            if prev is not None and old.config == config and prev.variant.same_learner(variant):
                prev.variant = variant  # traffic share only
                slots[variant.name] = prev
                continue
            policy = self._make_policy(config, variant)
            if prev is not None and keep_learned:
                with prev.learn_lock:
                    policy.merge(prev.learner)
            slot = _Slot(variant, policy)
            if prev is not None and prev.variant.same_learner(variant):
                slot.take_counters(prev)
            slots[variant.name] = slot
        return _Entry.create(config, experiment, slots)

    def _install(self, entry: _Entry) -> None:
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
        context = context or {}
        key = user_id if user_id is not None else context.get("user_id")
        if key is None:
            if not isinstance(request_id, str) or not request_id:
                raise InvalidDecisionRequest(f"request_id must be a non-empty string, got {request_id!r}")
            key = request_id
        variant = entry.assign(str(key))
        slot = entry.slots[variant]
        served = slot.served
        d = served.decide(context, rng=self._rng())
        slot.count_decisions(1)
        assert self._signer is not None
        return DecisionRecord(
            self._signer.issue(
                placement_id, variant, d.network, d.floor_cpm, d.propensity, d.floor_propensity, d.floor_density
            ),
            placement_id,
            d.network,
            d.floor_cpm,
            d.propensity,
            d.floor_propensity,
            d.segment,
            variant,
            slot.model_version(served),
            d.floor_density,
        )

    def decide_batch(
        self, placement_id: str, requests: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[DecisionRecord]:
        """Decisions for ``(request_id, context)`` pairs, in request order."""
        entry = self._entry(placement_id)
        single = entry.assign.single
        by_variant: dict[str, list[int]] = {}
        contexts = []
        for i, (request_id, context) in enumerate(requests):
            context = context or {}
            key = context.get("user_id")
            if key is None:
                if not isinstance(request_id, str) or not request_id:
                    raise InvalidDecisionRequest(f"requests[{i}]: request_id must be a non-empty string")
                key = request_id
            if single is None:
                by_variant.setdefault(entry.assign(str(key)), []).append(i)
            contexts.append(context)
        if single is not None:
            by_variant[single] = list(range(len(contexts)))
        out: list[DecisionRecord | None] = [None] * len(contexts)
        segment_of = entry.segment_of
        ids = entry.config.network_ids
        for variant, rows in by_variant.items():
            slot = entry.slots[variant]
            served = slot.served
            db = served.decide_batch([segment_of(contexts[i]) for i in rows], rng=self._rng())
            version = slot.model_version(served)
            decision_ids = self._signer.issue_batch(  # type: ignore[union-attr]
                placement_id, variant, ids, db.network, db.floor_cpm, db.propensity, db.floor_propensity,
                db.floor_density,
            )  # fmt: skip
            nets = db.network.tolist()
            floors = db.floor_cpm.tolist()
            props = db.propensity.tolist()
            fprops = db.floor_propensity.tolist()
            segs = db.segment_index.tolist()
            dens = [math.nan] * len(rows) if db.floor_density is None else db.floor_density.tolist()
            for k, i in enumerate(rows):
                out[i] = DecisionRecord(
                    decision_ids[k],
                    placement_id,
                    ids[nets[k]],
                    floors[k],
                    props[k],
                    fprops[k],
                    db.segments[segs[k]],
                    variant,
                    version,
                    dens[k],
                )
            slot.count_decisions(len(rows))
        return out  # type: ignore[return-value]

    def allocation(self, placement_id: str, segment: str | None = None, variant: str = "champion") -> Allocation:
        """Current weights and floors of a variant (``"champion"``: the experiment's champion)."""
        entry = self._entry(placement_id)
        if variant == "champion" and "champion" not in entry.slots:
            variant = entry.champion
        slot = self._slot(entry, variant)
        with slot.learn_lock:
            alloc = slot.learner.allocation(segment or ALL_SEGMENTS)
        return replace(alloc, model_version=slot.model_version(slot.learner))

    def policy_state(self, placement_id: str, variant: str = "champion") -> dict[str, np.ndarray]:
        """A copy of a variant's live policy state (``bandit.save_state`` / ``swap_model`` input)."""
        entry = self._entry(placement_id)
        if variant == "champion" and "champion" not in entry.slots:
            variant = entry.champion
        slot = self._slot(entry, variant)
        with slot.learn_lock:
            return slot.learner.state()

    def segments(self, placement_id: str, variant: str = "champion") -> list[str]:
        """Segments for which a variant has learned its own allocation (from its outcomes)."""
        entry = self._entry(placement_id)
        if variant == "champion" and "champion" not in entry.slots:
            variant = entry.champion
        slot = self._slot(entry, variant)
        with slot.learn_lock:
            return list(slot.learner.segments)

    # -------------------------------------------------------------------- ingest
    def ingest(self, events: Sequence[object]) -> IngestResult:
        """Validate, de-duplicate and durably log outcome events (raw JSON objects).

        Each event is checked on its own: invalid ones are returned in ``rejected`` as
        (index, reason) and change no state. A repeated ``event_id`` (within the window,
        or earlier in the same call) counts once in ``duplicates`` and is not learned again.
        Accepted events are fsynced before this returns and learned within ``apply_every_s``.
        """
        self._check_open()
        while True:
            entries = self._entries
            prep = self._prepare(events, entries)
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
                if n_keep:
                    record = prep.record(now, hashes, keep)
                    lsn = self._log.write(EVENTS, record.encode())
                    self._dedupe.add(record.event_hash, now)
                    self._pending.append((lsn, record))
                    self._count(written=n_keep)
                elif len(keep):
                    lsn = self._log.last_lsn  # duplicates are acknowledged once their first copy is durable
            break
        if lsn:
            self._log.sync_to(lsn)
        self._count(
            accepted=n_keep,
            duplicate=len(keep) - n_keep,
            rejected=len(prep.rejected),
            unverified_decision=prep.unverified,
            removed_variant=prep.removed_variant,
        )
        if prep.unverified:
            log.warning(
                "outcome decision ids not verified; events learned without propensities",
                extra={"fields": {"events": prep.unverified, "first_reason": prep.first_unverified}},
            )
        return IngestResult(n_keep, len(keep) - n_keep, prep.rejected)

    def _prepare(self, events: Sequence[object], entries: Mapping[str, _Entry]) -> _Prepared:
        """Validate each event on its own (:mod:`serving.validation`), verify its decision id
        (:mod:`serving.decision_ids`) and name the variant that learns it."""
        prep = _Prepared()
        rows, rejected = prep.rows, prep.rejected
        now, skew, signer = self._clock(), self.max_event_skew_s, self._signer
        assert signer is not None
        nan = math.nan
        for i, raw in enumerate(events):
            try:
                check_fields(raw)
                ev = OutcomeEvent.from_dict(raw)  # type: ignore[arg-type]
                check_event_time(ev.ts, now, skew)
                entry = entries.get(ev.placement)
                if entry is None:
                    raise UnknownPlacement(f"placement {ev.placement!r} does not exist")
                if ev.network not in entry.networks:
                    entry.config.network_index(ev.network)  # raises UnknownNetwork naming the known ones
                check_revenue(ev, entry.reports_net(ev.network))
                decision_id = ev.decision_id
                if decision_id is not None and not isinstance(decision_id, str):
                    raise InvalidOutcome(f"decision_id must be a string, got {decision_id!r}")
                variant, props = entry.champion, (nan, nan, nan)
                if decision_id:
                    verdict = signer.verify(decision_id, ev.placement, ev.network, ev.floor_cpm, entry.networks)
                    if not verdict.ok:
                        prep.unverified += 1
                        prep.first_unverified = prep.first_unverified or f"event {ev.event_id!r}: {verdict.reason}"
                    elif verdict.variant not in entry.slots:
                        prep.removed_variant += 1
                        raise InvalidOutcome(
                            f"decision_id was made by variant {verdict.variant!r}, which is no longer in the "
                            f"experiment of placement {ev.placement!r}; its outcomes are not learned or reported"
                        )
                    else:
                        variant = verdict.variant
                        props = (verdict.propensity, verdict.floor_propensity, verdict.floor_density)
                segment = entry.segment_of(ev.context)
            except (AdbanditError, TypeError, ValueError) as exc:
                rejected.append((i, str(exc)))
                continue
            rows.append(
                (
                    ev.event_id,
                    ev.placement,
                    variant,
                    segment,
                    ev.network,
                    ev.ts,
                    ev.floor_cpm,
                    ev.revenue_cpm,
                    ev.filled,
                    *props,
                )
            )
        return prep

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

    def _apply_loop(self) -> None:
        """Apply pending events every ``apply_every_s``, or, when refits take longer than
        that, wait as long as the last pass took: the applier then uses at most half the
        interpreter, leaving the rest to ingest and decisions, and learns bigger groups."""
        wait = self.apply_every_s
        while not self._stop.wait(wait):
            started = time.perf_counter()
            try:
                with self._apply_lock:
                    self._apply_pending_locked()
                    self._refit_stale(self.refit_every_s)
            except Exception:  # the applier must survive and retry
                log.exception("applying outcome events failed")
            wait = max(self.apply_every_s, time.perf_counter() - started)

    def _apply_pending_locked(self) -> int:
        """Apply all records written so far as one group and mark it in the log."""
        records = []
        while self._pending:
            records.append(self._pending.popleft())
        n = self._apply_group(records) if records else 0
        upto = records[-1][0] if records else self._marker_due
        if upto:
            try:
                self._log.write(APPLIED, encode_applied(upto))
                self._marker_due = 0
            except StorageFailure:
                # Learned, not marked: the next marker covers this group too (a replay then
                # learns both groups at once; every event still exactly once).
                self._marker_due = upto
        return n

    def _apply_group(self, records: Sequence[tuple[int, EventRecord]]) -> int:
        """Update each (placement, variant) learner once with its events from ``records``.

        The statistics are updated at once (``Policy.update(..., refresh=False)``); the
        decision tables of the touched segments are rebuilt by :meth:`_refit_stale` — live
        at most every ``refit_every_s`` per variant (refits cost milliseconds per segment
        and network, learning statistics microseconds), after a replay once at the end. So
        replay gives bit-for-bit the statistics of the live store.
        """
        groups: dict[tuple[str, str], list[tuple[EventRecord, NDArray[np.int64] | None]]] = {}
        for lsn, rec in records:
            self._archive.add(lsn, rec)
            if len(rec.placements) == 1 and len(rec.variants) == 1:
                groups.setdefault((rec.placements[0], rec.variants[0]), []).append((rec, None))
                continue
            nv = len(rec.variants)
            combo = rec.placement.astype(np.int64) * nv + rec.variant
            for c in np.unique(combo):
                key = (rec.placements[int(c) // nv], rec.variants[int(c) % nv])
                groups.setdefault(key, []).append((rec, np.flatnonzero(combo == c)))
        applied = 0
        entries = self._entries
        for (placement_id, variant), parts in groups.items():
            entry = entries.get(placement_id)
            if entry is None:
                log.error("events for unknown placement %r skipped", placement_id)
                continue
            slot = entry.slots.get(variant)
            if slot is None:  # the variant was removed since: never credit its events to another
                n_skipped = sum(len(r) if rows is None else len(rows) for r, rows in parts)
                log.warning("%d events of removed variant %s/%s not learned", n_skipped, placement_id, variant)
                self._count(removed_variant_skipped=n_skipped)
                continue
            try:
                batch = _batch_from_parts(entry, parts)
                with slot.learn_lock:
                    touched = slot.learner.update(batch, refresh=False)
                    self._stale.setdefault(id(slot), (slot, set()))[1].update(touched)
                    slot.add_outcomes(batch)
            except Exception:  # one bad group must not stop the others
                log.exception(
                    "updating %s/%s failed; %d events skipped",
                    placement_id,
                    variant,
                    sum(len(r) if rows is None else len(rows) for r, rows in parts),
                )
                self._count(apply_errors=1)
                continue
            applied += len(batch)
        self._count(applied=applied)
        return applied

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
        self._slot(entry, variant)
        check_model_state(state, entry.config, now=self._clock(), max_skew_s=self.max_event_skew_s)
        normalised = _normalise_state(state, entry.config)
        self.flush()
        with self._state_lock:
            with self._apply_lock:
                self._apply_pending_locked()
                entry = self._entry(placement_id)
                normalised = _normalise_state(state, entry.config)
                self._slot(entry, variant)
                payload = encode_with_state({"placement": placement_id, "variant": variant}, normalised)
                lsn = self._log.write(MODEL, payload)
                version = self._install_model(placement_id, variant, normalised)
            self._log.sync_to(lsn)
        return version

    def _install_model(self, placement_id: str, variant: str, state: Mapping[str, np.ndarray]) -> str:
        entry = self._entry(placement_id)
        old = self._slot(entry, variant)
        policy = policy_from_state(state)
        meta = state_meta(state)
        params = dict(meta.get("params") or {})
        if meta.get("half_life_hours") not in (None, "inf"):
            params["half_life_hours"] = meta["half_life_hours"]
        config = VariantConfig(variant, old.variant.traffic, meta["policy"], params)
        slot = _Slot(config, policy, tag=state_tag(state))
        slot.take_counters(old)
        experiment = ExperimentConfig(tuple(config if v.name == variant else v for v in entry.experiment.variants))
        self._install(_Entry.create(entry.config, experiment, {**entry.slots, variant: slot}))
        return slot.model_version(policy)

    # ----------------------------------------------------------------- reporting
    def experiment_report(self, placement_id: str) -> dict:
        """Per variant: decisions, outcome events (requests), revenue per request (CPM)
        and, against the champion, the lift with its 95% CI and p-value (Welch / Fieller,
        :func:`experiments.abstats.unpaired_lift`; ``None`` until both have >= 2 events)."""
        entry = self._entry(placement_id)
        sums = {}
        for name, slot in entry.slots.items():
            with slot.learn_lock:
                sums[name] = (slot.requests, slot.revenue, slot.revenue_sq)
        n_c, s_c, q_c = sums[entry.champion]
        variants = {}
        for v in entry.experiment.variants:
            slot = entry.slots[v.name]
            n, s, q = sums[v.name]
            row: dict[str, Any] = {
                "policy": v.policy,
                "traffic": v.traffic,
                "model_version": slot.model_version(),
                "decisions": slot.decisions,
                "requests": n,
                "revenue_per_request": s / n if n else None,
                "lift": None,
                "ci_low": None,
                "ci_high": None,
                "p_value": None,
            }
            if v.name != entry.champion:
                try:
                    r = unpaired_lift(n_c, s_c, q_c, n, s, q)
                except AdbanditError:
                    pass
                else:
                    row.update(
                        lift=_finite_or_none(r.lift),
                        ci_low=_finite_or_none(r.ci_low),
                        ci_high=_finite_or_none(r.ci_high),
                        p_value=_finite_or_none(r.p_value),
                    )
            variants[v.name] = row
        return {"placement": placement_id, "champion": entry.champion, "variants": variants}

    def metrics(self) -> dict:
        """Counters and gauges for ``/metrics`` (event counts are since this process started;
        requests and revenue per request cover everything learned)."""
        with self._stats_lock:
            counts = dict(self._counts)
        placements = {}
        for pid, entry in sorted(self._entries.items()):
            n = sum(s.requests for s in entry.slots.values())
            rev = sum(s.revenue for s in entry.slots.values())
            placements[pid] = {
                "requests": n,
                "revenue_per_request": rev / n if n else 0.0,
                "decisions": sum(s.decisions for s in entry.slots.values()),
                "variants": {
                    name: {
                        "requests": s.requests,
                        "revenue_per_request": s.revenue / s.requests if s.requests else 0.0,
                        "decisions": s.decisions,
                        "model_version": s.model_version(),
                    }
                    for name, s in entry.slots.items()
                },
            }
        age = None if self._snapshot_time is None else max(self._clock() - self._snapshot_time, 0.0)
        with self._state_lock:  # ingest changes the window under this lock
            dedupe_entries, dedupe_bytes = len(self._dedupe), self._dedupe.nbytes
        damage = self._quarantine.entries()
        unacked = [d for d in damage if d.is_error and d.acknowledged is None]
        return {
            "events_accepted_total": counts["accepted"],
            "events_duplicate_total": counts["duplicate"],
            "events_rejected_total": counts["rejected"],
            "events_applied_total": counts["applied"],
            "events_replayed_total": counts["replayed"],
            "apply_errors_total": counts["apply_errors"],
            "events_unverified_decision_total": counts["unverified_decision"],
            "events_removed_variant_total": counts["removed_variant"] + counts["removed_variant_skipped"],
            "log_lag_events": counts["written"] - counts["applied"],
            "log_last_lsn": self._log.last_lsn,
            "log_synced_lsn": self._log.synced_lsn,
            "log_fsyncs_total": self._log.fsyncs,
            "log_segments": len(self._log.segments()),
            "snapshot_lsn": self._snapshot_lsn,
            "snapshot_failures_total": counts["snapshot_failures"],
            "storage_failing": self._log.failure is not None,
            "storage_errors_total": self._log.storage_errors,
            "damage_unacknowledged": len(unacked),
            "damaged_records": sum(d.records_lost or 0 for d in damage if d.is_error),
            "damaged_events": sum(d.events_lost or 0 for d in damage if d.is_error),
            "damaged_events_uncounted": sum(1 for d in damage if d.is_error and d.events_lost is None),
            "quarantined_bytes": sum(d.bytes for d in damage if d.kind != "torn"),
            "torn_tail_bytes": sum(d.bytes for d in damage if d.kind == "torn"),
            "snapshot_age_seconds": age,
            "dedupe_entries": dedupe_entries,
            "dedupe_bytes": dedupe_bytes,
            "decisions_total": sum(p["decisions"] for p in placements.values()),
            "placements": placements,
        }

    # ----------------------------------------------------------------- snapshots
    def snapshot(self) -> None:
        """Write a snapshot now (atomic) and compact the log behind the older one kept."""
        self._check_open()
        self._snapshot(only_if_changed=False)

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

    def _snapshot(self, *, only_if_changed: bool) -> None:
        with self._snapshot_lock:
            with self._apply_lock:
                self._apply_pending_locked()
            with self._state_lock:
                with self._apply_lock:
                    self._apply_pending_locked()
                    # Everything the snapshot covers is archived before its log segments go.
                    try:
                        self._archive.flush()
                    except OSError as exc:
                        raise storage_failure(exc, "writing the outcome archive") from None
                    covered = self._log.last_lsn
                    if only_if_changed and covered == self._snapshot_lsn and self._snapshot_time is not None:
                        return
                    meta, arrays = self._capture()
                    arrays.update(self._dedupe.state())
                    with self._stats_lock:
                        written = self._counts["written"]
            self._log.sync_to(covered)
            now = self._clock()
            try:
                snapshots.write_snapshot(self._snap_dir, covered, meta, arrays, fsync=self.fsync, created=now)
            except OSError as exc:  # nothing older was touched; the log still holds everything
                raise storage_failure(exc, "writing a snapshot") from None
            self._snapshot_lsn = covered
            self._snapshot_time = now
            self._snapshot_written = written
            snapshots.prune(self._snap_dir, keep=SNAPSHOTS_KEPT)
            kept = snapshots.list_snapshots(self._snap_dir)
            # Segments go only once an older snapshot covers them too: if the newest one is
            # ever unreadable, the older one plus the log still rebuild everything.
            if len(kept) >= SNAPSHOTS_KEPT:
                self._log.compact(kept[0][0])

    def _capture(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Meta and arrays of every placement and learner (under the apply lock)."""
        arrays: dict[str, np.ndarray] = {}
        placements = []
        for p, (pid, entry) in enumerate(sorted(self._entries.items())):
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
                        "stale": sorted(self._stale.get(id(slot), (slot, set()))[1]),
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

    def _restore(self, snap: snapshots.Snapshot) -> None:
        entries = {}
        for p in snap.meta["placements"]:
            config = ServicePlacement.from_dict(p["placement"], p["config"])
            experiment = ExperimentConfig.from_dict(p["experiment"])
            slots = {}
            for s in p["slots"]:
                slot = _Slot(
                    experiment.variant(s["variant"]),
                    policy_from_state(snap.prefixed(s["prefix"])),
                    s["tag"],
                )
                slot.requests = int(s["requests"])
                slot.revenue = float(s["revenue"])
                slot.revenue_sq = float(s["revenue_sq"])
                slot.decisions = int(s.get("decisions", 0))
                if s.get("stale"):
                    self._stale[id(slot)] = (slot, set(s["stale"]))
                slots[slot.variant.name] = slot
            entries[config.id] = _Entry.create(config, experiment, slots)
        self._entries = entries
        self._dedupe.load_state(snap.arrays)
        self._snapshot_lsn = snap.covered_lsn
        self._snapshot_time = snap.created

    # -------------------------------------------------------------------- replay
    def _replay(self, covered_lsn: int) -> None:
        """Re-apply the log after ``covered_lsn`` exactly as it was applied live
        (:func:`serving.recovery.replay`), then learn and mark what came after the last marker."""
        done = recovery.replay(
            self._log,
            covered_lsn,
            apply_group=self._apply_group,
            on_placement=self._replay_placement,
            on_model=self._replay_model,
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
        self._refit_stale()
        for entry in self._entries.values():
            for slot in entry.slots.values():
                slot.publish()

    def _replay_placement(self, body: dict) -> None:
        config = ServicePlacement.from_dict(body["placement"], body["config"])
        experiment = ExperimentConfig.from_dict(body["experiment"])
        self._install(self._build_entry(config, experiment, self._entries.get(config.id)))

    def _replay_model(self, header: dict, state: dict[str, np.ndarray]) -> None:
        self._install_model(header["placement"], header["variant"], state)

    def _refit_stale(self, min_age_s: float = 0.0) -> None:
        """Rebuild the decision tables of segments whose statistics changed, for variants
        last refit at least ``min_age_s`` ago, and publish them to decisions."""
        live = {id(s) for e in self._entries.values() for s in e.slots.values()}
        now = time.monotonic()
        for key, (slot, segments) in list(self._stale.items()):
            if key not in live:  # slots replaced meanwhile were merged (and refit) into their successor
                del self._stale[key]
                continue
            if now - slot.refit_at < min_age_s:
                continue
            with slot.learn_lock:
                slot.learner.refresh(sorted(segments))
                slot.publish()
            slot.refit_at = now
            del self._stale[key]


def _batch_from_parts(entry: _Entry, parts: Sequence[tuple[EventRecord, NDArray[np.int64] | None]]) -> EventBatch:
    """One :class:`EventBatch` of a placement from rows of several event records.

    Deterministic in its input (segment keys numbered in order of first appearance), so
    the live applier and the replay build identical batches.
    """
    keys: dict[str, int] = {}
    seg, net, floor, filled, revenue, ts = [], [], [], [], [], []
    for rec, rows in parts:

        def pick(col: NDArray, rows: NDArray[np.int64] | None = rows) -> NDArray:
            return col if rows is None else col[rows]

        codes, inverse = np.unique(pick(rec.segment), return_inverse=True)
        remap = np.fromiter(
            (keys.setdefault(rec.segments[c], len(keys)) for c in codes.tolist()),
            np.int64,
            len(codes),
        )
        seg.append(remap[inverse.reshape(-1)])
        netmap = np.array([entry.networks.get(n, -1) for n in rec.networks], dtype=np.int64)
        net.append(netmap[pick(rec.network)])
        floor.append(pick(rec.floor_cpm))
        filled.append(pick(rec.filled))
        revenue.append(pick(rec.revenue_cpm))
        ts.append(pick(rec.ts))
    network = np.concatenate(net)
    if (network < 0).any():
        raise InvalidState(f"events name networks that placement {entry.config.id!r} no longer has")
    return EventBatch(
        segments=tuple(keys),
        segment_index=np.concatenate(seg),
        network=network,
        floor_cpm=np.concatenate(floor),
        filled=np.concatenate(filled),
        revenue_cpm=np.concatenate(revenue),
        ts=np.concatenate(ts),
    )


def _normalise_state(state: Mapping[str, np.ndarray], config: PlacementConfig) -> dict[str, np.ndarray]:
    """``state`` with its placement set to ``config``, after checking the networks match."""
    policy = policy_from_state(state)  # checks schema and policy name
    theirs = policy.placement
    if theirs.networks != config.networks or theirs.segment_by != config.segment_by:
        raise InvalidState(
            f"model state is for networks {list(theirs.network_ids)} "
            f"segmented by {list(theirs.segment_by)}; "
            f"placement {config.id!r} has networks {list(config.network_ids)} segmented by "
            f"{list(config.segment_by)} (bounds and shares must match too)"
        )
    meta = state_meta(state)
    meta["placement_id"] = config.id
    meta["placement"] = config.to_dict()
    return {**{k: np.asarray(v) for k, v in state.items()}, "meta": np.array(json.dumps(meta))}
