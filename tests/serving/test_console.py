"""``/console`` in headless Chromium against a live service fed by the demo market.

One real ``adbandit serve --demo`` on loopback (history every second, a read and a write key),
a second placement and a champion/challenger experiment, both fed through the HTTP API with
the demo market's answers to the service's own decisions. The page must ask for the read key,
then draw exactly the points ``GET /v1/placements/{p}/history`` reports, follow the placement
and segment pickers, show the experiment with its always-valid p-value, its lift over time with
the CI band (from the history's experiment figures) and the data health, and, for a waterfall
placement fed with tier responses, its most probable plans as its allocation reports them.
Screenshots go to ``test-artifacts/`` (printed; kept after the run for a person to look at).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest

from serving.process import HOST, free_port, start_server, stop_server
from simulator.demo import DEMO_PLACEMENT, demo_events
from tests.browser import chromium_executable, chromium_page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
READ_KEY, WRITE_KEY = "console-read-key", "console-write-key"
WRITE = {"Authorization": f"Bearer {WRITE_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}
SECOND = "demo-b"
WATERFALL = "demo-wf"
ROUNDS, PER_ROUND = 6, 400
CHARTS = ("weights", "floors", "revenue", "fill")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The fed service's base URL (module scope: one server for the page's tests)."""
    if chromium_executable() is None:  # skip before starting and feeding a server for nothing
        pytest.skip("no chromium installed (make test installs Debian's chromium with apt-get as root)")
    state = tmp_path_factory.mktemp("console") / "state"
    port = free_port()
    env = {"ADBANDIT_API_KEY": WRITE_KEY, "ADBANDIT_READ_API_KEY": READ_KEY, "ADBANDIT_HISTORY_EVERY_S": "1"}
    stderr = state.parent / "server.log"
    process = start_server(state, port, "--demo", "--no-fsync", env=env, stderr_path=stderr)
    base = f"http://{HOST}:{port}"
    try:
        with httpx.Client(base_url=base, headers=WRITE, timeout=30) as api:
            body = api.get(f"/v1/placements/{DEMO_PLACEMENT}").json()
            body = {k: v for k, v in body.items() if k not in ("id", "placement")}
            assert api.put(f"/v1/placements/{SECOND}", json=body).status_code == 201, body
            waterfall = {**body, "mode": "waterfall", "max_tiers": 2}
            assert api.put(f"/v1/placements/{WATERFALL}", json=waterfall).status_code == 201, waterfall
            experiment = {"variants": [{"name": "champion", "traffic": 50}, {"name": "challenger", "traffic": 50,
                          "policy": "ts_gmm", "params": {"half_life_hours": 6}}]}  # fmt: skip
            assert api.put(f"/v1/placements/{DEMO_PLACEMENT}/experiment", json=experiment).status_code == 200
            feed(api, rounds=ROUNDS)
            # One duplicate and one rejected event, for the data health panel.
            first = demo_events(1, seed=99, start=10_000)
            assert api.post("/v1/outcomes", json=first).json()["accepted"] == 1
            bad = {**first[0], "event_id": "bad-1", "revenu_cpm": 1.0}
            result = api.post("/v1/outcomes", json=[first[0], bad]).json()
            assert result["duplicates"] == 1 and len(result["rejected"]) == 1
            feed_waterfall(api)
            time.sleep(2.5)  # learned, and a history point taken after it
        yield base
    finally:
        stop_server(process)
        log = stderr.read_text()
        assert "Traceback" not in log, log[-3000:]


