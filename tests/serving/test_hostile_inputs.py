"""Hostile input cannot move a model (issue 7, sections 3 and 4).

Tables of invalid inputs, each checked for its status and message, for leaving the
learned state exactly as it was (statistics arrays, allocations, the experiment report)
and for counting exactly the events that were accepted: future-dated events, unknown
fields, oversized contexts, revenue below the floor, forged and mismatched decision ids,
outcomes of removed variants, malformed model states, unbounded params. Slow bodies and
key scopes run against a real server process on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from bandit import PlacementConfig, make_policy
from serving.decision_ids import ID_CHARS, PAYLOAD, DecisionSigner
from serving.ingest import ingest_files
from serving.process import HOST, free_port, start_server, stop_server
from tests.serving.conftest import P1_BODY, outcome

NOW_TS = "2026-11-21T10:00:00Z"  # every valid event shares one time: effective_events are exact counts
#: Champion and a challenger that learns apart from it (other params), half the traffic each.
AB_BODY = {
    "variants": [
        {"name": "champion", "traffic": 50},
        {"name": "challenger", "traffic": 50, "params": {"floors": {"alpha": 1.0}}},
    ]
}


# ----------------------------------------------------------------------------- helpers
def state_fingerprint(client) -> str:
    """What rejected input must leave unchanged: placements, allocations (placement level and
    a segment), the experiment report and a digest of every variant's statistics arrays."""
    store = client.app.state.store
    store.flush()
    parts: list = [client.get("/v1/placements").json()]
    for p in parts[0]["placements"]:
        pid = p["placement"]
        report = client.get(f"/v1/placements/{pid}/experiment").json()
        for name, row in report["variants"].items():
            row.pop("decisions")  # decisions served are counted, not state
            for segment in (None, "KR|ios"):
                params = {"variant": name, **({"segment": segment} if segment else {})}
                parts.append(client.get(f"/v1/placements/{pid}/allocation", params=params).json())
            state = store.policy_state(pid, name)
            digest = hashlib.sha256()
            for key in sorted(k for k in state if k.startswith(("stats_", "table_"))):
                digest.update(key.encode() + np.ascontiguousarray(state[key]).tobytes())
            parts.append(digest.hexdigest())
        parts.append(report)
    return json.dumps(parts, sort_keys=True)


def learned(client, variant: str = "champion") -> int:
    client.app.state.store.flush()
    return client.get("/v1/placements/p1/experiment").json()["variants"][variant]["requests"]


def store_metric(client, name: str) -> int:
    return int(client.app.state.store.metrics()[name])


@pytest.fixture
def seeded(make_client) -> Callable:
    """``seeded(**settings)``: a client with placement p1 (static policy: no discounting, no
    change detector, so learned counts are exact) that has learned 20 events."""

    def make(**settings):
        client = make_client(default_policy="static", **settings)
        assert client.put("/v1/placements/p1", json=P1_BODY).status_code == 201
        body = client.post("/v1/outcomes", json=[outcome(i, prefix="seed", ts=NOW_TS) for i in range(20)]).json()
        assert body == {"accepted": 20, "duplicates": 0, "rejected": []}
        assert learned(client) == 20
        return client

    return make


def future_iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


def with_fields(**fields) -> Callable[[dict], dict]:
    return lambda e: {**e, **fields}


def with_context(context: dict) -> Callable[[dict], dict]:
    return lambda e: {**e, "context": context}


# ------------------------------------------------------------------ one bad event (3)
BAD_EVENTS = [
    ("decades ahead", with_fields(ts="2090-01-01T00:00:00Z"), "after the server's clock"),
    ("10 minutes ahead, epoch seconds", lambda e: {**e, "ts": time.time() + 600}, "at most 300 s in the future"),
    ("typo of a field", lambda e: {**{k: v for k, v in e.items() if k != "revenue_cpm"}, "revenu_cpm": 2.0},
     "did you mean 'revenue_cpm'"),
    ("unknown field", with_fields(segment="KR|ios"), "unknown field(s) 'segment'"),
    ("context key too long", with_context({"k" * 65: "x"}), "context keys must be 1-64"),
    ("context value too long", with_context({"country": "x" * 257}), "at most 256"),
    ("too many context fields", with_context({f"f{i}": "x" for i in range(65)}), "at most 64 are allowed"),
    ("nested context value", with_context({"country": {"code": "KR"}}), "must be a string, a number"),
    ("context not an object", with_context(["KR"]), "context must be an object"),
    ("revenue below floor (gross)", with_fields(floor_cpm=2.0, revenue_cpm=1.5), "below floor_cpm"),
    ("revenue just beyond rounding", with_fields(floor_cpm=2.0, revenue_cpm=1.99), "below floor_cpm"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "mutate", "fragment"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS])
