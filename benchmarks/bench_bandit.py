"""Throughput, latency and state size of a bandit policy, against MABWiser on the same work.

Prints a figures table (one core: BLAS/OpenMP/polars threads set to 1 and the process
pinned to one CPU before numpy is imported):

- update throughput from a polars frame of 1,000,000+ synthetic outcome events
  (4 networks, 6 segments): frame → validated batch, statistics only
  (``SufficientStats.add``), and the full ``policy.update(frame)`` including the rebuild of
  the decision tables (cold: a fresh policy; warm: a policy that has seen the data once),
  and the learning alone (``update(frame, refresh=False)``: change detector, hour levels,
  statistics; the refits left pending);
- 10,000 decisions in one ``decide_batch`` call and one ``decide`` call (medians);
- state size per (segment, network): the saved ``.npz`` and the in-memory arrays;
- MABWiser ``ThompsonSampling``: ``partial_fit`` on the same 1,000,000 events as Bernoulli
  rewards (filled or not), ``predict`` for 100,000 decisions and for one, with ratios.

Usage: ``python benchmarks/bench_bandit.py [--policy NAME] [--quick] [--events N]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from bandit import POLICIES, PlacementConfig, make_policy, save_state  # noqa: E402
from bandit.io import batch_from_frame  # noqa: E402
from bandit.stats import SufficientStats  # noqa: E402

NETWORKS = ("admob", "adfit", "meta", "house")
COUNTRIES = ("KR", "US", "JP")
OSES = ("ios", "android")
T0 = 1_795_000_000.0


def placement() -> PlacementConfig:
    return PlacementConfig.from_dict(
        "bench",
        {
            "networks": [
                {"id": "admob", "floor_max_cpm": 30.0},
                {"id": "adfit", "floor_max_cpm": 20.0, "min_share": 0.05},
                {"id": "meta", "floor_max_cpm": 30.0},
                {"id": "house", "floor_min_cpm": 0.0, "floor_max_cpm": 1.0, "max_share": 0.2},
            ],
            "segment_by": ["country", "os"],
        },
    )


def synthetic_frame(n: int, seed: int) -> pl.DataFrame:
    """Outcome log of ``n`` requests over one day: second-price fills for admob/adfit,
    first-price for meta/house, log-normal bids that differ by network and country."""
    rng = np.random.default_rng(seed)
    net = rng.integers(0, len(NETWORKS), n)
    country = rng.integers(0, len(COUNTRIES), n)
    os_ = rng.integers(0, len(OSES), n)
    levels = np.concatenate([[0.0], np.geomspace(0.05, 20.0, 7)])
    floor = np.minimum(rng.choice(levels, n), np.where(net == 3, 1.0, 30.0))
    mu = np.array([0.5, 0.2, 0.8, -1.5])[net] + np.array([0.3, 0.6, 0.0])[country]
    top = rng.lognormal(mu, 0.8)
    second = top * rng.uniform(0.4, 1.0, n)
    filled = (rng.random(n) < 0.85) & (top >= floor)
    price = np.where(net < 2, np.maximum(second, floor), top)
    revenue = np.where(filled, np.minimum(price, 1000.0), 0.0)
    ts = (T0 + np.sort(rng.uniform(0, 86_400.0, n))) * 1e6
    return pl.DataFrame(
        {
            "placement": pl.Series(["bench"] * n, dtype=pl.String),
            "network": pl.Series(np.array(NETWORKS)[net]).cast(pl.String),
            "floor_cpm": floor,
            "filled": filled,
            "revenue_cpm": revenue,
            "ts": pl.Series(ts.astype(np.int64)).cast(pl.Datetime("us", "UTC")),
            "context": pl.DataFrame({"country": np.array(COUNTRIES)[country], "os": np.array(OSES)[os_]}).to_struct(),
        }
    )


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one untimed warm-up call (seconds)."""
    fn()
    return statistics.median(timed(fn) for _ in range(repeats))


