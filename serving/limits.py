"""Limits on what one placement may grow to, and the pooled level a segment falls back to.

A placement's segments are keyed by its ``segment_by`` context fields, so their number
follows the traffic: one field fed with a request id, or a long tail of app versions,
would create a segment (and its statistics and decision table) per request. The service
bounds it (:class:`Limits`, from the ``ADBANDIT_MAX_*`` settings):

* **placement config** — networks (``max_networks``) and segment fields
  (``max_segment_fields``) per placement. A config over a limit, or one whose own
  ``limits`` ask for more than the service allows, is refused (422, the message names the
  limit and the setting) by :func:`check_placement`, and nothing changes.
* **request context** — fields per context (``max_context_fields``) and characters per
  value (``max_context_value_chars``), at most the HTTP schema's 64 and 256: an outcome
  event over them is rejected, a decision request answered 422 (:func:`check_context`).
* **segments** — per placement (``max_segments``) and distinct values per segment field
  (``max_field_values``); a placement's config may set lower ones
  (:class:`PlacementLimits`). These are not errors: a request or outcome whose segment
  would exceed them is served and learned at the *nearest pooled level*
  (:meth:`SegmentIndex.resolve`), counted in ``adbandit_segments_over_limit_total``.

The pooled level of a segment key (``KR|ios|9.1``): a field whose value is new while the
field already has ``max_field_values`` values becomes ``*`` (``KR|ios|*``); a key that is
still new while the placement already has ``max_segments`` segments falls back to the
nearest key the placement has: fields with a new value become ``*``, then fields from the
end of ``segment_by`` (list fields from the most to the least important), down to the
placement level ``*``. A pooled key such as ``KR|ios|*`` is a segment like any other
(it counts towards ``max_segments``, and Prebid reads its ``*`` as a wildcard).

Segments in existence are never pooled: a lowered limit keeps them, and only new ones
fall back. Outcome events are mapped when they are logged (under the store's state lock,
in log order), so the log holds the key they are learned under and a replay needs no
mapping; a placement's admitted segments are those its learners' statistics hold (from
the snapshot, plus the replayed log in order) and those admitted since, so a restarted
store maps the next event exactly as the store that never stopped would have.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bandit import ALL_SEGMENTS, PlacementConfig
from bandit.errors import AdbanditError, InvalidConfig, InvalidDecisionRequest

__all__ = [
    "FIELD_VALUES",
    "POOLED",
    "SEGMENTS",
    "Limits",
    "PlacementLimits",
    "SegmentIndex",
    "check_context",
    "check_placement",
]

log = logging.getLogger(__name__)

#: A segment field's value at a pooled level (any value).
POOLED = "*"
#: Names of the segment limits (the ``limit`` label of ``adbandit_segments_over_limit_total``).
SEGMENTS = "segments"
FIELD_VALUES = "field_values"
#: Where a segment was pooled (the ``path`` label): a decision or a logged outcome event.
DECIDE = "decide"
OUTCOME = "outcome"

#: Hard bounds of the HTTP schema (:mod:`serving.schemas`); the settings may only lower them.
SCHEMA_MAX_NETWORKS = 256
SCHEMA_MAX_SEGMENT_FIELDS = 16
SCHEMA_MAX_CONTEXT_FIELDS = 64
SCHEMA_MAX_CONTEXT_KEY = 64
SCHEMA_MAX_CONTEXT_VALUE = 256

#: The environment variable of each limit (named in error messages).
SETTING = {
    "max_networks": "ADBANDIT_MAX_NETWORKS",
    "max_segment_fields": "ADBANDIT_MAX_SEGMENT_FIELDS",
    "max_segments": "ADBANDIT_MAX_SEGMENTS",
    "max_field_values": "ADBANDIT_MAX_FIELD_VALUES",
    "max_context_fields": "ADBANDIT_MAX_CONTEXT_FIELDS",
    "max_context_value_chars": "ADBANDIT_MAX_CONTEXT_VALUE_CHARS",
}


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfig(f"{name} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """The service's limits (defaults sized for 10,000+ segments and 10-30 networks per placement)."""

    max_networks: int = 64
    max_segment_fields: int = 8
    max_segments: int = 50_000
    max_field_values: int = 5_000
    max_context_fields: int = SCHEMA_MAX_CONTEXT_FIELDS
    max_context_value_chars: int = SCHEMA_MAX_CONTEXT_VALUE

    def __post_init__(self) -> None:
        caps = {
            "max_networks": SCHEMA_MAX_NETWORKS,
            "max_segment_fields": SCHEMA_MAX_SEGMENT_FIELDS,
            "max_context_fields": SCHEMA_MAX_CONTEXT_FIELDS,
            "max_context_value_chars": SCHEMA_MAX_CONTEXT_VALUE,
        }
        for name in SETTING:
            value = _positive_int(getattr(self, name), name)
            if name in caps and value > caps[name]:
                raise InvalidConfig(f"{name} must be <= {caps[name]} (the HTTP schema's bound), got {value}")

    @property
    def checks_context(self) -> bool:
        """Whether contexts need checking beyond the HTTP schema's own bounds."""
        return (
            self.max_context_fields < SCHEMA_MAX_CONTEXT_FIELDS
            or self.max_context_value_chars < SCHEMA_MAX_CONTEXT_VALUE
        )


