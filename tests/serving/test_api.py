"""The HTTP API through FastAPI's TestClient over a real PolicyStore in a temp state dir:
docs/design.md's response shapes, bad input (status, message, no state change), auth,
idempotent outcomes, decision order, Prebid floors, the experiment report, model swaps."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time

import numpy as np
import pytest

from bandit import Allocation, InvalidState, NetworkAllocation, PlacementConfig, make_policy, save_state
from serving import prebid as prebid_mod
from serving.commands import settings_from_args
from serving.logs import JsonFormatter
from serving.sources import ModelSource
from simulator.demo import DEMO_PLACEMENT, demo_events
from tests.serving.conftest import P1_BODY, FakeModelSource, outcome

DECISION_KEYS = {
    "decision_id",
    "placement",
    "network",
    "floor_cpm",
    "propensity",
    "segment",
    "variant",
    "model_version",
}


def wait_for_events(client, placement: str, n: float, *, segment: str | None = None, timeout: float = 10.0) -> dict:
    """Poll the allocation until it has learned ``n`` events (the applier runs every 50 ms)."""
    params = {"segment": segment} if segment else {}
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/placements/{placement}/allocation", params=params).json()
        if body["effective_events"] >= n or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def settle(client) -> None:
    """Learn every accepted event now (the applier would within 50 ms)."""
    client.app.state.store.flush()


def fingerprint(client) -> str:
    """Everything a rejected request must leave unchanged."""
    parts = [client.get("/v1/placements").json()]
    for p in parts[0]["placements"]:
        pid = p["placement"]
        parts.append(client.get(f"/v1/placements/{pid}/allocation").json())
        report = client.get(f"/v1/placements/{pid}/experiment").json()
        for row in report["variants"].values():
            row.pop("decisions")  # decisions served are counted, not state
        parts.append(report)
    return json.dumps(parts, sort_keys=True)


def npz_b64(state: dict) -> str:
    buf = io.BytesIO()
    np.savez(buf, **state)
    return base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------------ placements
def test_put_creates_then_replaces_and_get_lists(client):
    first = client.put("/v1/placements/p1", json=P1_BODY)
    assert first.status_code == 201
    body = first.json()
    assert body["placement"] == "p1"
    assert body["segment_by"] == ["country", "os"] and body["currency"] == "USD"
    assert [n["id"] for n in body["networks"]] == ["alpha", "beta"]
    assert body["networks"][1] == {"id": "beta", "floor_min_cpm": 0.5, "floor_max_cpm": 20.0,
                                   "min_share": 0.1, "max_share": 1.0, "auction": "auto"}  # fmt: skip
    again = client.put("/v1/placements/p1", json={**P1_BODY, "currency": "krw"})
    assert again.status_code == 200 and again.json()["currency"] == "KRW"
    assert client.get("/v1/placements/p1").json() == again.json()
    listed = client.get("/v1/placements").json()
    assert listed == {"placements": [again.json()]}


# ---------------------------------------------------------------------------- decide
def test_decide_has_the_design_shape(p1):
    response = p1.post("/v1/decide", json={"placement": "p1", "request_id": "r1",
                                            "context": {"country": "KR", "os": "ios"}})  # fmt: skip
    assert response.status_code == 200
    d = response.json()
    assert set(d) == DECISION_KEYS
    assert d["placement"] == "p1" and d["segment"] == "KR|ios" and d["variant"] == "champion"
    assert d["network"] in ("alpha", "beta")
    bounds = {"alpha": (0.0, 50.0), "beta": (0.5, 20.0)}[d["network"]]
    assert bounds[0] <= d["floor_cpm"] <= bounds[1]
    assert 0.0 < d["propensity"] <= 1.0
    assert isinstance(d["decision_id"], str) and d["decision_id"]


def test_decide_batch_returns_decisions_in_request_order(p1):
    contexts = [{"country": c, "os": o} for c in ("KR", "US", "JP") for o in ("ios", "android")]
    requests = [{"request_id": f"r{i}", "context": contexts[i % len(contexts)]} for i in range(300)]
    response = p1.post("/v1/decide/batch", json={"placement": "p1", "requests": requests})
    assert response.status_code == 200
    decisions = response.json()["decisions"]
    assert len(decisions) == 300
    for request, decision in zip(requests, decisions, strict=True):
        assert set(decision) == DECISION_KEYS
        assert decision["segment"] == f"{request['context']['country']}|{request['context']['os']}"
    assert len({d["decision_id"] for d in decisions}) == 300
    empty = p1.post("/v1/decide/batch", json={"placement": "p1", "requests": []})
    assert empty.status_code == 200 and empty.json() == {"decisions": []}


def test_decide_batch_is_capped(p1):
    requests = [{"request_id": f"r{i}"} for i in range(10_001)]
    response = p1.post("/v1/decide/batch", json={"placement": "p1", "requests": requests})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "requests"]
    assert "10000" in response.json()["detail"][0]["msg"]


# -------------------------------------------------------------------------- outcomes
def test_outcomes_count_a_repeated_event_id_once(p1):
    events = [outcome(i, filled=i % 3 != 0, revenue=1.5 + 0.01 * i) for i in range(200)]
    first = p1.post("/v1/outcomes", json=events)
    assert first.status_code == 200
    assert first.json() == {"accepted": 200, "duplicates": 0, "rejected": []}
    again = p1.post("/v1/outcomes", json=events[100:] + [outcome(i) for i in range(200, 250)] + [outcome(200)])
    assert again.json() == {"accepted": 50, "duplicates": 101, "rejected": []}
    alloc = wait_for_events(p1, "p1", 250, segment="KR|ios")
    assert alloc["effective_events"] == 250  # no discounting across one timestamp: an exact count
    report = p1.get("/v1/placements/p1/experiment").json()
    assert report["variants"]["champion"]["requests"] == 250


def test_outcomes_as_ndjson_reject_malformed_lines_by_index(p1):
    lines = [json.dumps(outcome(i)) for i in range(4)]
    lines.insert(2, '{"event_id": "x", NaN}')
    lines.insert(4, "")  # blank lines are skipped, not counted
    lines.append(json.dumps(outcome(9, network="gamma")))
    body = "\n".join(lines) + "\n"
    response = p1.post("/v1/outcomes", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert response.status_code == 200
    result = response.json()
    assert result["accepted"] == 4 and result["duplicates"] == 0
    assert [r["index"] for r in result["rejected"]] == [2, 5]
    assert "malformed JSON" in result["rejected"][0]["error"]
    assert "gamma" in result["rejected"][1]["error"] and "not configured" in result["rejected"][1]["error"]


def test_outcomes_reject_each_bad_event_with_its_index_and_reason(p1):
    events = [
        outcome(0),
        outcome(1, network="gamma"),
        {**outcome(2), "revenue_cpm": -1.0},
        {**outcome(3), "revenue_cpm": 5000.0},
        {k: v for k, v in outcome(4).items() if k != "ts"},
        outcome(5, placement="nope"),
        {**outcome(6), "filled": "yes"},
        {**outcome(7), "ts": "yesterday"},
        "not an object",
        outcome(9),
    ]
    result = p1.post("/v1/outcomes", json=events).json()
    assert result["accepted"] == 2 and result["duplicates"] == 0
    reasons = {r["index"]: r["error"] for r in result["rejected"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 8]
    for index, fragment in {1: "gamma", 2: "revenue_cpm", 3: "revenue_cpm", 4: "ts", 5: "nope", 6: "filled",
                            7: "ts", 8: "object"}.items():  # fmt: skip
        assert fragment in reasons[index], (index, reasons[index])


# ------------------------------------------------------- bad input changes nothing
BAD_INPUTS = [
    # (method, path, json body or raw bytes, headers, status, fragment)
    ("PUT", "/v1/placements/p1", {"networks": []}, None, 422, "networks"),
    ("PUT", "/v1/placements/p1", {"networks": [{"id": "a", "floor_min_cpm": -1}]}, None, 422, "floor_min_cpm"),
    ("PUT", "/v1/placements/p1", {"networks": [{"id": "a", "floor_max_cpm": 1e6}]}, None, 422, "floor_max_cpm"),
    ("PUT", "/v1/placements/p1", {"networks": [{"id": "a", "floor_min_cpm": 5, "floor_max_cpm": 1}]}, None, 422,
     "floor_max_cpm"),
    ("PUT", "/v1/placements/p1", {"networks": [{"id": "a"}, {"id": "a"}]}, None, 422, "unique"),
    ("PUT", "/v1/placements/p1", {"networks": [{"id": "a", "min_share": 0.7}, {"id": "b", "min_share": 0.7}]},
     None, 422, "min_share"),
    ("PUT", "/v1/placements/p1", {"networks": [{"id": "a"}], "currency": "dollars"}, None, 422, "currency"),
    ("PUT", "/v1/placements/p1", {"netwrks": [{"id": "a"}]}, None, 422, "netwrks"),
    ("PUT", "/v1/placements/p1", b'{"networks": [{"id": "a", "floor_max_cpm": NaN}]}', None, 400, "malformed JSON"),
    ("PUT", "/v1/placements/p1", b'{"networks": [{"id": "a", "floor_max_cpm": 1e999}]}', None, 400, "infinity"),
    ("PUT", "/v1/placements/p1", b'{"networks": [', None, 400, "malformed JSON"),
    ("PUT", "/v1/placements/bad%20id", {"networks": [{"id": "a"}]}, None, 422, "placement"),
    ("POST", "/v1/decide", {"placement": "nope", "request_id": "r"}, None, 404, "nope"),
    ("POST", "/v1/decide", {"placement": "p1"}, None, 422, "request_id"),
    ("POST", "/v1/decide", {"placement": "p1", "request_id": ""}, None, 422, "request_id"),
    ("POST", "/v1/decide", {"placement": "p1", "request_id": "r", "context": ["KR"]}, None, 422, "context"),
    ("POST", "/v1/decide", {"placement": "p1", "request_id": "r", "contxt": {}}, None, 422, "contxt"),
    ("POST", "/v1/decide", b'{"placement": "p1", "request_id": "r", "context": {"x": Infinity}}', None, 400,
     "malformed JSON"),
    ("POST", "/v1/decide", b"placement=p1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "JSON"),
    ("POST", "/v1/decide/batch", {"placement": "nope", "requests": [{"request_id": "r"}]}, None, 404, "nope"),
    ("POST", "/v1/decide/batch", {"placement": "p1", "requests": [{"context": {}}]}, None, 422, "request_id"),
    ("POST", "/v1/outcomes", b'[{"event_id": "e1", "floor_cpm": NaN}]', None, 400, "malformed JSON"),
    ("POST", "/v1/outcomes", {"event_id": "e1"}, None, 422, "JSON array"),
    ("POST", "/v1/outcomes", b"[]", {"Content-Type": "text/plain"}, 415, "text/plain"),
    ("POST", "/v1/outcomes", [outcome(0, network="gamma"), {**outcome(1), "floor_cpm": -2}], None, 200, "gamma"),
    ("GET", "/v1/placements/nope", None, None, 404, "nope"),
    ("GET", "/v1/placements/nope/allocation", None, None, 404, "nope"),
    ("GET", "/v1/placements/p1/allocation?variant=nobody", None, None, 422, "nobody"),
    ("GET", "/v1/prebid/floors?placement=nope", None, None, 404, "nope"),
    ("GET", "/v1/prebid/floors", None, None, 422, "placement"),
    ("GET", "/v1/placements/nope/experiment", None, None, 404, "nope"),
    ("PUT", "/v1/placements/p1/experiment", {"variants": [{"name": "champion", "traffic": 60}]}, None, 422, "100"),
    ("PUT", "/v1/placements/p1/experiment", {"variants": [{"name": "champion", "traffic": 100, "policy": "magic"}]},
     None, 422, "magic"),
    ("PUT", "/v1/placements/p1/experiment", {"variants": [{"name": "champion", "traffic": 100,
                                                           "params": {"bogus": 1}}]}, None, 422, "bogus"),
    ("PUT", "/v1/placements/p1/experiment", {"variants": [{"name": "champion", "traffic": 101}]}, None, 422,
     "traffic"),
    ("PUT", "/v1/placements/p1/experiment", {"variants": [{"name": "a", "traffic": 50}, {"name": "a", "traffic": 50}]},
     None, 422, "unique"),
    ("PUT", "/v1/placements/nope/experiment", {"variants": [{"name": "champion", "traffic": 100}]}, None, 404, "nope"),
    ("POST", "/v1/admin/placements/p1/model", {"variant": "champion"}, None, 422, "exactly one"),
    ("POST", "/v1/admin/placements/p1/model", {"state_npz_b64": "%%%"}, None, 422, "base64"),
    ("POST", "/v1/admin/placements/p1/model", {"state_npz_b64": base64.b64encode(b"junk").decode()}, None, 422,
     ".npz"),
    ("POST", "/v1/admin/placements/nope/model", {"state_npz_b64": "AAAA"}, None, 404, "nope"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "fragment"), BAD_INPUTS)
def test_bad_input_is_a_4xx_naming_the_problem_and_changes_nothing(p1, method, path, body, headers, status, fragment):
    p1.post("/v1/outcomes", json=[outcome(i) for i in range(20)])
    settle(p1)
    before = fingerprint(p1)
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    response = p1.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert fragment.lower() in response.text.lower()
    assert "detail" in response.json() or status == 200
    settle(p1)  # anything wrongly accepted is learned now
    assert fingerprint(p1) == before


def test_model_swap_with_a_state_of_other_networks_is_refused(p1):
    other = PlacementConfig.from_dict("p1", {"networks": [{"id": "x"}, {"id": "y"}]})
    state = make_policy("static", other).state()
    response = p1.post("/v1/admin/placements/p1/model", json={"state_npz_b64": npz_b64(state)})
    assert response.status_code == 422 and "network" in response.text


def test_more_than_100k_events_in_one_request_is_413(p1):
    response = p1.post("/v1/outcomes", content=b"[" + b",".join([b"1"] * 100_001) + b"]")
    assert response.status_code == 413 and "100000" in response.json()["detail"]


def test_settings_come_from_the_environment_when_not_given(monkeypatch, tmp_path):
    from serving.app import create_app
    from serving.settings import get_settings

    monkeypatch.setenv("ADBANDIT_STATE_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("ADBANDIT_API_KEY", "k")
    monkeypatch.setenv("ADBANDIT_MAX_BODY_BYTES", "1234")
    get_settings.cache_clear()
    try:
        settings = create_app().state.settings
        assert settings is get_settings()
        assert settings.state_dir == tmp_path / "from-env" and settings.max_body_bytes == 1234
        assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    finally:
        get_settings.cache_clear()


def test_body_over_the_limit_is_413_by_header_and_by_streamed_bytes(make_client):
    client = make_client(max_body_bytes=2000)
    client.put("/v1/placements/p1", json=P1_BODY)
    big = json.dumps([outcome(i) for i in range(40)]).encode()
    assert len(big) > 2000
    declared = client.post("/v1/outcomes", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "2000" in declared.json()["detail"]

    def chunks():  # no Content-Length: the limit must count what arrives
        for i in range(0, len(big), 500):
            yield big[i : i + 500]

    streamed = client.post("/v1/outcomes", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and "2000" in streamed.json()["detail"]
    assert client.get("/v1/placements/p1/experiment").json()["variants"]["champion"]["requests"] == 0
    small = client.post("/v1/outcomes", json=[outcome(0)])
    assert small.status_code == 200 and small.json()["accepted"] == 1


# ------------------------------------------------------------------------------ auth
def test_api_key_guards_every_write_endpoint_and_only_those(make_client):
    client = make_client(api_key="s3cret")
    good = {"Authorization": "Bearer s3cret"}
    writes = [
        ("PUT", "/v1/placements/p1", P1_BODY),
        ("PUT", "/v1/placements/p1/experiment", {"variants": [{"name": "champion", "traffic": 100}]}),
        ("POST", "/v1/outcomes", [outcome(0)]),
        ("POST", "/v1/admin/snapshot", None),
        ("POST", "/v1/admin/placements/p1/model", {"variant": "champion"}),
    ]
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        for method, path, body in writes:
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "detail" in response.json()
    assert client.get("/v1/placements").json() == {"placements": []}
    assert client.put("/v1/placements/p1", json=P1_BODY, headers=good).status_code == 201
    assert client.post("/v1/outcomes", json=[outcome(0)], headers=good).json()["accepted"] == 1
    assert client.post("/v1/admin/snapshot", headers=good).status_code == 200
    reads = [("POST", "/v1/decide", {"placement": "p1", "request_id": "r"}),
             ("POST", "/v1/decide/batch", {"placement": "p1", "requests": [{"request_id": "r"}]}),
             ("GET", "/v1/placements/p1/allocation", None), ("GET", "/v1/prebid/floors?placement=p1", None),
             ("GET", "/v1/placements/p1/experiment", None), ("GET", "/v1/placements", None),
             ("GET", "/healthz", None), ("GET", "/metrics", None)]  # fmt: skip
    for method, path, body in reads:
        assert client.request(method, path, json=body).status_code == 200, path


def test_without_a_key_writes_are_open(p1):
    assert p1.post("/v1/admin/snapshot").status_code == 200
    assert p1.post("/v1/outcomes", json=[outcome(0)]).status_code == 200


# ----------------------------------------------------------------------- allocation
def test_allocation_reports_weights_floors_and_uncertainty(p1):
    p1.post("/v1/outcomes", json=[outcome(i, network=("alpha", "beta")[i % 2], filled=i % 4 != 0,
                                          revenue=1.0 + (i % 7) * 0.3) for i in range(300)])  # fmt: skip
    alloc = wait_for_events(p1, "p1", 300, segment="KR|ios")
    assert alloc["placement"] == "p1" and alloc["segment"] == "KR|ios" and alloc["variant"] == "champion"
    assert alloc["currency"] == "USD" and alloc["effective_events"] == 300
    assert math.isclose(sum(n["weight"] for n in alloc["networks"]), 1.0, rel_tol=1e-9)
    for n in alloc["networks"]:
        assert n["floor_p10_cpm"] <= n["floor_cpm"] <= n["floor_p90_cpm"] or n["floor_p10_cpm"] == n["floor_p90_cpm"]
        assert n["revenue_sd_cpm"] >= 0 and 0 <= n["fill_rate"] <= 1
    beta = next(n for n in alloc["networks"] if n["network"] == "beta")
    assert beta["weight"] >= 0.1 - 1e-9  # the min_share contract
    pooled = p1.get("/v1/placements/p1/allocation").json()
    assert pooled["segment"] == "*" and pooled["effective_events"] == 300


# --------------------------------------------------------------------------- prebid
def test_prebid_floors_follow_the_price_floors_module_schema_2(client):
    client.put(f"/v1/placements/{DEMO_PLACEMENT}", json={
        "networks": [{"id": "admob", "floor_min_cpm": 0.1, "floor_max_cpm": 20}, {"id": "adfit", "floor_max_cpm": 20},
                     {"id": "house", "floor_max_cpm": 2, "min_share": 0.05}],
        "segment_by": ["country", "os"], "currency": "USD"})  # fmt: skip
    client.put(f"/v1/placements/{DEMO_PLACEMENT}/experiment", json={"variants": [
        {"name": "champion", "traffic": 80}, {"name": "holdout", "traffic": 20, "policy": "static"}]})  # fmt: skip
    events = demo_events(1200)
    assert client.post("/v1/outcomes", json=events).json()["accepted"] == 1200
    settle(client)  # events without a decision id are learned by the champion
    data = client.get("/v1/prebid/floors", params={"placement": DEMO_PLACEMENT}).json()
    assert data["floorsSchemaVersion"] == 2 and data["currency"] == "USD"
    assert data["floorMin"] == 0.0 and isinstance(data["modelTimestamp"], int)
    groups = data["modelGroups"]
    assert [g["modelWeight"] for g in groups] == [80, 20]
    assert [g["modelVersion"].split(":")[0] for g in groups] == ["champion", "holdout"]
    for g in groups:
        assert g["schema"] == {"fields": ["country", "os"], "delimiter": "|"}
        assert all(len(k.split("|")) == 2 and isinstance(v, float) and v >= 0 for k, v in g["values"].items())
        assert g["values"]["*|*"] == g["default"]
    champion = groups[0]
    assert {"KR|ios", "KR|android", "US|ios"} <= set(champion["values"])  # the demo market's segments
    alloc = client.get(f"/v1/placements/{DEMO_PLACEMENT}/allocation", params={"segment": "US|ios"}).json()
    expected = sum(n["weight"] * n["floor_cpm"] for n in alloc["networks"])
    assert champion["values"]["US|ios"] == pytest.approx(expected, abs=1e-4)


def _alloc(segment: str, weights: list[float], floors: list[float]) -> Allocation:
    nets = tuple(NetworkAllocation(f"n{i}", w, f, f, f, 0.0, 0.0, 0.5, "second")
                 for i, (w, f) in enumerate(zip(weights, floors, strict=True)))  # fmt: skip
    return Allocation("p", segment, nets, "v.1", 10.0)


def test_prebid_mapping_of_fields_missing_values_and_weights():
    config = PlacementConfig.from_dict("p", {"networks": [{"id": "n0"}, {"id": "n1", "floor_min_cpm": 0.3}],
                                             "segment_by": ["device_type", "os"]})  # fmt: skip
    groups = [prebid_mod.VariantFloors("champion", 66.6, [_alloc("*", [0.5, 0.5], [1.0, 3.0]),
                                                          _alloc("unknown|ios", [0.25, 0.75], [2.0, 4.0])]),
              prebid_mod.VariantFloors("off", 0.0, [_alloc("*", [1.0, 0.0], [1.0, 1.0])]),
              prebid_mod.VariantFloors("b", 33.4, [_alloc("*", [1.0, 0.0], [1.5, 9.0])])]  # fmt: skip
    data = prebid_mod.prebid_floors(config, groups, timestamp=1_800_000_000)
    assert data["floorMin"] == 0.0
    assert [g["modelWeight"] for g in data["modelGroups"]] == [67, 33]  # zero-traffic variants are left out
    champion = data["modelGroups"][0]
    assert champion["schema"]["fields"] == ["deviceType", "os"]
    assert champion["values"] == {"*|ios": 3.5, "*|*": 2.0} and champion["default"] == 2.0
    plain = PlacementConfig.from_dict("q", {"networks": [{"id": "n0"}]})
    group = prebid_mod.prebid_floors(plain, [prebid_mod.VariantFloors("champion", 100, [_alloc("*", [1], [0.7])])],
                                     timestamp=0)["modelGroups"][0]  # fmt: skip
    assert group["schema"]["fields"] == ["mediaType"] and group["values"] == {"*": 0.7}


# ------------------------------------------------------------------------ experiment
def test_experiment_report_gives_revenue_per_request_lift_and_ci(p1):
    # Revenues below the floors the decisions gave: the networks report net revenue.
    net = {**P1_BODY, "networks": [{**n, "revenue": "net"} for n in P1_BODY["networks"]]}
    assert p1.put("/v1/placements/p1", json=net).status_code == 200
    put = p1.put("/v1/placements/p1/experiment", json={"variants": [
        {"name": "champion", "traffic": 50}, {"name": "challenger", "traffic": 50, "policy": "static"}]})  # fmt: skip
    assert put.status_code == 200
    assert put.json() == {"placement": "p1", "variants": [
        {"name": "champion", "traffic": 50.0, "policy": "ts_gmm", "params": {}},
        {"name": "challenger", "traffic": 50.0, "policy": "static", "params": {}}]}  # fmt: skip
    rng = np.random.default_rng(3)
    requests = [{"request_id": f"r{i}", "context": {"country": "KR", "os": "ios"}} for i in range(1200)]
    decided = p1.post("/v1/decide/batch", json={"placement": "p1", "requests": requests}).json()["decisions"]
    by_variant = {v: [d for d in decided if d["variant"] == v][:200] for v in ("champion", "challenger")}
    events = []
    for i in range(400):  # champion earns about 2.0 per request, the challenger about 1.5
        variant, mean = ("champion", 2.0) if i % 2 == 0 else ("challenger", 1.5)
        d = by_variant[variant][i // 2]
        revenue = max(float(mean + 0.5 * rng.standard_normal()), 0.01)
        events.append(outcome(i, revenue=revenue, decision_id=d["decision_id"], network=d["network"],
                              floor=d["floor_cpm"]))  # fmt: skip
    assert p1.post("/v1/outcomes", json=events).json()["accepted"] == 400
    wait_for_events(p1, "p1", 200)
    deadline = time.monotonic() + 10
    while (report := p1.get("/v1/placements/p1/experiment").json())["variants"]["challenger"]["requests"] < 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert report["placement"] == "p1" and report["champion"] == "champion"
    champ, chall = report["variants"]["champion"], report["variants"]["challenger"]
    assert champ["requests"] == chall["requests"] == 200
    truth = [np.mean([e["revenue_cpm"] for e in events[k::2]]) for k in (0, 1)]
    assert champ["revenue_per_request"] == pytest.approx(truth[0])
    assert chall["revenue_per_request"] == pytest.approx(truth[1])
    assert chall["lift"] == pytest.approx(truth[1] / truth[0] - 1.0)
    assert chall["ci_low"] < chall["lift"] < chall["ci_high"] < 0  # a clear loss
    assert champ["lift"] is None and champ["traffic"] == 50.0


# ------------------------------------------------------------------------ model swap
def test_model_swap_under_concurrent_decisions_drops_nothing(p1):
    config = PlacementConfig.from_dict("p1", P1_BODY)
    state = make_policy("static", config, weights={"alpha": 1.0, "beta": 0.0}, floors={"alpha": 3.0}).state()
    statuses: list[int] = []
    after: list[dict] = []
    swapped = threading.Event()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            started_after_swap = swapped.is_set()
            r = p1.post("/v1/decide", json={"placement": "p1", "request_id": f"r{len(statuses)}"})
            statuses.append(r.status_code)
            if started_after_swap and r.status_code == 200:
                after.append(r.json())

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    response = p1.post("/v1/admin/placements/p1/model", json={"variant": "champion", "state_npz_b64": npz_b64(state)})
    swapped.set()
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert response.status_code == 200, response.text
    version = response.json()["model_version"]
    assert response.json()["placement"] == "p1" and version.startswith("static")
    assert len(statuses) > 20 and set(statuses) == {200}
    assert after and all(d["model_version"] == version for d in after)
    # The swapped-in static policy: alpha at floor 3.0, beta only at its 10% min_share and floor_min.
    assert {(d["network"], d["floor_cpm"]) for d in after} <= {("alpha", 3.0), ("beta", 0.5)}


def test_model_swap_from_the_registry(make_client):
    config = PlacementConfig.from_dict("p1", P1_BODY)
    state = make_policy("static", config, weights={"beta": 1.0, "alpha": 0.0}).state()
    source = FakeModelSource(lambda alias, name: state)
    p1 = make_client(model_source=source)
    p1.put("/v1/placements/p1", json=P1_BODY)
    ok = p1.post("/v1/admin/placements/p1/model", json={"variant": "champion", "mlflow_alias": "champion"})
    assert ok.status_code == 200 and source.calls == [("champion", "adbandit-policy")]
    decision = p1.post("/v1/decide", json={"placement": "p1", "request_id": "r"}).json()
    assert decision["network"] == "beta" and decision["model_version"] == ok.json()["model_version"]

    def down(alias, name):
        raise ConnectionError("registry at http://mlflow:5000 refused the connection")

    source.loader = down
    unavailable = p1.post("/v1/admin/placements/p1/model", json={"mlflow_alias": "champion"})
    assert unavailable.status_code == 503 and "refused" in unavailable.json()["detail"]

    def missing(alias, name):
        raise InvalidState(f"no model version {name}@{alias}")

    source.loader = missing
    gone = p1.post("/v1/admin/placements/p1/model", json={"mlflow_alias": "nope"})
    assert gone.status_code == 422 and "adbandit-policy@nope" in gone.json()["detail"]
    assert p1.post("/v1/decide", json={"placement": "p1", "request_id": "r"}).json()["network"] == "beta"


def test_model_swap_by_alias_without_a_registry_is_503(tmp_path):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.serving.conftest import test_settings

    with TestClient(create_app(test_settings(tmp_path / "bare"))) as bare:  # no model source wired
        bare.put("/v1/placements/p1", json=P1_BODY)
        response = bare.post("/v1/admin/placements/p1/model", json={"mlflow_alias": "champion"})
    assert response.status_code == 503 and "no model registry" in response.json()["detail"]


def test_the_cli_wires_the_mlflow_registry_as_the_model_source(monkeypatch):
    import experiments.model_registry as registry
    from adbandit.wiring import mlflow_source

    calls = []
    monkeypatch.setattr(registry, "load_model_state", lambda **kw: calls.append(kw) or {"x": np.zeros(1)})
    source = mlflow_source()
    assert isinstance(source, ModelSource)
    assert source.load("champion", "adbandit-policy")["x"].shape == (1,)
    assert calls == [{"alias": "champion", "name": "adbandit-policy", "project_dir": None}]


def test_serve_model_loads_the_registry_champion_at_start(make_client):
    config = PlacementConfig.from_dict("home", P1_BODY)
    state = make_policy("static", config, floors={"alpha": 4.0, "beta": 4.0}).state()
    client = make_client(model="champion", model_source=FakeModelSource(lambda alias, name: state))
    decision = client.post("/v1/decide", json={"placement": "home", "request_id": "r"}).json()
    assert decision["floor_cpm"] == 4.0 and decision["model_version"].startswith("static")


# ------------------------------------------------------- health, metrics, docs, logs
def test_health_metrics_and_docs(p1):
    assert p1.get("/healthz").json()["status"] == "ok"
    p1.post("/v1/decide", json={"placement": "p1", "request_id": "r"})
    p1.post("/v1/outcomes", json=[outcome(0), outcome(0), {"event_id": "bad"}])
    wait_for_events(p1, "p1", 1)
    text = p1.get("/metrics").text
    for line in (
        'adbandit_http_requests_total{endpoint="/v1/decide",method="POST",status="200"} 1.0',
        'adbandit_outcome_events_total{result="accepted"} 1.0',
        'adbandit_outcome_events_total{result="duplicate"} 1.0',
        'adbandit_outcome_events_total{result="rejected"} 1.0',
        'adbandit_decisions_total{placement="p1"} 1.0',
        "adbandit_store_log_lag_events 0.0",
        'adbandit_placement_revenue_per_request_cpm{placement="p1"} 2.0',
        'adbandit_variant_requests_total{placement="p1",variant="champion"} 1.0',
    ):
        assert line in text, line
    assert 'adbandit_http_request_duration_seconds_bucket{endpoint="/v1/decide",le="0.01",method="POST"}' in text
    assert "text/html" in p1.get("/docs").headers["content-type"]
    schema = p1.get("/openapi.json").json()
    for path in ("/v1/placements/{placement}", "/v1/placements", "/v1/decide", "/v1/decide/batch", "/v1/outcomes",
                 "/v1/placements/{placement}/allocation", "/v1/prebid/floors", "/v1/placements/{placement}/experiment",
                 "/v1/admin/placements/{placement}/model", "/v1/admin/snapshot", "/healthz", "/metrics"):  # fmt: skip
        assert path in schema["paths"], path
    assert "OutcomeEventIn" in schema["components"]["schemas"]


def test_json_log_lines_carry_their_fields():
    import logging

    record = logging.LogRecord("adbandit.serving", logging.INFO, __file__, 1, "outcomes rejected", None, None)
    record.fields = {"rejected": 2}
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "outcomes rejected" and line["rejected"] == 2 and line["level"] == "info"


# ------------------------------------------------------------- restart, demo, CLI
def test_state_survives_a_restart_of_the_app(make_client, tmp_path):
    first = make_client()
    first.put("/v1/placements/p1", json=P1_BODY)
    first.post("/v1/outcomes", json=[outcome(i) for i in range(30)])
    wait_for_events(first, "p1", 30)
    first.__exit__(None, None, None)
    second = make_client()
    assert second.get("/v1/placements/p1").json()["networks"][0]["id"] == "alpha"
    assert second.get("/v1/placements/p1/allocation").json()["effective_events"] == 30
    assert second.post("/v1/outcomes", json=[outcome(i) for i in range(30)]).json()["duplicates"] == 30


def test_demo_placement_is_created_only_on_an_empty_state_dir(make_client, tmp_path):
    client = make_client(demo=True)
    assert [p["placement"] for p in client.get("/v1/placements").json()["placements"]] == [DEMO_PLACEMENT]
    alloc = wait_for_events(client, DEMO_PLACEMENT, 2990)
    # 3,000 events over a few minutes of event time, discounted with a 48 h half-life.
    assert 2990 <= alloc["effective_events"] <= 3000
    other = make_client(state_dir=tmp_path / "other")
    other.put("/v1/placements/p1", json=P1_BODY)
    other.__exit__(None, None, None)
    again = make_client(state_dir=tmp_path / "other", demo=True)
    assert [p["placement"] for p in again.get("/v1/placements").json()["placements"]] == ["p1"]


def test_serve_flags_override_the_environment(monkeypatch, tmp_path):
    from adbandit.cli import build_parser

    monkeypatch.setenv("ADBANDIT_STATE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("ADBANDIT_API_KEY", "k")
    args = build_parser().parse_args(["serve", "--port", "9", "--policy", "static", "--demo"])
    settings = settings_from_args(args)
    assert settings.state_dir == tmp_path / "env" and settings.default_policy == "static" and settings.demo
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    args = build_parser().parse_args(["serve", "--state-dir", str(tmp_path / "flag"), "--model", "champion"])
    settings = settings_from_args(args)
    assert settings.state_dir == tmp_path / "flag" and settings.model == "champion"
    monkeypatch.delenv("ADBANDIT_STATE_DIR")
    monkeypatch.setenv("ADBANDIT_API_KEY", "")
    defaults = settings_from_args(build_parser().parse_args(["serve"]))
    assert str(defaults.state_dir) == "state" and defaults.api_key is None and defaults.fsync


def test_ingest_command_posts_files_to_a_running_service(tmp_path, monkeypatch, p1):
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(json.dumps(outcome(i)) for i in range(12)) + "\n")
    seen = {}

    def fake_ingest_files(paths, state_dir=None, url=None, api_key=None):
        seen.update(paths=paths, state_dir=state_dir, url=url, api_key=api_key)
        from serving.store import IngestResult

        return IngestResult(12, 0, [])

    monkeypatch.setattr("serving.ingest.ingest_files", fake_ingest_files)
    monkeypatch.setenv("ADBANDIT_API_KEY", "k")
    from adbandit.cli import main

    assert main(["ingest", str(path), "--url", "http://127.0.0.1:1"]) == 0
    assert seen == {"paths": [path], "state_dir": None, "url": "http://127.0.0.1:1", "api_key": "k"}


def test_state_file_round_trip_helper(tmp_path):
    """``save_state`` files are what ``state_npz_b64`` carries (base64 of the .npz bytes)."""
    config = PlacementConfig.from_dict("p1", P1_BODY)
    state = make_policy("static", config).state()
    save_state(tmp_path / "s.npz", state)
    encoded = base64.b64encode((tmp_path / "s.npz").read_bytes()).decode()
    from serving.routes.admin import state_from_b64

    restored = state_from_b64(encoded)
    assert sorted(restored) == sorted(state)


# ------------------------------------------------------------- API docs without a CDN
def test_docs_pages_load_their_assets_from_the_service(client):
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "text/html" in client.get(page).headers["content-type"]
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
        assert urls and not [u for u in urls if "//" in u], (page, urls)  # nothing absolute: no CDN
        assets = [u for u in urls if u.startswith("/static/")]
        assert assets, (page, urls)
        for url in assets:
            response = client.get(url)
            assert response.status_code == 200 and len(response.content) > 1000, url
    js = client.get("/static/docs/swagger-ui-bundle.js")
    assert "javascript" in js.headers["content-type"] and b"SwaggerUIBundle" in js.content
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert "/docs" not in client.get("/openapi.json").json()["paths"]


def test_an_app_can_be_started_again_after_it_stopped(tmp_path):
    from fastapi.testclient import TestClient

    from adbandit.wiring import create_app
    from tests.serving.conftest import test_settings

    app = create_app(test_settings(tmp_path / "state"))
    with TestClient(app) as first:
        assert first.put("/v1/placements/p1", json=P1_BODY).status_code == 201
    with TestClient(app) as second:  # a new store over the same state dir
        assert second.post("/v1/outcomes", json=[outcome(0)]).json()["accepted"] == 1
        assert second.get("/healthz").status_code == 200
