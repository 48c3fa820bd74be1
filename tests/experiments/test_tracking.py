"""Tracked simulations: the MLflow run's params, metrics, artifacts; simulate → promote → load."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from bandit import policy_from_state
from experiments import tracking
from experiments.model_registry import load_model_state, promote
from experiments.simulate import simulate


@pytest.fixture(scope="module")
def simulated(ray_cluster, _mlflow_project: Path):
    """One tracked two-seed simulation shared by the tests of this module."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.chdir(_mlflow_project)
    try:
        yield simulate("core_stationary", "grid_ts", seeds=2, n_requests=8000, experiment="test-simulate")
    finally:
        mp.undo()


def test_simulation_run_holds_params_metrics_and_artifacts(simulated, mlflow_project: Path) -> None:
    run = mlflow.get_run(simulated.run_id)
    assert run.data.params["policy"] == "grid_ts"
    assert run.data.params["scenario"] == "core_stationary"
    assert run.data.params["seeds"] == "2"
    assert run.data.tags["adbandit.kind"] == "simulate"
    assert run.data.tags.get("mlflow.source.git.commit") == tracking.git_commit()  # None outside git
    assert run.data.metrics["capture"] == pytest.approx(simulated.summary["capture"])
    history = mlflow.MlflowClient().get_metric_history(simulated.run_id, "step_capture")
    assert [m.step for m in history] == list(range(2000, 8001, 2000))
    artifacts = tracking.run_artifacts(simulated.run_id)
    for name in ("cumulative_revenue", "capture", "weights", "floors"):
        assert f"plots/{name}.png" in artifacts
    assert "scenario/core_stationary.toml" in artifacts
    assert "policy_state/state.npz" in artifacts
    assert (mlflow_project / "mlflow.db").exists()


def test_summary_capture_is_the_mean_over_seeds(simulated) -> None:
    caps = [t["expected_revenue"].sum() / t["oracle_revenue"].sum() for t in simulated.trajectories]
    assert simulated.summary["capture"] == pytest.approx(np.mean(caps))
    assert 0.0 < simulated.summary["capture"] < 1.0


def test_simulate_promote_load_gives_the_same_decisions(simulated, mlflow_project: Path) -> None:
    promote(simulated.run_id, name="sim-policy")
    loaded = policy_from_state(load_model_state("champion", name="sim-policy"))
    assert loaded.name == "grid_ts"
    a = simulated.policy.decide_batch(n=500, rng=np.random.default_rng(3))
    b = loaded.decide_batch(n=500, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.network, b.network)
    np.testing.assert_array_equal(a.floor_cpm, b.floor_cpm)
    np.testing.assert_array_equal(a.floor_propensity, b.floor_propensity)


def test_tracking_uri_defaults_to_the_project_dir_and_env_overrides(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_flatten_params_names_nested_keys() -> None:
    flat = tracking.flatten_params({"policy": "ts_gmm", "params": {"half_life_hours": 6.0, "n": {"k": 1}}})
    assert flat == {"policy": "ts_gmm", "params.half_life_hours": "6.0", "params.n.k": "1"}


def test_step_metrics_are_thinned_to_max_steps(mlflow_project: Path) -> None:
    steps = np.arange(1, 2001) * 10
    with tracking.start_run("thin", kind="simulate", experiment="test-thin") as run:
        tracking.log_step_metrics({"x": np.sin(steps)}, steps)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "x")
    assert len(history) == tracking.MAX_STEPS
    assert history[0].step == 10 and max(m.step for m in history) == 20000
