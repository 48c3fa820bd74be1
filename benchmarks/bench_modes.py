"""Waterfall and auction modes: decide cost in-process and over HTTP, and the plan search.

Prints, for each multi-network scenario, after learning 20,000 requests: the cost of one
decision (single request and per request in a batch of 1,000), the table refresh (one
segment, all networks refit) and the plan search per posterior draw; then ``POST
/v1/decide`` throughput and latency of a live service for the 20-network auction placement
(``--no-http`` skips it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from bandit.modes import allowed_floors, pay_curves, plan_table
from bandit.policies.ts_gmm import BOOTSTRAP_DRAWS, bid_curves
from simulator.market import Market
from simulator.modes import run_plans
from simulator.runner import build_policy

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import http_request, run_load

from serving.process import HOST, free_port, start_server, stop_server


def bench_http(seconds: float = 15.0, concurrency: int = 8) -> dict:
    """A live service with the auction_20 placement learned from 20,000 simulated requests."""
    market = Market("auction_20")
    body = {**market.placement.to_dict(), "networks": market.placement.to_dict()["networks"]}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="adbandit-bench-") as tmp:
        server = start_server(Path(tmp) / "state", port, "--no-fsync")
        try:
            base = f"http://{HOST}:{port}"
            assert httpx.put(f"{base}/v1/placements/auction_20", json=body).status_code == 201
            events = _events(market, 20_000)
            for i in range(0, len(events), 5000):
                r = httpx.post(f"{base}/v1/outcomes", content=orjson.dumps(events[i : i + 5000]), timeout=60)
                assert r.status_code == 200, r.text
            time.sleep(3)  # the applier learns and rebuilds the tables
            decide = orjson.dumps({"placement": "auction_20", "request_id": "r", "context": {}})
            requests = [http_request(HOST, port, "POST", "/v1/decide", decide)]
            run_load(HOST, port, requests, concurrency=concurrency, max_requests=500, duration_s=3)
            result = run_load(HOST, port, requests, concurrency=concurrency, max_requests=10**6, duration_s=seconds,
                              check=lambda status, b: status == 200 and b'"bidders"' in b)  # fmt: skip
        finally:
            stop_server(server)
    return {**result.summary(), "concurrency": concurrency}


def _events(market: Market, n: int) -> list[dict]:
    """Outcome events of ``n`` requests of a plan-playing ts_gmm run, as the service takes them."""
    events: list[dict] = []
    ids = market.placement.network_ids
    policy = build_policy("ts_gmm", market, seed=1)
    original = policy.update

    def record(batch, *, refresh: bool = True):
        for k in range(len(batch)):
            events.append(
                {
                    "event_id": f"e{len(events)}",
                    "ts": float(batch.ts[k]),
                    "placement": market.placement.id,
                    "network": ids[int(batch.network[k])],
                    "floor_cpm": float(batch.floor_cpm[k]),
                    "filled": bool(batch.filled[k]),
                    "revenue_cpm": float(batch.revenue_cpm[k]),
                }
            )
        return original(batch, refresh=refresh)

    policy.update = record
    run_plans(policy, market, n, seed=1)
    return events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    args = parser.parse_args(argv)
    for scenario in ("waterfall_4", "waterfall_8", "auction_5", "auction_20"):
        market = Market(scenario)
        policy = build_policy("ts_gmm", market, seed=0)
        run_plans(policy, market, 20_000, seed=0)
        one = np.zeros(1, dtype=np.int64)
        rng = np.random.default_rng(0)
        n = 2000
        start = time.perf_counter()
        for _ in range(n):
            policy.decide_plans(("*",), one, rng=rng)
        single_us = (time.perf_counter() - start) / n * 1e6
        batch = np.zeros(1000, dtype=np.int64)
        start = time.perf_counter()
        for _ in range(50):
            policy.decide_plans(("*",), batch, rng=rng)
        batch_us = (time.perf_counter() - start) / 50 / 1000 * 1e6
        start = time.perf_counter()
        policy._tables.clear()
        policy.refresh()
        refresh_s = time.perf_counter() - start
        cfgs = market.placement.networks
        lo = np.array([c.floor_min_cpm for c in cfgs])
        hi = np.array([c.floor_max_cpm for c in cfgs])
        draws = [policy._network_draws("*", j, policy.stats.placement_level()[j]) for j in range(len(cfgs))]
        boots = [bid_curves(d.boot, d.second_price, d.boot_shading, d.single_bid) for d in draws]
        curves = pay_curves(boots, [0.0] * len(cfgs), allowed_floors(lo, hi), BOOTSTRAP_DRAWS)
        start = time.perf_counter()
        plan_table(curves, market.placement.mode, market.placement.depth, lo, hi)
        per_draw_ms = (time.perf_counter() - start) / BOOTSTRAP_DRAWS * 1e3
        print(
            f"{scenario:12s} decide {single_us:7.1f} µs/request single, {batch_us:6.2f} µs/request batched; "
            f"table refresh {refresh_s * 1e3:7.1f} ms; plan search {per_draw_ms:6.2f} ms per draw"
        )
    if not args.no_http:
        http = bench_http()
        print(
            f"HTTP POST /v1/decide, auction_20 ({os.cpu_count()} CPUs shared by client and server): "
            f"{http['req_per_s']:,.0f} req/s, p50 {http['p50_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms "
            f"({http['concurrency']} connections, errors {http['errors']})"
        )


if __name__ == "__main__":
    main()
