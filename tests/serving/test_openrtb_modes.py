"""OpenRTB 2.6 floors of waterfall and auction placements: the plan in ``imp.ext.adbandit``
(networks to call with their own floors and notice URLs, the plan's propensity), per-bidder
floors from the plan, notices of each offer learned as that network's response, and bad
input still answered 4xx (serving/openrtb.py, docs/service.md "OpenRTB")."""

from __future__ import annotations

import pytest

from tests.serving.conftest import P1_BODY
from tests.serving.test_api import fingerprint, settle
from tests.serving.test_openrtb import example, notice_path, without_floors

NETWORKS = [
    {"id": "alpha", "floor_min_cpm": 0.0, "floor_max_cpm": 20.0, "bidder": "appnexus"},
    {"id": "beta", "floor_min_cpm": 0.5, "floor_max_cpm": 20.0, "bidder": "rubicon"},
    {"id": "gamma", "floor_min_cpm": 0.0, "floor_max_cpm": 30.0},
]
AUCTION = {"networks": NETWORKS, "segment_by": ["country"], "mode": "auction", "max_calls": 2}
WATERFALL = {"networks": NETWORKS, "segment_by": ["country"], "mode": "waterfall", "max_tiers": 3}
BOUNDS = {n["id"]: (n["floor_min_cpm"], n["floor_max_cpm"]) for n in NETWORKS}


@pytest.fixture
def rtb(client):
    for name, body in (("au", AUCTION), ("wf", WATERFALL), ("p1", P1_BODY)):
        assert client.put(f"/v1/placements/{name}", json=body).status_code == 201
    return client


def bid_request(*tagids: str) -> dict:
    body = example("site_banner")
    body["imp"] = [{"id": str(i + 1), "tagid": t, "banner": {"w": 300, "h": 250}} for i, t in enumerate(tagids)]
    return body


@pytest.mark.parametrize(("tagid", "mode", "key"), [("au", "auction", "bidders"), ("wf", "waterfall", "tiers")])
def test_a_plan_placement_gets_its_networks_with_their_own_floors(rtb, tagid, mode, key):
    sent = bid_request(tagid, "p1")
    response = rtb.post("/v1/openrtb/floors", json=sent)
    assert response.status_code == 200, response.text
    got = response.json()
    assert without_floors(got) == without_floors(sent)
    imp, single = got["imp"]
    mark = imp["ext"]["adbandit"]
    assert mark["mode"] == mode and 0.0 < mark["propensity"] <= 1.0
    offers = mark[key]
    assert ("tiers" if key == "bidders" else "bidders") not in mark
    assert 1 <= len(offers) <= (2 if mode == "auction" else 3)
    assert len({o["network"] for o in offers}) == len(offers)
    for o in offers:
        lo, hi = BOUNDS[o["network"]]
        assert lo - 0.01 <= o["floor_cpm"] <= hi
        assert o.get("bidder") == {"alpha": "appnexus", "beta": "rubicon"}.get(o["network"])
        for kind in ("nurl", "burl", "lurl"):
            assert f"n={o['network']}" in o[kind] and f"d={mark['decision_id']}" in o[kind]
    # The first offer is the decision's network, as for any decision (old readers keep working).
    assert (mark["network"], mark["nurl"]) == (offers[0]["network"], offers[0]["nurl"])
    floors = [o["floor_cpm"] for o in offers]
    expected = min(floors) if mode == "auction" else floors[0]
    assert imp["bidfloor"] == pytest.approx(expected) and imp["bidfloorcur"] == "USD"
    assert imp["ext"]["prebid"]["floors"]["floorValue"] == imp["bidfloor"]
    codes = {o["bidder"]: o["floor_cpm"] for o in offers if "bidder" in o}
    assert imp["ext"]["prebid"]["floors"].get("bidderFloors", {}) == pytest.approx(codes)
    # A single placement's imp in the same request answers exactly as before.
    assert not {"mode", "propensity", "bidders", "tiers"} & set(single["ext"]["adbandit"])


