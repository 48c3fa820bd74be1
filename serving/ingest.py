"""Loading outcome log files (Parquet / NDJSON) into a state directory or a running service.

``adbandit ingest PATH... [--state-dir DIR | --url URL]`` calls :func:`ingest_files`.
Rows go in batches through the same validation and de-duplication as ``POST
/v1/outcomes``: into a :class:`~serving.store.PolicyStore` opened on the state directory
(the service must not be running on it: the directory is locked), or as JSON arrays
POSTed to ``URL/v1/outcomes``. Re-running an ingest is safe: repeated ``event_id`` s
count as duplicates.

The service's own outcome archive (``state/outcomes/*.parquet``, :mod:`serving.archive`) is
valid input too. Its rows keep the event's hash instead of its id and the segment key
instead of the context; each becomes an outcome event with the id
:func:`~serving.dedupe.archived_event_id` (which de-duplicates as the original event) and
the context read back from the segment key by the placement's ``segment_by`` fields. The
archive does not keep decision ids, so these events are learned by the champion, without
propensities. Into a state directory, an archived row keeps its ``request_revenue_cpm`` and
``joined_revenue_cpm`` (:mod:`serving.archive`), so a waterfall or auction outcome (or the
notices of one decision) is one request of the new store's report, as it was in the old one;
posted to a service (``--url``), where the outcome contract has no such fields, and from parts
written before the columns, every row is a request of its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from bandit import read_events
from bandit.errors import AdbanditError, InvalidConfig, UnknownPlacement
from serving.dedupe import archived_event_id
from serving.limits import Limits
from serving.store import IngestResult, PolicyStore
from serving.validation import OUTCOME_FIELDS

#: Columns of the outcome archive that say which rows are requests (:mod:`serving.archive`).
REQUEST, JOINED = "request_revenue_cpm", "joined_revenue_cpm"
#: Events per ``ingest`` call or POST.
BATCH_SIZE = 5000
#: Attempts per POST on connection errors, timeouts and 429/502/503/504/507 answers
#: (with exponential back-off; :mod:`serving.client`).
HTTP_ATTEMPTS = 5


class IngestFailed(AdbanditError):
    """The service refused a batch (e.g. 401) or stayed unreachable."""


def event_batches(frame: Any, batch_size: int = BATCH_SIZE) -> Iterator[list[dict]]:
    """Rows of a polars frame as JSON-like event dicts, ``batch_size`` at a time.

    Null fields are dropped (a column that only some NDJSON lines had comes back as
    null on the others, which must mean "absent", e.g. ``revenue_cpm`` of a no-fill).
    :func:`bandit.read_events` has already turned every ``ts`` into epoch seconds.
    """
    for offset in range(0, frame.height, batch_size):
        rows = frame.slice(offset, batch_size).to_dicts()
        yield [_drop_nulls(row) for row in rows]


def _drop_nulls(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        out[key] = value
    return out


def is_archived(row: Mapping[str, Any]) -> bool:
    """A row of the service's outcome archive (it has the event's hash, not its id)."""
    return "event_id" not in row and "event_hash" in row


def archived_event(row: Mapping[str, Any], segment_by: Sequence[str] | None) -> dict:
    """An archive row as an outcome event: its id from its hash, its context from its segment
    key split into the placement's ``segment_by`` fields (none when they do not match, or the
    placement is unknown), and only the fields of the HTTP contract."""
    event = {k: row[k] for k in OUTCOME_FIELDS if k in row}
    event["event_id"] = archived_event_id(row["event_hash"])
    values = str(row.get("segment", "")).split("|")
    if segment_by and len(values) == len(segment_by):
        event["context"] = dict(zip(segment_by, values, strict=True))
    return event


def archived_requests(rows: list[dict]) -> list[tuple[float, float] | None] | None:
    """Per row, the (request revenue, joined revenue) an archive row carries (NaN where it has
    none), ``None`` for other rows and for archive parts written before the columns; ``None``
    when no row has them."""
    out = [
        (float(r[REQUEST]), float(r.get(JOINED, math.nan))) if is_archived(r) and r.get(REQUEST) is not None else None
        for r in rows
    ]
    return out if any(x is not None for x in out) else None


def contract_events(rows: list[dict], segment_by: Callable[[str], Sequence[str] | None]) -> list[dict]:
    """Rows as outcome events: archive rows converted (:func:`archived_event`), others as they are."""
    return [archived_event(r, segment_by(str(r.get("placement")))) if is_archived(r) else r for r in rows]


def _cached(lookup: Callable[[str], Sequence[str] | None]) -> Callable[[str], Sequence[str] | None]:
    seen: dict[str, Sequence[str] | None] = {}

    def cached(placement: str) -> Sequence[str] | None:
        if placement not in seen:
            seen[placement] = lookup(placement)
        return seen[placement]

    return cached


def _merge(total: IngestResult, part: IngestResult, offset: int) -> IngestResult:
    return IngestResult(
        total.accepted + part.accepted,
        total.duplicates + part.duplicates,
        [*total.rejected, *((offset + i, e) for i, e in part.rejected)],
    )


def ingest_files(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    state_dir: str | os.PathLike | None = None,
    url: str | None = None,
    api_key: str | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    timeout_s: float = 60.0,
    client: Any = None,
    decision_key: bytes | None = None,
    limits: Limits | None = None,
) -> IngestResult:
    """Ingest outcome logs into ``state_dir`` or the service at ``url`` (exactly one).

    Returns the totals; rejected rows carry their 0-based row number across all files
    (in the order :func:`bandit.read_events` concatenates them). ``client`` may be an
    ``httpx.Client`` to use instead of a new one (its base URL is ignored). Offline, rows go
    through the same checks as ``POST /v1/outcomes`` (event time against this machine's
    clock, strict fields, revenue against floor, decision ids verified with ``decision_key``
    — the service's ``ADBANDIT_DECISION_KEY`` — or the state dir's key file), and segments
    beyond the placements' limits (``limits``, the service's ``ADBANDIT_MAX_*``) are pooled.
    """
    if (state_dir is None) == (url is None):
        raise InvalidConfig("give exactly one of state_dir (offline) or url (running service)")
    if batch_size < 1:
        raise InvalidConfig("batch_size must be >= 1")
    frame = read_events(paths)
    total = IngestResult(0, 0, [])
    offset = 0
    if state_dir is not None:
        with PolicyStore(state_dir, decision_key=decision_key, limits=limits) as store:

            def store_segment_by(placement: str) -> Sequence[str] | None:
                try:
                    return store.get_placement(placement).segment_by
                except UnknownPlacement:
                    return None  # the store rejects these events, naming the placement

            segment_by = _cached(store_segment_by)
            for batch in event_batches(frame, batch_size):
                events = contract_events(batch, segment_by)
                total = _merge(total, store.ingest(events, requests=archived_requests(batch)), offset)
                offset += len(batch)
        return total
    import orjson

    from serving.client import AdbanditClient, ServiceError

    api = AdbanditClient(str(url), api_key, timeout_s=timeout_s, attempts=HTTP_ATTEMPTS, http=client)
    segment_by = _cached(lambda placement: _service_segment_by(api, placement))
    try:
        for batch in event_batches(frame, batch_size):
            events = contract_events(batch, segment_by)
            body = orjson.dumps(events, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)
            try:
                reply = api.post_outcomes(body)
            except ServiceError as exc:
                raise IngestFailed(str(exc)) from None
            part = IngestResult(reply.accepted, reply.duplicates, [(r.index, r.error) for r in reply.rejected])
            total = _merge(total, part, offset)
            offset += len(batch)
    finally:
        api.close()
    return total


def _service_segment_by(api: Any, placement: str) -> Sequence[str] | None:
    """The ``segment_by`` fields of a placement of the service (None if it has no such placement)."""
    from serving.client import ServiceError

    try:
        config = api.placement(placement)
    except ServiceError as exc:
        raise IngestFailed(str(exc)) from None
    return None if config is None else list(config.get("segment_by") or [])