def feed(api: httpx.Client, rounds: int) -> None:
    """``rounds`` of the demo market answering the service's decisions, on both placements; the
    second placement's prices triple from the middle on (its change detector fires: alarms to show)."""
    for r in range(rounds):
        for placement in (DEMO_PLACEMENT, SECOND):

            def decide(requests, placement=placement):
                body = {"placement": placement, "requests": [{"request_id": i, "context": c} for i, c in requests]}
                decisions = api.post("/v1/decide/batch", json=body).json()["decisions"]
                return [(d["network"], d["floor_cpm"], d["decision_id"]) for d in decisions]

            events = demo_events(PER_ROUND, seed=100 + r, ts=time.time(), decide=decide, start=r * PER_ROUND)
            for e in events:
                e["event_id"] = f"{placement}-{e['event_id']}"
                e["placement"] = placement
                if placement == SECOND and r >= rounds // 2 and e["filled"]:
                    e["revenue_cpm"] = round(e["revenue_cpm"] * 3, 4)
            result = api.post("/v1/outcomes", json=events).json()
            assert result["accepted"] == PER_ROUND and not result["rejected"], result
        time.sleep(1.1)  # a history point per round


def feed_waterfall(api: httpx.Client) -> None:
    """The waterfall placement's decisions answered: its first tier never fills, a second tier
    fills 0.5 CPM above its floor (learned per network from the responses)."""
    contexts = [e["context"] for e in demo_events(PER_ROUND, seed=5)]
    requests = [{"request_id": f"wf-{i}", "context": c} for i, c in enumerate(contexts)]
    body = {"placement": WATERFALL, "requests": requests}
    decisions = api.post("/v1/decide/batch", json=body).json()["decisions"]
    events = []
    for i, (d, context) in enumerate(zip(decisions, contexts, strict=True)):
        responses = [{"network": t["network"], "floor_cpm": t["floor_cpm"], "status": "no_bid"} for t in d["tiers"]]
        if len(responses) > 1:
            responses[1] |= {"status": "bid", "price_cpm": round(d["tiers"][1]["floor_cpm"] + 0.5, 4), "won": True}
        events.append({"event_id": f"wf-{i}", "decision_id": d["decision_id"], "ts": time.time(),
                       "placement": WATERFALL, "context": context, "responses": responses})  # fmt: skip
    result = api.post("/v1/outcomes", json=events).json()
    assert result["accepted"] == PER_ROUND and not result["rejected"], result


def page_data(page) -> dict:
    """What the page shows: per chart its placement, segment and (series, t, value) rows."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('figure[data-chart]')].map((f) => [
            f.dataset.chart,
            {placement: f.dataset.placement, segment: f.dataset.segment,
             circles: f.querySelectorAll('svg circle').length,
             rows: [...f.querySelectorAll('table.points tr[data-series]')].map(
                 (r) => [r.dataset.series, Number(r.dataset.t), Number(r.dataset.v)])}]))"""
    )


def api_rows(history: dict, until: float) -> dict[str, set]:
    """The rows each chart must draw, from the history endpoint's points up to time ``until``."""
    rows: dict[str, set] = {name: set() for name in CHARTS}
    for p in history["points"]:
        if p["t"] > until:
            continue
        for network, a in p["networks"].items():
            rows["weights"].add((network, p["t"], a["weight"]))
            rows["floors"].add((network, p["t"], a["floor_cpm"]))
        if p["revenue_per_request"] is not None:
            rows["revenue"].add(("revenue/request", p["t"], p["revenue_per_request"]))
            rows["fill"].add(("fill rate", p["t"], p["fill_rate"]))
    return rows


def assert_charts_show_the_api(page, base: str, placement: str, segment: str) -> dict:
    shown = page_data(page)
    # The newest point these charts drew (the lift chart comes from another fetch, maybe a newer one).
    until = max(t for name in CHARTS for _, t, _ in shown[name]["rows"])
    history = httpx.get(f"{base}/v1/placements/{placement}/history", params={"segment": segment}, headers=READ).json()
    expected = api_rows(history, until)
    assert sum(p["requests"] for p in history["points"]) > 0
    for name in CHARTS:
        chart = shown[name]
        assert (chart["placement"], chart["segment"]) == (placement, segment)
        got = {(s, t, v) for s, t, v in chart["rows"]}
        assert len(got) == len(chart["rows"]) and expected[name], name
        # Same points: equal series and times, values equal to float precision (the DOM holds decimals).
        assert {(s, t) for s, t, _ in got} == {(s, t) for s, t, _ in expected[name]}, name
        values = {(s, t): v for s, t, v in expected[name]}
        assert all(math.isclose(v, values[s, t], rel_tol=1e-12, abs_tol=1e-12) for s, t, v in got), name
        assert chart["circles"] == len(got)  # every point is drawn
    return shown


