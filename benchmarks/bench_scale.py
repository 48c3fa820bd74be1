"""Production scale: 10,000 segments × 20 networks per placement (issue targets).

Part 1, statistics at full scale (every one of the 200,000 cells with data): learning
throughput, memory per typical and per full cell, the O(segments × networks) passes a
refresh makes (totals, the segment pooling model), the size of the state and of the entries of the cells
a 2,000-event batch changes (what an incremental snapshot would write).

Part 2, the ``ts_gmm`` learner on a fitted placement (``--fitted-segments`` × 20
networks; fitting every cell costs ~10–30 ms, so the fitted placement is smaller than
10,000 segments and is cached in ``benchmarks/.cache``): a 2,000-event batch spread over
up to 1,800 segments learned and its tables live (``update`` + ``refresh`` of the touched
segments, which refits only the cells that are due), the refit backlog that batch leaves,
replay throughput in 2,000-event groups (restart), process RSS and bytes per segment.

Usage: ``python benchmarks/bench_scale.py [--fitted-segments 1000]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bandit import Table, machine_facts
from scale_fixture import N_NETWORKS, T0, fixture, market_batch, segment_keys

from bandit import EventBatch, save_state
from bandit.pooling import SegmentPool
from bandit.stats import N_BINS, SufficientStats


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def full_cell_bytes() -> float:
    """A cell holding every bin (fills at every floor and price)."""
    stats = SufficientStats(1)
    floors = np.exp(np.linspace(np.log(0.011), np.log(900.0), 4 * N_BINS))
    zeros = np.zeros(len(floors), np.int64)
    revenue = np.sort(floors)[::-1] * 1.5  # fills above the floor at every price bin
    stats.add(EventBatch(("s",), zeros, zeros, floors, np.ones(len(floors), bool), revenue, np.full(len(floors), T0)))
    return float(stats.cell_nbytes()[0])


def part_statistics(table: Table, n_segments: int, events_per_cell: int) -> None:
    rng = np.random.default_rng(1)
    keys = segment_keys(n_segments)
    stats = SufficientStats(N_NETWORKS, 48 * 3600.0)
    total = n_segments * N_NETWORKS * events_per_cell
    before = rss_mb()
    t = time.perf_counter()
    chunk = 1_000_000
    for lo in range(0, total, chunk):
        stats.add(market_batch(rng, keys, min(chunk, total - lo), T0 + lo / total * 86_400.0, 86_400.0 * chunk / total))
    dt = time.perf_counter() - t
    label = f"{n_segments:,} segments × {N_NETWORKS} networks, {events_per_cell} events per cell"
    table.add(f"statistics learned, {total:,} events ({label}) [events/s]", f"{total / dt:,.0f}")
    sizes = stats.cell_nbytes()
    table.add("cells with data", f"{stats.n_cells:,}")
    typical = float(np.median(sizes))
    table.add(
        "bytes per cell: typical (median) / 90th percentile",
        f"{typical:,.0f} / {np.quantile(sizes, 0.9):,.0f}",
        "<= 2,048",
        typical <= 2048,
    )
    table.add("bytes per cell: full (every bin of every field)", f"{full_cell_bytes():,.0f}")
    table.add("statistics of the placement, RSS growth [MB]", f"{rss_mb() - before:,.0f}")
    t = time.perf_counter()
    pool = SegmentPool.fit_stats(stats, 3)  # reads stats.totals()
    table.add(
        f"per-refresh pass over all cells (totals + pooling model; last sweep {pool.fit.last_change:.0e}) [ms]",
        f"{(time.perf_counter() - t) * 1e3:.1f}",
    )
    batch = market_batch(rng, keys[:1800], 2000, T0 + 86_400.0, 60.0)
    stats.take_changes()
    t = time.perf_counter()
    stats.add(batch)
    table.add("2,000-event batch over 1,800 segments, statistics only [ms]", f"{(time.perf_counter() - t) * 1e3:.1f}")
    changed = stats.take_changes()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        save_state(Path(tmp) / "delta.npz", stats.entries(changed))
        dt = time.perf_counter() - t
        table.add(f"entries of the {len(changed):,} changed cells written [ms]", f"{dt * 1e3:.1f}", "(<= 2 s)", dt <= 2)
        t = time.perf_counter()
        save_state(Path(tmp) / "full.npz", stats.state())
        size = (Path(tmp) / "full.npz").stat().st_size
        table.add("whole statistics written [s] / size [MB]", f"{time.perf_counter() - t:.2f} / {size / 1e6:,.0f}")


def part_learner(table: Table, n_fitted: int, events_per_cell: int) -> None:
    before = rss_mb()
    t = time.perf_counter()
    policy, _, made = fixture(n_fitted, events_per_cell)
    load_s = time.perf_counter() - t
    if made:
        table.add(
            f"fitted fixture built: events learned / every cell fitted [s] ({n_fitted:,} segments)",
            f"{made[0]:.0f} / {made[1]:.0f}",
        )
        table.add("  fit cost per (segment, network) cell [ms]", f"{made[1] / (n_fitted * N_NETWORKS) * 1e3:.1f}")
    else:
        table.add(f"fitted fixture loaded from its state file [s] ({n_fitted:,} segments)", f"{load_s:.1f}")
    held = rss_mb() - before
    table.add(f"learner RSS growth, {n_fitted:,} segments × {N_NETWORKS} networks [MB]", f"{held:,.0f}")
    table.add("  per segment [KB]", f"{held * 1024 / n_fitted:,.0f}")
    at_target = held / n_fitted * 10_000
    table.add("  → 10,000 segments, extrapolated [MB]", f"{at_target:,.0f}", "<= 1,536", at_target <= 1536)
    keys = segment_keys(n_fitted)
    rng = np.random.default_rng(2)
    touched_keys = keys[: min(1800, n_fitted)]
    t_next = policy.stats.t_ref + 60.0
    for k in range(3):
        batch = market_batch(rng, touched_keys, 2000, t_next + 60.0 * k, 60.0)
        t = time.perf_counter()
        touched = policy.update(batch, refresh=False)
        learned = time.perf_counter() - t
        policy.refresh(touched)
        live = time.perf_counter() - t
        table.add(
            f"2,000-event batch #{k + 1} over {len(touched):,} segments: learned / tables live [ms]",
            f"{learned * 1e3:,.0f} / {live * 1e3:,.0f}",
            "<= 1,000",
            live <= 1.0,
        )
    table.add("  segments left pending (refit when due)", f"{len(policy.pending_segments()):,}")
    groups = 20
    t = time.perf_counter()
    for k in range(groups):
        policy.update(market_batch(rng, keys, 2000, t_next + 600.0 + 10.0 * k, 10.0), refresh=False)
    rate = groups * 2000 / (time.perf_counter() - t)
    table.add("replay in 2,000-event groups (restart) [events/s]", f"{rate:,.0f}")
    restart = 10_000_000 / rate
    table.add("  → 10M events behind a snapshot replayed in [s]", f"{restart:,.0f}", "<= 30", restart <= 30)
    t = time.perf_counter()
    state = policy.state()
    with tempfile.TemporaryDirectory() as tmp:
        save_state(Path(tmp) / "policy.npz", state)
        size = (Path(tmp) / "policy.npz").stat().st_size
    table.add("whole policy state written [s] / size [MB]", f"{time.perf_counter() - t:.2f} / {size / 1e6:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--events-per-cell", type=int, default=100)
    parser.add_argument("--fitted-segments", type=int, default=1_000)
    args = parser.parse_args()
    table = Table()
    print("\n".join(machine_facts()))
    part_statistics(table, args.segments, args.events_per_cell)
    part_learner(table, args.fitted_segments, args.events_per_cell)


if __name__ == "__main__":
    main()
