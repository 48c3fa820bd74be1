"""Ray fan-out: the same seed gives the same trajectory on Ray as in process."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from simulator import Market
from simulator.parallel import PolicySpec, RunSpec, grid_summary, run_grid, run_one, seed_sequences

N_REQUESTS = 6000
ADMOB_ONLY = {"weights": {"admob": 1.0, "adfit": 0.0, "pangle": 0.0, "inmobi": 0.0}, "floors": {"admob": 1.6}}


@pytest.fixture(scope="module")
def grid(ray_cluster) -> pl.DataFrame:
    return run_grid(
        ["core_stationary"],
        ["static", PolicySpec("static", ADMOB_ONLY, label="admob_only")],
        n_seeds=2,
        n_requests=N_REQUESTS,
        root_seed=42,
        progress=False,
        batch_size=1000,
    )


def test_ray_trajectory_equals_in_process(grid):
    market = Market("core_stationary")
    seeds = seed_sequences(42, 2)
    assert grid.height == 2 * 2 * (N_REQUESTS // 1000)
    for label, spec in (("static", PolicySpec("static")), ("admob_only", PolicySpec("static", ADMOB_ONLY))):
        for i, seed in enumerate(seeds):
            local = run_one(market, RunSpec(0, spec, i, seed, N_REQUESTS), {"batch_size": 1000})
            remote = grid.filter((pl.col("policy") == label) & (pl.col("seed") == i))
            assert remote.drop("policy").equals(local.drop("policy"))


def test_grid_compares_policies_on_common_random_numbers(grid):
    oracle = {
        (p, s): part["oracle_revenue"].to_numpy()
        for (p, s), part in grid.group_by(["policy", "seed"], maintain_order=True)
    }
    assert np.array_equal(oracle[("static", 0)], oracle[("admob_only", 0)])  # same requests
    summary = grid_summary(grid, last=3000)
    assert summary.height == 4 and set(summary["policy"]) == {"static", "admob_only"}
    by_policy = summary.group_by("policy").agg(pl.col("capture").mean())
    caps = dict(by_policy.iter_rows())
    assert caps["admob_only"] > 0.99 > caps["static"]