def test_a_bad_event_is_rejected_alone_and_changes_nothing(seeded, case, mutate, fragment):
    client = seeded()
    before = state_fingerprint(client)
    bad = mutate(outcome(0, prefix="bad", ts=NOW_TS))
    alone = client.post("/v1/outcomes", json=[bad])
    assert alone.status_code == 200
    body = alone.json()
    assert body["accepted"] == 0 and body["duplicates"] == 0
    assert [r["index"] for r in body["rejected"]] == [0] and fragment in body["rejected"][0]["error"], body
    assert state_fingerprint(client) == before
    # In a batch, the others still go through, and exactly they are learned.
    batch = [outcome(1, prefix="ok", ts=NOW_TS), bad, outcome(2, prefix="ok", ts=NOW_TS)]
    body = client.post("/v1/outcomes", json=batch).json()
    assert body["accepted"] == 2 and [r["index"] for r in body["rejected"]] == [1]
    assert learned(client) == 22
    assert client.get("/v1/placements/p1/allocation").json()["effective_events"] == 22
    assert store_metric(client, "events_rejected_total") == 2 and store_metric(client, "events_accepted_total") == 22


GOOD_EDGES = [
    ("4 minutes ahead (within the skew)", lambda e: {**e, "ts": time.time() + 240}),
    ("revenue equal to the floor", with_fields(floor_cpm=1.5, revenue_cpm=1.5)),
    ("floor rounded to the cent by the network", with_fields(floor_cpm=1.371234, revenue_cpm=1.37)),
    ("context at its limits", with_context({"k" * 64: "v" * 256, **{f"f{i}": i for i in range(63)}})),
    ("null, number and boolean context values", with_context({"country": None, "os": 3, "app": True})),
]


@pytest.mark.parametrize(("case", "mutate"), GOOD_EDGES, ids=[c[0] for c in GOOD_EDGES])
def test_valid_edge_cases_are_accepted(seeded, case, mutate):
    client = seeded()
    body = client.post("/v1/outcomes", json=[mutate(outcome(0, prefix="edge", ts=NOW_TS))]).json()
    assert body == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert learned(client) == 21


def test_a_network_reporting_net_revenue_may_pay_below_its_floor(seeded):
    client = seeded()
    net = {**P1_BODY, "networks": [{**P1_BODY["networks"][0], "revenue": "net"}, P1_BODY["networks"][1]]}
    response = client.put("/v1/placements/p1", json=net)
    assert response.status_code == 200
    assert response.json()["networks"][0]["revenue"] == "net" and "revenue" not in response.json()["networks"][1]
    low = [outcome(0, prefix="net", network="alpha", floor=2.0, revenue=1.5, ts=NOW_TS),
           outcome(1, prefix="net", network="beta", floor=2.0, revenue=1.5, ts=NOW_TS)]  # fmt: skip
    body = client.post("/v1/outcomes", json=low).json()
    assert body["accepted"] == 1 and body["rejected"][0]["index"] == 1 and "beta" in body["rejected"][0]["error"]
    assert learned(client) == 21


def test_a_decades_ahead_event_cannot_reset_the_discounted_statistics(make_client):
    """The issue's case: ts_gmm (48 h half-life); one event dated 2090 used to discount every
    segment's statistics of its placement to nothing."""
    client = make_client()
    client.put("/v1/placements/p1", json=P1_BODY)
    ts = time.time() - 3600
    client.post("/v1/outcomes", json=[outcome(i, ts=ts) for i in range(200)])
    client.app.state.store.flush()
    before = client.get("/v1/placements/p1/allocation").json()["effective_events"]
    assert before == pytest.approx(200, rel=1e-9)
    body = client.post("/v1/outcomes", json=[outcome(999, ts="2090-01-01T00:00:00Z")]).json()
    assert body["accepted"] == 0
    client.app.state.store.flush()
    assert client.get("/v1/placements/p1/allocation").json()["effective_events"] == before


