"""Promotion through the MLflow registry and loading the champion back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bandit import EventBatch, InvalidState, PlacementConfig, make_policy, policy_from_state
from experiments import tracking
from experiments.model_registry import load_model_state, promote

PLACEMENT = PlacementConfig.from_dict("p1", {"networks": [{"id": "alpha"}, {"id": "beta"}], "segment_by": ["os"]})


def _learned_policy(seed: int):
    policy = make_policy("static", PLACEMENT, weights={"alpha": 0.3, "beta": 0.7}, seed=seed)
    rng = np.random.default_rng(seed)
    n = 200
    filled = rng.random(n) < 0.5
    policy.update(
        EventBatch.from_arrays(
            PLACEMENT,
            segments=("ios", "android"),
            segment_index=rng.integers(0, 2, n),
            network=rng.integers(0, 2, n),
            floor_cpm=np.full(n, 0.5),
            filled=filled,
            revenue_cpm=np.where(filled, 1.0, 0.0),
            ts=1.8e9 + np.arange(n),
        )
    )
    return policy


def _tracked_run(policy) -> str:
    with tracking.start_run("unit", kind="simulate") as run:
        tracking.log_policy_state(policy)
    return run.info.run_id


def test_promote_then_load_gives_the_same_decisions(mlflow_project: Path) -> None:
    policy = _learned_policy(1)
    run_id = _tracked_run(policy)
    promoted = promote(run_id, name="unit-policy")
    assert promoted.alias == "champion"
    loaded = policy_from_state(load_model_state("champion", name="unit-policy"))
    assert (mlflow_project / "mlflow.db").exists()
    assert any((mlflow_project / "mlruns").rglob("state.npz"))
    segs = ["ios", "android", "unseen"] * 50
    a = policy.decide_batch(segs, rng=np.random.default_rng(7))
    b = loaded.decide_batch(segs, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.network, b.network)
    np.testing.assert_array_equal(a.floor_cpm, b.floor_cpm)
    np.testing.assert_array_equal(a.propensity, b.propensity)
    assert loaded.allocation("ios").to_dict() == policy.allocation("ios").to_dict()


def test_a_second_promotion_moves_the_alias(mlflow_project: Path) -> None:
    first = promote(_tracked_run(_learned_policy(2)), name="moving")
    second = promote(_tracked_run(_learned_policy(3)), name="moving")
    assert int(second.version) == int(first.version) + 1
    state = load_model_state("champion", name="moving")
    assert policy_from_state(state).seed == 3
    assert policy_from_state(load_model_state(first.version, name="moving")).seed == 2


def test_promoting_a_run_without_policy_state_fails(mlflow_project: Path) -> None:
    with tracking.start_run("empty", kind="ab") as run:
        tracking.log_metrics({"x": 1.0})
    with pytest.raises(InvalidState, match="no policy_state"):
        promote(run.info.run_id, name="never")


def test_unknown_run_and_alias_fail_with_domain_errors(mlflow_project: Path) -> None:
    with pytest.raises(InvalidState, match="no MLflow run"):
        promote("0" * 32, name="never")
    with pytest.raises(InvalidState, match="no model version"):
        load_model_state("champion", name="does-not-exist")
