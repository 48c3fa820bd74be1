"""The online A/B report and the ``/metrics`` snapshot, as pure functions of live state.

* :func:`experiment_report` — per variant of one placement: decisions, outcome events
  (requests), revenue per request (CPM) and, against the champion, the lift of revenue
  per request with its 95% CI and p-value (Welch / Fieller,
  :func:`bandit.abstats.unpaired_lift`; ``None`` until both have >= 2 events) and an
  always-valid p-value (mixture SPRT, :func:`bandit.abstats.unpaired_msprt_p_value`). A
  variant's counters are its sums n, Σr and Σr² of per-request revenue r (0 when unfilled):
  a waterfall or auction decision is one request, whether its outcome came as one event with
  ``responses`` or as OpenRTB notices one per network (:mod:`serving.intake`).
* :func:`allocation_metrics` — each placement's champion weights and floors per network.
* :func:`metrics_snapshot` — the store's counters and gauges: event counts, event log,
  snapshots, storage damage, de-duplication window, per placement / variant traffic, and
  per placement its segments, their limit and the segments pooled by a limit
  (:mod:`serving.limits`).

They read the store's state and change nothing; the store gathers the inputs under its
locks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bandit.abstats import unpaired_lift, unpaired_msprt_p_value
from bandit.errors import AdbanditError
from serving.eventlog import EventLog
from serving.limits import Limits
from serving.live import PlacementEntry
from serving.quarantine import Damage

__all__ = ["allocation_metrics", "damage_metrics", "experiment_report", "metrics_snapshot", "placement_metrics"]


def experiment_report(placement_id: str, entry: PlacementEntry) -> dict:
    """Per variant of ``entry``: traffic, decisions, requests, revenue per request and
    the lift against the champion (module docstring)."""
    sums = {}
    for name, slot in entry.slots.items():
        with slot.learn_lock:
            sums[name] = (slot.requests, slot.revenue, slot.revenue_sq)
    n_c, s_c, q_c = sums[entry.champion]
    variants = {}
    for v in entry.experiment.variants:
        slot = entry.slot(v.name)
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
            "p_value_always_valid": None,
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
                    p_value_always_valid=_finite_or_none(unpaired_msprt_p_value(n_c, s_c, q_c, n, s, q)),
                )
        variants[v.name] = row
    return {"placement": placement_id, "champion": entry.champion, "variants": variants}


def placement_metrics(entries: Mapping[str, PlacementEntry], limits: Limits | None = None) -> dict[str, dict]:
    """Requests (outcome events learned), revenue (their sum of revenue per request, CPM),
    revenue per request and decisions per placement and per variant; the placement's
    admitted segments and their limit."""
    limits = limits or Limits()
    placements = {}
    for pid, entry in sorted(entries.items()):
        n = sum(s.requests for s in entry.slots.values())
        rev = sum(s.revenue for s in entry.slots.values())
        placements[pid] = {
            "requests": n,
            "revenue": rev,
            "revenue_per_request": rev / n if n else 0.0,
            "decisions": sum(s.decisions for s in entry.slots.values()),
            "segments": len(entry.segments),
            "segments_limit": entry.segments.limit(limits),
            "variants": {
                name: {
                    "requests": s.requests,
                    "revenue": s.revenue,
                    "revenue_per_request": s.revenue / s.requests if s.requests else 0.0,
                    "decisions": s.decisions,
                    "model_version": s.model_version(),
                }
                for name, s in entry.slots.items()
            },
        }
    return placements


def allocation_metrics(store) -> list[tuple[str, str, dict[str, float]]]:  # store: PolicyStore
    """(placement, network, figures) of every placement's champion allocation over all its
    traffic (segment ``*``): weight, floor_cpm, expected_revenue_cpm, fill_rate. A placement
    removed or changed while this runs is skipped."""
    rows = []
    for config in store.list_placements():
        try:
            allocation = store.allocation(config.id)
        except AdbanditError:
            continue
        for n in allocation.networks:
            figures = {
                "weight": n.weight,
                "floor_cpm": n.floor_cpm,
                "expected_revenue_cpm": n.expected_revenue_cpm,
                "fill_rate": n.fill_rate,
            }
            rows.append((config.id, n.network, figures))
    return rows


def damage_metrics(damage: Sequence[Damage]) -> dict[str, int]:
    """What recoveries found damaged (:mod:`serving.quarantine`): unacknowledged errors,
    records and events lost, quarantined and torn-tail bytes."""
    errors = [d for d in damage if d.is_error]
    return {
        "damage_unacknowledged": sum(1 for d in errors if d.acknowledged is None),
        "damaged_records": sum(d.records_lost or 0 for d in errors),
        "damaged_events": sum(d.events_lost or 0 for d in errors),
        "damaged_events_uncounted": sum(1 for d in errors if d.events_lost is None),
        "quarantined_bytes": sum(d.bytes for d in damage if d.kind != "torn"),
        "torn_tail_bytes": sum(d.bytes for d in damage if d.kind == "torn"),
    }


def metrics_snapshot(
    *,
    counts: Mapping[str, int],
    entries: Mapping[str, PlacementEntry],
    log: EventLog,
    snapshot_lsn: int,
    snapshot_age: float | None,
    dedupe_entries: int,
    dedupe_bytes: int,
    damage: Sequence[Damage],
    limits: Limits | None = None,
) -> dict:
    """Counters and gauges for ``/metrics`` from the store's counters (``counts``, since
    this process started), live entries, event log, last snapshot and damage ledger.

    ``segments_over_limit`` lists (placement, limit, path, count) for every placement
    with segment fields: requests (``decide``) and logged events (``outcome``) whose
    segment a limit pooled, since this process started."""
    placements = placement_metrics(entries, limits)
    over_limit = [
        (pid, limit, path, n)
        for pid, entry in sorted(entries.items())
        if entry.segments.fields
        for (limit, path), n in entry.segments.counts().items()
    ]
    return {
        "events_accepted_total": counts["accepted"],
        "events_duplicate_total": counts["duplicate"],
        "events_rejected_total": counts["rejected"],
        "events_applied_total": counts["applied"],
        "events_replayed_total": counts["replayed"],
        "apply_errors_total": counts["apply_errors"],
        "events_unverified_decision_total": counts["unverified_decision"],
        "events_refused_floors_id_total": counts["refused_floors_id"],
        "events_removed_variant_total": counts["removed_variant"] + counts["removed_variant_skipped"],
        "log_lag_events": counts["written"] - counts["applied"],
        "log_last_lsn": log.last_lsn,
        "log_synced_lsn": log.synced_lsn,
        "log_fsyncs_total": log.fsyncs,
        "log_segments": len(log.segments()),
        "snapshot_lsn": snapshot_lsn,
        "snapshot_failures_total": counts["snapshot_failures"],
        "storage_failing": log.failure is not None,
        "storage_errors_total": log.storage_errors,
        **damage_metrics(damage),
        "snapshot_age_seconds": snapshot_age,
        "dedupe_entries": dedupe_entries,
        "dedupe_bytes": dedupe_bytes,
        "decisions_total": sum(p["decisions"] for p in placements.values()),
        "placements": placements,
        "segments_over_limit": over_limit,
    }


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
