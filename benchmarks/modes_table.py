"""The README's "Waterfall and auction figures" table: ts_gmm plans against the exact oracle.

    PYTHONPATH=. .venv/bin/python benchmarks/modes_table.py [--seeds 10] [--workers 2] [scenario ...]

The runs of ``tests/simulator/test_modes_learning.py`` on more scenarios and seeds: for each
scenario and seed (0 … seeds−1), ts_gmm's plans (:func:`simulator.runner.build_policy`) and
the ad-ops baseline (a waterfall ordered by eCPM with eCPM floors, or an auction with the best
single floor; both fixed plans of the first regime) through
:func:`simulator.modes.run_plans`, each against the scenario's oracle on the same requests.
Prints one Markdown row per scenario: capture over the run and over the last fifth as
mean ± sd over seeds (sample sd, ddof = 1) with the minimum, and the baseline's mean ± sd.
Seeds run in ``--workers`` spawned processes (spawn, as the test does); 8 scenarios × 10
seeds take about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from simulator.modes import last_share_capture, run_plans, scenario_setup
from simulator.runner import build_policy

#: The README table's scenarios, their requests per run and their description.
SCENARIOS: dict[str, tuple[int, str]] = {
    "waterfall_4": (100_000, "4 networks"),
    "waterfall_8": (100_000, "8 networks"),
    "waterfall_responsive": (100_000, "`waterfall_8` with one floor-responsive first-price network"),
    "auction_5": (100_000, "5 networks"),
    "auction_20": (150_000, "20 networks, ≤ 8 calls, time-outs, one floor-responsive network"),
    "auction_segments": (150_000, "4 segments, ≤ 3 calls, value shock"),
    "auction_qps": (100_000, "`auction_5` with ≤ 3 calls, admob capped at 1 call a second"),
    "waterfall_drift": (300_000, "price drop at 12 h, fill collapse at 24 h"),
}


def one_run(scenario: str, seed: int) -> tuple[float, float, float, float]:
    """(capture over the run, last fifth, baseline over the run, baseline last fifth)."""
    market, oracle, baseline = scenario_setup(scenario)
    n = SCENARIOS[scenario][0]
    base = run_plans(baseline, market, n, seed=seed, oracle=oracle)
    learned = run_plans(build_policy("ts_gmm", market, seed=seed), market, n, seed=seed, oracle=oracle)
    return (
        float(learned["cumulative_capture"][-1]),
        last_share_capture(learned),
        float(base["cumulative_capture"][-1]),
        last_share_capture(base),
    )


def _cell(values: np.ndarray, *, with_min: bool) -> str:
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    text = f"{values.mean():.3f} ± {sd:.3f}"
    return f"{text} (min {values.min():.3f})" if with_min else text


def table_row(scenario: str, results: np.ndarray) -> str:
    """One Markdown row from ``results`` [seeds, 4] (columns as :func:`one_run`)."""
    n, about = SCENARIOS[scenario]
    run, last, base, base_last = results.T
    cells = [
        f"`{scenario}` ({about})",
        f"{n:,}",
        str(len(results)),
        _cell(run, with_min=True),
        _cell(last, with_min=True),
        _cell(base, with_min=False),
        _cell(base_last, with_min=False),
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="scenario", help=f"default: all of {', '.join(SCENARIOS)}")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    args.scenarios = args.scenarios or list(SCENARIOS)
    jobs = [(sc, seed) for sc in args.scenarios for seed in range(args.seeds)]
    started = time.monotonic()
    out = []
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for (sc, seed), r in zip(jobs, pool.map(one_run, *zip(*jobs, strict=True)), strict=True):
            out.append(r)
            line = " ".join(f"{x:.4f}" for x in r)
            print(f"# {sc} seed {seed}: {line} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    print(
        "| scenario | requests | seeds | capture over the run | last fifth | baseline over the run "
        "| baseline last fifth |"
    )
    print("|---|---|---|---|---|---|---|")
    for sc in args.scenarios:
        results = np.array([r for (s, _), r in zip(jobs, out, strict=True) if s == sc])
        print(table_row(sc, results))
    print(f"# {len(jobs)} runs in {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
