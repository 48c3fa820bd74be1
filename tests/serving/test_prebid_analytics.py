"""Prebid analytics over HTTP: the script is served, a page's origin may post outcomes (CORS and
preflight), and events in the script's shape are accepted and learned (routes/prebid.py,
serving/static/adbandit-prebid.js). The browser end to end is tests/browser_prebid/."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "serving" / "static" / "adbandit-prebid.js"
BODY = {"networks": [{"id": "alpha", "bidder": "alpha"}, {"id": "beta", "bidder": "beta"}], "currency": "USD"}


def prebid_event(i: int, *, filled: bool, network: str = "alpha", floor: float = 1.5, cpm: float = 2.0) -> dict:
    """An event as adbandit-prebid.js sends it (one bidder's answer in one auction)."""
    kind = "bidResponse" if filled else "bidRejected"
    return {"event_id": f"pb:auction-{i}:top:{network}", "ts": round(time.time(), 3), "placement": "top",
            "network": network, "floor_cpm": floor, "filled": filled, "revenue_cpm": cpm if filled else 0,
            "context": {"prebid_event": kind, "prebid_model": "champion:ts_gmm.3",
                        **({"prebid_won": True} if filled and i % 2 else {})}}  # fmt: skip


@pytest.fixture
def page_service(make_client):
    client = make_client(prebid_cors_origins="https://news.example", prebid_cache_max_age_s=60)
    assert client.put("/v1/placements/top", json=BODY).status_code == 201
    return client


def test_the_script_is_served_as_javascript_from_the_package(page_service):
    response = page_service.get("/v1/prebid/adbandit-prebid.js", headers={"Origin": "https://news.example"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "max-age=60"
    assert response.content == SCRIPT.read_bytes()
    assert b"adbanditPrebid" in response.content and b"/v1/outcomes" in response.content
    assert page_service.get("/v1/prebid/adbandit-prebid.js?v=2").status_code == 422  # no query parameters


def test_the_script_is_open_when_a_decide_key_is_set(make_client):
    client = make_client(decide_api_key="decide-key-123", api_key="write-key-1234")
    assert client.get("/v1/prebid/adbandit-prebid.js").status_code == 200
    assert client.get("/v1/prebid/floors?placement=top").status_code == 401


def test_a_page_origin_may_post_outcomes_after_a_preflight(page_service):
    asked = {"Origin": "https://news.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type"}  # fmt: skip
    preflight = page_service.options("/v1/outcomes", headers=asked)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://news.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Content-Type" in preflight.headers["access-control-allow-headers"]
    refused = page_service.options("/v1/outcomes", headers={**asked, "Origin": "https://evil.example"})
    assert refused.status_code == 204 and "access-control-allow-origin" not in refused.headers

    events = [prebid_event(i, filled=i % 3 != 0) for i in range(30)]
    posted = page_service.post("/v1/outcomes", json=events, headers={"Origin": "https://news.example"})
    assert posted.status_code == 200 and posted.headers["access-control-allow-origin"] == "https://news.example"
    assert posted.json() == {"accepted": 30, "duplicates": 0, "rejected": []}
    again = page_service.post("/v1/outcomes", json=events[:5], headers={"Origin": "https://news.example"})
    assert again.json()["duplicates"] == 5  # a retried batch is learned once
    page_service.app.state.store.flush()
    assert page_service.get("/v1/placements/top/experiment").json()["variants"]["champion"]["requests"] == 30


def test_outcome_errors_carry_cors_too_so_the_script_can_read_them(make_client):
    client = make_client(api_key="write-key-1234", prebid_cors_origins="https://news.example")
    response = client.post("/v1/outcomes", json=[], headers={"Origin": "https://news.example"})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "https://news.example"
    other = client.get("/healthz", headers={"Origin": "https://news.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_bid_below_the_floor_posted_as_filled_is_refused_by_name(page_service):
    wrong = prebid_event(1, filled=True, floor=2.0, cpm=1.0)  # the script sends rejected bids as not filled
    reply = page_service.post("/v1/outcomes", json=[wrong]).json()
    assert reply["accepted"] == 0 and "floor" in reply["rejected"][0]["error"]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (syntax check of the script)")
def test_the_script_parses_and_exposes_attach_without_prebid():
    probe = ("global.window = global; require(process.argv[1]); "
             "const calls = []; const pbjs = {que: []};"
             "const t = window.adbanditPrebid.attach(pbjs, {url: 'http://svc/'});"
             "pbjs.onEvent = (name) => calls.push(name); pbjs.que.forEach(f => f());"
             "console.log(t.endpoint, calls.sort().join(','))")  # fmt: skip
    out = subprocess.run(["node", "-e", probe, str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    events = "auctionEnd,bidRejected,bidRequested,bidResponse,bidTimeout,bidWon,noBid"
    assert out.stdout.split() == ["http://svc/v1/outcomes", events]


TRACKER_PROBE = r"""
global.window = global;
const posts = [];
global.fetch = (url, init) => {
  const events = JSON.parse(init.body);
  posts.push({url, events, headers: init.headers});
  return Promise.resolve({ok: true, status: 200,
    json: () => Promise.resolve({accepted: events.length, duplicates: 0, rejected: []})});
};
require(process.argv[1]);
const handlers = {};
const pbjs = {onEvent: (name, fn) => { handlers[name] = fn; }};
const tracker = window.adbanditPrebid.attach(pbjs, {
  url: 'http://svc', apiKey: 'k', winWaitMs: 0, networks: {rubicon: 'rubicon_kr'},
  placements: (code) => (code === 'skip' ? null : 'p-' + code), context: () => ({country: 'KR'}),
});
// As Prebid 10/11's priceFloors sets them: a bid response's floorData has the floor and rule, a
// bid request's the group's modelVersion (here with the service's floors id after '#').
const MODEL = 'champion:v7#champion.' + 'A'.repeat(40);
const floorData = (floor, cpm) => ({floorValue: floor, cpmAfterAdjustments: cpm, floorRule: '*',
  floorRuleValue: floor});
const request = (bidder, code, floor) => ({bidder, adUnitCode: code, auctionId: 'a1', bidId: bidder + code,
  getFloor: () => ({floor, currency: 'USD'}), floorData: {modelVersion: MODEL, skipped: false}});
handlers.bidRequested({bidderCode: 'appnexus', auctionId: 'a1', bids: [request('appnexus', 'top', 1.5)]});
handlers.bidResponse({bidderCode: 'appnexus', adUnitCode: 'top', auctionId: 'a1', cpm: 2.5,
  floorData: floorData(1.5, 2.5)});
handlers.bidRejected({bidderCode: 'rubicon', adUnitCode: 'top', auctionId: 'a1', cpm: 0.9,
  rejectionReason: 'Bid does not meet price floor', floorData: floorData(1.2, 0.9)});
handlers.noBid(request('rubicon', 'top', 1.2));          // after its rejection: still one event
handlers.bidRejected({bidderCode: 'ix', adUnitCode: 'top', auctionId: 'a1', cpm: 3,
  rejectionReason: 'Invalid bid'});                       // not about the floor: no event
handlers.bidTimeout([request('ix', 'top', 0.8)]);
handlers.noBid(request('openx', 'top', 0.7));
handlers.noBid(request('openx', 'skip', 0.7));            // an ad unit left out
handlers.bidWon({bidderCode: 'appnexus', adUnitCode: 'top', auctionId: 'a1'});
handlers.auctionEnd({auctionId: 'a1'});
tracker.flush(false).then(() => {
  handlers.noBid(request('ix', 'top', 0.8));              // Prebid's noBid after a timeout: already sent
  return tracker.flush(true);
}).then(() => console.log(JSON.stringify({posts, counts: tracker.counts})));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (runs the script's logic)")
def test_the_script_turns_prebid_events_into_one_outcome_per_bidder_and_ad_unit():
    out = subprocess.run(["node", "-e", TRACKER_PROBE, str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    [post] = result["posts"]
    assert post["url"] == "http://svc/v1/outcomes" and post["headers"]["Authorization"] == "Bearer k"
    events = {e["network"]: e for e in post["events"]}
    assert sorted(events) == ["appnexus", "ix", "openx", "rubicon_kr"]
    won = events["appnexus"]
    assert (won["placement"], won["floor_cpm"], won["filled"], won["revenue_cpm"]) == ("p-top", 1.5, True, 2.5)
    assert won["event_id"] == "pb:a1:top:appnexus"
    # Every event of the auction carries its floors id, read from the bid requests' modelVersion.
    assert {e["decision_id"] for e in post["events"]} == {"champion." + "A" * 40}
    assert won["context"] == {"country": "KR", "prebid_event": "bidResponse", "prebid_model": "champion:v7",
                              "prebid_won": True}  # fmt: skip
    rejected = events["rubicon_kr"]
    assert (rejected["floor_cpm"], rejected["filled"], rejected["revenue_cpm"]) == (1.2, False, 0)
    assert rejected["context"]["prebid_event"] == "bidRejected"
    assert (events["ix"]["floor_cpm"], events["ix"]["filled"], events["ix"]["context"]["prebid_event"]) == (
        0.8, False, "bidTimeout")
    assert events["openx"]["context"]["prebid_event"] == "noBid" and events["openx"]["floor_cpm"] == 0.7
    counts = result["counts"]
    assert counts["posted"] == counts["accepted"] == 4 and counts["rejectedOther"] == 1 and counts["bidWon"] == 1
