"""The Prebid floors document: several ad units, per-bidder rules, the fallback of variants
without data, modelTimestamp, skipRate, CORS and caching (serving/prebid.py, routes/prebid.py)."""

from __future__ import annotations

import time

import pytest

from bandit import Allocation, InvalidDecisionRequest, NetworkAllocation
from serving import prebid
from serving.placement_config import ServicePlacement
from tests.serving.conftest import P1_BODY, outcome


def _alloc(segment: str, weights: list[float], floors: list[float], events: float = 500.0, version="v.1"):
    nets = tuple(NetworkAllocation(f"n{i}", w, f, f, f, 0.0, 0.0, 0.5, "second")
                 for i, (w, f) in enumerate(zip(weights, floors, strict=True)))  # fmt: skip
    return Allocation("p", segment, nets, version, events)


def _placement(pid="p", segment_by=("country",), bidders=None, currency="USD"):
    nets = [{"id": "n0", **({"bidder": bidders[0]} if bidders else {})},
            {"id": "n1", **({"bidder": bidders[1]} if bidders else {})}]  # fmt: skip
    return ServicePlacement.from_dict(pid, {"networks": nets, "segment_by": list(segment_by), "currency": currency})


# ------------------------------------------------------------------------------ pure
def test_per_bidder_rules_give_each_mapped_networks_floor_and_the_weighted_floor_for_the_rest():
    config = _placement(bidders=["appnexus", "rubicon"])
    variant = prebid.VariantFloors("champion", 100, [_alloc("*", [0.5, 0.5], [1.0, 3.0]),
                                                     _alloc("KR", [0.25, 0.75], [2.0, 4.0])])  # fmt: skip
    doc = prebid.prebid_floors(config, [variant], options=prebid.FloorsOptions(bidders=True))
    group = doc["modelGroups"][0]
    assert group["schema"]["fields"] == ["country", "bidder"]
    assert group["values"] == {"KR|*": 3.5, "KR|appnexus": 2.0, "KR|rubicon": 4.0,
                               "*|appnexus": 1.0, "*|rubicon": 3.0, "*|*": 2.0}  # fmt: skip
    shared = _placement(bidders=["appnexus", "appnexus"])
    values = prebid.prebid_floors(shared, [variant], options=prebid.FloorsOptions(bidders=True))["modelGroups"][0]
    assert values["values"]["KR|appnexus"] == 3.5  # two networks of one bidder code: their weighted floor


def test_a_variant_without_enough_data_publishes_the_champions_floors():
    champion = prebid.VariantFloors("champion", 90, [_alloc("*", [1, 0], [2.0, 9.0], 500, "ts.7")], built_at=50.0)
    fresh = prebid.VariantFloors("challenger", 10, [_alloc("*", [1, 0], [7.0, 9.0], 20, "ts.1")], built_at=99.0)
    grown = prebid.VariantFloors("grown", 10, [_alloc("*", [1, 0], [5.0, 9.0], 120, "ts.3")], built_at=70.0)
    out = prebid.with_fallback([champion, fresh, grown], "champion", min_events=100)
    assert [v.fallback for v in out] == [None, "champion", None]
    doc = prebid.prebid_floors(_placement(), out)
    assert [g["default"] for g in doc["modelGroups"]] == [2.0, 2.0, 5.0]
    assert [g["modelVersion"] for g in doc["modelGroups"]] == [
        "champion:ts.7", "challenger:fallback=champion:ts.7", "grown:ts.3"]  # fmt: skip
    assert doc["modelTimestamp"] == 70  # the newest model published, not the fallback's own
    assert prebid.with_fallback([champion, fresh], "champion", min_events=0)[1].fallback is None


def test_page_document_keys_rules_by_ad_unit_over_the_union_of_fields():
    a = _placement("top", ("country", "os"))
    b = _placement("side", ("device_type",))
    va = [prebid.VariantFloors("champion", 100, [_alloc("*", [1, 0], [1.0, 0]), _alloc("KR|ios", [1, 0], [2.0, 0])])]
    vb = [prebid.VariantFloors("champion", 100, [_alloc("*", [1, 0], [3.0, 0]), _alloc("phone", [0, 1], [0, 4.0])])]
    doc = prebid.page_floors([a, b], [va, vb], ["champion", "champion"],
                             options=prebid.FloorsOptions(key="gptSlot"))  # fmt: skip
    group = doc["modelGroups"][0]
    assert group["schema"]["fields"] == ["gptSlot", "country", "os", "deviceType"]
    assert group["values"] == {"top|KR|ios|*": 2.0, "top|*|*|*": 1.0, "side|*|*|phone": 4.0, "side|*|*|*": 3.0,
                               "*|*|*|*": 0.0}  # fmt: skip
    assert group["default"] == doc["floorMin"] == 0.0 and group["modelWeight"] == 100


