"""Real Prebid.js in headless Chromium learns its floors from the live service (issue 11 §2).

The page (``page.html``) runs Prebid.js built from npm with the Price Floors Module
(``make prebid-bundle``: ``npm ci`` + esbuild, no CDN) and three seeded test bidders
(``market.js``: each a network with its own auction, answering its clearing price, a bid
below the floor, no bid, or a timeout). Its floors come from ``GET /v1/prebid/floors`` of
a live ``adbandit serve`` on loopback (per-bidder rules), Prebid enforces them, and
``adbandit-prebid.js`` (loaded from the service) posts every bidder's answer to
``POST /v1/outcomes``. Over a few hundred auctions the floors of the ad unit ``top`` must
move towards the market's best floors (computed here, the oracle), while the control ad
unit ``ctl`` — same bidders, same floors, no analytics — must not move at all.

Skips (with the reason) without Chromium or without the bundle (no npm).
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.process import HOST, free_port, start_server, stop_server
from tests.browser import chromium_executable, chromium_page

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "dist" / "prebid.js"
ROUNDS = 60  # each round fetches the floors again: the service's refits are its exploration
AB_ROUNDS = 12
AUCTIONS = 5  # per round: 300 auctions of two ad units
FLOOR_MIN, FLOOR_MAX = 0.1, 20.0
BIDDERS = ("alpha", "beta", "gamma")
PLACEMENT = {
    "networks": [{"id": b, "floor_min_cpm": FLOOR_MIN, "floor_max_cpm": FLOOR_MAX, "bidder": b} for b in BIDDERS],
    "currency": "USD",
}

WRITE_KEY = "browser-test-write-key"
AUTH = {"Authorization": f"Bearer {WRITE_KEY}"}
EXPERIMENT = {"variants": [{"name": "champion", "traffic": 50}, {"name": "challenger", "traffic": 50}]}

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- the oracle
def revenue_curve(market: dict, floors: np.ndarray, draws: int = 200_000, seed: int = 0) -> np.ndarray:
    """Expected revenue per request (CPM) of one test bidder at each floor [F]:
    (1 - timeout - nobid) · E[max(V2, f); V1 >= f] over its buyers' lognormal values."""
    rng = np.random.default_rng(seed)
    values = market["median"] * np.exp(market["sigma"] * rng.standard_normal((draws, market["buyers"])))
    values.sort(axis=1)
    top = values[:, -1]
    second = values[:, -2] if market["buyers"] > 1 else np.zeros(draws)
    answered = 1.0 - market["timeout"] - market["nobid"]
    return np.array([answered * np.mean(np.where(top >= f, np.maximum(second, f), 0.0)) for f in floors])


def best_floor(market: dict) -> tuple[float, float]:
    """The market's best floor of one bidder within the placement's bounds, and its revenue."""
    grid = np.exp(np.linspace(math.log(FLOOR_MIN), math.log(FLOOR_MAX), 600))
    curve = revenue_curve(market, grid)
    i = int(np.argmax(curve))
    return float(grid[i]), float(curve[i])


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundle() -> Path:
    if chromium_executable() is None:
        pytest.skip("no chromium installed (make test installs Debian's chromium with apt-get as root)")
    if not BUNDLE.exists():
        pytest.skip("no Prebid.js bundle: run `make prebid-bundle` (needs npm; make test runs it)")
    return BUNDLE


@pytest.fixture
def page_server() -> Iterator[str]:
    """This directory (page.html, market.js, dist/prebid.js) over HTTP on loopback: the publisher."""
    handler = functools.partial(_QuietHandler, directory=str(HERE))
    server = http.server.ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A port that accepts connections and never answers: where a bidder's request times out."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(1024)
        yield f"http://{HOST}:{sock.getsockname()[1]}"


@contextmanager
def serve(state: Path, page_server: str, experiment: dict | None = None, **env: str) -> Iterator[str]:
    """A live service with a write key (the page never sees it: it posts with the floors ids of
    its floors document) and the placements top and ctl (running ``experiment`` when given)."""
    port = free_port()
    env = {"ADBANDIT_PREBID_CORS_ORIGINS": page_server, "ADBANDIT_PREBID_CACHE_MAX_AGE_S": "0",
           "ADBANDIT_FSYNC": "false", "ADBANDIT_API_KEY": WRITE_KEY, **env}  # fmt: skip
    process = start_server(state / "state", port, env=env, stderr_path=state / "server.log")
    url = f"http://{HOST}:{port}"
    try:
        for placement in ("top", "ctl"):
            assert httpx.put(f"{url}/v1/placements/{placement}", json=PLACEMENT, headers=AUTH).status_code == 201
            if experiment is not None:
                put = httpx.put(f"{url}/v1/placements/{placement}/experiment", json=experiment, headers=AUTH)
                assert put.status_code == 200, put.text
        yield url
    finally:
        stop_server(process)


@pytest.fixture
def service(tmp_path, page_server) -> Iterator[str]:
    with serve(tmp_path, page_server) as url:
        yield url


@pytest.fixture
def ab_service(tmp_path, page_server) -> Iterator[str]:
    """Champion and challenger on both ad units (Prebid draws one group per page: the split must
    match), the challenger publishing its own floors once it has learned from 30 events."""
    with serve(tmp_path, page_server, EXPERIMENT, ADBANDIT_PREBID_MIN_EVENTS="30") as url:
        yield url


