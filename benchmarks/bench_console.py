"""Console page load in headless Chromium: 20 placements × 50 segments with history.

A real ``adbandit serve`` on loopback (no demo placement) gets ``--placements`` placements of
three networks (the demo's), every other one segmented by ``country`` (50 values) and the
others by ``country`` × ``os`` (10 × 5), and ``--rounds`` rounds of synthetic outcome events
spread evenly over every segment, one history point per round (``ADBANDIT_HISTORY_EVERY_S=1``,
``ADBANDIT_HISTORY_MAX_SEGMENTS`` raised to the segment count so every segment has a series).
The service is stopped, ``--history-minutes`` (default 60, the page's default range) of older
points at 30 s are written before each series' first one in its history file (copies of that
point with jittered counts and floors: what a service that ran for an hour would hold), and
the service is restarted with the default 30 s history interval, so the page's own
refresh timer (every ``every_s``) does not run into the measurements, and ``/console`` is
opened in headless system Chromium (Playwright), each load in a fresh browser context:

* **first chart drawn**: milliseconds from navigation start until all four charts hold data
  points (SVG circles) of the first placement, polled every animation frame in the page;
* **navigation timing**: ``domContentLoadedEventEnd`` and ``loadEventEnd``;
* **switch placement / switch segment**: from the picker's ``change`` event until every chart
  shows the new placement / segment with its points;
* **JSON fetched**: bytes of the page's ``fetch`` answers (Resource Timing, decoded body size)
  for the first load, and per switch.

The placements' champion runs ``--policy`` (default ``epsilon_greedy``: the page reads the
same history and allocation shapes whatever the policy; ``ts_gmm``'s refits of the 9,000
(segment, network) cells would only make the feeding slow).

``python benchmarks/bench_console.py [--quick] [--json]``; browser and server share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from serving.process import HOST, free_port, start_server, stop_server

NETWORKS = [
    {"id": "admob", "floor_min_cpm": 0.1, "floor_max_cpm": 20.0, "auction": "second"},
    {"id": "adfit", "floor_min_cpm": 0.1, "floor_max_cpm": 20.0, "auction": "second"},
    {"id": "house", "floor_min_cpm": 0.0, "floor_max_cpm": 2.0, "min_share": 0.05, "auction": "first"},
]
OS_VALUES = ("ios", "android", "web", "tv", "other")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
# True once every chart shows placement p (and segment s, when given) with at least one drawn point;
# records the first time it was so in window.__drawnAt (ms since navigation start).
DRAWN = """([p, s]) => {
    const figs = [...document.querySelectorAll('figure[data-chart]')];
    const ok = figs.length > 0 && figs.every((f) => f.dataset.placement === p
        && (s === null || f.dataset.segment === s) && f.querySelectorAll('svg circle').length > 0);
    if (ok && window.__drawnAt === undefined) window.__drawnAt = performance.now();
    return ok;
}"""
# Fires a picker's change event, as a person choosing an option does, and starts the clock.
SWITCH = """([id, value]) => {
    window.__drawnAt = undefined;
    performance.clearResourceTimings();
    const select = document.getElementById(id);
    if (![...select.options].some((o) => o.value === value)) select.append(new Option(value, value));
    window.__switchAt = performance.now();
    select.value = value;
    select.dispatchEvent(new Event('change'));
}"""
FETCHED = """() => performance.getEntriesByType('resource').filter((r) => r.initiatorType === 'fetch')
    .map((r) => [r.name, r.decodedBodySize])"""


def chromium() -> str | None:
    """The system Chromium (``ADBANDIT_CHROMIUM`` overrides); Playwright never downloads one."""
    return os.environ.get("ADBANDIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def placement_body(i: int, segments: int) -> tuple[dict, list[dict]]:
    """Placement ``i``'s PUT body and its ``segments`` contexts (one or two segment fields)."""
    if i % 2 == 0:
        contexts = [{"country": f"C{c:02d}"} for c in range(segments)]
        return {"networks": NETWORKS, "segment_by": ["country"]}, contexts
    countries = -(-segments // len(OS_VALUES))
    contexts = [{"country": f"C{c:02d}", "os": o} for c in range(countries) for o in OS_VALUES][:segments]
    return {"networks": NETWORKS, "segment_by": ["country", "os"]}, contexts


def outcome_events(
    placement: str, contexts: list[dict], per_segment: int, rng: np.random.Generator, tag: str
) -> list[dict]:
    """``per_segment`` synthetic outcome events for every context: a random network and floor,
    filled with probability exp(-floor / 3), paid the floor plus an exponential margin."""
    n = per_segment * len(contexts)
    net = rng.integers(len(NETWORKS), size=n)
    floor = np.round(rng.uniform(0.1, 4.0, size=n), 2)
    filled = rng.random(n) < np.exp(-floor / 3.0)
    price = np.round(floor + rng.exponential(0.8, size=n), 4)
    now = time.time()
    return [
        {"event_id": f"{placement}-{tag}-{k}", "ts": now - 0.001 * (n - k), "placement": placement,
         "network": NETWORKS[net[k]]["id"], "floor_cpm": float(floor[k]), "filled": bool(filled[k]),
         "revenue_cpm": float(price[k]) if filled[k] else 0.0, "context": contexts[k % len(contexts)]}
        for k in range(n)
    ]  # fmt: skip


def feed(base: str, placements: int, segments: int, rounds: int, per_segment: int, policy: str) -> dict[str, list]:
    """Create the placements and feed ``rounds`` rounds of events (a history point after each);
    returns each placement's contexts."""
    rng = np.random.default_rng(12)
    contexts: dict[str, list] = {}
    with httpx.Client(base_url=base, timeout=120) as api:
        for i in range(placements):
            pid = f"unit-{i:02d}"
            body, contexts[pid] = placement_body(i, segments)
            assert api.put(f"/v1/placements/{pid}", json=body).status_code == 201
            variant = {"variants": [{"name": "champion", "traffic": 100, "policy": policy}]}
            response = api.put(f"/v1/placements/{pid}/experiment", json=variant)
            assert response.status_code == 200, response.text
        for r in range(rounds):
            started = time.monotonic()
            for pid, ctx in contexts.items():
                events = outcome_events(pid, ctx, per_segment, rng, tag=str(r))
                for k in range(0, len(events), 5000):
                    result = api.post("/v1/outcomes", json=events[k : k + 5000]).json()
                    assert not result["rejected"], result["rejected"][:3]
            time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))  # at least one history tick per round
        # Learned and recorded: every placement's last segment has a series with requests in it.
        deadline = time.monotonic() + 120
        for pid, ctx in contexts.items():
            segment = "|".join(ctx[-1].values())
            while True:
                history = api.get(f"/v1/placements/{pid}/history", params={"segment": segment}).json()
                if len(history["segments"]) >= segments + 1 and sum(p["requests"] for p in history["points"]) > 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{pid}: no history for {segment!r} after 120 s: {history['segments'][:5]}…")
                time.sleep(0.5)
    return contexts


