"""A/B tables: rolling capture against brute force, lift against abstats, a small Ray run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bandit import InvalidConfig
from bandit.abstats import paired_lift
from experiments import tracking
from experiments.ab import AB_COLUMNS, ab_table, requests_to_near_oracle, rolling_capture, run_ab
from experiments.config import PolicyConfig, write_policy_config
from tests.experiments.trajectories import synthetic


def test_rolling_capture_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    traj = synthetic(rng.uniform(0.5, 1.0, 30), batch=700)
    window = 3000
    total, cap = rolling_capture(traj, window)
    exp = traj["expected_revenue"].to_numpy()
    orc = traj["oracle_revenue"].to_numpy()
    for k in range(len(total)):
        if total[k] < window:
            assert math.isnan(cap[k])
            continue
        # Brute force: grow the window backwards row by row until it holds >= window requests.
        j, served = k, 700
        while served < window:
            j -= 1
            served += 700
        assert cap[k] == pytest.approx(exp[j : k + 1].sum() / orc[j : k + 1].sum(), rel=1e-12)


def test_requests_to_near_oracle_is_the_first_window_at_99_percent() -> None:
    caps = np.concatenate([np.full(10, 0.9), np.full(10, 0.995)])
    traj = synthetic(caps, batch=1000)
    # Window of 3 rows: first all-0.995 window ends at row 12 -> 13,000 requests.
    assert requests_to_near_oracle(traj, window=3000) == 13_000
    assert requests_to_near_oracle(synthetic(np.full(20, 0.9)), window=3000) is None


def test_ab_table_lift_is_the_paired_lift_of_expected_revenue_per_request() -> None:
    rng = np.random.default_rng(1)
    seeds = 6
    control = [synthetic(np.full(10, 0.8) + 0.05 * rng.random(10), seed=s) for s in range(seeds)]
    treat = [synthetic(np.full(10, 0.9) + 0.05 * rng.random(10), seed=s) for s in range(seeds)]
    table = ab_table({"static": control, "ts_gmm": treat}, "static", window=2000)
    assert table.columns == list(AB_COLUMNS)
    rpr = lambda ts: np.array([t["expected_revenue"].sum() / t["requests"].sum() for t in ts])  # noqa: E731
    expected = paired_lift(rpr(control), rpr(treat))
    row = table.filter(pl.col("arm") == "ts_gmm").row(0, named=True)
    assert row["lift"] == pytest.approx(expected.lift)
    assert row["lift_ci_low"] == pytest.approx(expected.ci_low)
    assert row["p_value"] == pytest.approx(expected.p_value)
    assert table.filter(pl.col("arm") == "static")["lift"].to_list() == [None]
    assert row["capture"] == pytest.approx(
        np.mean([t["expected_revenue"].sum() / t["oracle_revenue"].sum() for t in treat])
    )


def test_ab_table_rejects_unequal_seeds_and_unknown_control() -> None:
    t = synthetic(np.full(5, 0.9))
    with pytest.raises(InvalidConfig, match="same seeds"):
        ab_table({"a": [t, t], "b": [t]}, "a")
    with pytest.raises(InvalidConfig, match="control arm 'zzz'"):
        ab_table({"a": [t, t]}, "zzz")


def test_run_ab_on_ray_uses_common_random_numbers(ray_cluster, mlflow_project: Path, tmp_path: Path) -> None:
    """The same policy under two labels sees identical requests and draws: zero lift."""
    config = tmp_path / "static.json"
    write_policy_config(config, PolicyConfig("static"))
    table = run_ab(
        "core_stationary",
        ["static", f"static_again={config}", "grid_ts"],
        seeds=3,
        n_requests=6000,
        experiment="test-ab",
    )
    rows = {r["arm"]: r for r in table.iter_rows(named=True)}
    assert rows["static_again"]["lift"] == 0.0
    assert rows["static_again"]["p_value"] == 1.0
    assert rows["grid_ts"]["lift"] is not None and rows["grid_ts"]["lift_ci_low"] <= rows["grid_ts"]["lift"]
    assert 0 < rows["static"]["capture"] < 1
    import mlflow

    runs = mlflow.search_runs(experiment_names=["test-ab"], output_format="list")
    assert len(runs) == 1
    artifacts = tracking.run_artifacts(runs[0].info.run_id)
    assert "ab_table.csv" in artifacts and "plots/capture_by_arm.png" in artifacts
    assert runs[0].data.metrics["grid_ts.capture"] == pytest.approx(rows["grid_ts"]["capture"])


def test_run_ab_needs_two_seeds() -> None:
    with pytest.raises(InvalidConfig, match="at least 2 seeds"):
        run_ab("core_stationary", ["static", "grid_ts"], seeds=1, track=False)
