"""Decisions: a request's variant, the network and floor its published policy draws, and
the signed decision id that carries them to the outcome.

A request is assigned to a variant by hashing its key — ``user_id``, else
``context["user_id"]``, else the request id — with the placement id
(:class:`serving.variants.Assigner`). The variant's *served* policy (:mod:`serving.live`)
decides without any lock, with the caller's random generator; the decision id
(:mod:`serving.decision_ids`) signs placement, variant, network, floor and propensities.

A waterfall or auction placement decides a *plan* (``Policy.decide_plans``): its offers,
(network, floor) in calling order, with the probability of the whole plan; the record keeps
the first offer as ``network``/``floor_cpm`` (what a single-network client reads) and its
id signs every offer (:meth:`serving.decision_ids.DecisionSigner.issue_plan`).

A request's segment is the one its outcome will be learned under: a segment beyond the
placement's limits is served from its nearest pooled level (:mod:`serving.limits`; a
decision admits nothing) and counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandit.errors import InvalidDecisionRequest
from bandit.policy import PlanBatch
from serving.decision_ids import DecisionSigner
from serving.limits import DECIDE, Limits, check_context
from serving.live import PlacementEntry

__all__ = ["DecisionRecord", "decide", "decide_batch"]


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
    #: ``single``, or ``waterfall`` / ``auction`` for a plan decision.
    mode: str = "single"
    #: A plan's (network, floor_cpm) offers in calling order (tiers or bidders); () if single.
    offers: tuple[tuple[str, float], ...] = ()

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


def decide(
    entry: PlacementEntry,
    request_id: str,
    context: Mapping[str, Any] | None,
    user_id: str | None,
    *,
    rng: np.random.Generator,
    signer: DecisionSigner,
    limits: Limits,
) -> DecisionRecord:
    """Network and floor for one request of ``entry``'s placement."""
    placement_id = entry.config.id
    context = context or {}
    if limits.checks_context:
        check_context(context, limits)
    key = user_id if user_id is not None else context.get("user_id")
    if key is None:
        if not isinstance(request_id, str) or not request_id:
            raise InvalidDecisionRequest(f"request_id must be a non-empty string, got {request_id!r}")
        key = request_id
    variant = entry.assign(str(key))
    slot = entry.slot(variant)
    served = slot.served
    segment, pooled = entry.segments.resolve(entry.segment_of(context), limits)
    if pooled is not None:
        entry.segments.count(pooled, DECIDE)
    if entry.config.mode != "single":
        plans = served.decide_plans([segment], np.zeros(1, dtype=np.int64), rng=rng)
        slot.count_decisions(1)
        return _plan_record(entry, plans, 0, segment, variant, slot.model_version(served), signer)
    d = served.decide(segment=segment, rng=rng)
    slot.count_decisions(1)
    return DecisionRecord(
        signer.issue(placement_id, variant, d.network, d.floor_cpm, d.propensity, d.floor_propensity, d.floor_density),
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
    entry: PlacementEntry,
    requests: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    rng: np.random.Generator,
    signer: DecisionSigner,
    limits: Limits,
) -> list[DecisionRecord]:
    """Decisions for ``(request_id, context)`` pairs of ``entry``'s placement, in request
    order; each variant decides its requests in one ``Policy.decide_batch`` call."""
    placement_id = entry.config.id
    single = entry.assign.single
    by_variant: dict[str, list[int]] = {}
    contexts = []
    check = limits.checks_context
    for i, (request_id, context) in enumerate(requests):
        context = context or {}
        if check:
            check_context(context, limits, where=f"requests[{i}].context")
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
    segments = _resolve_segments(entry, contexts, limits)
    ids = entry.config.network_ids
    multi = entry.config.mode != "single"
    for variant, rows in by_variant.items():
        slot = entry.slot(variant)
        served = slot.served
        if multi:
            keys = list(dict.fromkeys(segments[i] for i in rows))
            where = {s: k for k, s in enumerate(keys)}
            plans = served.decide_plans(keys, np.array([where[segments[i]] for i in rows], dtype=np.int64), rng=rng)
            version = slot.model_version(served)
            for k, i in enumerate(rows):
                out[i] = _plan_record(entry, plans, k, segments[i], variant, version, signer)
            slot.count_decisions(len(rows))
            continue
        db = served.decide_batch([segments[i] for i in rows], rng=rng)
        version = slot.model_version(served)
        decision_ids = signer.issue_batch(
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


def _plan_record(
    entry: PlacementEntry, plans: PlanBatch, k: int, segment: str, variant: str, version: str, signer: DecisionSigner
) -> DecisionRecord:
    """The record of request ``k`` of ``plans`` (a waterfall's tiers or an auction's bidders)."""
    config = entry.config
    offers = tuple(plans.offers(k, config.network_ids))
    propensity = float(plans.propensity[k])
    network, floor = offers[0]
    return DecisionRecord(
        signer.issue_plan(config.id, variant, offers, propensity),
        config.id,
        network,
        floor,
        propensity,
        1.0,
        segment,
        variant,
        version,
        mode=config.mode,
        offers=offers,
    )


def _resolve_segments(entry: PlacementEntry, contexts: Sequence[Mapping[str, Any]], limits: Limits) -> list[str]:
    """The segment each context is served from (pooled beyond the limits, and counted)."""
    segment_of = entry.segment_of
    index = entry.segments
    segments = [segment_of(c) for c in contexts]
    if not index.fields:  # one segment, the placement's
        return segments
    resolved: dict[str, tuple[str, str | None]] = {}
    pooled: dict[str, int] = {}
    for i, segment in enumerate(segments):
        if segment in index:
            continue
        got = resolved.get(segment)
        if got is None:
            got = resolved[segment] = index.resolve(segment, limits)
        segments[i], limit = got
        if limit is not None:
            pooled[limit] = pooled.get(limit, 0) + 1
    for limit, n in pooled.items():
        index.count(limit, DECIDE, n)
    return segments
