"""Allocations → Prebid.js Price Floors Module data (``floorsSchemaVersion`` 2).

One *model group* per experiment variant, with ``modelWeight`` = the variant's traffic
percent, so Prebid samples champion and challengers in the same proportions as the
service does (``modelVersion`` = ``"<variant>:<policy model version>"`` lets a floors
analytics adapter attribute auctions back to the variant).

Schema fields are the placement's ``segment_by`` context fields, renamed to Prebid's
names where Prebid has one (:data:`PREBID_FIELD`). Prebid.js natively matches only
``gptSlot``, ``adUnitCode``, ``size``, ``domain`` and ``mediaType``
(``allowedFields`` of its ``modules/priceFloors.ts``); any other field (``country``,
``os``, ``deviceType``, ``bidder`` …) must be provided on the page through
``floors.additionalSchemaFields`` (a function per field returning the request's value).
A placement without ``segment_by`` uses the single field ``mediaType`` with only the
catch-all rule ``*``.

Floor of a rule: Prebid runs one auction in which all bidders compete, so it takes one
floor per auction, whereas an allocation gives each network its own floor. We publish
the **weight-averaged floor** ``Σ_i w_i · floor_i`` of the segment's allocation — the
floor a request of that segment gets on average under the live policy. A segment value
the service recorded as missing (``unknown``) becomes Prebid's catch-all ``*``; the
placement-level (pooled) allocation gives the all-``*`` rule and the group ``default``.

Options of the document (:class:`FloorsOptions`):

* **Several placements** (ad units) in one document: the first schema field is the key
  (``adUnitCode`` or ``gptSlot``) whose value is the placement id (or the ad unit code or
  GPT slot the page maps to it), followed by the union
  of the placements' segment fields (``*`` where a placement has no such field). Each
  placement's pooled floor is its ``<id>|*|…`` rule; the group ``default`` (ad units the
  document does not name) is ``floorMin``. Model groups are per variant when every
  placement runs the same variants with the same traffic, else one group of the
  champions (``modelWeight`` 100): Prebid draws one group per page, not per ad unit.
  A group's ``modelVersion`` is ``"<variant>:<hash of the placements' versions>"``.
* **Per-bidder floors** (``bidders``): a last field ``bidder``; for every rule, the rule
  ``…|<bidder code>`` is the floor of the network mapped to that bidder code
  (:attr:`serving.placement_config.ServicePlacement.bidders`; several networks of one
  code: their weight-averaged floor) and ``…|*`` the weight-averaged floor as above.
* **Fallback**: a variant whose pooled allocation has learned from fewer than
  ``min_events`` (discounted) events publishes the champion's floors under its own
  weight, with ``modelVersion`` ``"<variant>:fallback=<champion>:<champion's version>"``.
* ``modelTimestamp``: when the newest published model was built (epoch seconds), not the
  time of the request; ``skipRate``: percent of auctions Prebid runs without floors.
* **Floors ids** (``sign``): each group's ``modelVersion`` ends in ``#<floors id>``, a signed
  id of the group's variant (:meth:`serving.decision_ids.DecisionSigner.issue_floors`).
  Prebid.js draws one group per auction and hands its ``modelVersion`` to every bid request
  (``bidRequest.floorData.modelVersion``), so the analytics script can post that id with each
  of the auction's events: the service then learns them into that variant, and accepts them
  from a page without the write key (:mod:`serving.intake`). ``modelVersion`` is the only
  string of a group Prebid passes to its events (per rule it passes only the rule key and
  value), so the id is per group, not per rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from bandit import ALL_SEGMENTS, Allocation, InvalidDecisionRequest, PlacementConfig
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
#: The fields Prebid.js's Price Floors Module matches without ``additionalSchemaFields``.
NATIVE_FIELDS = frozenset({"gptSlot", "adUnitCode", "size", "domain", "mediaType"})
BIDDER_FIELD = "bidder"
DELIMITER = "|"
WILDCARD = "*"
#: Prebid rounds floors to 4 decimals; so do we.
DECIMALS = 4

KeyField = Literal["adUnitCode", "gptSlot"]
#: One rule: Prebid field name → value (fields absent from it read ``*``), and its floor.
Rule = tuple[dict[str, str], float]
#: Signs a model group: (variant, its modelVersion, whether it publishes another's floors) → floors id.
Signer = Callable[[str, str, bool], str]
#: Separates a group's ``modelVersion`` from its floors id.
ID_MARK = "#"


@dataclass(frozen=True, slots=True)
class VariantFloors:
    """What one model group is built from: a variant, its traffic and its allocations."""

    variant: str
    traffic: float  # percent of the placement's traffic
    allocations: Sequence[Allocation]  # one per segment, including the pooled ALL_SEGMENTS one
    built_at: float = 0.0  # epoch seconds the variant's model was built
    fallback: str | None = None  # the variant whose floors these are, when not its own


@dataclass(frozen=True, slots=True)
class FloorsOptions:
    """How the document is shaped (module docstring). The defaults give the one-placement
    document of the original contract."""

    key: KeyField | None = None  # None: one placement, schema without a key field
    bidders: bool = False
    skip_rate: int = 0
    provider: str = "adbandit"
    sign: Signer | None = None  # None: modelVersion without a floors id


def schema_fields(placement: PlacementConfig) -> list[str]:
    """Prebid schema fields of a placement (``["mediaType"]`` when it has no segment fields)."""
    if not placement.segment_by:
        return ["mediaType"]
    return segment_fields(placement)


def segment_fields(placement: PlacementConfig) -> list[str]:
    """The placement's ``segment_by`` in Prebid's names (empty when it has none)."""
    return [PREBID_FIELD.get(f.lower(), f) for f in placement.segment_by]


def weighted_floor(allocation: Allocation) -> float:
    """Σ_i weight_i · floor_cpm_i over the allocation's networks (weights sum to 1)."""
    return _weighted([(n.weight, n.floor_cpm) for n in allocation.networks])


