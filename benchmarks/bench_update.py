"""Learning throughput of ``ts_gmm``'s ``update(batch, refresh=False)`` (issue 8).

A placement of 20 networks and ``--segments`` segments first learns ``--history`` events
(a day of traffic, refresh=False); then 2,000-event batches spread over ``--segments``
segments (~2,000 touched cells each) are learned one after the other and timed, and
finally a few large batches. Each figure is the best of ``--repeat`` timed runs (the
machine may be shared).

Usage: ``python benchmarks/bench_update.py [--segments 1800] [--history 2000000]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_fixture import T0, market_batch, placement, segment_keys

from bandit import make_policy

DAY = 86_400.0


def learned_policy(keys: tuple[str, ...], history: int, seed: int = 0):
    policy = make_policy("ts_gmm", placement(), seed=seed)
    rng = np.random.default_rng(seed)
    chunk = 250_000
    t = time.perf_counter()
    for lo in range(0, history, chunk):
        n = min(chunk, history - lo)
        policy.update(market_batch(rng, keys, n, T0 + lo / history * DAY, DAY * n / history), refresh=False)
    return policy, time.perf_counter() - t


def timed_batches(policy, keys, size: int, count: int, span_s: float, t0: float, seed: int) -> float:
    """Seconds to learn ``count`` batches of ``size`` events (each over ``span_s`` of event time)."""
    rng = np.random.default_rng(seed)
    batches = [market_batch(rng, keys, size, t0 + i * span_s, span_s) for i in range(count)]
    t = time.perf_counter()
    for batch in batches:
        policy.update(batch, refresh=False)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=1800)
    parser.add_argument("--history", type=int, default=2_000_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--large", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    keys = segment_keys(args.segments)
    policy, dt = learned_policy(keys, args.history)
    print(
        f"history: {args.history:,} events over {len(keys):,} segments x 20 networks in {dt:.1f} s "
        f"({args.history / dt:,.0f} events/s), {policy.stats.n_cells:,} cells with data"
    )
    t0 = T0 + DAY
    best = np.inf
    for r in range(args.repeat):
        trial = copy.deepcopy(policy)
        best = min(best, timed_batches(trial, keys, 2000, args.batches, 20.0, t0, seed=100 + r))
    touched = len(
        np.unique(
            market_batch(np.random.default_rng(0), keys, 2000, t0, 20.0).segment_index * 20
            + market_batch(np.random.default_rng(0), keys, 2000, t0, 20.0).network
        )
    )
    per = best / args.batches
    print(
        f"2,000-event batches (~{touched:,} cells each): {per * 1e3:.2f} ms per batch, "
        f"{2000 / per:,.0f} events/s, {per / touched * 1e6:.1f} us per touched cell"
    )
    best = np.inf
    for r in range(args.repeat):
        trial = copy.deepcopy(policy)
        best = min(best, timed_batches(trial, keys, args.large, 1, 600.0, t0, seed=200 + r))
    print(f"{args.large:,}-event batch: {best:.2f} s, {args.large / best:,.0f} events/s")


if __name__ == "__main__":
    main()
