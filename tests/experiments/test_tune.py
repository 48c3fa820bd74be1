"""Tuning: search spaces, the objective, and a small Ray Tune run tracked in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from bandit import POLICIES, InvalidConfig, make_policy
from experiments.config import policy_from_file
from experiments.tune import TUNABLE, evaluate_config, search_space, trial_seeds, tune_policy
from simulator.scenario import load_scenario


@pytest.mark.parametrize("policy", sorted(TUNABLE))
def test_every_tunable_policy_accepts_its_search_space_bounds(policy: str) -> None:
    placement = load_scenario("core_stationary").placement()
    for corner in (0, 1):
        params = {}
        for name, (kind, lo, hi) in TUNABLE[policy].items():
            value = (lo, hi)[corner]
            params[name] = int(value) if kind == "int" else float(value)
        assert make_policy(policy, placement, **params).name == policy
    assert set(search_space(policy)) == set(TUNABLE[policy])


def test_unknown_policy_has_no_search_space() -> None:
    with pytest.raises(InvalidConfig, match="no search space"):
        search_space("static")
    assert set(TUNABLE) <= set(POLICIES)


def test_objective_is_deterministic_for_fixed_seeds() -> None:
    seeds = trial_seeds(0, 2)
    a = evaluate_config("epsilon_greedy", {"epsilon": 0.1}, ["core_stationary"], seeds, 3000)
    b = evaluate_config("epsilon_greedy", {"epsilon": 0.1}, ["core_stationary"], seeds, 3000)
    assert a == b
    assert a["capture"] == a["capture_core_stationary"]
    assert 0.0 < a["capture"] < 1.0


def test_tune_writes_the_best_config_and_tracks_every_trial(
    ray_cluster, mlflow_project: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "best.json"
    result = tune_policy(
        "epsilon_greedy",
        ["core_stationary"],
        trials=3,
        seeds=1,
        n_requests=3000,
        out=out,
        experiment="test-tune",
        progress="tune",
    )
    assert "tune: 3/3 trials done, " in capsys.readouterr().err  # counted as trials end
    body = json.loads(out.read_text())
    assert body["policy"] == "epsilon_greedy"
    assert set(body["params"]) == set(TUNABLE["epsilon_greedy"])
    captures = [t["metrics"]["capture"] for t in result.trials]
    assert len(captures) == 3 and result.best_capture == max(captures)
    policy = policy_from_file(out, load_scenario("core_stationary").placement())
    assert policy.params["epsilon"] == pytest.approx(body["params"]["epsilon"])
    runs = mlflow.search_runs(experiment_names=["test-tune"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(children) == 3
    assert sorted(r.data.metrics["capture"] for r in children) == sorted(captures)