def _weighted(pairs: Sequence[tuple[float, float]]) -> float:
    total = sum(w for w, _ in pairs)
    if total <= 0:
        return min(f for _, f in pairs)
    return sum(w * f for w, f in pairs) / total


def bidder_floors(allocation: Allocation, bidders: Mapping[str, str]) -> dict[str, float]:
    """Bidder code → floor (CPM) of the networks mapped to it (weight-averaged when several)."""
    by_code: dict[str, list[tuple[float, float]]] = {}
    for n in allocation.networks:
        code = bidders.get(n.network)
        if code is not None:
            by_code.setdefault(code, []).append((n.weight, n.floor_cpm))
    return {code: _weighted(pairs) for code, pairs in by_code.items()}


def segment_values(
    placement: PlacementConfig, segment: str, fields: Sequence[str] | None = None
) -> dict[str, str] | None:
    """A segment key as Prebid field values (``KR|unknown`` → ``{"country": "KR", "os": "*"}``);
    ``{}`` for the pooled segment, None for a key that does not fit the placement's fields
    (``fields``: :func:`segment_fields` of the placement, when already known)."""
    if segment == ALL_SEGMENTS:
        return {}
    parts = segment.split("|")
    fields = segment_fields(placement) if fields is None else fields
    if len(parts) != len(fields) or not fields:
        return None
    return {f: WILDCARD if p == MISSING_VALUE or not p else p for f, p in zip(fields, parts, strict=True)}


def rule_key(placement: PlacementConfig, segment: str) -> str:
    """The Prebid rule key of a segment key (``KR|ios`` → ``KR|ios``; missing values → ``*``)."""
    fields = schema_fields(placement)
    return encode(fields, segment_values(placement, segment) or {})


def encode(fields: Sequence[str], values: Mapping[str, str]) -> str:
    """A rule key: the values of ``fields`` joined by the delimiter, ``*`` for those absent."""
    return DELIMITER.join(values.get(f, WILDCARD) for f in fields)


def placement_rules(
    placement: PlacementConfig, allocations: Iterable[Allocation], *, bidders: Mapping[str, str] | None = None
) -> tuple[list[Rule], float | None]:
    """The rules of one placement's variant (segments first, pooled last) and its pooled floor
    (None when no pooled allocation is given). With ``bidders``, each rule is followed by one
    rule per bidder code."""
    rules: list[Rule] = []
    pooled: Rule | None = None
    fields = segment_fields(placement)
    for alloc in allocations:
        values = segment_values(placement, alloc.segment, fields)
        if values is None:
            continue
        rule = (values, round(weighted_floor(alloc), DECIMALS))
        per_bidder = [
            ({**values, BIDDER_FIELD: code}, round(floor, DECIMALS))
            for code, floor in bidder_floors(alloc, bidders or {}).items()
        ]
        if alloc.segment == ALL_SEGMENTS:
            pooled = rule
            rules.extend(per_bidder)
        else:
            rules.extend([rule, *per_bidder])
    if pooled is None:
        return rules, None
    return [*rules, pooled], pooled[1]