def test_page_document_has_a_group_per_variant_only_when_every_ad_unit_splits_alike():
    def variants(split):
        return [prebid.VariantFloors(n, t, [_alloc("*", [1, 0], [f, 0])]) for n, t, f in split]

    a, b = _placement("a"), _placement("b")
    alike = prebid.page_floors([a, b], [variants([("champion", 80, 1.0), ("c", 20, 2.0)]),
                                        variants([("champion", 80, 3.0), ("c", 20, 4.0)])],
                               ["champion", "champion"], options=prebid.FloorsOptions(key="adUnitCode"))  # fmt: skip
    assert [g["modelWeight"] for g in alike["modelGroups"]] == [80, 20]
    assert alike["modelGroups"][1]["values"]["a|*"] == 2.0 and alike["modelGroups"][1]["values"]["b|*"] == 4.0
    differ = prebid.page_floors([a, b], [variants([("champion", 80, 1.0), ("c", 20, 2.0)]),
                                         variants([("champion", 100, 3.0)])],
                                ["champion", "champion"], options=prebid.FloorsOptions(key="adUnitCode"))  # fmt: skip
    assert [g["modelWeight"] for g in differ["modelGroups"]] == [100]
    assert differ["modelGroups"][0]["values"]["a|*"] == 1.0 and differ["modelGroups"][0]["values"]["b|*"] == 3.0
    with pytest.raises(InvalidDecisionRequest, match="currency"):
        prebid.page_floors([a, _placement("k", currency="KRW")], [variants([("champion", 100, 1.0)])] * 2,
                           ["champion"] * 2, options=prebid.FloorsOptions(key="adUnitCode"))  # fmt: skip


# ------------------------------------------------------------------------------ HTTP
@pytest.fixture
def two(make_client):
    client = make_client(prebid_cors_origins="https://news.example, https://m.example", prebid_cache_max_age_s=120,
                         prebid_skip_rate=10)  # fmt: skip
    body = {**P1_BODY, "networks": [{**P1_BODY["networks"][0], "bidder": "appnexus"}, P1_BODY["networks"][1]]}
    assert client.put("/v1/placements/p1", json=body).status_code == 201
    assert client.put("/v1/placements/p2", json={"networks": [{"id": "x"}], "segment_by": ["os"]}).status_code == 201
    return client


