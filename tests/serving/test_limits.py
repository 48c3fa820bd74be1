"""Limits on placements, segments and contexts (issue 8, section 5), through the HTTP API.

A config over a limit is refused with a message naming the limit and changes nothing. An
event stream whose segments exceed a placement's limits is served and learned at the
nearest pooled level, counted in ``adbandit_segments_over_limit_total``; existing
segments keep their own allocation; a restart (from the snapshot, from the log alone, or
from an older snapshot plus the log) maps the next events exactly as before.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re

import numpy as np
import pytest

from bandit.errors import StorageFailure
from serving.eventlog import EventLog
from tests.serving.conftest import P1_BODY, outcome

NOW_TS = "2026-11-21T10:00:00Z"
#: Four segments at most, two values per segment field.
SMALL = {"max_segments": 4, "max_field_values": 2}


def ctx(country: str, os: str) -> dict:
    return {"country": country, "os": os}


def decide_segment(client, context: dict, placement: str = "p1") -> str:
    response = client.post("/v1/decide", json={"placement": placement, "request_id": "r", "context": context})
    assert response.status_code == 200, response.text
    return response.json()["segment"]


def post_events(client, contexts: list[dict], prefix: str) -> None:
    events = [outcome(i, prefix=prefix, ts=NOW_TS, context=c) for i, c in enumerate(contexts)]
    body = client.post("/v1/outcomes", json=events).json()
    assert body == {"accepted": len(events), "duplicates": 0, "rejected": []}, body
    client.app.state.store.flush()


def learned_segments(client) -> set[str]:
    return set(client.app.state.store.segments("p1"))


def events_of(client, segment: str) -> float:
    response = client.get("/v1/placements/p1/allocation", params={"segment": segment})
    assert response.status_code == 200, response.text
    return response.json()["effective_events"]


def over_limit(client) -> dict[tuple[str, str], float]:
    """``adbandit_segments_over_limit_total`` of p1 by (limit, path), read from /metrics."""
    text = client.get("/metrics").text
    pattern = r'adbandit_segments_over_limit_total\{limit="(\w+)",path="(\w+)",placement="p1"\} ([0-9.e+]+)'
    return {(m[0], m[1]): float(m[2]) for m in re.findall(pattern, text)}


def stats_digest(client) -> str:
    state = client.app.state.store.policy_state("p1")
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith("stats_")):
        digest.update(key.encode() + np.ascontiguousarray(state[key]).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------ config over a limit
def _networks(n: int) -> list[dict]:
    return [{"id": f"n{i}", "floor_min_cpm": 0.1, "floor_max_cpm": 20.0} for i in range(n)]


BAD_CONFIGS = [
    ("too many networks", {**P1_BODY, "networks": _networks(4)}, "4 networks; at most 3", "ADBANDIT_MAX_NETWORKS"),
    ("too many segment fields", {**P1_BODY, "segment_by": ["country", "os", "app"]},
     "3 fields; at most 2", "ADBANDIT_MAX_SEGMENT_FIELDS"),
    ("own max_segments above the service's", {**P1_BODY, "limits": {"max_segments": 5}},
     "limits.max_segments is 5, above the service's limit of 4", "ADBANDIT_MAX_SEGMENTS"),
    ("own max_field_values above the service's", {**P1_BODY, "limits": {"max_field_values": 3}},
     "limits.max_field_values is 3, above the service's limit of 2", "ADBANDIT_MAX_FIELD_VALUES"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "fragment", "setting"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_config_over_a_limit_is_refused_and_changes_nothing(make_client, case, body, fragment, setting):
    client = make_client(default_policy="static", max_networks=3, max_segment_fields=2, **SMALL)
    created = client.put("/v1/placements/new", json=body)
    assert created.status_code == 422
    assert fragment in created.json()["detail"] and setting in created.json()["detail"], created.json()
    assert client.get("/v1/placements/new").status_code == 404
    # Replacing an existing placement by it is refused too, and the placement stays as it was.
    assert client.put("/v1/placements/p1", json=P1_BODY).status_code == 201
    post_events(client, [ctx("KR", "ios")], "seed")
    before = (client.get("/v1/placements/p1").json(), stats_digest(client))
    replaced = client.put("/v1/placements/p1", json=body)
    assert replaced.status_code == 422 and setting in replaced.json()["detail"]
    assert (client.get("/v1/placements/p1").json(), stats_digest(client)) == before


def test_a_placement_keeps_its_own_lower_limits(make_client):
    client = make_client(default_policy="static")
    plain = client.put("/v1/placements/p1", json=P1_BODY)
    assert plain.status_code == 201 and "limits" not in plain.json()  # the contract is unchanged without them
    body = {**P1_BODY, "limits": {"max_segments": 1}}
    assert client.put("/v1/placements/p1", json=body).json()["limits"] == {"max_segments": 1}
    assert client.get("/v1/placements/p1").json()["limits"] == {"max_segments": 1}
    post_events(client, [ctx("KR", "ios"), ctx("JP", "ios")], "e")
    assert learned_segments(client) == {"KR|ios"}
    assert decide_segment(client, ctx("JP", "ios")) == "*"
    bad = client.put("/v1/placements/p1", json={**P1_BODY, "limits": {"max_segments": 0}})
    assert bad.status_code == 422 and "max_segments" in json.dumps(bad.json())


# --------------------------------------------------------------- events beyond it
#: Learned in this order under SMALL: KR|ios and JP|ios (two countries: the field is full),
#: US|ios (a third country: *|ios), KR|android (the fourth segment: the placement is full).
FIRST = [ctx("KR", "ios"), ctx("JP", "ios"), ctx("US", "ios"), ctx("KR", "android")]
FIRST_SEGMENTS = {"KR|ios", "JP|ios", "*|ios", "KR|android"}
#: Then, with no room left: each context, the key it is served and learned under, and why.
BEYOND = [
    (ctx("FR", "ios"), "*|ios", "field_values"),  # a third country, and *|ios exists
    (ctx("JP", "android"), "*", "segments"),  # known values, but no room for a new key
    (ctx("KR", "tizen"), "*", "segments"),  # a third OS: KR|* does not exist, and no room for it
    (ctx("KR", "ios"), "KR|ios", None),  # existing segments keep theirs
    (ctx("KR", "android"), "KR|android", None),
]


def _limited(make_client, state_dir=None):
    client = make_client(state_dir, default_policy="static", **SMALL)
    if state_dir is None or client.get("/v1/placements/p1").status_code == 404:
        assert client.put("/v1/placements/p1", json=P1_BODY).status_code == 201
    return client


def test_segments_beyond_the_limits_are_pooled_and_counted(make_client):
    client = _limited(make_client)
    post_events(client, FIRST, "first")
    assert learned_segments(client) == FIRST_SEGMENTS
    assert over_limit(client)[("field_values", "outcome")] == 1  # US|ios
    for context, key, _ in BEYOND:
        assert decide_segment(client, context) == key, context
    requests = [{"request_id": f"r{i}", "context": c} for i, (c, _, _) in enumerate(BEYOND)]
    batch = client.post("/v1/decide/batch", json={"placement": "p1", "requests": requests})
    assert [d["segment"] for d in batch.json()["decisions"]] == [key for _, key, _ in BEYOND]
    before = {s: events_of(client, s) for s in FIRST_SEGMENTS}
    post_events(client, [c for c, _, _ in BEYOND], "beyond")
    # No new segment; the pooled events are learned where their decisions came from.
    assert learned_segments(client) == FIRST_SEGMENTS
    assert events_of(client, "*|ios") == before["*|ios"] + 1
    assert events_of(client, "KR|ios") == before["KR|ios"] + 1
    assert events_of(client, "JP|ios") == before["JP|ios"]
    assert events_of(client, "*") == len(FIRST) + len(BEYOND)
    counts = over_limit(client)
    assert counts[("field_values", "decide")] == 2 and counts[("segments", "decide")] == 4
    assert counts[("field_values", "outcome")] == 2 and counts[("segments", "outcome")] == 2
    metrics = client.get("/metrics").text
    assert 'adbandit_placement_segments{placement="p1"} 4.0' in metrics
    assert 'adbandit_placement_segments_limit{placement="p1"} 4.0' in metrics
    # Prebid reads the pooled segment's '*' as its wildcard.
    rules = client.get("/v1/prebid/floors", params={"placement": "p1"}).json()["modelGroups"][0]["values"]
    assert "*|ios" in rules


def test_a_lowered_limit_keeps_the_existing_segments(make_client):
    client = make_client(default_policy="static")
    assert client.put("/v1/placements/p1", json=P1_BODY).status_code == 201
    post_events(client, FIRST[:2], "first")
    post_events(client, FIRST[2:], "second")
    assert learned_segments(client) == {"KR|ios", "JP|ios", "US|ios", "KR|android"}
    version = client.get("/v1/placements/p1/allocation").json()["model_version"]
    assert client.put("/v1/placements/p1", json={**P1_BODY, "limits": {"max_segments": 2}}).status_code == 200
    # A limit is no reason to rebuild the learners (a merge would refit every segment).
    assert client.get("/v1/placements/p1/allocation").json()["model_version"] == version
    for context in FIRST:
        assert decide_segment(client, context) == f"{context['country']}|{context['os']}"
    assert decide_segment(client, ctx("FR", "ios")) == "*"
    post_events(client, [ctx("FR", "ios")], "late")
    assert learned_segments(client) == {"KR|ios", "JP|ios", "US|ios", "KR|android"}
    assert over_limit(client)[("segments", "outcome")] == 1


@pytest.mark.parametrize("restart", ["snapshot", "log only", "older snapshot + log"])
def test_a_restart_maps_the_next_events_as_before(make_client, tmp_path, restart):
    """Admitted segments are derived from durable state: after a restart the same events
    are learned under the same keys as in the store that never stopped."""
    state = tmp_path / "state"
    client = _limited(make_client, state)
    post_events(client, FIRST[:2], "a")
    assert client.post("/v1/admin/snapshot").status_code == 200
    post_events(client, FIRST[2:], "b")  # US|ios and KR|android: after the snapshot
    live = {c["country"] + c["os"]: decide_segment(client, c) for c, _, _ in BEYOND}
    digest = stats_digest(client)
    client.__exit__(None, None, None)  # a final snapshot
    snapshots = sorted((state / "snapshots").glob("snapshot-*.npz"))
    if restart == "log only":
        for path in snapshots:
            path.unlink()
    elif restart == "older snapshot + log":
        snapshots[-1].unlink()
    client = _limited(make_client, state)
    assert learned_segments(client) == FIRST_SEGMENTS
    assert stats_digest(client) == digest
    assert {c["country"] + c["os"]: decide_segment(client, c) for c, _, _ in BEYOND} == live
    post_events(client, [c for c, _, _ in BEYOND], "beyond")
    assert learned_segments(client) == FIRST_SEGMENTS
    assert events_of(client, "*|ios") == 2 and events_of(client, "*") == len(FIRST) + len(BEYOND)


def test_a_refused_write_admits_no_segment(make_client, monkeypatch):
    client = _limited(make_client)
    post_events(client, FIRST[:3], "a")  # room for one more segment
    write = EventLog.write

    def full_disk(self, kind, payload):
        raise StorageFailure("storage failure (ENOSPC: injected) while writing the event log")

    monkeypatch.setattr(EventLog, "write", full_disk)
    refused = client.post("/v1/outcomes", json=[outcome(0, prefix="x", ts=NOW_TS, context=ctx("JP", "android"))])
    assert refused.status_code == 507
    monkeypatch.setattr(EventLog, "write", write)
    # The refused event took no room: the next new segment is admitted.
    post_events(client, [ctx("KR", "android")], "y")
    assert learned_segments(client) == FIRST_SEGMENTS
    assert decide_segment(client, ctx("JP", "android")) == "*"


def test_file_ingest_pools_like_the_service(make_client, tmp_path):
    from serving.ingest import ingest_files
    from serving.limits import Limits

    state = tmp_path / "state"
    client = _limited(make_client, state)
    client.__exit__(None, None, None)
    rows = [outcome(i, ts=NOW_TS, context=c) for i, c in enumerate(FIRST + [c for c, _, _ in BEYOND])]
    path = tmp_path / "day.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ingest_files([path], state_dir=state, limits=Limits(**SMALL)).accepted == len(rows)
    client = _limited(make_client, state)
    assert learned_segments(client) == FIRST_SEGMENTS
    assert events_of(client, "*|ios") == 2


def test_a_model_state_with_too_many_segments_is_refused(make_client):
    client = make_client(default_policy="static")
    assert client.put("/v1/placements/p1", json=P1_BODY).status_code == 201
    post_events(client, FIRST, "first")
    state = client.app.state.store.policy_state("p1")
    assert client.put("/v1/placements/p1", json={**P1_BODY, "limits": {"max_segments": 3}}).status_code == 200
    buf = io.BytesIO()
    np.savez(buf, **state)
    body = {"variant": "champion", "state_npz_b64": base64.b64encode(buf.getvalue()).decode()}
    response = client.post("/v1/admin/placements/p1/model", json=body)
    assert response.status_code == 422
    assert "4 segments" in response.json()["detail"] and "at most 3" in response.json()["detail"]


# ------------------------------------------------------------------ raw contexts
def test_contexts_over_the_configured_limits_are_refused(make_client):
    client = make_client(default_policy="static", max_context_fields=3, max_context_value_chars=128)
    assert client.put("/v1/placements/p1", json=P1_BODY).status_code == 201
    long_value = {"country": "x" * 129, "os": "ios"}
    many = {"country": "KR", "os": "ios", "a": 1, "b": 2}
    for context, fragment in ((long_value, "ADBANDIT_MAX_CONTEXT_VALUE_CHARS"), (many, "ADBANDIT_MAX_CONTEXT_FIELDS")):
        one = client.post("/v1/decide", json={"placement": "p1", "request_id": "r", "context": context})
        assert one.status_code == 422 and fragment in one.json()["detail"], one.json()
        requests = [{"request_id": "a", "context": ctx("KR", "ios")}, {"request_id": "b", "context": context}]
        batch = client.post("/v1/decide/batch", json={"placement": "p1", "requests": requests})
        assert batch.status_code == 422 and "requests[1].context" in batch.json()["detail"]
        body = client.post("/v1/outcomes", json=[outcome(0, ts=NOW_TS, context=context)]).json()
        assert body["accepted"] == 0 and fragment in body["rejected"][0]["error"]
    assert decide_segment(client, {"country": "x" * 128, "os": "ios"}) == "x" * 128 + "|ios"
    # Above the HTTP schema's own bound (256), whatever the settings.
    response = client.post("/v1/decide", json={"placement": "p1", "request_id": "r", "context": {"os": "x" * 257}})
    assert response.status_code == 422


def test_service_limits_come_from_the_environment(monkeypatch):
    from serving.settings import Settings

    monkeypatch.setenv("ADBANDIT_MAX_SEGMENTS", "1234")
    monkeypatch.setenv("ADBANDIT_MAX_CONTEXT_VALUE_CHARS", "128")
    limits = Settings().limits()
    assert limits.max_segments == 1234 and limits.max_context_value_chars == 128
    assert limits.max_networks == 64 and limits.max_field_values == 5000
    monkeypatch.setenv("ADBANDIT_MAX_CONTEXT_VALUE_CHARS", "1000")  # above the HTTP schema's bound
    with pytest.raises(ValueError, match="max_context_value_chars"):
        Settings()