def model_weights(traffic: Sequence[float]) -> list[int]:
    """Integer ``modelWeight`` per variant: traffic percent rounded, at least 1 when traffic > 0."""
    return [max(1, round(t)) if t > 0 else 0 for t in traffic]


def version_of(variant: VariantFloors) -> str:
    """``modelVersion`` of a variant's group: ``<variant>:<model version>`` (pooled allocation's),
    ``<variant>:fallback=<other>:<other's model version>`` when it publishes another's floors."""
    allocs = variant.allocations
    pooled = next((a for a in allocs if a.segment == ALL_SEGMENTS), allocs[0] if allocs else None)
    version = pooled.model_version if pooled is not None else ""
    if variant.fallback:
        return f"{variant.variant}:fallback={variant.fallback}:{version}"
    return f"{variant.variant}:{version}"


def signed_version(version: str, variant: str, fallback: bool, sign: Signer | None) -> str:
    """``<version>#<floors id>`` (just ``version`` without a signer)."""
    return version if sign is None else f"{version}{ID_MARK}{sign(variant, version, fallback)}"


def with_fallback(variants: Sequence[VariantFloors], champion: str, min_events: float) -> list[VariantFloors]:
    """``variants`` with those that learned from fewer than ``min_events`` pooled events
    publishing the champion's allocations instead of their own (the champion never falls back)."""
    lead = next((v for v in variants if v.variant == champion), None)
    if lead is None:
        return list(variants)
    out = []
    for v in variants:
        pooled = next((a for a in v.allocations if a.segment == ALL_SEGMENTS), None)
        learned = pooled.effective_events if pooled is not None else 0.0
        if v.variant != champion and learned < min_events:
            v = replace(v, allocations=lead.allocations, fallback=champion, built_at=lead.built_at)
        out.append(v)
    return out


def group_of(
    fields: Sequence[str],
    rules: Iterable[Rule],
    *,
    weight: int,
    version: str,
    currency: str,
    default: float,
) -> dict:
    """One model group: the rules encoded over ``fields`` (the first rule of a key wins), the
    all-``*`` rule defaulting to ``default``."""
    values: dict[str, float] = {}
    for rule_values, floor in rules:
        values.setdefault(encode(fields, rule_values), floor)
    values.setdefault(encode(fields, {}), default)
    return {
        "modelWeight": weight,
        "modelVersion": version,
        "currency": currency,
        "schema": {"fields": list(fields), "delimiter": DELIMITER},
        "values": values,
        "default": default,
    }


def model_group(
    placement: PlacementConfig,
    variant: VariantFloors,
    weight: int,
    *,
    bidders: Mapping[str, str] | None = None,
    sign: Signer | None = None,
) -> dict:
    """The group of one placement's variant in the one-placement document."""
    fields = schema_fields(placement) + ([BIDDER_FIELD] if bidders is not None else [])
    rules, pooled = placement_rules(placement, variant.allocations, bidders=bidders)
    if pooled is None:  # no pooled allocation given: the mean of the segments'
        floors = [f for v, f in rules if BIDDER_FIELD not in v]
        pooled = round(sum(floors) / len(floors), DECIMALS) if floors else 0.0
    version = signed_version(version_of(variant), variant.variant, variant.fallback is not None, sign)
    return group_of(fields, rules, weight=weight, version=version, currency=placement.currency, default=pooled)


def _header(placements: Sequence[PlacementConfig], variants: Iterable[VariantFloors], options: FloorsOptions) -> dict:
    built = [v.built_at for v in variants]
    return {
        "floorsSchemaVersion": 2,
        "floorProvider": options.provider,
        "currency": placements[0].currency,
        "modelTimestamp": int(max(built, default=0.0)),
        "skipRate": int(options.skip_rate),
        "floorMin": min(n.floor_min_cpm for p in placements for n in p.networks),
    }


def bidders_of(placement: PlacementConfig) -> dict[str, str]:
    """Network id → Prebid bidder code of a placement (empty for a plain PlacementConfig)."""
    return dict(getattr(placement, "bidders", ()) or ())