def test_file_ingest_rejects_future_events_and_unknown_fields(tmp_path):
    from serving.store import PolicyStore

    state = tmp_path / "state"
    with PolicyStore(state, default_policy="static") as store:
        store.put_placement(PlacementConfig.from_dict("p1", P1_BODY))
    rows = [outcome(0, ts=NOW_TS), outcome(1, ts="2090-01-01T00:00:00Z"), outcome(2, ts=NOW_TS),
            {**outcome(3, ts=NOW_TS), "revenu_cpm": 1.0}]  # fmt: skip
    path = tmp_path / "day.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = ingest_files([path], state_dir=state)
    assert result.accepted == 2
    errors = dict(result.rejected)
    assert set(errors) == {1, 3}
    assert "after the server's clock" in errors[1] and "revenu_cpm" in errors[3]
    with PolicyStore(state) as store:
        assert store.experiment_report("p1")["variants"]["champion"]["requests"] == 2


# --------------------------------------------------------------------- decision ids (3)
def _tamper_propensity(decision_id: str) -> str:
    """Claim propensities of 2^-32 (an off-policy weight of ~1e19) keeping the old signature."""
    head, _, body = decision_id.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[18:22] = b"\xff\xff\xff\xff"
    return f"{head}.{base64.urlsafe_b64encode(bytes(raw)).decode()}"


def _forged(variant: str) -> str:
    """A well-formed id signed with another key, claiming tiny propensities."""
    other = DecisionSigner(b"not the service key!")
    return other.issue("p1", variant, "alpha", 1.0, 1e-9, 1e-9)


FORGED = [
    ("signed with another key", lambda d: _forged("challenger"), {}),
    ("propensity bytes altered", lambda d: _tamper_propensity(d["decision_id"]), {}),
    ("another network", lambda d: d["decision_id"], {"network": "other"}),
    ("another floor", lambda d: d["decision_id"], {"floor_cpm": "other"}),
    ("another variant's prefix", lambda d: d["decision_id"].replace("challenger.", "champion.", 1), {}),
    ("legacy unsigned format", lambda d: "challenger.0123456789abcdef0001ffff", {}),
    ("random text", lambda d: "challenger." + "A" * ID_CHARS, {}),
]


@pytest.mark.parametrize(("case", "make_id", "change"), FORGED, ids=[c[0] for c in FORGED])
def test_forged_or_mismatched_decision_ids_give_no_propensity_and_no_credit(make_client, tmp_path, case, make_id,
                                                                           change):  # fmt: skip
    client = make_client(default_policy="static")
    client.put("/v1/placements/p1", json=P1_BODY)
    experiment = AB_BODY
    assert client.put("/v1/placements/p1/experiment", json=experiment).status_code == 200
    requests = [{"request_id": f"r{i}", "context": {"country": "KR", "os": "ios"}} for i in range(200)]
    decided = client.post("/v1/decide/batch", json={"placement": "p1", "requests": requests}).json()["decisions"]
    d = next(x for x in decided if x["variant"] == "challenger")
    genuine = outcome(0, prefix="genuine", network=d["network"], floor=d["floor_cpm"], revenue=d["floor_cpm"] + 1,
                      decision_id=d["decision_id"], ts=NOW_TS)  # fmt: skip
    network = "beta" if d["network"] == "alpha" else "alpha"
    floor = d["floor_cpm"] + 0.5 if change.get("floor_cpm") else d["floor_cpm"]
    bad = outcome(1, prefix="forged", network=network if change.get("network") else d["network"], floor=floor,
                  revenue=floor + 1, decision_id=make_id(d), ts=NOW_TS)  # fmt: skip
    before = state_fingerprint(client)
    body = client.post("/v1/outcomes", json=[genuine, bad]).json()
    assert body == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert learned(client, "challenger") == 1  # only the genuine one is the challenger's
    assert learned(client, "champion") == 1  # the unverifiable one is learned like an event without id
    assert store_metric(client, "events_unverified_decision_total") == 1
    assert state_fingerprint(client) != before
    client.post("/v1/admin/snapshot")
    frame = pl.read_parquet(sorted((Path(client.app.state.settings.state_dir) / "outcomes").glob("*.parquet")))
    rows = {h: r for h, r in zip(frame["event_hash"].to_list(), frame.iter_rows(named=True), strict=True)}
    assert len(rows) == 2
    by_variant = {r["variant"]: r for r in rows.values()}
    assert by_variant["challenger"]["propensity"] == pytest.approx(d["propensity"], rel=4e-4)
    assert math.isnan(by_variant["champion"]["propensity"]) and math.isnan(by_variant["champion"]["floor_propensity"])
    weights = 1.0 / (frame["propensity"] * frame["floor_propensity"]).drop_nans()
    assert weights.max() < 1e4  # no forged id gives an off-policy weight anywhere near 1e9