def test_the_plans_served_over_openrtb_follow_the_plan_table(rtb):
    """Over many BidRequests, each plan comes back about as often as its probability says."""
    plans = rtb.get("/v1/placements/au/allocation", params={"segment": "USA"}).json()["plans"]
    counts: dict[tuple, int] = {}
    n = 400
    for i in range(n // 50):
        body = bid_request(*["au"] * 50)
        body["id"] = f"r{i}"
        for imp in rtb.post("/v1/openrtb/floors", json=body).json()["imp"]:
            key = tuple(o["network"] for o in imp["ext"]["adbandit"]["bidders"])
            counts[key] = counts.get(key, 0) + 1
    top = plans[0]
    key = tuple(o["network"] for o in top["offers"])
    share = sum(c for k, c in counts.items() if k == key) / n
    # Plans with the same networks and other floors merge here, so the share is at least the top plan's.
    assert share >= top["probability"] - 4 * (top["probability"] * (1 - top["probability"]) / n) ** 0.5 - 1e-9


@pytest.mark.parametrize("tagid", ["au", "wf"])
def test_notices_of_each_offer_are_learned_as_that_networks_response(rtb, tagid):
    imp = rtb.post("/v1/openrtb/floors", json=bid_request(tagid)).json()["imp"][0]
    mark = imp["ext"]["adbandit"]
    offers = mark["bidders" if tagid == "au" else "tiers"]
    before = rtb.get(f"/v1/placements/{tagid}/allocation", params={"segment": "USA"}).json()["effective_events"]
    winner = offers[-1]
    price = f"{winner['floor_cpm'] + 1.25:.4f}"
    for o in offers[:-1]:
        loss = rtb.get(notice_path(o["lurl"], AUCTION_LOSS="102"))
        assert loss.status_code == 200 and loss.json() == {"accepted": 1, "duplicates": 0}, loss.text
    win = rtb.get(notice_path(winner["nurl"], AUCTION_PRICE=price))
    assert win.json() == {"accepted": 1, "duplicates": 0}, win.text
    # billing of the same network of the same decision: a duplicate.
    assert rtb.get(notice_path(winner["burl"], AUCTION_PRICE=price)).json() == {"accepted": 0, "duplicates": 1}
    settle(rtb)
    after = rtb.get(f"/v1/placements/{tagid}/allocation", params={"segment": "USA"}).json()["effective_events"]
    assert after - before == pytest.approx(len(offers))  # one per-network event per offer
    assert "adbandit_store_events_unverified_decision_total 0.0" in rtb.get("/metrics").text


def _off_plan(url: str) -> str:
    return url.replace("&f=", "&f=1")


@pytest.mark.parametrize(("tamper", "fragment"), [
    (_off_plan, "floor"),
    (lambda u: u.replace("d=champion.", "d=champion.X"), "not a"),
    (lambda u: u.replace("s=USA", "s=USA%7Cios"), "segments by"),
])  # fmt: skip
def test_a_notice_off_the_plan_is_422_and_learns_nothing(rtb, tamper, fragment):
    mark = rtb.post("/v1/openrtb/floors", json=bid_request("au")).json()["imp"][0]["ext"]["adbandit"]
    offer = mark["bidders"][0]
    settle(rtb)
    before = fingerprint(rtb)
    response = rtb.get(notice_path(tamper(offer["nurl"]), AUCTION_PRICE="40"))
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]
    settle(rtb)
    assert fingerprint(rtb) == before


def test_a_notice_for_a_network_the_plan_does_not_call_is_422(rtb):
    mark = rtb.post("/v1/openrtb/floors", json=bid_request("au")).json()["imp"][0]["ext"]["adbandit"]
    called = {o["network"] for o in mark["bidders"]}
    missing = next((n for n in BOUNDS if n not in called), None)
    if missing is None:
        pytest.skip("the plan calls every network")
    offer = mark["bidders"][0]
    url = offer["lurl"].replace(f"n={offer['network']}", f"n={missing}")
    response = rtb.get(notice_path(url, AUCTION_LOSS="102"))
    assert response.status_code == 422 and "was not in the decision's plan" in response.json()["detail"]


def test_bad_bid_requests_for_plan_placements_are_still_4xx(rtb):
    body = bid_request("au")
    body["cur"] = ["EUR"]
    response = rtb.post("/v1/openrtb/floors", json=body)
    assert response.status_code == 422 and "add 'USD' to cur" in response.json()["detail"]
    body = bid_request("au", "au")
    body["imp"][1]["id"] = "1"
    assert rtb.post("/v1/openrtb/floors", json=body).status_code == 422