def median_call(fn: Callable[[], object], calls: int) -> float:
    """Median wall time of single calls (seconds)."""
    samples = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t)
    return statistics.median(samples) * 1e-9


def machine_facts() -> list[str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [
        f"cpu: {cpu}; logical cores: {os.cpu_count()}; pinned to: {affinity}",
        f"python {platform.python_version()}, numpy {np.__version__}, polars {pl.__version__}, "
        f"mabwiser {version('mabwiser')}",
    ]


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, figure: str, value: str, target: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("yes" if ok else "NO")
        self.rows.append((figure, value, target, mark))
        print(f"  {figure:<58} {value:>16}  {target:<14} {mark}", flush=True)


def bench_ours(args: argparse.Namespace, frame: pl.DataFrame, table: Table) -> dict[str, float]:
    cfg = placement()
    n = frame.height
    repeats = 1 if args.quick else 3

    t_frame = median_time(lambda: batch_from_frame(cfg, frame), repeats)
    batch = batch_from_frame(cfg, frame)
    table.add("frame -> validated EventBatch [events/s]", f"{n / t_frame:,.0f}")

    def stats_only() -> None:
        SufficientStats(len(cfg.networks), 6 * 3600.0).add(batch)

    t_stats = median_time(stats_only, repeats)
    table.add("SufficientStats.add (stats only) [events/s]", f"{n / t_stats:,.0f}")

    cold = make_policy(args.policy, cfg, seed=1)
    t_cold = timed(lambda: cold.update(frame))
    table.add(
        f"{args.policy}.update(frame), cold policy [events/s]",
        f"{n / t_cold:,.0f}",
        ">= 2,000,000",
        n / t_cold >= 2e6,
    )
    t_warm = median_time(lambda: cold.update(frame), repeats)
    table.add(
        f"{args.policy}.update(frame), warm policy [events/s]",
        f"{n / t_warm:,.0f}",
        ">= 2,000,000",
        n / t_warm >= 2e6,
    )
    t_learn = median_time(lambda: cold.update(frame, refresh=False), repeats)
    table.add(
        f"{args.policy}.update(frame, refresh=False), warm: learning without refits [events/s]",
        f"{n / t_learn:,.0f}",
    )
    cold.refresh(list(cold.stats.segments))  # the tables catch up with what was just learned
    t_batch_update = median_time(lambda: cold.update(batch), repeats)
    table.add(
        f"{args.policy}.update(EventBatch), warm [events/s]",
        f"{n / t_batch_update:,.0f}",
    )

    table.add(
        f"{args.policy} table refresh per update (update - stats) [ms]",
        f"{max(t_batch_update - t_stats, 0.0) * 1e3:.1f}",
    )

    policy = cold
    keys = [f"{COUNTRIES[i % 3]}|{OSES[i % 2]}" for i in range(10_000)]
    rng = np.random.default_rng(0)
    t_batch = median_time(lambda: policy.decide_batch(keys, rng=rng), 15 if args.quick else 51)
    table.add(
        "decide_batch, 10,000 requests (6 segments) [ms]",
        f"{t_batch * 1e3:.2f}",
        "<= 20 ms",
        t_batch <= 0.02,
    )
    seg_keys = tuple(dict.fromkeys(keys))
    seg_index = np.array([seg_keys.index(k) for k in keys])
    t_indexed = median_time(lambda: policy.decide_indexed(seg_keys, seg_index, rng=rng), 15 if args.quick else 51)
    table.add("decide_indexed, 10,000 requests [ms]", f"{t_indexed * 1e3:.2f}")
    keys_100k = keys * 10
    t_100k = median_time(lambda: policy.decide_batch(keys_100k, rng=rng), 3 if args.quick else 7)
    table.add("decide_batch, 100,000 requests [ms]", f"{t_100k * 1e3:.1f}")
    context = {"country": "KR", "os": "ios"}
    t_one = median_call(lambda: policy.decide(context), 2_000 if args.quick else 20_000)
    table.add("decide, one request (median) [us]", f"{t_one * 1e6:.1f}", "<= 100 us", t_one <= 1e-4)

    state = policy.state()
    cells = max(len(policy.stats.segments), 1) * len(cfg.networks)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.npz"
        save_state(path, state)
        npz_bytes = path.stat().st_size
    mem_bytes = sum(a.nbytes for a in state.values())
    table.add(
        f"state .npz per (segment, network) [bytes] ({cells} cells)",
        f"{npz_bytes / cells:,.0f}",
        "<= 20,000",
        npz_bytes / cells <= 20_000,
    )
    table.add("state arrays in memory per (segment, network) [bytes]", f"{mem_bytes / cells:,.0f}")
    return {
        "update": t_warm,
        "learn": t_learn,
        "update_batch": t_batch_update,
        "predict_100k": t_100k,
        "predict_one": t_one,
    }


def bench_mabwiser(args: argparse.Namespace, frame: pl.DataFrame, table: Table) -> dict[str, float]:
    from mabwiser.mab import MAB, LearningPolicy

    # Integer arm codes: MABWiser's fastest input (strings would slow it down unfairly).
    codes = {name: i for i, name in enumerate(NETWORKS)}
    decisions = frame["network"].replace_strict(codes, return_dtype=pl.Int64).to_numpy()
    rewards = frame["filled"].to_numpy().astype(np.int64)
    n = len(decisions)
    mab = MAB(arms=list(range(len(NETWORKS))), learning_policy=LearningPolicy.ThompsonSampling(), seed=1)
    mab.fit(decisions[:1000], rewards[:1000])
    t_fit = timed(lambda: mab.partial_fit(decisions, rewards))
    table.add(f"MABWiser TS partial_fit, {n:,} Bernoulli rewards [s]", f"{t_fit:.3f}")
    contexts = np.zeros((100_000, 1))
    t_pred = median_time(lambda: mab.predict(contexts), 1 if args.quick else 3)
    table.add("MABWiser TS predict, 100,000 decisions [s]", f"{t_pred:.3f}")
    t_one = median_call(mab.predict, 500 if args.quick else 5_000)
    table.add("MABWiser TS predict, one decision (median) [us]", f"{t_one * 1e6:.1f}")
    return {"update": t_fit, "predict_100k": t_pred, "predict_one": t_one}


def main(argv: list[str] | None = None) -> int:
    default = "ts_gmm" if "ts_gmm" in POLICIES else "grid_ts"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=default, choices=sorted(POLICIES))
    parser.add_argument("--quick", action="store_true", help="fewer repeats (same event count)")
    parser.add_argument("--events", type=int, default=1_000_000, help="synthetic events (default 1e6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print("adbandit bandit benchmark (one core)")
    for line in machine_facts():
        print("  " + line)
    t = time.perf_counter()
    frame = synthetic_frame(args.events, args.seed)
    print(
        f"  synthetic log: {frame.height:,} events, {len(NETWORKS)} networks, "
        f"{len(COUNTRIES) * len(OSES)} segments (built in {time.perf_counter() - t:.1f} s)"
    )
    print(f"\n  {'figure':<58} {'value':>16}  {'target':<14} ok")
    table = Table()
    ours = bench_ours(args, frame, table)
    theirs = bench_mabwiser(args, frame, table)
    print("\n  ours / MABWiser wall time (lower is better; < 1 means we are faster)")
    for label, key, their_key in (
        (f"update from the frame ({args.policy}, warm) / partial_fit", "update", "update"),
        (
            f"update from an EventBatch ({args.policy}, warm) / partial_fit",
            "update_batch",
            "update",
        ),
        (f"learning from the frame without refits ({args.policy}) / partial_fit", "learn", "update"),
        ("100,000 decisions (decide_batch) / predict", "predict_100k", "predict_100k"),
        ("one decision (decide) / predict", "predict_one", "predict_one"),
    ):
        ratio = ours[key] / theirs[their_key]
        verdict = f"{1 / ratio:.1f}x faster" if ratio < 1 else f"{ratio:.1f}x slower"
        print(f"  {label:<62} {ratio:8.3f}  ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