def prefill_history(state: Path, minutes: float, every_s: float = 30.0) -> int:
    """Write ``minutes`` of older points (every ``every_s``) before each series' first point in
    the stopped service's history files, so the page's default range (1 hour) is full, as on a
    service that has run for a while. Each copies its series' first point with jittered counts
    and floors. Returns the points written per series."""
    rng = np.random.default_rng(5)
    n = int(minutes * 60 / every_s)
    for path in sorted((state / "history").glob("*.ndjson")):
        lines = [json.loads(raw) for raw in path.read_bytes().splitlines() if raw.strip()]
        first: dict[str, dict] = {}
        for line in lines:
            if "alarm" not in line:
                first.setdefault(line["s"], line)
        older = []
        for point in first.values():
            for k in range(n, 0, -1):
                t = point["t"] - k * every_s
                req = max(1, round(point["req"] * rng.uniform(0.7, 1.3)))
                fill = min(req, round(req * point["fill"] / max(point["req"], 1) * rng.uniform(0.9, 1.1)))
                rev = round(point["rev"] / max(point["fill"], 1) * fill * rng.uniform(0.9, 1.1), 4)
                nets = {name: [w, None if f is None else round(f * rng.uniform(0.9, 1.1), 4)]
                        for name, (w, f) in point["n"].items()}  # fmt: skip
                older.append({**point, "t": t, "req": req, "fill": fill, "rev": rev, "last": t - 1.0, "n": nets})
        older.sort(key=lambda line: line["t"])
        path.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in [*older, *lines]))
    return n


