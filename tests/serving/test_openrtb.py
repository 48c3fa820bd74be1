"""OpenRTB 2.6: floors on BidRequests shaped like the specification's examples, extensions
passing through, the win/billing/loss notices landing as outcomes, and bad requests answered
4xx with nothing learned (serving/openrtb.py, serving/routes/openrtb.py)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bandit import InvalidDecisionRequest, InvalidOutcome
from serving import openrtb
from serving.placement_config import ServicePlacement
from tests.serving.conftest import P1_BODY
from tests.serving.test_api import fingerprint, settle

EXAMPLES = Path(__file__).parent / "openrtb"
#: P1 with network alpha bidding as "appnexus"; floors of 0.5 to 50 (a price of 0.0001 is below any, 60 above).
P1_BIDDERS = {**P1_BODY, "networks": [{**P1_BODY["networks"][0], "bidder": "appnexus", "floor_min_cpm": 0.5},
                                      P1_BODY["networks"][1]]}  # fmt: skip
P2_BODY = {"networks": [{"id": "gamma", "floor_min_cpm": 0.2, "floor_max_cpm": 8.0}],
           "segment_by": ["bundle", "media_type"]}  # fmt: skip


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


@pytest.fixture
def rtb(client):
    assert client.put("/v1/placements/p1", json=P1_BIDDERS).status_code == 201
    assert client.put("/v1/placements/p2", json=P2_BODY).status_code == 201
    return client


def without_floors(body: dict) -> dict:
    """The request minus what the service adds or replaces on each imp."""
    body = copy.deepcopy(body)
    for imp in body["imp"]:
        for key in ("bidfloor", "bidfloorcur"):
            imp.pop(key, None)
        ext = imp.get("ext") or {}
        ext.pop("adbandit", None)
        if "prebid" in ext:
            ext["prebid"].pop("floors", None)
            if not ext["prebid"]:
                ext.pop("prebid")
        if ext == {}:
            imp.pop("ext", None)
    return body


def notice_path(url: str, **macros: str) -> str:
    for name, value in macros.items():
        url = url.replace("${" + name + "}", value)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# ------------------------------------------------------------------------------ pure
def test_context_of_a_site_and_an_app_request():
    site = openrtb.read_bid_request(example("site_banner"))
    assert openrtb.context_of(site, site.imp[0]) == {
        "country": "USA", "domain": "www.foobar.com", "channel": "site", "media_type": "banner"}  # fmt: skip
    app = openrtb.read_bid_request(example("app_video"))
    assert openrtb.context_of(app, app.imp[0]) == {
        "country": "KOR", "region": "11", "os": "ios", "devicetype": "4", "device_type": "4",
        "bundle": "com.yahoo.weather", "channel": "app", "media_type": "video"}  # fmt: skip
    assert openrtb.context_of(app, app.imp[1])["media_type"] == "native"
    both = openrtb.Imp(id="x", banner={}, video={})
    assert openrtb.media_type(both) is None


@pytest.mark.parametrize(("body", "fragment"), [
    ([], "JSON object"),
    ({"id": "r"}, "no impressions"),
    ({"id": "r", "imp": []}, "no impressions"),
    ({"id": "r", "imp": {"id": "1"}}, "non-empty array"),
    ({"id": "r", "imp": [{"id": "1"}] * 101}, "at most 100"),
    ({"imp": [{"id": "1", "tagid": "p1"}]}, "id"),
    ({"id": "r", "imp": [{"tagid": "p1"}]}, "imp.0.id"),
    ({"id": "r", "imp": [{"id": "1", "bidfloor": -1}]}, "imp.0.bidfloor"),
    ({"id": "r", "imp": [{"id": "1"}], "site": {}, "app": {}}, "not both"),
    ({"id": "r", "imp": [{"id": "1"}], "device": {"devicetype": "phone"}}, "device.devicetype"),
])  # fmt: skip
def test_read_bid_request_says_what_to_fix(body, fragment):
    with pytest.raises(InvalidDecisionRequest, match=fragment):
        openrtb.read_bid_request(body)


def test_unknown_fields_are_kept_by_the_model():
    request = openrtb.read_bid_request(example("app_video"))
    assert request.model_dump()["source"]["schain"]["nodes"][0]["asi"] == "exchange.com"


@pytest.mark.parametrize(("text", "expected"), [
    ("1.25", 1.25), ("0", 0.0), ("${AUCTION_PRICE}", "not substitute"), ("", "missing"), (None, "missing"),
    ("abc", "clear-text"), ("nan", "between"), ("-1", "between"), ("1e9", "between")])  # fmt: skip
def test_parse_price(text, expected):
    if isinstance(expected, float):
        assert openrtb.parse_price(text) == expected
    else:
        with pytest.raises(InvalidOutcome, match=expected):
            openrtb.parse_price(text)


def test_a_notice_reads_back_the_context_of_its_segment_key():
    config = ServicePlacement.from_dict("p1", P1_BODY)
    for context in ({"country": "KR", "os": "ios"}, {"os": "android"}, {}):
        segment = config.segment_of(context)
        assert openrtb.notice_context(config, segment) == context
        assert config.segment_of(openrtb.notice_context(config, segment)) == segment
    with pytest.raises(InvalidOutcome, match=r"segments by country\|os"):
        openrtb.notice_context(config, "KR")


def test_currency_must_be_allowed():
    openrtb.check_currency(None, "USD", "p1")
    openrtb.check_currency(["usd", "EUR"], "USD", "p1")
    with pytest.raises(InvalidDecisionRequest, match="add 'KRW' to cur"):
        openrtb.check_currency(["USD"], "KRW", "p1")


# ------------------------------------------------------------------------------ HTTP
@pytest.mark.parametrize("name", ["site_banner", "app_video"])
def test_floors_set_on_every_imp_and_everything_else_passes_through(rtb, name):
    sent = example(name)
    response = rtb.post("/v1/openrtb/floors", json=sent)
    assert response.status_code == 200, response.text
    got = response.json()
    assert without_floors(got) == without_floors(sent)  # extensions and unknown fields unchanged
    for imp in got["imp"]:
        mark = imp["ext"]["adbandit"]
        config = {"p1": P1_BIDDERS, "p2": P2_BODY}[mark["placement"]]
        bounds = next(n for n in config["networks"] if n["id"] == mark["network"])
        assert bounds["floor_min_cpm"] <= imp["bidfloor"] <= bounds["floor_max_cpm"]
        assert imp["bidfloorcur"] == "USD"
        assert imp["ext"]["prebid"]["floors"]["floorValue"] == imp["bidfloor"]
        assert imp["ext"]["prebid"]["floors"]["floorRule"] == mark["segment"]
        for kind in ("nurl", "burl", "lurl"):
            query = parse_qs(urlsplit(mark[kind]).query)
            assert query["d"] == [mark["decision_id"]] and query["p"] == [mark["placement"]]
            assert float(query["f"][0]) == imp["bidfloor"]
    first = got["imp"][0]["ext"]["adbandit"]
    assert first["segment"] == {"site_banner": "USA|unknown", "app_video": "KOR|ios"}[name]


def test_per_bidder_floors_are_the_mapped_networks_floor_in_the_segment(rtb):
    got = rtb.post("/v1/openrtb/floors", json=example("app_video")).json()
    imp = got["imp"][0]
    alloc = rtb.get("/v1/placements/p1/allocation", params={"segment": "KOR|ios"}).json()
    alpha = next(n for n in alloc["networks"] if n["network"] == "alpha")
    assert imp["ext"]["prebid"]["floors"]["bidderFloors"] == {"appnexus": pytest.approx(alpha["floor_cpm"], abs=1e-4)}
    assert "bidderFloors" not in got["imp"][1]["ext"]["prebid"]["floors"]  # p2 maps no bidder
    assert imp["ext"]["prebid"]["bidder"] == {"appnexus": {"placementId": 13144370}}


def test_app_context_keys_the_segment_of_its_placement(rtb):
    got = rtb.post("/v1/openrtb/floors", json=example("app_video")).json()
    assert got["imp"][1]["ext"]["adbandit"]["segment"] == "com.yahoo.weather|native"


def test_win_notice_is_learned_once_and_billing_of_the_same_decision_is_a_duplicate(rtb):
    imp = rtb.post("/v1/openrtb/floors", json=example("app_video")).json()["imp"][0]
    mark = imp["ext"]["adbandit"]
    price = f"{imp['bidfloor'] + 1.5:.6f}"
    win = rtb.get(notice_path(mark["nurl"], AUCTION_PRICE=price))
    assert win.status_code == 200 and win.json() == {"accepted": 1, "duplicates": 0}
    billing = rtb.get(notice_path(mark["burl"], AUCTION_PRICE=price))
    assert billing.json() == {"accepted": 0, "duplicates": 1}
    settle(rtb)
    report = rtb.get("/v1/placements/p1/experiment").json()["variants"][mark["variant"]]
    assert report["requests"] == 1 and math.isclose(report["revenue_per_request"], float(price), rel_tol=1e-9)
    alloc = rtb.get("/v1/placements/p1/allocation", params={"segment": "KOR|ios"}).json()
    assert alloc["effective_events"] == pytest.approx(1.0)  # learned under the decision's segment
    metrics = rtb.get("/metrics").text
    assert "adbandit_store_events_unverified_decision_total 0.0" in metrics


def test_loss_notice_is_a_no_fill(rtb):
    mark = rtb.post("/v1/openrtb/floors", json=example("site_banner")).json()["imp"][0]["ext"]["adbandit"]
    loss = rtb.get(notice_path(mark["lurl"], AUCTION_LOSS="102"))
    assert loss.json() == {"accepted": 1, "duplicates": 0}
    settle(rtb)
    report = rtb.get("/v1/placements/p1/experiment").json()["variants"][mark["variant"]]
    assert report["requests"] == 1 and report["revenue_per_request"] == 0.0


@pytest.mark.parametrize(("tamper", "status", "fragment"), [
    (lambda u: u.replace("${AUCTION_PRICE}", "abc"), 422, "clear-text"),
    (lambda u: u, 422, "not substitute"),
    (lambda u: u.replace("${AUCTION_PRICE}", "0.0001"), 422, "below floor"),
    (lambda u: u.replace("${AUCTION_PRICE}", "60").replace("d=champion.", "d=champion.X"), 422, "not a decision"),
    (lambda u: _other_network(u.replace("${AUCTION_PRICE}", "60")), 422, "issued for network"),
    (lambda u: u.replace("${AUCTION_PRICE}", "60").replace("&f=", "&f=1"), 422, "issued for floor_cpm"),
    (lambda u: u.replace("${AUCTION_PRICE}", "60").replace("p=p1", "p=nope"), 404, "nope"),
    (lambda u: u.replace("${AUCTION_PRICE}", "60").replace("s=KOR%7Cios", "s=KOR"), 422, "segments by"),
    (lambda u: u.replace("${AUCTION_PRICE}", "60") + "&extra=1", 422, "unknown query parameter"),
])  # fmt: skip
def test_bad_notices_are_4xx_and_learn_nothing(rtb, tamper, status, fragment):
    mark = rtb.post("/v1/openrtb/floors", json=example("app_video")).json()["imp"][0]["ext"]["adbandit"]
    settle(rtb)
    before = fingerprint(rtb)
    response = rtb.get(notice_path(tamper(mark["nurl"])))
    assert response.status_code == status, response.text
    assert fragment in response.text
    settle(rtb)
    assert fingerprint(rtb) == before
    # The decision can still be reported properly afterwards.
    ok = rtb.get(notice_path(mark["nurl"], AUCTION_PRICE="60"))
    assert ok.json() == {"accepted": 1, "duplicates": 0}


def _other_network(url: str) -> str:
    """The notice URL naming the placement's other network than its decision's."""
    a, b = ("n=alpha", "n=beta") if "n=alpha" in url else ("n=beta", "n=alpha")
    return url.replace(a, b)


def _request(**changes) -> dict:
    body = example("site_banner")
    body.update(changes)
    return body


BAD_REQUESTS = [
    (b'{"id": "r", "imp": [', None, 400, "malformed JSON"),
    (json.dumps({"id": "r"}).encode(), None, 422, "no impressions"),
    (json.dumps(_request(imp=[{"id": "1", "tagid": "nope"}])).encode(), None, 404, "imp[0].tagid 'nope'"),
    (json.dumps(_request(imp=[{"id": "1", "tagid": "p1"}, {"id": "2"}])).encode(), None, 422, "imp[1]"),
    (json.dumps(_request(imp=[{"id": "1", "tagid": "p1"}, {"id": "1", "tagid": "p1"}])).encode(), None, 422,
     "unique"),
    (json.dumps(_request(cur=["EUR", "KRW"])).encode(), None, 422, "add 'USD' to cur"),
    (b'{"id": "r", "imp": [{"id": "1", "tagid": "p1", "bidfloor": NaN}]}', None, 400, "malformed JSON"),
    (b"id=r", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    (json.dumps(_request(ext={"pad": "x" * (openrtb.MAX_BODY_BYTES + 10)})).encode(), None, 413, "at most"),
    (json.dumps(_request(site={"domain": "x" * 300})).encode(), None, 422, "the context of imp[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "headers", "status", "fragment"), BAD_REQUESTS)
def test_bad_bid_requests_are_4xx_naming_the_problem_and_decide_nothing(rtb, body, headers, status, fragment):
    before = fingerprint(rtb)
    response = rtb.post("/v1/openrtb/floors", content=body, headers=headers or {"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
    report = rtb.get("/v1/placements/p1/experiment").json()
    assert report["variants"]["champion"]["decisions"] == 0  # not even the first, valid imp was decided
    assert fingerprint(rtb) == before


def test_floors_need_the_decide_key_and_notices_need_none(make_client):
    client = make_client(decide_api_key="d-key-123")
    client.put("/v1/placements/p1", json=P1_BODY)
    assert client.post("/v1/openrtb/floors", json=example("site_banner")).status_code == 401
    got = client.post("/v1/openrtb/floors", json=example("site_banner"),
                      headers={"Authorization": "Bearer d-key-123"})  # fmt: skip
    assert got.status_code == 200
    mark = got.json()["imp"][0]["ext"]["adbandit"]
    assert client.get(notice_path(mark["nurl"], AUCTION_PRICE="60")).json()["accepted"] == 1


@pytest.mark.parametrize(("reason", "learned"), [
    ("100", True), ("102", True), ("${AUCTION_LOSS}", True), ("2", False), ("0", False), ("203", False),
    ("1001", False)])  # fmt: skip
def test_only_auction_losses_are_learned_as_no_fills(rtb, reason, learned):
    mark = rtb.post("/v1/openrtb/floors", json=example("site_banner")).json()["imp"][0]["ext"]["adbandit"]
    response = rtb.get(notice_path(mark["lurl"], AUCTION_LOSS=reason))
    assert response.status_code == 200
    assert response.json()["accepted"] == int(learned)
    assert ("ignored" in response.json()) is not learned
    settle(rtb)
    assert rtb.get("/v1/placements/p1/experiment").json()["variants"]["champion"]["requests"] == int(learned)


def test_a_loss_reason_that_is_not_a_code_is_422(rtb):
    mark = rtb.post("/v1/openrtb/floors", json=example("site_banner")).json()["imp"][0]["ext"]["adbandit"]
    response = rtb.get(notice_path(mark["lurl"], AUCTION_LOSS="outbid"))
    assert response.status_code == 422 and "loss reason code" in response.text
