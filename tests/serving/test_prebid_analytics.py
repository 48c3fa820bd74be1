"""Prebid analytics over HTTP: the script is served, a page's origin may post outcomes (CORS and
preflight), and events in the script's shape are accepted and learned (routes/prebid.py,
serving/static/adbandit-prebid.js). The browser end to end is tests/browser_prebid/."""

from __future__ import annotations

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
    events = "auctionEnd,bidRejected,bidResponse,bidTimeout,bidWon,noBid"
    assert out.stdout.split() == ["http://svc/v1/outcomes", events]