@dataclass(frozen=True, slots=True)
class PlacementLimits:
    """A placement's own segment limits (its config's ``"limits"``), at most the service's;
    ``None``: the service's."""

    max_segments: int | None = None
    max_field_values: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_segments", "max_field_values"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(value, f"limits.{name}")

    def __bool__(self) -> bool:
        return self.max_segments is not None or self.max_field_values is not None

    def to_dict(self) -> dict[str, int]:
        return {k: v for k in ("max_segments", "max_field_values") if (v := getattr(self, k)) is not None}

    @classmethod
    def from_dict(cls, body: object) -> PlacementLimits:
        """From a config's ``"limits"`` object (``None``: no limits of its own)."""
        if body is None:
            return cls()
        if not isinstance(body, Mapping):
            raise InvalidConfig('limits must be an object, e.g. {"max_segments": 1000}')
        unknown = sorted(set(body) - {"max_segments", "max_field_values"})
        if unknown:
            raise InvalidConfig(f"limits has unknown fields {unknown}; it takes max_segments and max_field_values")
        return cls(body.get("max_segments"), body.get("max_field_values"))

    def effective(self, limits: Limits) -> tuple[int, int]:
        """(max segments, max values per field) under the service's ``limits``."""
        segments, values = limits.max_segments, limits.max_field_values
        if self.max_segments is not None:
            segments = min(segments, self.max_segments)
        if self.max_field_values is not None:
            values = min(values, self.max_field_values)
        return segments, values


def limits_of(config: PlacementConfig) -> PlacementLimits:
    """The placement's own limits (none for a plain :class:`bandit.PlacementConfig`)."""
    own = getattr(config, "limits", None)
    return own if isinstance(own, PlacementLimits) else PlacementLimits()


# ------------------------------------------------------------------- refusals
def check_placement(config: PlacementConfig, limits: Limits) -> None:
    """Raise :class:`InvalidConfig` naming the limit when ``config`` exceeds ``limits``."""
    where = f"placement {config.id!r}"
    n = len(config.networks)
    if n > limits.max_networks:
        raise InvalidConfig(
            f"{where} has {n} networks; at most {limits.max_networks} are allowed per placement "
            f"(max_networks, {SETTING['max_networks']}): split the networks over several placements, "
            "or raise the limit"
        )
    n = len(config.segment_by)
    if n > limits.max_segment_fields:
        raise InvalidConfig(
            f"{where} is segmented by {n} fields; at most {limits.max_segment_fields} are allowed "
            f"(max_segment_fields, {SETTING['max_segment_fields']}): every field multiplies the segments, "
            "segment by fewer context fields, or raise the limit"
        )
    own = limits_of(config)
    for name in ("max_segments", "max_field_values"):
        asked, allowed = getattr(own, name), getattr(limits, name)
        if asked is not None and asked > allowed:
            raise InvalidConfig(
                f"{where}: limits.{name} is {asked}, above the service's limit of {allowed} "
                f"({name}, {SETTING[name]}): lower it (or leave it out to use the service's), or raise "
                f"{SETTING[name]}"
            )


def check_context(
    context: Mapping[str, object],
    limits: Limits,
    *,
    where: str = "context",
    error: type[AdbanditError] = InvalidDecisionRequest,
) -> None:
    """Raise ``error`` naming the limit when ``context`` has too many fields or too long a
    string value (the schema has already checked types, keys and its own bounds)."""
    if len(context) > limits.max_context_fields:
        raise error(
            f"{where} has {len(context)} fields; at most {limits.max_context_fields} are allowed "
            f"(max_context_fields, {SETTING['max_context_fields']})"
        )
    cap = limits.max_context_value_chars
    for key, value in context.items():
        if isinstance(value, str) and len(value) > cap:
            raise error(
                f"{where}.{key} is {len(value)} characters long; at most {cap} are allowed "
                f"(max_context_value_chars, {SETTING['max_context_value_chars']})"
            )


