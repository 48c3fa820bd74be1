"""Live-service throughput and latency over loopback, against the real server process.

Starts ``adbandit serve`` (one uvicorn worker, fsync on) on 127.0.0.1 with the ``demo``
placement (3 networks, 4 learned segments), then drives it from this separate process with
:mod:`benchmarks.loadgen` (asyncio, keep-alive connections, pre-encoded requests):

* ``POST /v1/decide``            requests/s, p50/p99 latency   (targets >= 2,000 req/s, p99 <= 10 ms)
* ``POST /v1/decide/batch``      1,000 requests per call → decisions/s   (target >= 200,000/s)
* ``POST /v1/outcomes``          5,000 events per call, durable → events/s   (target >= 100,000/s)

Each phase is bounded in requests and seconds; the whole run takes about a minute.
Client and server share the machine's cores, so figures are lower bounds for the server
(and noisy when other work runs). ``python benchmarks/bench_service.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import http_request, run_load

from serving.process import HOST, free_port, start_server, stop_server

PLACEMENT = "demo"
SEGMENTS = [{"country": c, "os": o} for c in ("KR", "US") for o in ("ios", "android")]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int, phase, *args, **kwargs) -> dict:
    """Run a phase and add the server's CPU seconds per request (noise-robust on a shared machine)."""
    before = cpu_seconds(pid)
    figures = phase(*args, **kwargs)
    used = cpu_seconds(pid) - before
    figures["server_cpu_s"] = round(used, 3)
    figures["server_cpu_ms_per_request"] = round(1e3 * used / max(figures["requests"], 1), 4)
    return figures


def ok(status: int, body: bytes) -> bool:
    return status == 200


def bench_decide(port: int, n: int, seconds: float, concurrency: int) -> dict:
    requests = [
        http_request(HOST, port, "POST", "/v1/decide", orjson.dumps(
            {"placement": PLACEMENT, "request_id": f"r{i}", "context": SEGMENTS[i % len(SEGMENTS)]}))
        for i in range(1000)
    ]  # fmt: skip
    run_load(HOST, port, requests, concurrency=concurrency, max_requests=500, duration_s=5)  # warm-up
    result = run_load(HOST, port, requests, concurrency=concurrency, max_requests=n, duration_s=seconds, check=ok)
    return {**result.summary(), "concurrency": concurrency}


def bench_batch(port: int, calls: int, seconds: float, concurrency: int, size: int = 1000) -> dict:
    requests = []
    for k in range(20):
        body = {
            "placement": PLACEMENT,
            "requests": [{"request_id": f"b{k}-{i}", "context": SEGMENTS[i % len(SEGMENTS)]} for i in range(size)],
        }
        requests.append(http_request(HOST, port, "POST", "/v1/decide/batch", orjson.dumps(body)))  # fmt: skip
    run_load(HOST, port, requests, concurrency=concurrency, max_requests=10, duration_s=5)  # warm-up
    result = run_load(HOST, port, requests, concurrency=concurrency, max_requests=calls, duration_s=seconds, check=ok)
    return {**result.summary(), "concurrency": concurrency, "decisions_per_call": size,
            "decisions_per_s": round(result.rate * size, 1)}  # fmt: skip


def outcome_template(size: int, decisions: list[dict]) -> bytes:
    """A batch of ``size`` events whose ids contain the placeholder ``@@@@@@@@`` (the batch
    number), answering ``decisions`` (their signed ids, networks and floors: every event's
    decision id is verified, as in production)."""
    events = []
    for i in range(size):
        d = decisions[i % len(decisions)]
        filled = i % 3 != 0
        events.append({"event_id": f"@@@@@@@@-{i}", "decision_id": d["decision_id"],
                       "ts": "2026-11-21T10:00:00Z", "placement": PLACEMENT,
                       "network": d["network"], "floor_cpm": d["floor_cpm"],
                       "filled": filled, "revenue_cpm": d["floor_cpm"] + (i % 11) * 0.3 if filled else 0.0,
                       "context": SEGMENTS[i % len(SEGMENTS)]})  # fmt: skip
    return orjson.dumps(events)