def prebid_floors(
    placement: PlacementConfig,
    variants: Sequence[VariantFloors],
    *,
    timestamp: int | None = None,
    options: FloorsOptions | None = None,
    provider: str | None = None,
) -> dict:
    """Price Floors Module data for one placement (module docstring). ``timestamp``
    overrides ``modelTimestamp`` (default: the newest ``built_at`` of the live variants)."""
    options = options or FloorsOptions()
    if provider is not None:
        options = replace(options, provider=provider)
    live = [v for v in variants if v.traffic > 0 and v.allocations]
    weights = model_weights([v.traffic for v in live])
    bidders = bidders_of(placement) if options.bidders else None
    doc = _header([placement], live, options)
    if timestamp is not None:
        doc["modelTimestamp"] = int(timestamp)
    doc["modelGroups"] = [
        model_group(placement, v, w, bidders=bidders, sign=options.sign) for v, w in zip(live, weights, strict=True)
    ]
    return doc


def union_fields(placements: Iterable[PlacementConfig]) -> list[str]:
    """Segment fields (Prebid names) of all the placements, in order of first appearance."""
    return list(dict.fromkeys(f for p in placements for f in segment_fields(p)))


def same_split(variants: Sequence[Sequence[VariantFloors]]) -> bool:
    """Whether every placement runs the same live variants with the same traffic, in order."""
    splits = {tuple((v.variant, round(v.traffic, 6)) for v in vs if v.traffic > 0) for vs in variants}
    return len(splits) == 1


def page_floors(
    placements: Sequence[PlacementConfig],
    variants: Sequence[Sequence[VariantFloors]],
    champions: Sequence[str],
    *,
    options: FloorsOptions,
    codes: Sequence[str] | None = None,
) -> dict:
    """One document for several placements keyed by ``options.key`` (module docstring).
    ``variants[i]`` are placement ``i``'s variants, ``champions[i]`` its champion's name,
    ``codes[i]`` the ad unit code (or GPT slot) of its rules (default: the placement id; a
    placement may appear several times, once per ad unit it serves).
    Placements of one document must share a currency (:func:`check_currencies`)."""
    check_currencies(placements)
    key = options.key or "adUnitCode"
    fields = [key, *union_fields(placements)] + ([BIDDER_FIELD] if options.bidders else [])
    live = [[v for v in vs if v.traffic > 0 and v.allocations] for vs in variants]
    if same_split(live):
        columns = list(zip(*live, strict=True))  # one column per variant, across the placements
        weights = model_weights([column[0].traffic for column in columns])
    else:  # Prebid draws one group per page: publish the champions only
        columns = [tuple(next(v for v in vs if v.variant == c) for vs, c in zip(live, champions, strict=True))]
        weights = [100]
    doc = _header(placements, (v for column in columns for v in column), options)
    floor_min = doc["floorMin"]
    groups = []
    for column, weight in zip(columns, weights, strict=True):
        rules: list[Rule] = []
        for i, (placement, variant) in enumerate(zip(placements, column, strict=True)):
            bidders = bidders_of(placement) if options.bidders else None
            own, _ = placement_rules(placement, variant.allocations, bidders=bidders)
            code = placement.id if codes is None else codes[i]
            rules.extend(({**values, key: code}, floor) for values, floor in own)
        groups.append(
            group_of(
                fields,
                rules,
                weight=weight,
                version=signed_version(
                    page_version(column), column[0].variant, any(v.fallback for v in column), options.sign
                ),
                currency=placements[0].currency,
                default=floor_min,
            )
        )
    doc["modelGroups"] = groups
    return doc


def page_version(column: Sequence[VariantFloors]) -> str:
    """``modelVersion`` of a page group: ``<variant>:<12 hex digits>``, a hash of the
    placements' own ``modelVersion`` (:func:`version_of`), in the placements' order."""
    digest = hashlib.blake2b("\n".join(version_of(v) for v in column).encode(), digest_size=6).hexdigest()
    return f"{column[0].variant}:{digest}"


def check_currencies(placements: Sequence[PlacementConfig]) -> None:
    """:class:`InvalidDecisionRequest` unless the placements share one currency."""
    currencies = {p.currency for p in placements}
    if len(currencies) > 1:
        named = ", ".join(f"{p.id} ({p.currency})" for p in placements)
        raise InvalidDecisionRequest(
            f"placements of one floors document must share a currency, got {named}: request them separately"
        )