def measure_page(base: str, contexts: dict[str, list], loads: int, switches: int) -> dict:
    """Open ``/console`` ``loads`` times (fresh context each) and switch pickers ``switches`` times."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    ids = sorted(contexts)
    series_points = 0
    first, drawn, dcl, load, json_bytes, fetches, errors = ids[0], [], [], [], [], [], []
    place_ms, place_bytes, seg_ms, seg_bytes, points = [], [], [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            for n in range(loads):
                context = browser.new_context(viewport={"width": 1280, "height": 1000})
                page = context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(f"{base}/console", wait_until="commit")
                page.wait_for_function(DRAWN, arg=[first, "*"], polling="raf", timeout=60_000)
                page.wait_for_load_state("load")
                drawn.append(page.evaluate("window.__drawnAt"))
                nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
                dcl.append(nav["domContentLoadedEventEnd"])
                load.append(nav["loadEventEnd"])
                fetched = page.evaluate(FETCHED)
                json_bytes.append(sum(size for _, size in fetched))
                fetches.append(len(fetched))
                if n == 0:
                    points.append(page.evaluate("document.querySelectorAll('figure[data-chart] svg circle').length"))
                    series_points = page.evaluate(
                        "document.querySelectorAll('figure[data-chart=revenue] table.points tr[data-series]').length"
                    )
                if n < loads - 1:
                    context.close()
            # Switches on the last page: placements in turn, and a segment of each.
            for k in range(switches):
                pid = ids[(k + 1) % len(ids)]
                page.evaluate(SWITCH, ["placement", pid])
                page.wait_for_function(DRAWN, arg=[pid, "*"], polling="raf", timeout=60_000)
                place_ms.append(page.evaluate("window.__drawnAt - window.__switchAt"))
                place_bytes.append(sum(size for _, size in page.evaluate(FETCHED)))
                ctx = contexts[pid][(7 * k + 3) % len(contexts[pid])]
                segment = "|".join(ctx.values())
                page.evaluate(SWITCH, ["segment", segment])
                page.wait_for_function(DRAWN, arg=[pid, segment], polling="raf", timeout=60_000)
                seg_ms.append(page.evaluate("window.__drawnAt - window.__switchAt"))
                seg_bytes.append(sum(size for _, size in page.evaluate(FETCHED)))
            segment_options = page.eval_on_selector_all("#segment option", "os => os.length")
        finally:
            browser.close()
    med = lambda xs: round(statistics.median(xs), 1)  # noqa: E731
    return {
        "loads": loads, "switches": switches,
        "first_chart_ms": med(drawn), "first_chart_ms_range": [round(min(drawn), 1), round(max(drawn), 1)],
        "dom_content_loaded_ms": med(dcl), "load_ms": med(load),
        "json_bytes_first_load": int(statistics.median(json_bytes)),
        "fetches_first_load": int(statistics.median(fetches)),
        "points_drawn_first_load": points[0], "points_per_series": series_points,
        "switch_placement_ms": med(place_ms), "switch_placement_ms_max": round(max(place_ms), 1),
        "json_bytes_switch_placement": int(statistics.median(place_bytes)),
        "switch_segment_ms": med(seg_ms), "switch_segment_ms_max": round(max(seg_ms), 1),
        "json_bytes_switch_segment": int(statistics.median(seg_bytes)),
        "segment_options": segment_options, "page_errors": errors,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 placements × 10 segments, fewer loads (smoke run)")
    parser.add_argument("--placements", type=int, default=None, help="placements (default 20; --quick 4)")
    parser.add_argument("--segments", type=int, default=None, help="segments per placement (default 50; --quick 10)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of events = history points (default 20)")
    parser.add_argument("--history-minutes", type=float, default=60.0,
                        help="older history written per series before the page loads (default 60: the page's "
                        "default range; 0: only the live points)")  # fmt: skip
    parser.add_argument("--policy", default="epsilon_greedy", help="the placements' champion policy")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    args = parser.parse_args(argv)
    if chromium() is None:
        print("bench_console: skipped, no chromium on PATH (make browser installs Debian's as root)")
        return 0
    placements = args.placements or (4 if args.quick else 20)
    segments = args.segments or (10 if args.quick else 50)
    rounds = args.rounds or (5 if args.quick else 20)
    loads, switches = (2, 3) if args.quick else (7, 10)
    env = {"ADBANDIT_HISTORY_MAX_SEGMENTS": str(segments)}
    port = free_port()
    base = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="adbandit-bench-") as tmp:
        state, log = Path(tmp) / "state", Path(tmp) / "server.log"
        server = start_server(state, port, "--no-fsync", env={**env, "ADBANDIT_HISTORY_EVERY_S": "1"}, stderr_path=log)
        try:
            start = time.monotonic()
            contexts = feed(base, placements, segments, rounds, per_segment=20, policy=args.policy)
            fed_s = time.monotonic() - start
        finally:
            stop_server(server)
        prefilled = prefill_history(state, args.history_minutes) if args.history_minutes > 0 else 0
        server = start_server(state, port, "--no-fsync", env=env, stderr_path=log)  # history every 30 s
        try:
            page = measure_page(base, contexts, loads, switches)
        finally:
            stop_server(server)
    print(f"adbandit console page-load benchmark ({os.cpu_count()} CPUs shared by browser and server)")
    print(f"  {placements} placements x {segments} segments, {page['points_per_series']} history points per series "
          f"shown ({prefilled} written before the live ones; {rounds} rounds fed in {fed_s:.0f} s, {args.policy}); "
          f"medians of {loads} cold loads and {switches} switches")  # fmt: skip
    print(f"  first chart drawn     {page['first_chart_ms']:>7.0f} ms after navigation start "
          f"(range {page['first_chart_ms_range'][0]:.0f}-{page['first_chart_ms_range'][1]:.0f}; "
          f"{page['points_drawn_first_load']} points)")  # fmt: skip
    print(f"  DOMContentLoaded      {page['dom_content_loaded_ms']:>7.0f} ms   load {page['load_ms']:.0f} ms")
    print(f"  switch placement      {page['switch_placement_ms']:>7.0f} ms (max {page['switch_placement_ms_max']:.0f})"
          f"   JSON {page['json_bytes_switch_placement'] / 1024:,.1f} KiB")  # fmt: skip
    print(f"  switch segment        {page['switch_segment_ms']:>7.0f} ms (max {page['switch_segment_ms_max']:.0f})"
          f"   JSON {page['json_bytes_switch_segment'] / 1024:,.1f} KiB")  # fmt: skip
    print(f"  JSON fetched on load  {page['json_bytes_first_load'] / 1024:>7,.1f} KiB in {page['fetches_first_load']} "
          f"requests; segment picker lists {page['segment_options']} options")  # fmt: skip
    if page["page_errors"]:
        print(f"  page errors: {page['page_errors']}")
    if args.json:
        print(json.dumps({"placements": placements, "segments": segments, "rounds": rounds,
                          "prefilled_points": prefilled, **page}))  # fmt: skip
    return 1 if page["page_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
