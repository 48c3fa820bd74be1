"""OpenRTB floors over HTTP, and the build of a page-level Prebid floors document.

* ``POST /v1/openrtb/floors`` against the real server (``adbandit serve --demo``, one uvicorn
  worker) over loopback, driven from this process by :mod:`benchmarks.loadgen`: BidRequests
  of one app imp (``tagid`` = the demo placement; country and OS vary over the demo's four
  segments), requests/s and p50/p99 latency, plus the server's own CPU time per request.
* :func:`serving.prebid.page_floors` for 100 ad units × 50 segment rules each (synthetic
  allocations of 3 networks, per-bidder rules off and on): milliseconds per document, and its
  size as JSON.

``python benchmarks/bench_openrtb.py [--quick] [--json]``; client and server share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import cpu_seconds
from loadgen import http_request, run_load

from bandit import ALL_SEGMENTS, Allocation, NetworkAllocation
from serving.placement_config import ServicePlacement
from serving.prebid import FloorsOptions, VariantFloors, page_floors
from serving.process import HOST, free_port, start_server, stop_server

PLACEMENT = "demo"
DEVICES = [("KOR", "iOS"), ("KOR", "Android"), ("USA", "iOS"), ("USA", "Android")]


def bid_request(i: int) -> bytes:
    country, os_name = DEVICES[i % len(DEVICES)]
    return orjson.dumps({
        "id": f"req-{i}", "cur": ["USD"],
        "imp": [{"id": "1", "tagid": PLACEMENT, "banner": {"w": 320, "h": 50}, "ext": {"gpid": "/1/top"}}],
        "app": {"bundle": "com.example.news", "publisher": {"id": "p1"}},
        "device": {"os": os_name, "devicetype": 4, "geo": {"country": country}, "ua": "Mozilla/5.0"},
        "user": {"id": f"u{i % 997}"},
    })  # fmt: skip


def bench_http(port: int, n: int, seconds: float, concurrency: int) -> dict:
    requests = [http_request(HOST, port, "POST", "/v1/openrtb/floors", bid_request(i)) for i in range(1000)]
    run_load(HOST, port, requests, concurrency=concurrency, max_requests=300, duration_s=5)  # warm-up
    result = run_load(HOST, port, requests, concurrency=concurrency, max_requests=n, duration_s=seconds,
                      check=lambda status, body: status == 200 and b'"bidfloor"' in body)  # fmt: skip
    return {**result.summary(), "concurrency": concurrency}


def synthetic(units: int, rules: int) -> tuple[list[ServicePlacement], list[list[VariantFloors]]]:
    """``units`` placements segmenting by country × os, each with ``rules`` learned segments."""
    countries = [f"C{c:02d}" for c in range(rules // 5 + 1)]
    segments = [f"{c}|{o}" for c in countries for o in ("ios", "android", "web", "tv", "other")][:rules]
    placements, variants = [], []
    for u in range(units):
        nets = [{"id": "admob", "bidder": "admob"}, {"id": "adfit", "bidder": "adfit"}, {"id": "house"}]
        placements.append(ServicePlacement.from_dict(f"unit-{u:03d}", {"networks": nets,
                                                                       "segment_by": ["country", "os"]}))  # fmt: skip
        allocs = []
        for s, segment in enumerate([ALL_SEGMENTS, *segments]):
            base = 0.5 + 0.01 * ((u * 31 + s * 7) % 200)
            nets_alloc = tuple(
                NetworkAllocation(n, w, base * k, base, base, 0.0, 0.0, 0.5, "second")
                for n, w, k in (("admob", 0.5, 1.0), ("adfit", 0.3, 1.2), ("house", 0.2, 0.4))
            )
            allocs.append(Allocation(f"unit-{u:03d}", segment, nets_alloc, "ts_gmm.42", 1000.0))
        variants.append([VariantFloors("champion", 100.0, allocs, built_at=time.time())])
    return placements, variants


def bench_document(units: int, rules: int, repeats: int, bidders: bool) -> dict:
    placements, variants = synthetic(units, rules)
    options = FloorsOptions(key="adUnitCode", bidders=bidders)
    times, doc = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        doc = page_floors(placements, variants, ["champion"] * units, options=options)
        times.append(time.perf_counter() - start)
    body = orjson.dumps(doc)
    return {"units": units, "rules_per_unit": rules, "bidders": bidders,
            "rules": len(doc["modelGroups"][0]["values"]), "median_ms": round(1e3 * statistics.median(times), 2),
            "json_bytes": len(body)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds (smoke run)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    docs = [bench_document(100, 50, max(3, int(20 * scale)), bidders) for bidders in (False, True)]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="adbandit-bench-") as tmp:
        server = start_server(Path(tmp) / "state", port, "--demo")
        try:
            before = cpu_seconds(server.pid)
            http = bench_http(port, n=int(30_000 * scale), seconds=20 * scale, concurrency=8)
            used = cpu_seconds(server.pid) - before
        finally:
            stop_server(server)
    http["server_cpu_ms_per_request"] = round(1e3 * used / max(http["requests"], 1), 4)
    print(f"adbandit OpenRTB benchmark ({os.cpu_count()} CPUs shared by client and server)")
    print(f"  POST /v1/openrtb/floors  {http['req_per_s']:>8,.0f} req/s  p50 {http['p50_ms']:.2f} ms  "
          f"p99 {http['p99_ms']:.2f} ms  ({http['concurrency']} connections, 1 imp; server CPU "
          f"{http['server_cpu_ms_per_request']:.3f} ms/request)")  # fmt: skip
    for d in docs:
        print(f"  Prebid floors document, {d['units']} ad units x {d['rules_per_unit']} rules"
              f"{' + per-bidder rules' if d['bidders'] else ''}: {d['median_ms']:.1f} ms to build "
              f"({d['rules']:,} rules, {d['json_bytes'] / 1024:,.0f} KiB of JSON)")  # fmt: skip
    if http["errors"]:
        print(f"  non-200 or unexpected answers: {http['errors']}")
    if args.json:
        print(json.dumps({"openrtb_floors": http, "prebid_documents": docs}))
    return 1 if http["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