def run_page(page_server: str, blackhole: str, service: str, rounds: int) -> tuple[dict, dict]:
    """The page's markets and the result of ``rounds`` rounds of ``AUCTIONS`` auctions."""
    with chromium_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{page_server}/page.html?service={service}&blackhole={blackhole}&seed=7")
        page.wait_for_function("window.pbjs && window.pbjs.libLoaded === true && window.adbanditPrebid")
        markets = page.evaluate("testMarket.MARKET")
        result = page.evaluate("([r, a]) => runRounds(r, a)", [rounds, AUCTIONS])
    assert not errors, errors
    return markets, result


# ----------------------------------------------------------------------------- the test
def test_prebid_in_chromium_moves_the_floors_towards_the_markets_best(bundle, page_server, blackhole, service):
    markets, result = run_page(page_server, blackhole, service, ROUNDS)
    seen, counts, history = result["seen"], result["counts"], result["history"]
    start, final = history[0], history[-1]

    # Prebid enforced the floors: bids below them were rejected (and only those).
    assert seen["bidRejected"] >= 50 and all(seen["rejectedBelowFloor"])
    assert seen["bidTimeout"] > 0 and seen["noBid"] > 0 and seen["bidResponse"] > 0
    assert seen["bidWon"] > 0 and counts["bidWon"] == seen["bidWon"]
    # Every answer of ad unit top was posted once and accepted; ctl's were left out.
    responses = ROUNDS * AUCTIONS * len(BIDDERS)
    ids = result["posted"]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert counts["posted"] == counts["accepted"] == responses, (counts, seen, result["market"])
    assert counts["refused"] == counts["failedPosts"] == counts["duplicates"] == 0, counts
    # ... without the write key: each event carried its auction's floors id (the champion's group).
    assert result["postedBy"] == {"champion": responses}, result["postedBy"]
    report = {p: httpx.get(f"{service}/v1/placements/{p}/experiment").json()["variants"]["champion"]
              for p in ("top", "ctl")}  # fmt: skip
    assert report["top"]["requests"] == responses and report["ctl"]["requests"] == 0

    # The control ad unit never moved: without the analytics posts nothing is learned.
    for bidder in BIDDERS:
        assert final[f"ctl|{bidder}"] == start[f"ctl|{bidder}"], (bidder, history)

    # The analytics moved top's floors towards the market's best floor of each bidder.
    figures = {}
    for bidder in BIDDERS:
        best, best_revenue = best_floor(markets[bidder])
        before, after = start[f"top|{bidder}"], final[f"top|{bidder}"]
        at = revenue_curve(markets[bidder], np.array([before, after]))
        figures[bidder] = {"start": before, "final": after, "best": round(best, 3),
                           "capture_start": round(at[0] / best_revenue, 3),
                           "capture_final": round(at[1] / best_revenue, 3)}  # fmt: skip
    print("\nprebid browser test:", json.dumps({"auctions": ROUNDS * AUCTIONS, "rejections": seen["bidRejected"],
          "timeouts": seen["bidTimeout"], "no_bids": seen["noBid"], "wins": seen["bidWon"],
          "seconds": result["seconds"], "floors": figures,
          "trajectory": {b: [h[f"top|{b}"] for h in history] for b in BIDDERS}}))  # fmt: skip
    # Tolerances from repeated runs (the service refits on its own clock, so runs differ): the
    # converged floors land within about ±45% (log) of the best, earning 75-100% of its revenue.
    for bidder, f in figures.items():
        distance, before = abs(math.log(f["final"] / f["best"])), abs(math.log(f["start"] / f["best"]))
        assert distance <= 0.8 * before and distance < math.log(2.0), (bidder, f)  # at least 1/5 of the way
        assert f["capture_final"] > f["capture_start"] + 0.1, (bidder, f)
    assert np.mean([f["capture_final"] for f in figures.values()]) >= 0.85, figures


def test_a_challenger_publishes_floors_to_part_of_the_auctions_and_learns_from_them(
    bundle, page_server, blackhole, ab_service
):
    def challenger_version() -> str:  # in the one-placement document, which names a fallback
        doc = httpx.get(f"{ab_service}/v1/prebid/floors?placement=top").json()
        return next(g["modelVersion"] for g in doc["modelGroups"] if g["modelVersion"].startswith("challenger:"))

    # No data at first: the challenger publishes the champion's floors (under its own id).
    assert challenger_version().startswith("challenger:fallback=champion:")
    _, result = run_page(page_server, blackhole, ab_service, AB_ROUNDS)
    counts, versions, by_variant = result["counts"], result["versions"], result["postedBy"]
    responses = AB_ROUNDS * AUCTIONS * len(BIDDERS)
    # Every answer was posted with its auction's floors id, without the write key, and accepted.
    assert counts["posted"] == counts["accepted"] == responses, counts
    assert counts["refused"] == counts["failedPosts"] == 0, counts
    assert "none" not in by_variant and by_variant["champion"] > 0 and by_variant["challenger"] > 0, by_variant
    # Prebid drew the challenger's group in part of the auctions; each event was learned by the
    # variant whose floors its auction used.
    report = httpx.get(f"{ab_service}/v1/placements/top/experiment").json()["variants"]
    assert {v: report[v]["requests"] for v in by_variant} == by_variant
    assert httpx.get(f"{ab_service}/v1/placements/ctl/experiment").json()["variants"]["challenger"]["requests"] == 0
    # From its auctions' events it learned enough to publish its own floors, which kept changing.
    assert all([v.split(":")[0] for v in round_] == ["champion", "challenger"] for round_ in versions)
    assert not challenger_version().startswith("challenger:fallback"), challenger_version()
    assert len({v[1] for v in versions}) > 2, versions
    print("\nprebid browser A/B test:", json.dumps({"auctions": AB_ROUNDS * AUCTIONS, "events": by_variant,
          "challenger_models": len({v[1] for v in versions}), "seconds": result["seconds"]}))  # fmt: skip