def served_decisions(port: int, n: int = 1000) -> list[dict]:
    import httpx

    body = {"placement": PLACEMENT, "requests": [{"request_id": f"o{i}", "context": SEGMENTS[i % 4]} for i in range(n)]}
    return httpx.post(f"http://{HOST}:{port}/v1/decide/batch", json=body, timeout=30).json()["decisions"]


def bench_outcomes(port: int, calls: int, seconds: float, concurrency: int, size: int = 5000) -> dict:
    template = outcome_template(size, served_decisions(port))
    accepted = {"n": 0}

    def request(i: int) -> bytes:  # fresh event ids for every call: nothing is a duplicate
        return http_request(HOST, port, "POST", "/v1/outcomes", template.replace(b"@@@@@@@@", b"%08d" % i))

    def check(status: int, body: bytes) -> bool:
        if status != 200:
            return False
        result = orjson.loads(body)
        accepted["n"] += result["accepted"]
        return result["accepted"] == size

    result = run_load(HOST, port, request, concurrency=concurrency, max_requests=calls, duration_s=seconds, check=check)
    return {**result.summary(), "concurrency": concurrency, "events_per_call": size,
            "events_accepted": accepted["n"], "events_per_s": round(accepted["n"] / result.elapsed_s, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per phase (smoke run)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="adbandit-bench-") as tmp:
        server = start_server(Path(tmp) / "state", port, "--demo")
        try:
            pid = server.pid
            figures = {
                "decide": server_cpu(pid, bench_decide, port, n=int(60_000 * scale), seconds=20 * scale, concurrency=8),
                "decide_batch": server_cpu(
                    pid, bench_batch, port, calls=int(600 * scale), seconds=20 * scale, concurrency=4
                ),
                "outcomes": server_cpu(
                    pid, bench_outcomes, port, calls=int(120 * scale), seconds=20 * scale, concurrency=4
                ),
            }
        finally:
            stop_server(server)
    d, b, o = figures["decide"], figures["decide_batch"], figures["outcomes"]
    print(f"adbandit service benchmark (1 uvicorn worker, fsync on, loopback, {os.cpu_count()} CPUs shared "
          "by client and server)")  # fmt: skip

    def capacity(figures: dict, per_request: int = 1) -> str:
        ms = figures["server_cpu_ms_per_request"]
        return f"server CPU {ms:.3f} ms/call → {per_request * 1e3 / ms:,.0f}/s per busy core" if ms else ""

    print(
        f"  POST /v1/decide        {d['req_per_s']:>10,.0f} req/s        p50 {d['p50_ms']:.2f} ms  "
        f"p99 {d['p99_ms']:.2f} ms   (target >= 2,000 req/s, p99 <= 10 ms; {d['concurrency']} connections)"
    )
    print(
        f"  POST /v1/decide/batch  {b['decisions_per_s']:>10,.0f} decisions/s  p50 {b['p50_ms']:.1f} ms per "
        f"1,000   (target >= 200,000/s)"
    )
    print(
        f"  POST /v1/outcomes      {o['events_per_s']:>10,.0f} events/s     p50 {o['p50_ms']:.1f} ms per "
        f"5,000   (target >= 100,000/s, durable before reply)"
    )
    print("  server-side cost (the server's own CPU time, robust to other load on the machine):")
    print(f"    decide   {capacity(d)}")
    print(f"    batch    {capacity(b, 1000)} decisions")
    print(f"    outcomes {capacity(o, 5000)} events (fsync waits are not CPU)")
    bad = {k: v["errors"] for k, v in figures.items() if v["errors"]}
    if bad:
        print(f"  non-200 or unexpected answers: {bad}")
    if args.json:
        print(json.dumps(figures))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
