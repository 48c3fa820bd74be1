"""Ingest validation: the outcome events of one ingest call, checked one by one against
the live placements, as the columns of one events record.

:func:`prepare_events` checks each raw event on its own (:mod:`serving.validation`:
fields, time, revenue), verifies its decision id (:mod:`serving.decision_ids`) and names
the variant that learns it: the one that made the decision, else the champion. Invalid
events are listed with their index and reason and change nothing. De-duplication and
logging happen afterwards, in the store, under its state lock, and so does
:meth:`PreparedEvents.admit_segments`: the segment each logged event is learned under,
pooled beyond its placement's limits (:mod:`serving.limits`).

An outcome of a waterfall or auction placement may come as one event with ``responses``
(:mod:`serving.plans`): it becomes one row per response, all from the event's index
(``origins``), learned by the variant its plan's decision id names; one bad response
rejects them all. ``accepted`` and ``duplicates`` count events as sent (:meth:`PreparedEvents.counts`).
Such an outcome is one request of the experiment report, earning what the publisher was paid
(:meth:`PreparedEvents.request_revenue`).

**OpenRTB notices of a plan decision** (:mod:`serving.openrtb`: event id ``rtb:<decision_id>``,
one response, a decision id that verifies as a plan) come apart, one per network of the
auction or waterfall, each an outcome of its own. They still make one request: the first
notice learned for the decision starts it, earning what it paid; a later one (of another
network: a billing after a win of the same network is a duplicate) adds what it paid to that
request and starts none (:meth:`PreparedEvents.joins`). "Learned before" is read from the
de-duplication window: a notice joins when the event id of a notice of another network of
the decision, ``rtb:<decision_id>/<network>``, is remembered there or came earlier in the same
call. The verdict is written into the events record (``request_revenue_cpm`` NaN and
``joined_revenue_cpm`` = what it paid), so a replay after a crash counts exactly what the live
store counted, and the window survives restarts (snapshot + replay), so a notice after a
restart joins the request its decision's first notice started before. A notice later than the
window (``dedupe_days``, default 7) starts a request of its own.

**Prebid events** carry the floors id of the model group their auction drew
(:mod:`serving.decision_ids`, :mod:`serving.prebid`) as ``decision_id``
(:func:`floors_attribution`). One that verifies names the variant that learns the event
(propensities 1: every bidder is called and the group fixes the floor of each rule; none
when the group published another variant's floors or Prebid skipped floors in the auction,
which the champion learns). One that does not verify (forged, altered, expired) rejects its
event: nothing is learned from it. From a page (``page``: posted without the write key while
one is set) an event is accepted only with a floors id that verifies: the signature is the
page's credential (:data:`PAGE_NEEDS_FLOORS_ID`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from bandit import MAX_CPM, OutcomeEvent
from bandit.errors import AdbanditError, InvalidOutcome
from serving.decision_ids import DecisionSigner, is_floors_id
from serving.dedupe import event_hashes
from serving.limits import Limits, SegmentIndex
from serving.live import PlacementEntry, placement_entry
from serving.openrtb import EVENT_PREFIX
from serving.plans import check_multi_fields, expand_outcome, request_revenue
from serving.records import EventRecord
from serving.validation import (
    REVENUE_FLOOR_ATOL,
    REVENUE_FLOOR_RTOL,
    check_event_time,
    check_fields,
    check_revenue,
)

__all__ = ["PAGE_NEEDS_FLOORS_ID", "PreparedEvents", "floors_attribution", "page_refusal", "prepare_events"]

#: Default seconds a floors id stays valid (``ADBANDIT_PREBID_ID_MAX_AGE_S``).
FLOORS_ID_MAX_AGE_S = 6 * 3600.0
#: Why an event posted without the write key is refused, and what to do instead.
PAGE_NEEDS_FLOORS_ID = (
    "posted without the write key: an event is accepted only with the decision_id of the Prebid floors "
    "document its auction used (adbandit-prebid.js posts it as the group's modelVersion after '#'); post other "
    "events from a server with 'Authorization: Bearer <write key>' (ADBANDIT_API_KEY)"
)
_NO_PROPENSITIES = (math.nan, math.nan, math.nan)
#: Propensities of a Prebid event of a variant's own floors: (network, floor, floor density).
_PREBID_PROPENSITIES = (1.0, 1.0, math.nan)


@dataclass
class PreparedEvents:
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
    #: The index of the sent event each row comes from (several rows for one with responses).
    origins: list[int] = field(default_factory=list)
    #: Events rejected because their floors id did not verify (or, from a page, had none).
    refused_ids: int = 0
    #: What each sent event with responses earned, by its index: one request of the report.
    paid: dict[int, float] = field(default_factory=dict)
    #: Sent OpenRTB notices of a plan decision, by index: the event ids of the notices of the
    #: decision's other networks (``rtb:<decision_id>/<network>``), which :meth:`joins` looks up.
    notices: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: Request revenue and joined revenue given with single events, by index (rows of the
    #: service's outcome archive ingested again, :func:`prepare_events`'s ``requests``).
    given: dict[int, tuple[float, float]] = field(default_factory=dict)

    def counts(self, keep: NDArray[np.bool_]) -> tuple[int, int]:
        """(accepted, duplicates) counted per sent event: one with responses is accepted if
        any of its rows is kept, a duplicate if none is."""
        if len(self.origins) == len(set(self.origins)):
            n_keep = int(keep.sum())
            return n_keep, len(keep) - n_keep
        kept = {o for o, k in zip(self.origins, keep.tolist(), strict=True) if k}
        sent = set(self.origins)
        return len(kept), len(sent) - len(kept)

    @property
    def event_ids(self) -> list[str]:
        return [r[0] for r in self.rows]

    def admit_segments(
        self, keep: NDArray[np.bool_], entries: Mapping[str, PlacementEntry], limits: Limits
    ) -> tuple[dict[tuple[str, str], int], list[tuple[SegmentIndex, list]]]:
        """Set each row's segment to the one it is learned under, admitting the new segments
        of the kept rows (in order of first appearance) within their placement's limits.

        Returns the kept rows pooled per (placement, limit), and what was admitted per
        placement (:meth:`SegmentIndex.undo` takes it back if the rows are not logged).
        """
        kept = self.rows if keep.all() else [self.rows[i] for i in np.flatnonzero(keep).tolist()]
        mapped: dict[tuple[str, str], tuple[str, str | None]] = {}
        admitted: dict[str, tuple[SegmentIndex, list]] = {}
        pooled: dict[tuple[str, str], int] = {}
        for key in dict.fromkeys((r[1], r[3]) for r in kept):
            placement, segment = key
            index = entries[placement].segments
            if segment in index or not index.fields:
                continue
            taken = admitted.setdefault(placement, (index, []))[1]
            mapped[key] = index.resolve(segment, limits, admit=taken)
        mapped = {k: v for k, v in mapped.items() if v[1] is not None}
        if mapped:
            for i, row in enumerate(self.rows):
                got = mapped.get((row[1], row[3]))
                if got is not None:
                    self.rows[i] = (*row[:3], got[0], *row[4:])
                    if keep[i]:
                        pooled[(row[1], got[1])] = pooled.get((row[1], got[1]), 0) + 1
        return pooled, [v for v in admitted.values() if v[1]]

    def joins(
        self,
        keep: NDArray[np.bool_],
        hashes: NDArray[np.uint64],
        seen: Callable[[NDArray[np.uint64]], NDArray[np.bool_]],
    ) -> NDArray[np.bool_] | None:
        """Per row [n], whether it is a kept notice of a plan decision that an earlier notice
        of the decision already started a request for (module docstring): a notice of another
        network of the decision is remembered (``seen``: the de-duplication window's look-up
        of event hashes) or is an earlier kept notice of this call (``hashes`` [n], ``keep`` [n]).
        ``None`` when no kept row is such a notice."""
        if not self.notices:
            return None
        rows = [i for i, (o, k) in enumerate(zip(self.origins, keep.tolist(), strict=True)) if k and o in self.notices]
        if not rows:
            return None
        others = [event_hashes(self.notices[self.origins[i]]) for i in rows]
        known = seen(np.concatenate(others))
        out = np.zeros(len(self.rows), dtype=bool)
        earlier: set[int] = set()  # hashes of the notices kept so far in this call
        start = 0
        for i, sibling in zip(rows, others, strict=True):
            end = start + len(sibling)
            out[i] = bool(known[start:end].any()) or not earlier.isdisjoint(sibling.tolist())
            earlier.add(int(hashes[i]))
            start = end
        return out

    def request_revenue(
        self, keep: NDArray[np.bool_], joined: NDArray[np.bool_] | None = None
    ) -> tuple[list[float] | None, list[float] | None]:
        """Per kept row, the revenue of the request it starts (NaN on the other rows of an
        event with responses, whose request its first kept row counts, and on a notice that
        joins an earlier one's request) and, when some row joins (``joined`` [n], from
        :meth:`joins`), what each row adds to an earlier request (NaN on the others). Each is
        ``None`` when not needed: the request revenue when every row is an event of its own
        (one row, one request, as in records written before). Values given with an event
        (:attr:`given`) are taken as they are."""
        if not self.paid and not self.given:
            return None, None
        out, added, seen = [], [], set()
        joined_rows = joined.tolist() if joined is not None else [False] * len(self.rows)
        for row, origin, k, j in zip(self.rows, self.origins, keep.tolist(), joined_rows, strict=True):
            if not k:
                continue
            if origin in self.given:
                out.append(self.given[origin][0])
                added.append(self.given[origin][1])
            elif j:
                out.append(math.nan)
                added.append(row[7] if row[8] else 0.0)
            elif origin not in self.paid:
                out.append(row[7] if row[8] else 0.0)
                added.append(math.nan)
            elif origin in seen:
                out.append(math.nan)
                added.append(math.nan)
            else:
                seen.add(origin)
                out.append(self.paid[origin])
                added.append(math.nan)
        return out, (added if any(not math.isnan(a) for a in added) else None)

    def record(
        self,
        ingest_time: float,
        hashes: NDArray[np.uint64],
        keep: NDArray[np.bool_],
        joined: NDArray[np.bool_] | None = None,
    ) -> EventRecord:
        """The kept rows as one columnar log record (``joined`` [n]: :meth:`joins`)."""
        request_revenue, joined_revenue = self.request_revenue(keep, joined)
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
            request_revenue_cpm=request_revenue,
            joined_revenue_cpm=joined_revenue,
        )


def prepare_events(
    events: Sequence[object],
    entries: Mapping[str, PlacementEntry],
    *,
    now: float,
    max_skew_s: float,
    signer: DecisionSigner,
    limits: Limits | None = None,
    floors_max_age_s: float = FLOORS_ID_MAX_AGE_S,
    page: bool = False,
    requests: Sequence[tuple[float, float] | None] | None = None,
) -> PreparedEvents:
    """Validate each event on its own, verify its decision id and name the variant that
    learns it (module docstring); ``now`` is the server's clock in seconds since the epoch.
    ``page``: posted by a page without the write key (only events with a valid floors id).
    ``requests``: per event, ``None`` or the (request revenue, joined revenue) it carried in
    the outcome archive (:mod:`serving.archive`; NaN where none), so an archived waterfall or
    auction outcome ingested again is one request as it was (single events only)."""
    prep = PreparedEvents()
    rows, rejected = prep.rows, prep.rejected
    nan = math.nan
    limits = limits or Limits()
    max_fields, max_value = limits.max_context_fields, limits.max_context_value_chars
    origins = prep.origins
    for i, raw in enumerate(events):
        if page and (refusal := page_refusal(raw, signer, now, floors_max_age_s)):
            prep.refused_ids += 1  # checked first: an event without credential is not validated further
            rejected.append((i, refusal))
            continue
        if isinstance(raw, Mapping) and "responses" in raw:
            try:
                multi, paid, others = _multi_rows(raw, entries, now, max_skew_s, signer, limits, prep)
            except (AdbanditError, TypeError, ValueError) as exc:
                rejected.append((i, str(exc)))
                continue
            prep.paid[i] = paid
            if others is not None:
                prep.notices[i] = others
            rows.extend(multi)
            origins.extend([i] * len(multi))
            continue
        try:
            check_fields(raw, max_fields, max_value)
            ev = OutcomeEvent.from_dict(raw)  # type: ignore[arg-type]
            check_event_time(ev.ts, now, max_skew_s)
            entry = placement_entry(entries, ev.placement)
            if ev.network not in entry.networks:
                entry.config.network_index(ev.network)  # raises UnknownNetwork naming the known ones
            check_revenue(ev, entry.reports_net(ev.network))
            decision_id = ev.decision_id
            if decision_id is not None and not isinstance(decision_id, str):
                raise InvalidOutcome(f"decision_id must be a string, got {decision_id!r}")
            variant, props = entry.champion, (nan, nan, nan)
            if is_floors_id(decision_id):
                variant, props = floors_attribution(ev, entry, signer, now, floors_max_age_s, prep)
            elif decision_id:
                verdict = signer.verify(decision_id, ev.placement, ev.network, ev.floor_cpm, entry.networks)
                if not verdict.ok:
                    prep.unverified += 1
                    prep.first_unverified = prep.first_unverified or f"event {ev.event_id!r}: {verdict.reason}"
                elif entry.find_slot(verdict.variant) is None:
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
        origins.append(i)
        rows.append(_row(ev, variant, segment, props))
        if requests is not None and requests[i] is not None and _request_values(requests[i]):
            prep.given[i] = requests[i]  # type: ignore[assignment]
    return prep


def _request_values(values: tuple[float, float]) -> bool:
    """Whether (request revenue, joined revenue) given with an event can be taken: each NaN
    (none) or a price in [0, MAX_CPM], at most one of them a price (else the row counts as
    the event it is)."""
    ok = [math.isnan(v) or 0.0 <= v <= MAX_CPM for v in values]
    return all(ok) and sum(not math.isnan(v) for v in values) <= 1


def page_refusal(raw: object, signer: DecisionSigner, now: float, max_age_s: float) -> str | None:
    """Why an event a page posted without the write key is refused (None: its floors id
    verifies, so it may be validated and learned as any other)."""
    decision_id = raw.get("decision_id") if isinstance(raw, Mapping) else None
    if not is_floors_id(decision_id) or "responses" in raw:  # type: ignore[operator]
        return PAGE_NEEDS_FLOORS_ID
    verdict = signer.verify_floors(decision_id, now=now, max_age_s=max_age_s)  # type: ignore[arg-type]
    if not verdict.ok:
        return f"decision_id is not a floors id of this service: {verdict.reason}; nothing is learned from this event"
    return None


def floors_attribution(
    ev: OutcomeEvent,
    entry: PlacementEntry,
    signer: DecisionSigner,
    now: float,
    max_age_s: float,
    prep: PreparedEvents,
) -> tuple[str, tuple[float, float, float]]:
    """The variant that learns a Prebid event with a floors id, and its propensities (module
    docstring); :class:`InvalidOutcome` when the id does not verify or its variant is gone."""
    verdict = signer.verify_floors(ev.decision_id, now=now, max_age_s=max_age_s)  # type: ignore[arg-type]
    if not verdict.ok:
        prep.refused_ids += 1
        raise InvalidOutcome(
            f"decision_id is not a floors id of this service: {verdict.reason}; nothing is learned from this event"
        )
    if entry.find_slot(verdict.variant) is None:  # type: ignore[arg-type]
        prep.removed_variant += 1
        raise InvalidOutcome(
            f"decision_id names the floors of variant {verdict.variant!r}, which is not in the experiment of "
            f"placement {ev.placement!r}; its outcomes are not learned or reported"
        )
    if ev.context.get("prebid_floors_skipped") in (True, "true"):
        return entry.champion, _NO_PROPENSITIES  # Prebid ran the auction without floors
    if verdict.fallback:
        return verdict.variant, _NO_PROPENSITIES  # type: ignore[return-value]
    return verdict.variant, _PREBID_PROPENSITIES  # type: ignore[return-value]


def _multi_rows(
    raw: Mapping,
    entries: Mapping[str, PlacementEntry],
    now: float,
    max_skew_s: float,
    signer: DecisionSigner,
    limits: Limits,
    prep: PreparedEvents,
) -> tuple[list[tuple], float, tuple[str, ...] | None]:
    """Rows of one outcome with ``responses`` (all or none: the first problem raises), what
    the outcome earned (:func:`serving.plans.request_revenue`) and, for an OpenRTB notice of
    a plan decision that verifies, the event ids of the notices of its other networks
    (module docstring; ``None`` for any other outcome)."""
    check_multi_fields(raw)
    entry = placement_entry(entries, raw.get("placement"))  # type: ignore[arg-type]
    config = entry.config
    expanded = expand_outcome(raw, config.network_ids, config.mode)
    check_fields({"context": raw.get("context")}, limits.max_context_fields, limits.max_context_value_chars)
    events = [OutcomeEvent.from_dict(e) for e in expanded]
    check_event_time(events[0].ts, now, max_skew_s)
    for k, ev in enumerate(events):
        short = ev.floor_cpm * (1.0 - REVENUE_FLOOR_RTOL) - REVENUE_FLOOR_ATOL - ev.revenue_cpm
        if ev.filled and short > 0 and not entry.reports_net(ev.network):
            raise InvalidOutcome(
                f"responses[{k}]: price_cpm {ev.revenue_cpm:g} is below floor_cpm {ev.floor_cpm:g}; a bid under its "
                'floor is status \'below_floor\' (or declare the network "revenue": "net")'
            )
    decision_id = raw.get("decision_id")
    if decision_id is not None and not isinstance(decision_id, str):
        raise InvalidOutcome(f"decision_id must be a string, got {decision_id!r}")
    variant, props, others = entry.champion, (math.nan, math.nan, math.nan), None
    if decision_id:
        verdict = signer.verify_plan(decision_id, config.id, [(e.network, e.floor_cpm) for e in events])
        if not verdict.ok:
            prep.unverified += 1
            prep.first_unverified = prep.first_unverified or f"event {raw['event_id']!r}: {verdict.reason}"
        elif entry.find_slot(verdict.variant) is None:  # type: ignore[arg-type]
            prep.removed_variant += 1
            raise InvalidOutcome(
                f"decision_id was made by variant {verdict.variant!r}, which is no longer in the "
                f"experiment of placement {config.id!r}; its outcomes are not learned or reported"
            )
        else:
            variant = verdict.variant  # type: ignore[assignment]
            props = (verdict.propensity, verdict.floor_propensity, verdict.floor_density)
            if raw["event_id"] == EVENT_PREFIX + decision_id and len(events) == 1:
                others = tuple(f"{raw['event_id']}/{n}" for n in config.network_ids if n != events[0].network)
    segment = entry.segment_of(events[0].context)
    rows = [_row(ev, variant, segment, props) for ev in events]
    return rows, request_revenue(raw["responses"], config.mode), others


def _row(ev: OutcomeEvent, variant: str | None, segment: str, props: tuple) -> tuple:
    """One prepared event: the columns the store's log and learner take, in order."""
    return (
        ev.event_id, ev.placement, variant, segment, ev.network, ev.ts, ev.floor_cpm, ev.revenue_cpm, ev.filled, *props
    )
