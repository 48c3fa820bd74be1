"""Per-event checks of outcome events beyond their types: what one bad event must not do.

Each check raises :class:`bandit.errors.InvalidOutcome` with a message that says what to
fix; the store lists the event in ``rejected`` and accepts the others of the batch.

- **Strict schema** (:func:`check_fields`): an unknown field (a typo such as
  ``revenu_cpm``) rejects the event, as the published schema (``additionalProperties:
  false``) says; the context is limited to :data:`MAX_CONTEXT_FIELDS` fields, keys of at
  most :data:`MAX_CONTEXT_KEY` characters and string values of at most
  :data:`MAX_CONTEXT_VALUE` characters (numbers, booleans and null are allowed too); the
  service's settings may lower the fields and value lengths (:mod:`serving.limits`).
- **Event time** (:func:`check_event_time`): an event dated more than the allowed skew
  after the server's clock is rejected. Event time drives the time discounting of the
  statistics (the newest event time is their reference time); one event dated decades
  ahead would otherwise discount every segment's history of its placement to nothing,
  for good.
- **Revenue below the floor** (:func:`check_revenue`): a filled event paying less than
  its floor (beyond rounding to the cent) is impossible from a network reporting gross
  revenue, and rejected; networks declared ``"revenue": "net"``
  (:mod:`serving.placement_config`) may report less.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from datetime import UTC, datetime

from bandit import OutcomeEvent
from bandit.errors import InvalidOutcome
from serving.limits import SCHEMA_MAX_CONTEXT_FIELDS, SCHEMA_MAX_CONTEXT_KEY, SCHEMA_MAX_CONTEXT_VALUE, SETTING

#: The fields of an outcome event (the HTTP contract); any other field rejects the event.
OUTCOME_FIELDS = frozenset(
    {"event_id", "decision_id", "ts", "placement", "network", "floor_cpm", "filled", "revenue_cpm", "context"}
)
MAX_CONTEXT_FIELDS = SCHEMA_MAX_CONTEXT_FIELDS
MAX_CONTEXT_KEY = SCHEMA_MAX_CONTEXT_KEY
MAX_CONTEXT_VALUE = SCHEMA_MAX_CONTEXT_VALUE
#: Default of how far (seconds) an event's ``ts`` may lie after the server's clock.
DEFAULT_MAX_EVENT_SKEW_S = 300.0
#: A revenue may fall short of its floor by this much and still be a fill at the floor: float
#: noise (relative) plus rounding to the cent (floors are continuous, e.g. 1.371234 CPM, and a
#: network paying exactly the floor reports 1.37).
REVENUE_FLOOR_RTOL = 1e-9
REVENUE_FLOOR_ATOL = 0.005


def check_fields(raw: object, max_fields: int = MAX_CONTEXT_FIELDS, max_value: int = MAX_CONTEXT_VALUE) -> None:
    """Reject unknown fields and contexts over the limits: at most ``max_fields`` fields and
    string values of at most ``max_value`` characters."""
    if not isinstance(raw, Mapping):
        raise InvalidOutcome("an outcome event must be a JSON object")
    if not OUTCOME_FIELDS.issuperset(raw):
        unknown = [k for k in raw if k not in OUTCOME_FIELDS]
        hints = []
        for k in unknown[:5]:
            close = difflib.get_close_matches(str(k), OUTCOME_FIELDS, n=1)
            hints.append(f"{str(k)!r} (did you mean {close[0]!r}?)" if close else repr(str(k)))
        raise InvalidOutcome(f"unknown field(s) {', '.join(hints)}; an outcome event has only {sorted(OUTCOME_FIELDS)}")
    context = raw.get("context")
    if context is None:
        return
    if type(context) is not dict and not isinstance(context, Mapping):
        raise InvalidOutcome("context must be an object of fields, e.g. {'country': 'KR', 'os': 'ios'}")
    if len(context) > max_fields:
        raise InvalidOutcome(
            f"context has {len(context)} fields; at most {max_fields} are allowed "
            f"(max_context_fields, {SETTING['max_context_fields']})"
        )
    for key, value in context.items():
        # The common case first: short string keys and values.
        if type(key) is str and 0 < len(key) <= MAX_CONTEXT_KEY and type(value) is str:
            if len(value) <= max_value:
                continue
            raise _too_long(key, value, max_value)
        _check_context_item(key, value, max_value)


def _too_long(key: str, value: str, max_value: int) -> InvalidOutcome:
    return InvalidOutcome(
        f"context.{key} is {len(value)} characters long; at most {max_value} are allowed "
        f"(max_context_value_chars, {SETTING['max_context_value_chars']})"
    )


def _check_context_item(key: object, value: object, max_value: int) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_CONTEXT_KEY:
        raise InvalidOutcome(f"context keys must be 1-{MAX_CONTEXT_KEY} characters, got {str(key)[:80]!r}")
    if isinstance(value, str):
        if len(value) > max_value:
            raise _too_long(key, value, max_value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidOutcome(f"context.{key} must be a finite number")
    elif value is not None and not isinstance(value, (int, bool)):
        raise InvalidOutcome(
            f"context.{key} must be a string, a number, true/false or null, got {type(value).__name__}"
        )


def check_event_time(ts: float, now: float, max_skew_s: float) -> None:
    """Reject an event time later than ``now + max_skew_s`` (seconds since the epoch)."""
    if ts > now + max_skew_s:
        when = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
        server = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        raise InvalidOutcome(
            f"ts {when} is {ts - now:.0f} s after the server's clock ({server}); events may be at most "
            f"{max_skew_s:g} s in the future: send the time the impression happened, in UTC"
        )


def check_revenue(event: OutcomeEvent, net_revenue: bool) -> None:
    """Reject a filled event paying less than its floor, unless the network reports net revenue."""
    short = event.floor_cpm * (1.0 - REVENUE_FLOOR_RTOL) - REVENUE_FLOOR_ATOL - event.revenue_cpm
    if event.filled and not net_revenue and short > 0:
        raise InvalidOutcome(
            f"revenue_cpm {event.revenue_cpm:g} is below floor_cpm {event.floor_cpm:g} on a filled event; a network "
            f"cannot pay less than its floor. If network {event.network!r} reports revenue net of its share, "
            f'declare it in the placement with "revenue": "net"'
        )