def test_one_placement_answers_the_original_document_with_cors_and_cache_control(two):
    response = two.get("/v1/prebid/floors", params={"placement": "p1"}, headers={"Origin": "https://news.example"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://news.example"
    assert response.headers["cache-control"] == "max-age=120"
    doc = response.json()
    assert set(doc) == {"floorsSchemaVersion", "floorProvider", "currency", "modelTimestamp", "skipRate",
                        "floorMin", "modelGroups"}  # fmt: skip
    assert doc["skipRate"] == 10 and doc["modelGroups"][0]["schema"]["fields"] == ["country", "os"]
    other = two.get("/v1/prebid/floors", params={"placement": "p1"}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers and other.headers["vary"] == "Origin"


def test_preflight_names_origin_methods_and_headers(two):
    asked = {"Origin": "https://m.example", "Access-Control-Request-Method": "GET"}
    response = two.options("/v1/prebid/floors?placement=p1", headers=asked)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://m.example"
    assert "GET" in response.headers["access-control-allow-methods"]
    refused = two.options("/v1/prebid/floors", headers={**asked, "Origin": "https://evil.example"})
    assert refused.status_code == 204 and "access-control-allow-origin" not in refused.headers


def test_errors_carry_cors_headers_too_so_a_page_can_read_them(make_client):
    client = make_client(decide_api_key="page-key-123", prebid_cors_origins="https://news.example")
    client.put("/v1/placements/p1", json=P1_BODY)
    origin = {"Origin": "https://news.example"}
    unauthorized = client.get("/v1/prebid/floors?placement=p1", headers=origin)
    assert unauthorized.status_code == 401 and unauthorized.headers["access-control-allow-origin"] == origin["Origin"]
    auth = {**origin, "Authorization": "Bearer page-key-123"}
    missing = client.get("/v1/prebid/floors?placement=nope", headers=auth)
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == origin["Origin"]
    ok = client.get("/v1/prebid/floors?placement=p1", headers=auth)
    assert ok.status_code == 200 and ok.headers.get_list("access-control-allow-origin") == [origin["Origin"]]
    other = client.get("/v1/placements/p1/allocation", headers=auth)  # only the floors answer CORS
    assert "access-control-allow-origin" not in other.headers


def test_any_origin_by_default(make_client):
    client = make_client()
    client.put("/v1/placements/p1", json=P1_BODY)
    response = client.get("/v1/prebid/floors?placement=p1", headers={"Origin": "https://x.example"})
    assert response.headers["access-control-allow-origin"] == "*"


def test_several_placements_in_one_document_with_bidder_rules(two):
    two.post("/v1/outcomes", json=[outcome(i, network=("alpha", "beta")[i % 2]) for i in range(40)])
    two.app.state.store.flush()
    doc = two.get("/v1/prebid/floors?placement=p1&placement=p2&bidders=true").json()
    group = doc["modelGroups"][0]
    assert group["schema"]["fields"] == ["adUnitCode", "country", "os", "bidder"]
    alloc = two.get("/v1/placements/p1/allocation", params={"segment": "KR|ios"}).json()
    alpha = next(n for n in alloc["networks"] if n["network"] == "alpha")
    assert group["values"]["p1|KR|ios|appnexus"] == pytest.approx(alpha["floor_cpm"], abs=1e-4)
    weighted = sum(n["weight"] * n["floor_cpm"] for n in alloc["networks"])
    assert group["values"]["p1|KR|ios|*"] == pytest.approx(weighted, abs=1e-4)
    pooled = two.get("/v1/placements/p2/allocation").json()["networks"][0]["floor_cpm"]
    assert group["values"]["p2|*|*|*"] == pytest.approx(pooled, abs=1e-4)
    assert not any(k.startswith("p2|") and not k.endswith("|*") for k in group["values"])  # p2 maps no bidder


def test_a_page_mapping_keys_the_rules_by_gpt_slot(two):
    query = "placement=p1&code=/1234/home/top&placement=p2&code=/1234/home/side&placement=p1&code=/1234/art/top"
    doc = two.get(f"/v1/prebid/floors?{query}&key=gptSlot").json()
    values = doc["modelGroups"][0]["values"]
    assert doc["modelGroups"][0]["schema"]["fields"][0] == "gptSlot"
    assert {k.split("|")[0] for k in values} == {"/1234/home/top", "/1234/home/side", "/1234/art/top", "*"}
    assert values["/1234/home/top|*|*"] == values["/1234/art/top|*|*"]  # one placement serving two slots
    single = two.get("/v1/prebid/floors?placement=p1&code=div-top").json()  # a code alone: the keyed document
    assert single["modelGroups"][0]["schema"]["fields"][0] == "adUnitCode" and "div-top|*|*" in single[
        "modelGroups"][0]["values"]  # fmt: skip


@pytest.mark.parametrize(("query", "status", "fragment"), [
    ("placement=p1&placement=p2&code=a", 422, "one code per placement"),
    ("placement=p1&code=a%7Cb", 422, "without '|'"),
    ("placement=p1&placement=nope", 404, "nope"),
    ("placement=p1&placement=bad%20id", 422, "not a placement id"),
    ("placement=p1&key=slot", 422, "key"),
    ("placement=p1&key=adUnitCode&key=gptSlot", 422, "more than once"),
])  # fmt: skip
def test_bad_floors_queries_are_4xx(two, query, status, fragment):
    response = two.get(f"/v1/prebid/floors?{query}")
    assert response.status_code == status and fragment in response.text


def test_model_timestamp_is_when_the_model_was_built_not_the_fetch(two):
    first = two.get("/v1/prebid/floors?placement=p1").json()["modelTimestamp"]
    assert first <= time.time()
    time.sleep(1.1)
    assert two.get("/v1/prebid/floors?placement=p1").json()["modelTimestamp"] == first
    two.post("/v1/outcomes", json=[outcome(i) for i in range(10)])
    two.app.state.store.flush()  # a refit builds a new model
    assert two.get("/v1/prebid/floors?placement=p1").json()["modelTimestamp"] > first


def test_a_challenger_without_data_serves_the_champions_floors_over_http(two):
    two.put("/v1/placements/p1/experiment", json={"variants": [
        {"name": "champion", "traffic": 70}, {"name": "static", "traffic": 30, "policy": "static"}]})  # fmt: skip
    two.post("/v1/outcomes", json=[outcome(i) for i in range(150)])  # no decision ids: the champion learns them
    two.app.state.store.flush()
    groups = two.get("/v1/prebid/floors?placement=p1").json()["modelGroups"]
    assert groups[1]["modelVersion"].startswith("static:fallback=champion:")
    assert groups[1]["values"] == groups[0]["values"] and groups[1]["modelWeight"] == 30


def test_bidder_codes_survive_a_restart_and_show_on_the_placement(make_client, tmp_path):
    client = make_client(state_dir=tmp_path / "s")
    body = {**P1_BODY, "networks": [{**P1_BODY["networks"][0], "bidder": "appnexus"}, P1_BODY["networks"][1]]}
    client.put("/v1/placements/p1", json=body)
    assert [n.get("bidder") for n in client.get("/v1/placements/p1").json()["networks"]] == ["appnexus", None]
    client.__exit__(None, None, None)
    again = make_client(state_dir=tmp_path / "s")
    assert [n.get("bidder") for n in again.get("/v1/placements/p1").json()["networks"]] == ["appnexus", None]
    bad = again.put("/v1/placements/p1", json={**body, "networks": [{"id": "a", "bidder": "two words"}]})
    assert bad.status_code == 422 and "bidder" in bad.text
