"""A production-shaped placement for the scale benchmark: 10,000 segments × 20 networks,
every (segment, network) cell with data, learned and fitted by ``ts_gmm`` (defaults).

Fitting 200,000 cells from nothing takes a while (it is what a daily relearn does), so
the fitted state is written once to ``benchmarks/.cache/`` and reused; ``--rebuild``
makes it again. The market: log-normal bids whose level depends on country, OS and
network, second- and first-price networks, floors around a per-network level with the
policy's log-normal jitter, so cells hold the bins a live policy's data would.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bandit import EventBatch, PlacementConfig, load_state, make_policy, policy_from_state, save_state

CACHE = Path(__file__).resolve().parent / ".cache"
N_NETWORKS = 20
COUNTRIES = [f"C{i:03d}" for i in range(250)]
OSES = ["ios", "android"]
APPS = [f"v{i}" for i in range(20)]
T0 = 1_795_000_000.0


def placement(n_networks: int = N_NETWORKS) -> PlacementConfig:
    networks = [
        {"id": f"net{j:02d}", "floor_max_cpm": 50.0, "auction": "second" if j % 2 == 0 else "first"}
        for j in range(n_networks)
    ]
    return PlacementConfig.from_dict("scale", {"networks": networks, "segment_by": ["country", "os", "app"]})


def segment_keys(n_segments: int) -> tuple[str, ...]:
    """``n_segments`` distinct country|os|app keys (countries vary fastest)."""
    keys = []
    for i in range(n_segments):
        c, rest = i % len(COUNTRIES), i // len(COUNTRIES)
        keys.append(f"{COUNTRIES[c]}|{OSES[rest % 2]}|{APPS[(rest // 2) % len(APPS)]}")
    return tuple(keys)


def market_batch(
    rng: np.random.Generator, keys: tuple[str, ...], n: int, t0: float, span_s: float, n_networks: int = N_NETWORKS
) -> EventBatch:
    """``n`` outcome events spread evenly over ``keys`` × networks, between ``t0`` and ``t0 + span_s``."""
    seg = rng.integers(0, len(keys), n)
    net = rng.integers(0, n_networks, n)
    country_level = np.sin(np.arange(len(keys)) * 0.37) * 0.5
    mu = 0.3 + country_level[seg] + 0.04 * net
    floor_level = np.exp(0.2 + 0.04 * net + 0.5 * country_level[seg])
    floor = floor_level * np.exp(rng.normal(0.0, 0.05, n)) * rng.choice([0.7, 1.0, 1.4], n, p=[0.2, 0.6, 0.2])
    top = rng.lognormal(mu, 0.7)
    second = top * rng.uniform(0.5, 1.0, n)
    filled = (top >= floor) & (rng.random(n) < 0.9)
    price = np.where(net % 2 == 0, np.maximum(second, floor), top)
    revenue = np.where(filled, np.minimum(price, 1000.0), 0.0)
    ts = t0 + np.sort(rng.uniform(0.0, span_s, n))
    return EventBatch(keys, seg, net, floor, filled, revenue, ts)


def build(n_segments: int, events_per_cell: int, seed: int = 0):
    cfg = placement()
    keys = segment_keys(n_segments)
    policy = make_policy("ts_gmm", cfg, seed=seed)
    rng = np.random.default_rng(seed)
    total = n_segments * N_NETWORKS * events_per_cell
    chunk = 1_000_000
    t = time.perf_counter()
    for lo in range(0, total, chunk):
        n = min(chunk, total - lo)
        policy.update(market_batch(rng, keys, n, T0 + lo / total * 86_400.0, 86_400.0 * n / total), refresh=False)
    learned = time.perf_counter() - t
    t = time.perf_counter()
    policy.refresh(list(keys))
    fitted = time.perf_counter() - t
    return policy, learned, fitted


def fixture(n_segments: int = 10_000, events_per_cell: int = 100, rebuild: bool = False):
    """The fitted policy (from the cache when there), and how it was made."""
    path = CACHE / f"scale-{n_segments}x{N_NETWORKS}-{events_per_cell}.npz"
    if path.exists() and not rebuild:
        return policy_from_state(load_state(path)), path, None
    policy, learned, fitted = build(n_segments, events_per_cell)
    CACHE.mkdir(exist_ok=True)
    save_state(path, policy.state())
    return policy, path, (learned, fitted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--events-per-cell", type=int, default=100)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    policy, path, made = fixture(args.segments, args.events_per_cell, args.rebuild)
    print(f"{path}: {len(policy.segments):,} segments, {policy.stats.n_cells:,} cells with data")
    if made:
        print(f"learned the events in {made[0]:.1f} s, fitted every cell in {made[1]:.1f} s")


if __name__ == "__main__":
    main()