# ------------------------------------------------------------------- the index
class SegmentIndex:
    """A placement's admitted segments and the distinct values of each segment field (both
    only grow), its own limits, and how many segments a limit pooled (module docstring).

    Readers (decisions) run concurrently with the one writer (ingest, under the store's
    state lock, or the applier under its apply lock): single set operations are atomic.
    """

    def __init__(self, segment_by: Sequence[str], own: PlacementLimits, segments: Iterable[str] = ()) -> None:
        self.fields = tuple(segment_by)
        self.own = own
        self._segments: set[str] = set()
        self._values: list[set[str]] = [set() for _ in self.fields]
        self._counts: dict[tuple[str, str], int] = {}
        self._counts_lock = threading.Lock()
        self._warned: set[str] = set()
        self.learned(segments)

    def __len__(self) -> int:
        return len(self._segments)

    def __contains__(self, segment: object) -> bool:
        return segment in self._segments

    def learned(self, segments: Iterable[str]) -> None:
        """Admit segments that statistics hold, whatever the limits (existing segments keep working)."""
        for segment in segments:
            if segment != ALL_SEGMENTS and segment not in self._segments:
                self._add(segment, segment.split("|"))

    def _add(self, segment: str, values: Sequence[str]) -> list[tuple[int, str]]:
        """Admit ``segment``; returns the (field, value) pairs that were new."""
        self._segments.add(segment)
        new = []
        for i, value in enumerate(values[: len(self._values)]):
            if value != POOLED and value not in self._values[i]:
                self._values[i].add(value)
                new.append((i, value))
        return new

    def resolve(self, segment: str, limits: Limits, *, admit: list | None = None) -> tuple[str, str | None]:
        """The key ``segment`` is served and learned under, and the limit that pooled it (or ``None``).

        With ``admit`` (a list), a new key within the limits is admitted and what changed
        is appended to ``admit`` (for :meth:`undo`); without, nothing changes (decisions).
        """
        if segment in self._segments or segment == ALL_SEGMENTS:
            return segment, None
        values = segment.split("|")
        if len(values) != len(self.fields):  # not a key of this placement's fields: nothing to pool
            return segment, None
        max_segments, max_values = self.own.effective(limits)
        hit = None
        for i, value in enumerate(values):
            if value != POOLED and value not in self._values[i] and len(self._values[i]) >= max_values:
                values[i] = POOLED
                hit = FIELD_VALUES
        key = _join(values)
        if key == ALL_SEGMENTS or key in self._segments:
            return self._pooled(key, hit)
        if len(self._segments) < max_segments:
            if admit is not None:
                admit.append((key, self._add(key, values)))
            return self._pooled(key, hit)
        # No room for a new key: the nearest admitted one. A new value is in no admitted key.
        for i, value in enumerate(values):
            if value not in self._values[i]:
                values[i] = POOLED
        for i in range(len(values) - 1, -1, -1):
            key = _join(values)
            if key == ALL_SEGMENTS or key in self._segments:
                return self._pooled(key, SEGMENTS)
            values[i] = POOLED
        return self._pooled(ALL_SEGMENTS, SEGMENTS)

    def _pooled(self, key: str, hit: str | None) -> tuple[str, str | None]:
        if hit is not None and hit not in self._warned:
            self._warned.add(hit)
            log.warning(
                "segment limit reached: new segments are served and learned at the nearest pooled level",
                extra={"fields": {"limit": hit, "segments": len(self._segments), "segment_by": list(self.fields)}},
            )
        return key, hit

    def undo(self, admitted: Sequence[tuple[str, list[tuple[int, str]]]]) -> None:
        """Take back the admissions of :meth:`resolve` (the events that carried them were not logged)."""
        for key, new_values in reversed(admitted):
            self._segments.discard(key)
            for i, value in new_values:
                self._values[i].discard(value)

    def limit(self, limits: Limits) -> int:
        """The placement's effective ``max_segments``."""
        return self.own.effective(limits)[0]

    # ------------------------------------------------------------------ counts
    def count(self, limit: str, path: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[(limit, path)] = self._counts.get((limit, path), 0) + n

    def counts(self) -> dict[tuple[str, str], int]:
        """Pooled segments so far by (limit, path), every pair present."""
        with self._counts_lock:
            return {(lim, path): self._counts.get((lim, path), 0) for lim in (SEGMENTS, FIELD_VALUES)
                    for path in (DECIDE, OUTCOME)}  # fmt: skip

    def take_counts(self, other: SegmentIndex) -> None:
        """Carry ``other``'s counts over (a placement's entry was rebuilt)."""
        with other._counts_lock:
            counts = dict(other._counts)
        with self._counts_lock:
            for key, n in counts.items():
                self._counts[key] = self._counts.get(key, 0) + n
        self._warned |= other._warned


def _join(values: Sequence[str]) -> str:
    """A segment key from field values; all pooled is the placement level."""
    if all(v == POOLED for v in values):
        return ALL_SEGMENTS
    return "|".join(values)