def assert_lift_shows_the_api(page, base: str, placement: str) -> list:
    """The lift chart's rows (variant, t, lift, CI low, CI high) are the experiment figures of the
    placement's history points, every one of them, with a band drawn around the line."""
    rows = page.evaluate(
        """() => [...document.querySelectorAll('figure[data-chart="lift"] table.points tr[data-series]')].map(
            (r) => [r.dataset.series, Number(r.dataset.t), Number(r.dataset.v), Number(r.dataset.lo),
                    Number(r.dataset.hi)])"""
    )
    until = max(t for _, t, *_ in rows)
    history = httpx.get(f"{base}/v1/placements/{placement}/history", headers=READ).json()
    expected = [
        (name, p["t"], x["lift"], x["ci_low"], x["ci_high"])
        for p in history["points"]
        if p["t"] <= until
        for name, x in (p.get("experiment") or {}).items()
        if x["lift"] is not None
    ]
    assert len(expected) >= 3 and {name for name, *_ in expected} == {"challenger"}, expected
    assert len(rows) == len(expected)
    for got, want in zip(sorted(rows), sorted(expected), strict=True):
        assert got[:2] == list(want[:2])
        assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(got[2:], want[2:], strict=True))
        assert got[3] <= got[2] <= got[4]
    assert page.locator('figure[data-chart="lift"] svg polygon.band').count() >= 1
    assert page.locator('figure[data-chart="lift"] svg line.zero').count() == 1
    return sorted(rows)


def wait_for(page, placement: str, segment: str) -> None:
    page.wait_for_function(
        """([p, s]) => [...document.querySelectorAll('figure[data-chart]')].every(
               (f) => f.dataset.placement === p && f.dataset.segment === s)""",
        arg=[placement, segment],
        timeout=15_000,
    )


def announce(capsys, text: str) -> None:
    """``text`` on the terminal now, also while pytest captures the test's output."""
    with capsys.disabled():
        print(text)