def test_decision_ids_verify_across_restarts_and_the_key_file_is_private(make_client, tmp_path):
    client = make_client(state_dir=tmp_path / "s")
    client.put("/v1/placements/p1", json=P1_BODY)
    d = client.post("/v1/decide", json={"placement": "p1", "request_id": "r"}).json()
    key = tmp_path / "s" / "decision.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    client.__exit__(None, None, None)
    again = make_client(state_dir=tmp_path / "s")
    event = outcome(0, network=d["network"], floor=d["floor_cpm"], revenue=d["floor_cpm"] + 1,
                    decision_id=d["decision_id"], ts=NOW_TS)  # fmt: skip
    assert again.post("/v1/outcomes", json=[event]).json()["accepted"] == 1
    assert store_metric(again, "events_unverified_decision_total") == 0


def test_a_configured_decision_key_is_used_and_other_keys_fail(make_client, tmp_path):
    signer = DecisionSigner(b"shared by every replica")
    client = make_client(decision_key="shared by every replica", default_policy="static")
    client.put("/v1/placements/p1", json=P1_BODY)
    assert not (Path(client.app.state.settings.state_dir) / "decision.key").exists()
    d = client.post("/v1/decide", json={"placement": "p1", "request_id": "r"}).json()
    assert signer.verify(d["decision_id"], "p1", d["network"], d["floor_cpm"]).ok
    assert not DecisionSigner(b"x" * 32).verify(d["decision_id"], "p1", d["network"], d["floor_cpm"]).ok
    assert PAYLOAD.size == 24


# ----------------------------------------------------------------- removed variants (3)
def test_outcomes_of_a_removed_variant_are_counted_and_kept_out(make_client):
    client = make_client(default_policy="static")
    client.put("/v1/placements/p1", json=P1_BODY)
    experiment = AB_BODY
    client.put("/v1/placements/p1/experiment", json=experiment)
    requests = [{"request_id": f"r{i}", "context": {"country": "KR", "os": "ios"}} for i in range(100)]
    decided = client.post("/v1/decide/batch", json={"placement": "p1", "requests": requests}).json()["decisions"]
    events = [outcome(i, network=d["network"], floor=d["floor_cpm"], revenue=d["floor_cpm"] + 1,
                      decision_id=d["decision_id"], ts=NOW_TS) for i, d in enumerate(decided)]  # fmt: skip
    n_challenger = sum(d["variant"] == "challenger" for d in decided)
    assert 20 < n_challenger < 80
    one = {"variants": [{"name": "champion", "traffic": 100}]}
    assert client.put("/v1/placements/p1/experiment", json=one).status_code == 200
    before = state_fingerprint(client)
    removed = [e for e, d in zip(events, decided, strict=True) if d["variant"] == "challenger"]
    body = client.post("/v1/outcomes", json=removed).json()
    assert body["accepted"] == 0 and len(body["rejected"]) == n_challenger
    assert "no longer in the experiment" in body["rejected"][0]["error"]
    assert state_fingerprint(client) == before  # not credited to the champion's report or learning
    assert store_metric(client, "events_removed_variant_total") == n_challenger
    body = client.post("/v1/outcomes", json=events).json()
    assert body["accepted"] == 100 - n_challenger and len(body["rejected"]) == n_challenger
    assert learned(client) == 100 - n_challenger
    text = client.get("/metrics").text
    assert f"adbandit_store_events_removed_variant_total {2 * n_challenger}.0" in text


# ------------------------------------------------------------------- model states (3)
def _state(policy: str = "ts_gmm") -> dict[str, np.ndarray]:
    return make_policy(policy, PlacementConfig.from_dict("p1", P1_BODY), seed=3).state()


def _meta(state: dict, **changes) -> dict:
    meta = json.loads(str(state["meta"]))
    for key, value in changes.items():
        if key == "params":
            meta["params"] = {**meta["params"], **value}
        else:
            meta[key] = value
    return {**state, "meta": np.array(json.dumps(meta))}


def _set(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict], dict]:
    return lambda s: {**s, name: fn(np.array(s[name]))}


def _at(index, value) -> Callable[[np.ndarray], np.ndarray]:
    def put(a: np.ndarray) -> np.ndarray:
        a[index] = value
        return a

    return put