def _two_offer_decisions(client, tagid: str, n: int) -> list[list[dict]]:
    """The offers of ``n`` decisions of ``tagid`` with at least two networks to call."""
    imps = client.post("/v1/openrtb/floors", json=bid_request(*[tagid] * 40)).json()["imp"]
    offers = [imp["ext"]["adbandit"]["bidders" if tagid == "au" else "tiers"] for imp in imps]
    offers = [o for o in offers if len(o) >= 2]
    assert len(offers) >= n, [len(o) for o in offers]
    return offers[:n]


def _requests_and_revenue(client, tagid: str) -> tuple[int, float]:
    row = client.get(f"/v1/placements/{tagid}/experiment").json()["variants"]["champion"]
    return row["requests"], (row["revenue_per_request"] or 0.0) * row["requests"]


@pytest.mark.parametrize("tagid", ["au", "wf"])
def test_the_notices_of_one_decision_are_one_request_also_after_a_crash(make_client, tmp_path, tagid):
    """A loss of one network and a win of another of the same plan decision are one request of
    the report earning the winning price, whichever comes first; a notice after a crash
    (kill -9: the log is replayed) joins the request its decision's first notice started
    before it, and a clean restart keeps the same counts (docs/service.md, OpenRTB)."""
    from tests.serving.test_store import crash_copy

    first = make_client(state_dir=tmp_path / "live", history_every_s=3600.0)
    for name, body in (("au", AUCTION), ("wf", WATERFALL)):
        assert first.put(f"/v1/placements/{name}", json=body).status_code == 201
    first.app.state.store.snapshot()  # the next one is an hour away: a crash replays every notice
    one, two, three = _two_offer_decisions(first, tagid, 3)
    assert _requests_and_revenue(first, tagid) == (0, 0.0)

    def loss(client, offer):
        reply = client.get(notice_path(offer["lurl"], AUCTION_LOSS="102"))
        assert reply.json() == {"accepted": 1, "duplicates": 0}, reply.text

    def win(client, offer, price: float, kind: str = "nurl", accepted: int = 1):
        reply = client.get(notice_path(offer[kind], AUCTION_PRICE=f"{price:.4f}"))
        assert reply.json() == {"accepted": accepted, "duplicates": 1 - accepted}, reply.text

    p1, p2, p3 = (round(o[1]["floor_cpm"] + k, 4) for o, k in ((one, 1.25), (two, 0.75), (three, 2.5)))
    loss(first, one[0])
    win(first, one[1], p1)
    settle(first)
    requests, revenue = _requests_and_revenue(first, tagid)
    assert requests == 1 and revenue == pytest.approx(p1)
    win(first, three[1], p3)  # the win first, the loss after it: still one request
    loss(first, three[0])
    win(first, three[1], p3, "burl", accepted=0)  # a billing after the win: a duplicate
    loss(first, two[0])  # the decision's other notice comes after the crash
    settle(first)
    requests, revenue = _requests_and_revenue(first, tagid)
    assert requests == 3 and revenue == pytest.approx(p1 + p3)
    first.app.state.store.record_history()  # the console's history counts them alike
    point = first.get(f"/v1/placements/{tagid}/history").json()["points"][-1]
    assert point["requests"] == 3 and point["revenue_per_request"] == pytest.approx((p1 + p3) / 3)

    crash_copy(tmp_path / "live", tmp_path / "crashed")
    again = make_client(state_dir=tmp_path / "crashed")
    assert again.app.state.store.metrics()["events_replayed_total"] > 0  # the notices, from the log
    assert _requests_and_revenue(again, tagid) == (3, pytest.approx(p1 + p3))
    win(again, two[1], p2)
    settle(again)
    requests, revenue = _requests_and_revenue(again, tagid)
    assert requests == 3 and revenue == pytest.approx(p1 + p2 + p3)
    again.__exit__(None, None, None)
    reopened = make_client(state_dir=tmp_path / "crashed")
    assert _requests_and_revenue(reopened, tagid) == (3, pytest.approx(p1 + p2 + p3))
