"""The applier: accepted event records learned by the live policies, in groups.

Ingest queues each fsynced events record (:meth:`Applier.enqueue`). A pass
(:meth:`Applier.apply_pending`) takes every queued record as one *group*, splits the
group's events by (placement, variant), updates each variant's learner once with its
:class:`bandit.EventBatch` and writes an ``APPLIED`` marker saying which records formed
the group; replay (:func:`serving.recovery.replay`) hands the same groups, consecutive
ones merged up to a size, to :meth:`Applier.apply_groups`, so a restarted store learns the
same events in the same order (bit-for-bit the same statistics when groups are not merged).

Learning updates the statistics only (``Policy.update(..., refresh=False)``): the
decision tables of the touched segments are marked *stale* and rebuilt by
:meth:`Applier.refit_stale`, live at most every ``refit_every_s`` per variant (refits
cost milliseconds per segment and network, learning statistics microseconds), in slices
of a time budget when many are stale (after a replay: first within the store's open
budget, the rest in the background). A policy that refits lazily (``ts_gmm`` refits a cell once its
new events are a share of its weight, or after a bound of event time) keeps the
segments it has not refit yet stale, so they are looked at again on the next pass.
Every learned record also goes to the outcome archive. The segments learned join
their placement's admitted segments (:mod:`serving.limits`).

The caller holds the store's apply lock around every method except :meth:`enqueue`
(called under the state lock); the applier takes each slot's ``learn_lock``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain, compress

import numpy as np
from numpy.typing import NDArray

from bandit import EventBatch
from bandit.errors import InvalidState, StorageFailure
from serving.archive import OutcomeArchive
from serving.eventlog import EventLog
from serving.live import PlacementEntry, VariantSlot
from serving.records import APPLIED, EventRecord, encode_applied

__all__ = ["Applier", "batch_from_parts", "split_by_variant"]

log = logging.getLogger(__name__)

#: Rows of one events record that belong to one (placement, variant); ``None``: all rows.
Part = tuple[EventRecord, NDArray[np.int64] | None]


class Applier:
    """Queued records, the segments whose decision tables lag their statistics, and the
    ``APPLIED`` marker the disk refused (written with the next one).

    ``count`` adds to the store's counters (``applied``, ``apply_errors``,
    ``removed_variant_skipped``). ``archive`` is set by the store once it holds the
    state directory's lock.
    """

    def __init__(self, log: EventLog, count: Callable[..., None]) -> None:
        self._log = log
        self._count = count
        self.archive: OutcomeArchive | None = None
        self._pending: deque[tuple[int, EventRecord]] = deque()
        self._stale: dict[int, tuple[VariantSlot, set[str]]] = {}
        self._marker_due = 0

    def enqueue(self, lsn: int, record: EventRecord) -> None:
        """Queue an events record written at ``lsn`` for the next pass."""
        self._pending.append((lsn, record))

    # ------------------------------------------------------------------ learning
    def apply_pending(self, entries: Mapping[str, PlacementEntry]) -> int:
        """Apply all records queued so far as one group and mark it in the log."""
        records = []
        while self._pending:
            records.append(self._pending.popleft())
        n = self.apply_group(records, entries) if records else 0
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

    def apply_groups(
        self, groups: Sequence[Sequence[tuple[int, EventRecord]]], entries: Mapping[str, PlacementEntry]
    ) -> int:
        """Learn consecutive groups of records as one (a replay merging the live groups,
        :func:`serving.recovery.replay`); each learner's update count still advances by the
        number of groups that held its events, as live, so model versions carry on as if
        the store had never stopped."""
        updates: dict[tuple[str, str], int] = {}
        for group in groups:
            for key in {key for _, rec in group for key in variant_keys(rec)}:
                updates[key] = updates.get(key, 0) + 1
        return self.apply_group([r for group in groups for r in group], entries, updates=updates)

    def apply_group(
        self,
        records: Sequence[tuple[int, EventRecord]],
        entries: Mapping[str, PlacementEntry],
        *,
        updates: Mapping[tuple[str, str], int] | None = None,
    ) -> int:
        """Update each (placement, variant) learner once with its events from ``records``;
        returns how many events were learned. ``updates``: how many updates each learner's
        count advances by (default one).

        Events of an unknown placement or of a variant removed since are never credited
        to another; a group whose update fails is skipped without stopping the others.
        """
        assert self.archive is not None
        for lsn, rec in records:
            self.archive.add(lsn, rec)
        applied = 0
        for (placement_id, variant), parts in split_by_variant(records).items():
            entry = entries.get(placement_id)
            if entry is None:
                log.error("events for unknown placement %r skipped", placement_id)
                continue
            slot = entry.find_slot(variant)
            if slot is None:  # the variant was removed since: never credit its events to another
                n_skipped = _n_events(parts)
                log.warning("%d events of removed variant %s/%s not learned", n_skipped, placement_id, variant)
                self._count(removed_variant_skipped=n_skipped)
                continue
            try:
                batch = batch_from_parts(entry, parts)
                with slot.learn_lock:
                    touched = slot.learner.update(batch, refresh=False)
                    if updates is not None:
                        slot.learner.updates += updates.get((placement_id, variant), 1) - 1
                    self._stale.setdefault(id(slot), (slot, set()))[1].update(touched)
                    slot.add_outcomes(batch, *request_rewards(parts))
                # Live, ingest admitted these segments already; on replay this rebuilds
                # the placement's admitted segments in log order.
                entry.segments.learned(touched)
            except Exception:  # one bad group must not stop the others
                log.exception("updating %s/%s failed; %d events skipped", placement_id, variant, _n_events(parts))
                self._count(apply_errors=1)
                continue
            applied += len(batch)
        self._count(applied=applied)
        return applied

    def flush_archive(self) -> None:
        """Write the learned records still buffered to the outcome archive (before a
        snapshot lets their log segments go)."""
        assert self.archive is not None
        self.archive.flush()

    # ------------------------------------------------------------------- refits
    def refit_stale(
        self, entries: Mapping[str, PlacementEntry], min_age_s: float = 0.0, budget_s: float = math.inf
    ) -> None:
        """Rebuild the decision tables of segments whose statistics changed, for variants
        last refit at least ``min_age_s`` ago, and publish them to decisions.

        With a finite ``budget_s`` the segments are refit in chunks (sized from the time a
        segment took so far) until the budget is spent; the rest stay stale for the next
        pass, and a variant left unfinished goes to the back of the queue. A backlog (after
        a restart behind many events) is so worked off without holding learning up for long."""
        live = {id(s) for e in entries.values() for s in e.slots.values()}
        now = time.monotonic()
        started = time.perf_counter()
        deadline = started + budget_s
        for key, (slot, segments) in list(self._stale.items()):
            if key not in live:  # slots replaced meanwhile were merged (and refit) into their successor
                del self._stale[key]
                continue
            if now - slot.refit_at < min_age_s:
                continue
            if time.perf_counter() >= deadline:
                break
            todo = sorted(segments)
            done = 0
            begun = time.perf_counter()
            with slot.learn_lock:
                while done < len(todo) and (done == 0 or time.perf_counter() < deadline):
                    chunk = refit_chunk(len(todo) - done, done, time.perf_counter() - begun, deadline)
                    slot.learner.refresh(todo[done : done + chunk])
                    done += chunk
                    slot.publish()
                waiting = set(slot.learner.pending_segments()) | set(todo[done:])  # refit later, when due
            slot.refit_at = now
            del self._stale[key]
            if waiting:
                self._stale[key] = (slot, waiting)  # to the back: the others' turn first next time

    def stale_segments(self, slot: VariantSlot) -> list[str]:
        """Segments of ``slot`` whose tables lag their statistics, sorted."""
        return sorted(self._stale.get(id(slot), (slot, set()))[1])

    def mark_stale(self, slot: VariantSlot, segments: Iterable[str]) -> None:
        """Have the next refit rebuild ``segments`` of ``slot`` (after a snapshot restore)."""
        segments = set(segments)
        if segments:
            self._stale[id(slot)] = (slot, segments)


def refit_chunk(left: int, done: int, spent_s: float, deadline: float) -> int:
    """Segments to refit next: all that are ``left`` without a deadline; else one at first,
    then as many as half the time to the ``deadline`` allows at the pace so far (``done``
    segments in ``spent_s``)."""
    if math.isinf(deadline):
        return left
    if done == 0:
        return 1
    per_segment = max(spent_s / done, 1e-6)
    return max(1, min(left, int((deadline - time.perf_counter()) / per_segment / 2)))


def variant_keys(rec: EventRecord) -> list[tuple[str, str]]:
    """The (placement, variant) pairs an events record holds rows of."""
    if len(rec.placements) == 1 and len(rec.variants) == 1:
        return [(rec.placements[0], rec.variants[0])]
    nv = len(rec.variants)
    combos = np.unique(rec.placement.astype(np.int64) * nv + rec.variant).tolist()
    return [(rec.placements[c // nv], rec.variants[c % nv]) for c in combos]


def split_by_variant(records: Sequence[tuple[int, EventRecord]]) -> dict[tuple[str, str], list[Part]]:
    """The rows of ``records`` by (placement, variant), in order of first appearance."""
    groups: dict[tuple[str, str], list[Part]] = {}
    for _, rec in records:
        if len(rec.placements) == 1 and len(rec.variants) == 1:
            groups.setdefault((rec.placements[0], rec.variants[0]), []).append((rec, None))
            continue
        nv = len(rec.variants)
        combo = rec.placement.astype(np.int64) * nv + rec.variant
        for c in np.unique(combo):
            key = (rec.placements[int(c) // nv], rec.variants[int(c) % nv])
            groups.setdefault(key, []).append((rec, np.flatnonzero(combo == c)))
    return groups


def batch_from_parts(entry: PlacementEntry, parts: Sequence[Part]) -> EventBatch:
    """One :class:`EventBatch` of a placement from rows of several event records.

    Deterministic in its input (segment keys numbered in order of first appearance: part by
    part, each part's keys in the order of its code table), so the live applier and the
    replay build identical batches. The parts' code tables are laid end to end and decoded
    at once (a replay group of 10^6 events names ~10^6 keys: a few C loops over them, not
    a Python step per part).
    """
    tables = [rec.segments for rec, _ in parts]
    sizes = np.fromiter(map(len, tables), np.int64, len(tables))
    start = np.cumsum(sizes) - sizes
    codes, net, floor, filled, revenue, ts = [], [], [], [], [], []  # codes: into the joined tables
    for (rec, rows), at in zip(parts, start.tolist(), strict=True):

        def pick(col: NDArray, rows: NDArray[np.int64] | None = rows) -> NDArray:
            return col if rows is None else col[rows]

        codes.append(pick(rec.segment).astype(np.int64) + at)
        netmap = np.array([entry.networks.get(n, -1) for n in rec.networks], dtype=np.int64)
        net.append(netmap[pick(rec.network)])
        floor.append(pick(rec.floor_cpm))
        filled.append(pick(rec.filled))
        revenue.append(pick(rec.revenue_cpm))
        ts.append(pick(rec.ts))
    network = np.concatenate(net)
    if (network < 0).any():
        raise InvalidState(f"events name networks that placement {entry.config.id!r} no longer has")
    code = np.concatenate(codes)
    used = np.zeros(int(sizes.sum()), dtype=bool)
    used[code] = True  # the table entries some row names, in part then code order
    names = list(compress(chain.from_iterable(tables), used.tolist()))
    order = dict.fromkeys(names)  # distinct keys in order of first appearance
    index = dict(zip(order, range(len(order)), strict=True))
    place = np.fromiter(map(index.__getitem__, names), np.int64, len(names))
    return EventBatch(
        segments=tuple(order),
        segment_index=place[(np.cumsum(used) - 1)[code]],
        network=network,
        floor_cpm=np.concatenate(floor),
        filled=np.concatenate(filled),
        revenue_cpm=np.concatenate(revenue),
        ts=np.concatenate(ts),
    )


def request_rewards(parts: Sequence[Part]) -> tuple[NDArray[np.float64] | None, NDArray[np.float64] | None]:
    """Per row of ``parts`` (as :func:`batch_from_parts` orders them): the revenue of the
    request (decision) the row starts, NaN on a row that starts none (the further rows of an
    outcome with responses: one request however many networks it called; a later OpenRTB
    notice of a plan decision), and what the row adds to a request an earlier row started (a
    later notice, :mod:`serving.intake`; NaN on the others). Each is ``None`` when no record
    has the column: the first then means every row is a request, its own reward."""

    def column(name: str, values: Callable[[EventRecord], NDArray[np.float64]]) -> NDArray[np.float64] | None:
        if all(getattr(rec, name) is None for rec, _ in parts):
            return None
        out = []
        for rec, rows in parts:
            col = values(rec)
            out.append(col if rows is None else col[rows])
        return np.concatenate(out)

    return (
        column("request_revenue_cpm", EventRecord.request_revenues),
        column("joined_revenue_cpm", EventRecord.joined_revenues),
    )


def _n_events(parts: Sequence[Part]) -> int:
    return sum(len(rec) if rows is None else len(rows) for rec, rows in parts)
