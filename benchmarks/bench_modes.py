"""Waterfall and auction modes: decide cost in-process and the per-draw plan optimisation.

Prints, for each multi-network scenario, after learning 20,000 requests: the cost of one
decision (single request and per request in a batch of 1,000), the table refresh (one
segment, all networks refit) and the plan search per posterior draw.
"""

from __future__ import annotations

import time

import numpy as np

from bandit.modes import allowed_floors, pay_curves, plan_table
from bandit.policies.ts_gmm import BOOTSTRAP_DRAWS
from simulator.market import Market
from simulator.modes import run_plans
from simulator.runner import build_policy


def main() -> None:
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
        boots = [policy._network_draws("*", j, policy.stats.placement_level()[j]).boot for j in range(len(cfgs))]
        curves = pay_curves(boots, [0.0] * len(cfgs), allowed_floors(lo, hi), BOOTSTRAP_DRAWS)
        start = time.perf_counter()
        plan_table(curves, market.placement.mode, market.placement.depth, lo, hi)
        per_draw_ms = (time.perf_counter() - start) / BOOTSTRAP_DRAWS * 1e3
        print(
            f"{scenario:12s} decide {single_us:7.1f} µs/request single, {batch_us:6.2f} µs/request batched; "
            f"table refresh {refresh_s * 1e3:7.1f} ms; plan search {per_draw_ms:6.2f} ms per draw"
        )


if __name__ == "__main__":
    main()