def _stats(state: dict, value: float) -> dict:
    """Statistics of one segment with one floor bin, every number ``value``."""
    n = int(state["stats_n_networks"])
    return {
        **state,
        "stats_segments": np.array(["KR|ios"]),
        "stats_floor_cells": np.array([0]),
        "stats_floor_bins": np.array([10], dtype=np.uint8),
        "stats_floor_values": np.full((1, 7), value),
        "stats_totals": np.full((1, n, 9), value),
    }


def _dense_stats(state: dict, shape: tuple[int, ...]) -> dict:
    """Dense statistics of earlier versions, of ``shape``."""
    sparse = ("floor_cells", "floor_bins", "floor_values", "price_cells", "price_bins", "price_values")
    kept = {k: v for k, v in state.items() if k.removeprefix("stats_") not in sparse}
    return {**kept, "stats_segments": np.array(["KR|ios"]), "stats_data": np.zeros(shape)}


def _without(name: str) -> Callable[[dict], dict]:
    return lambda s: {k: v for k, v in s.items() if k != name}


BAD_STATES = [
    ("weights of the wrong shape", _set("table_weights", lambda a: a[:, :1]), "table_weights has shape"),
    ("NaN weight", _set("table_weights", _at((0, 0), np.nan)), "non-finite"),
    ("weights not summing to 1", _set("table_weights", lambda a: a * 0.5), "not a probability vector"),
    ("negative weight", _set("table_weights", lambda a: np.array([[1.2, -0.2]])), "not a probability vector"),
    ("weight outside the share contract", _set("table_weights", lambda a: np.array([[1.0, 0.0]])), "share contract"),
    ("floor above its bound", _set("table_floors", _at((0, 1, 0), 500.0)), "outside its bounds"),
    ("floor below its bound", _set("table_floors", _at((0, 1, 0), 0.1)), "outside its bounds"),
    ("infinite floor", _set("table_floors", _at((0, 0, 0), np.inf)), "non-finite"),
    ("floor probabilities not summing to 1", _set("table_floor_probs", lambda a: a * 2), "table_floor_probs"),
    ("zero propensity of a drawable floor", _set("table_floor_propensity", lambda a: a * 0), "(0, 1]"),
    ("NaN statistics", lambda s: _stats(s, np.nan), "non-finite"),
    ("statistics entries of the wrong shape", _set("stats_floor_values", lambda a: a[:, :3]), "the same entries"),
    ("statistics entries out of order", lambda s: _set("stats_floor_cells", lambda a: np.array([0, 0]))(
        _set("stats_floor_bins", lambda a: np.array([11, 10], dtype=np.uint8))(
            _set("stats_floor_values", lambda a: np.ones((2, 7)))(_stats(s, 1.0)))), "sorted"),
    ("statistics of another cell", lambda s: _set("stats_floor_cells", lambda a: a + 1000)(_stats(s, 1.0)),
     "point outside"),
    ("dense statistics of the wrong shape", lambda s: _dense_stats(s, (1, 3, 9, 128)), "stats_data has shape"),
    ("negative counts", lambda s: _stats(s, -1.0), "negative"),
    ("statistics in units of another era",
     lambda s: {**s, "stats_t_ref": np.array(1.7e9), "stats_t_origin": np.array(1.0)}, "stats_t_origin"),
    ("statistics dated in the future",
     lambda s: {**s, "stats_t_ref": np.array(4.0e9), "stats_t_origin": np.array(4.0e9)}, "after the server's clock"),
    ("no placement-level table", _set("table_segments", lambda a: np.array(["KR|ios"])), "'*'"),
    ("segment key not of segment_by", lambda s: {**_set("table_segments", lambda a: np.array(["*", "KR"]))(s),
     **{k: np.concatenate([s[k], s[k]]) for k in s if k.startswith("table_") and k != "table_segments"}},
     "not a key of segment_by"),
    ("missing array", _without("table_floor_probs"), "'table_floor_probs' is missing"),
    ("unbounded n_draws", lambda s: _meta(s, params={"n_draws": 100_000}), "n_draws must be in [2, 1024]"),
    ("unknown param", lambda s: _meta(s, params={"bogus": 1}), "bogus"),
    ("other networks", lambda s: _meta(s, placement={**P1_BODY, "networks": P1_BODY["networks"][:1]}),
     "is for networks ['alpha']"),
    ("other schema version", lambda s: _meta(s, schema_version=99), "schema version"),
    ("unknown policy", lambda s: _meta(s, policy="magic"), "unknown policy 'magic'"),
]  # fmt: skip


