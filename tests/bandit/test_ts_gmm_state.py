"""ts_gmm's per-cell change detector and hour levels in its state: keyed by the statistics'
cells, and states of earlier versions (keyed by segment and network) still load."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bandit import InvalidState, make_policy, policy_from_state
from tests.bandit.test_state import CFG, synthetic_batch


def test_state_keyed_by_segment_and_network_loads_the_same() -> None:
    policy = make_policy("ts_gmm", CFG, half_life_hours=24.0, seed=5, level_events=200.0)
    rng = np.random.default_rng(0)
    for k in range(5):
        batch = synthetic_batch(rng, 600, 1.8e9 + k * 3600.0)
        if k >= 3:  # prices of the first network rise: its CUSUMs move
            batch = replace(batch, revenue_cpm=batch.revenue_cpm * np.where(batch.network == 0, 1.6, 1.0))
        policy.update(batch, refresh=k == 4)
    state = policy.state()
    assert len(state["drift_cells"]) and len(state["level_cells"]) and np.abs(state["level_log"]).max() > 0
    old = {k: v for k, v in state.items() if k not in ("drift_cells", "level_cells")}
    segments = state["stats_segments"]
    n_net = len(CFG.networks)
    for cells, seg_name, net_name in (
        (state["drift_cells"], "drift_keys", "drift_networks"),
        (state["level_cells"], "level_segments", "level_networks"),
    ):
        old[seg_name] = segments[cells // n_net].astype(np.str_)
        old[net_name] = (cells % n_net).astype(np.int64)
    restored = policy_from_state(old).state()
    assert sorted(restored) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_state_naming_cells_beyond_the_statistics_is_refused() -> None:
    policy = make_policy("ts_gmm", CFG, seed=5)
    policy.update(synthetic_batch(np.random.default_rng(1), 300, 1.8e9))
    state = policy.state()
    state["level_cells"] = np.array([10**12], dtype=np.int64)  # would allocate beyond memory
    state["level_log"] = np.zeros((1, 24))
    with pytest.raises(InvalidState, match="level_cells"):
        policy_from_state(state)


def test_hour_level_counts_without_their_cells_are_refused_by_name() -> None:
    policy = make_policy("ts_gmm", CFG, seed=5, level_events=200.0)
    rng = np.random.default_rng(2)
    for k in range(3):  # events are compared with the history of the batches before them
        policy.update(synthetic_batch(rng, 3000, 1.8e9 + k * 3600.0), refresh=k == 2)
    state = policy.state()
    assert len(state["level_event_cells"]) and state["level_events"].sum() > 0
    del state["level_event_cells"]
    with pytest.raises(InvalidState, match="level_events needs level_event_cells"):
        policy_from_state(state)


def test_fits_stored_before_the_per_request_effects_load_without_them() -> None:
    """States written before the effects hold fits of 1 + 3K columns: they load as fits with
    no effects and the policy's state is the same as it was."""
    policy = make_policy("ts_gmm", CFG, seed=5)
    policy.update(synthetic_batch(np.random.default_rng(3), 3000, 1.8e9))
    state = policy.state()
    params = state["gmm_params"]
    assert params.shape[2] == 3 + 3 * policy.n_components and not np.nan_to_num(params[:, :, -2:]).any()
    old = {**state, "gmm_params": params[:, :, :-2]}
    restored = policy_from_state(old).state()
    for key, value in state.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)


@pytest.mark.parametrize(("column", "value"), [(-2, -0.1), (-2, 5.0), (-1, np.inf), (-1, -1.0)])
def test_fits_with_impossible_effects_are_refused_by_name(column, value) -> None:
    policy = make_policy("ts_gmm", CFG, seed=5)
    policy.update(synthetic_batch(np.random.default_rng(4), 3000, 1.8e9))
    state = policy.state()
    params = state["gmm_params"].copy()
    params[0, 0, column] = value
    with pytest.raises(InvalidState, match="per-request effects"):
        policy_from_state({**state, "gmm_params": params})
