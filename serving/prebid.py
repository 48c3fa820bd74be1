"""Allocations → Prebid.js Price Floors Module data (``floorsSchemaVersion`` 2).

One *model group* per experiment variant, with ``modelWeight`` = the variant's traffic
percent, so Prebid samples champion and challengers in the same proportions as the
service does (``modelVersion`` = ``"<variant>:<policy model version>"`` lets a floors
analytics adapter attribute auctions back to the variant).

Schema fields are the placement's ``segment_by`` context fields, renamed to Prebid's
names where Prebid has one (:data:`PREBID_FIELD`). Prebid.js natively matches only
``gptSlot``, ``adUnitCode``, ``size``, ``domain`` and ``mediaType``; any other field
(``country``, ``os``, ``deviceType`` …) must be provided on the page through
``floors.additionalSchemaFields`` (a function per field returning the request's value).
A placement without ``segment_by`` uses the single field ``mediaType`` with only the
catch-all rule ``*``.

Floor of a rule: Prebid runs one auction in which all bidders compete, so it takes one
floor per auction, whereas an allocation gives each network its own floor. We publish
the **weight-averaged floor** ``Σ_i w_i · floor_i`` of the segment's allocation — the
floor a request of that segment gets on average under the live policy. A segment value
the service recorded as missing (``unknown``) becomes Prebid's catch-all ``*``; the
placement-level (pooled) allocation gives the all-``*`` rule and the group ``default``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bandit import ALL_SEGMENTS, Allocation, PlacementConfig
from bandit.types import MISSING_VALUE

#: Our context field name → Prebid floors schema field name (others pass through unchanged).
PREBID_FIELD: dict[str, str] = {
    "country": "country",
    "os": "os",
    "device_type": "deviceType",
    "devicetype": "deviceType",
    "domain": "domain",
    "media_type": "mediaType",
    "mediatype": "mediaType",
    "size": "size",
    "ad_unit": "adUnitCode",
    "ad_unit_code": "adUnitCode",
    "gpt_slot": "gptSlot",
}
DELIMITER = "|"
#: Prebid rounds floors to 4 decimals; so do we.
DECIMALS = 4


@dataclass(frozen=True, slots=True)
class VariantFloors:
    """What one model group is built from: a variant, its traffic and its allocations."""

    variant: str
    traffic: float  # percent of the placement's traffic
    allocations: Sequence[Allocation]  # one per segment, including the pooled ALL_SEGMENTS one


def schema_fields(placement: PlacementConfig) -> list[str]:
    """Prebid schema fields of a placement (``["mediaType"]`` when it has no segment fields)."""
    if not placement.segment_by:
        return ["mediaType"]
    return [PREBID_FIELD.get(f.lower(), f) for f in placement.segment_by]


def weighted_floor(allocation: Allocation) -> float:
    """Σ_i weight_i · floor_cpm_i over the allocation's networks (weights sum to 1)."""
    total = sum(n.weight for n in allocation.networks)
    if total <= 0:
        return min(n.floor_cpm for n in allocation.networks)
    return sum(n.weight * n.floor_cpm for n in allocation.networks) / total


def rule_key(placement: PlacementConfig, segment: str) -> str:
    """The Prebid rule key of a segment key (``KR|ios`` → ``KR|ios``; missing values → ``*``)."""
    n_fields = max(len(placement.segment_by), 1)
    if segment == ALL_SEGMENTS:
        return DELIMITER.join(["*"] * n_fields)
    parts = segment.split("|")
    if len(parts) != n_fields:
        return DELIMITER.join(["*"] * n_fields)
    return DELIMITER.join("*" if p == MISSING_VALUE or not p else p for p in parts)


def model_weights(traffic: Sequence[float]) -> list[int]:
    """Integer ``modelWeight`` per variant: traffic percent rounded, at least 1 when traffic > 0."""
    return [max(1, round(t)) if t > 0 else 0 for t in traffic]


def model_group(placement: PlacementConfig, variant: VariantFloors, weight: int) -> dict:
    fields = schema_fields(placement)
    catch_all = DELIMITER.join(["*"] * len(fields))
    values: dict[str, float] = {}
    default: float | None = None
    version = variant.allocations[0].model_version if variant.allocations else ""
    for alloc in variant.allocations:
        floor = round(weighted_floor(alloc), DECIMALS)
        if alloc.segment == ALL_SEGMENTS:
            default, version = floor, alloc.model_version
            continue
        key = rule_key(placement, alloc.segment)
        if key != catch_all:
            values.setdefault(key, floor)
    if default is None:  # no pooled allocation given: the mean of the segments'
        default = round(sum(values.values()) / len(values), DECIMALS) if values else 0.0
    values[catch_all] = default
    return {
        "modelWeight": weight,
        "modelVersion": f"{variant.variant}:{version}",
        "currency": placement.currency,
        "schema": {"fields": fields, "delimiter": DELIMITER},
        "values": values,
        "default": default,
    }


def prebid_floors(
    placement: PlacementConfig,
    variants: Sequence[VariantFloors],
    *,
    timestamp: int,
    provider: str = "adbandit",
) -> dict:
    """Price Floors Module data for a placement (see the module docstring for the mapping)."""
    live = [v for v in variants if v.traffic > 0 and v.allocations]
    weights = model_weights([v.traffic for v in live])
    return {
        "floorsSchemaVersion": 2,
        "floorProvider": provider,
        "currency": placement.currency,
        "modelTimestamp": int(timestamp),
        "skipRate": 0,
        "floorMin": min(n.floor_min_cpm for n in placement.networks),
        "modelGroups": [model_group(placement, v, w) for v, w in zip(live, weights, strict=True)],
    }