def npz_b64(state: dict) -> str:
    buf = io.BytesIO()
    np.savez(buf, **state)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(("case", "corrupt", "fragment"), BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_a_malformed_model_state_is_refused_and_changes_nothing(seeded, case, corrupt, fragment):
    client = seeded()
    base = _state("static" if "share" in case else "ts_gmm")
    before = state_fingerprint(client)
    versions = client.get("/v1/placements/p1/experiment").json()["variants"]["champion"]["model_version"]
    response = client.post("/v1/admin/placements/p1/model", json={"state_npz_b64": npz_b64(corrupt(base))})
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"], response.json()
    assert state_fingerprint(client) == before
    assert client.get("/v1/placements/p1/experiment").json()["variants"]["champion"]["model_version"] == versions
    d = client.post("/v1/decide", json={"placement": "p1", "request_id": "r", "context": {"country": "KR"}})
    assert d.status_code == 200 and 0 < d.json()["propensity"] <= 1


@pytest.mark.parametrize("policy", ["ts_gmm", "grid_ts", "static", "ucb1", "epsilon_greedy"])
def test_a_valid_model_state_of_every_policy_is_accepted(seeded, policy):
    client = seeded()
    response = client.post("/v1/admin/placements/p1/model", json={"state_npz_b64": npz_b64(_state(policy))})
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------------- params (3)
BAD_PARAMS = [
    ("ts_gmm", {"n_draws": 100_000}, "n_draws must be in [2, 1024], got 100000"),
    ("ts_gmm", {"n_draws": 2.5}, "n_draws must be an integer"),
    ("ts_gmm", {"n_components": 0}, "n_components must be in [1, 8]"),
    ("ts_gmm", {"explore_floor": 0.9}, "explore_floor must be in [0, 0.5]"),
    ("ts_gmm", {"prior_strength": 0}, "prior_strength must be in (0, 10000]"),
    ("ts_gmm", {"half_life_hours": 0}, "half_life_hours must be in [0.01, inf]"),
    ("ts_gmm", {"typical_cpm": "high"}, "typical_cpm must be a number"),
    ("ts_gmm", {"bogus": 1}, "unknown parameter(s) ['bogus']"),
    ("grid_ts", {"draws": 10_000_000}, "draws must be in [16, 16384]"),
    ("grid_ts", {"floor_levels": 1000}, "floor_levels must be in [1, 64]"),
    ("epsilon_greedy", {"epsilon": -0.1}, "epsilon must be in [0, 1]"),
    ("ucb1", {"c": True}, "c must be a number"),
    ("static", {"weights": {"alpha": -1}}, "weights['alpha'] must be in [0, 1e+12]"),
    ("static", {"floors": [1, 2]}, "floors must be an object"),
]


@pytest.mark.parametrize(
    ("policy", "params", "fragment"), BAD_PARAMS, ids=[f"{p}-{next(iter(q))}" for p, q, _ in BAD_PARAMS]
)
def test_unbounded_or_unknown_params_are_a_422_and_change_nothing(seeded, policy, params, fragment):
    client = seeded()
    before = state_fingerprint(client)
    body = {"variants": [{"name": "champion", "traffic": 90},
                         {"name": "challenger", "traffic": 10, "policy": policy, "params": params}]}  # fmt: skip
    response = client.put("/v1/placements/p1/experiment", json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"] and "challenger" in response.json()["detail"]
    assert state_fingerprint(client) == before
    assert list(client.get("/v1/placements/p1/experiment").json()["variants"]) == ["champion"]


def test_params_at_their_limits_are_accepted(seeded):
    client = seeded()
    body = {"variants": [{"name": "champion", "traffic": 50, "policy": "ts_gmm", "params": {"n_draws": 256}},
                         {"name": "g", "traffic": 50, "policy": "grid_ts", "params": {"floor_levels": 64,
                                                                                       "draws": 16}}]}  # fmt: skip
    assert client.put("/v1/placements/p1/experiment", json=body).status_code == 200


# ---------------------------------------------------- slow clients and key scopes (4)
KEYS = {"ADBANDIT_API_KEY": "write-key", "ADBANDIT_READ_API_KEY": "read-key", "ADBANDIT_DECIDE_API_KEY": "decide-key"}
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server on loopback: all three keys set, a 1 s body timeout, placement p1."""
    state = tmp_path_factory.mktemp("hostile") / "state"
    port = free_port()
    env = {**KEYS, "ADBANDIT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "ADBANDIT_DEFAULT_POLICY": "static"}
    process = start_server(state, port, "--no-fsync", env=env)
    base = f"http://{HOST}:{port}"
    try:
        write = {"Authorization": "Bearer write-key"}
        assert httpx.put(f"{base}/v1/placements/p1", json=P1_BODY, headers=write).status_code == 201
        yield base, port
    finally:
        stop_server(process)
        log = process.stderr.read().decode()
        assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]


def _metrics(base: str) -> str:
    return httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer read-key"}).text


def _requests_total(base: str, status: str) -> float:
    total = 0.0
    for line in _metrics(base).splitlines():
        if line.startswith("adbandit_http_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _answer(sock: socket.socket, trickle: bool, limit_s: float = 6.0) -> tuple[bytes, float]:
    """Wait for the server's answer (sending a byte every 0.2 s while ``trickle``), then read
    until the server closes the connection. Returns the bytes and the seconds until the answer."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if select.select([sock], [], [], 0.2)[0]:
            break
        if trickle:
            try:
                sock.sendall(b" ")
            except OSError:
                break
    waited = time.monotonic() - start
    sock.settimeout(5)  # a connection left open fails here with a timeout
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data, waited


def _headers(path: str, length: int, method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer write-key\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()  # fmt: skip


SLOW = [  # (case, path, method, first body bytes, keep trickling)
    ("headers then stall", "/v1/outcomes", "POST", b"[{", False),
    ("trickling bytes (the deadline is for the whole body)", "/v1/outcomes", "POST", b"[", True),
    ("stalled placement body", "/v1/placements/p2", "PUT", b"", False),
]


@pytest.mark.parametrize(("case", "path", "method", "first", "trickle"), SLOW, ids=[c[0] for c in SLOW])
def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes(
    server, case, path, method, first, trickle
):
    base, port = server
    before = httpx.get(f"{base}/v1/placements/p1/allocation", headers={"Authorization": "Bearer read-key"}).json()
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(_headers(path, 10_000, method) + first)
        data, waited = _answer(sock, trickle)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"connection: close" in data.lower() and b"did not arrive within 1 s" in data
    # A per-chunk timer would never fire while bytes trickle in; the limit is for the body.
    assert BODY_TIMEOUT_S * 0.5 < waited < BODY_TIMEOUT_S + 3
    after = httpx.get(f"{base}/v1/placements/p1/allocation", headers={"Authorization": "Bearer read-key"}).json()
    assert after == before
    assert httpx.get(f"{base}/v1/placements/p2", headers={"Authorization": "Bearer read-key"}).status_code == 404


def test_a_client_disconnect_is_not_a_server_error(server):
    base, port = server
    errors_before = _requests_total(base, "500")
    gone_before = _requests_total(base, "499")
    for _ in range(3):
        with socket.create_connection((HOST, port)) as sock:
            sock.sendall(_headers("/v1/outcomes", 10_000) + b"[{")
            time.sleep(0.1)
    deadline = time.monotonic() + 5
    while _requests_total(base, "499") < gone_before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _requests_total(base, "499") == gone_before + 3
    assert _requests_total(base, "500") == errors_before == 0


def _call(base: str, method: str, path: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    bodies = {
        "/v1/decide": {"placement": "p1", "request_id": "r1", "context": {"country": "KR"}},
        "/v1/decide/batch": {"placement": "p1", "requests": [{"request_id": "r1"}]},
        "/v1/outcomes": [outcome(0, prefix="scoped", ts=NOW_TS)],
        "/v1/placements/p1/experiment": {"variants": [{"name": "champion", "traffic": 100}]},
        "/v1/openrtb/floors": {"id": "r1", "imp": [{"id": "1", "tagid": "p1"}], "device": {"geo": {"country": "KR"}}},
    }
    body = bodies.get(path) if method != "GET" else None
    return httpx.request(method, base + path, json=body, headers=headers, timeout=10).status_code


SCOPES = [  # (method, path, {key: expected status})
    ("GET", "/healthz", {None: 200}),
    ("GET", "/v1/placements", {None: 401, "read-key": 200, "write-key": 200, "decide-key": 401}),
    ("GET", "/v1/placements/p1", {None: 401, "read-key": 200, "decide-key": 401}),
    ("GET", "/v1/placements/p1/allocation", {None: 401, "read-key": 200, "write-key": 200, "decide-key": 401}),
    ("GET", "/v1/placements/p1/experiment", {None: 401, "read-key": 200, "decide-key": 401}),
    ("GET", "/metrics", {None: 401, "read-key": 200, "write-key": 200, "wrong": 401}),
    ("POST", "/v1/decide", {None: 401, "decide-key": 200, "write-key": 200, "read-key": 401}),
    ("POST", "/v1/decide/batch", {None: 401, "decide-key": 200, "read-key": 401}),
    ("GET", "/v1/prebid/floors?placement=p1", {None: 401, "decide-key": 200, "write-key": 200, "read-key": 401}),
    ("POST", "/v1/openrtb/floors", {None: 401, "decide-key": 200, "write-key": 200, "read-key": 401}),
    ("POST", "/v1/outcomes", {None: 401, "read-key": 401, "decide-key": 401}),
    ("PUT", "/v1/placements/p1/experiment", {None: 401, "read-key": 401, "decide-key": 401}),
    ("POST", "/v1/admin/snapshot", {"read-key": 401, "decide-key": 401, "write-key": 200}),
]


@pytest.mark.parametrize(("method", "path", "expected"), SCOPES, ids=[f"{m} {p}" for m, p, _ in SCOPES])
def test_each_endpoint_opens_to_exactly_its_keys(server, method, path, expected):
    base, _ = server
    read = {"Authorization": "Bearer read-key"}
    before = httpx.get(f"{base}/v1/placements/p1/allocation", headers=read).json()
    for key, status in expected.items():
        assert _call(base, method, path, key) == status, (method, path, key)
    after = httpx.get(f"{base}/v1/placements/p1/allocation", headers=read).json()
    assert after["effective_events"] == before["effective_events"] == 0  # no refused outcome was learned


def test_the_floor_density_of_a_continuous_floor_reaches_the_archive(make_client):
    """A decision id carries the floor's density (continuous floors); the archive records it in
    ``floor_density`` (NaN for discrete floors and for ids that do not verify)."""
    key = "shared by every replica"
    client = make_client(decision_key=key, default_policy="static")
    client.put("/v1/placements/p1", json=P1_BODY)
    signer = DecisionSigner(key.encode())
    ids = [signer.issue("p1", "champion", "alpha", 1.25, 0.5, 0.25, floor_density=0.8),
           signer.issue("p1", "champion", "alpha", 1.25, 0.5, 0.25),
           DecisionSigner(b"x" * 32).issue("p1", "champion", "alpha", 1.25, 0.5, 0.25, floor_density=0.8)]  # fmt: skip
    events = [outcome(i, floor=1.25, revenue=2.0, decision_id=d, ts=NOW_TS) for i, d in enumerate(ids)]
    assert client.post("/v1/outcomes", json=events).json()["accepted"] == 3
    client.post("/v1/admin/snapshot")
    frame = pl.read_parquet(sorted((Path(client.app.state.settings.state_dir) / "outcomes").glob("*.parquet")))
    density = dict(zip(frame["event_hash"].to_list(), frame["floor_density"].to_list(), strict=True))
    assert len(density) == 3
    values = sorted(density.values(), key=lambda v: (math.isnan(v), v))
    assert values[0] == pytest.approx(0.8, rel=4e-4) and math.isnan(values[1]) and math.isnan(values[2])


def test_the_floor_density_column_survives_the_event_log_and_old_records_still_decode():
    from serving.eventlog import EventRecord

    three = {"placement": ["p1"], "variant": ["champion"], "segment": ["*"], "network": ["alpha"], "ts": [1.0],
             "floor_cpm": [1.0], "revenue_cpm": [0.0], "filled": [False], "propensity": [0.5],
             "floor_propensity": [0.25]}  # fmt: skip
    columns = {k: v * 3 for k, v in three.items()} | {"event_hash": np.arange(3, dtype=np.uint64)}
    with_density = EventRecord.from_columns(5.0, **columns, floor_density=[0.8, np.nan, 2.0])
    back = EventRecord.decode(with_density.encode())
    np.testing.assert_array_equal(back.floor_density, [0.8, np.nan, 2.0])
    without = EventRecord.from_columns(5.0, **columns)  # encodes exactly as before the column existed
    assert b'"optional"' not in without.encode() and b'"optional":["floor_density"]' in with_density.encode()
    assert EventRecord.decode(without.encode()).floor_density is None  # the archive writes NaN