def test_console_draws_what_the_api_reports_and_follows_the_pickers(live, capsys):
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium_page(viewport=(1280, 1000)) as page:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(live) else outside.append(r.url))

        page.goto(f"{live}/console")
        # The read key is set: the page asks for it, keeps it in sessionStorage, sends it as a bearer.
        page.wait_for_selector("#keyform:not([hidden])", timeout=15_000)
        assert "read key" in page.inner_text("#key-reason")
        page.fill("#key", "not-the-key")
        page.click("#keyform button[type=submit]")
        page.wait_for_function("() => document.querySelector('#key-reason').textContent.includes('refused')")
        assert page.is_hidden("#main")
        page.fill("#key", READ_KEY)
        page.click("#keyform button[type=submit]")
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        assert page.evaluate("sessionStorage.getItem('adbandit.readKey')") == READ_KEY

        wait_for(page, DEMO_PLACEMENT, "*")
        whole = assert_charts_show_the_api(page, live, DEMO_PLACEMENT, "*")
        assert {s for s, _, _ in whole["weights"]["rows"]} == {"admob", "adfit", "house"}

        # The experiment: the challenger's lift, CI and always-valid p-value as the report gives them.
        report = httpx.get(f"{live}/v1/placements/{DEMO_PLACEMENT}/experiment", headers=READ).json()
        challenger = report["variants"]["challenger"]
        assert challenger["p_value_always_valid"] is not None
        cell = page.inner_text("#experiment tr[data-variant=challenger] td[data-field=p_value_always_valid]")
        p = challenger["p_value_always_valid"]
        assert cell == ("<0.0001" if p < 1e-4 else f"{p:.4f}")
        # The experiment over time: the challenger's lift with its CI band, point for point as the
        # placement's history keeps the report (and the last point is the report's figures then).
        lift = assert_lift_shows_the_api(page, live, DEMO_PLACEMENT)
        # Data health: the duplicate and the rejected event posted by the fixture.
        health = {
            label: page.inner_text(f'[data-health="{label}"] dd')
            for label in ("rejected", "duplicates", "log lag (events)", "last event time")
        }
        assert health["rejected"] == "1" and health["duplicates"] == "1", health
        assert health["log lag (events)"] == "0" and "ago" in health["last event time"], health

        shot = ARTIFACTS / "console-demo.png"
        page.screenshot(path=str(shot), full_page=True)
        announce(capsys, f"\nconsole screenshot: {shot}")

        # Another segment: the charts follow and show that segment's own points.
        options = page.eval_on_selector_all("#segment option", "os => os.map((o) => o.value)")
        segment = next(s for s in options if s != "*")
        page.select_option("#segment", segment)
        wait_for(page, DEMO_PLACEMENT, segment)
        one = assert_charts_show_the_api(page, live, DEMO_PLACEMENT, segment)
        assert one["revenue"]["rows"] != whole["revenue"]["rows"]
        assert f"segment={segment.replace('|', '%7C')}" in page.url  # a reload keeps the choice
        again = assert_lift_shows_the_api(page, live, DEMO_PLACEMENT)  # the placement's experiment, newer points
        assert [row for row in again if row[1] <= lift[-1][1]] == lift

        # Another placement: back to its whole traffic, its own points.
        page.select_option("#placement", SECOND)
        wait_for(page, SECOND, "*")
        second = assert_charts_show_the_api(page, live, SECOND, "*")
        assert second["weights"]["rows"] != whole["weights"]["rows"]
        # Its change alarms, newest first, as the history reports them.
        alarms = httpx.get(f"{live}/v1/placements/{SECOND}/history", headers=READ).json()["alarms"]
        assert alarms, "tripled prices raised no change alarm"
        shown = page.eval_on_selector_all(
            "#alarms tr[data-network]",
            "rs => rs.map((r) => [Number(r.dataset.ts), r.dataset.segment, r.dataset.network])",
        )
        assert shown == [[a["ts"], a["segment"], a["network"]] for a in reversed(alarms)]
        assert all(a["relative"] > 0.5 for a in alarms)
        shot = ARTIFACTS / "console-demo-b.png"
        page.screenshot(path=str(shot), full_page=True)
        announce(capsys, f"console screenshot: {shot}")

        assert page.is_hidden("#plans-panel")  # single-network placements have no plans

        # A waterfall placement: its most probable plans, as its allocation reports them.
        page.select_option("#placement", WATERFALL)
        wait_for(page, WATERFALL, "*")
        page.wait_for_function(f"() => document.querySelector('#plans-panel').dataset.placement === '{WATERFALL}'")
        allocation = httpx.get(f"{live}/v1/placements/{WATERFALL}/allocation", headers=READ).json()
        shown = page.eval_on_selector_all(
            "#plans tr[data-probability]",
            """rs => rs.map((r) => [Number(r.dataset.probability), [...r.querySelectorAll('span[data-network]')].map(
                 (o) => [o.dataset.network, Number(o.dataset.floor)])])""",
        )
        plans = [[p["probability"], [[o["network"], o["floor_cpm"]] for o in p["offers"]]] for p in allocation["plans"]]
        assert shown == plans
        assert len(shown) >= 2 and all(len(offers) == 2 for _, offers in shown)  # max_tiers 2, several plans
        assert "calling order" in page.inner_text("#plans-title") and "→" in page.inner_text("#plans tbody")
        shot = ARTIFACTS / "console-waterfall.png"
        page.screenshot(path=str(shot), full_page=True)
        announce(capsys, f"console screenshot: {shot}")

        assert not errors, errors
        assert not outside, f"the page fetched from elsewhere: {outside}"
