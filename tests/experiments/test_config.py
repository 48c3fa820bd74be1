"""Policy configuration files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bandit import InvalidConfig, PlacementConfig
from experiments.config import PolicyConfig, policy_from_file, read_policy_config, write_policy_config

PLACEMENT = PlacementConfig.from_dict("p1", {"networks": [{"id": "alpha"}, {"id": "beta"}]})


def test_round_trip_with_infinite_half_life(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    write_policy_config(path, PolicyConfig("grid_ts", {"half_life_hours": math.inf, "floor_levels": 6}), trials=3)
    body = json.loads(path.read_text())
    assert body == {"policy": "grid_ts", "params": {"half_life_hours": "inf", "floor_levels": 6}, "trials": 3}
    config = read_policy_config(path)
    assert config.params == {"half_life_hours": math.inf, "floor_levels": 6}
    policy = policy_from_file(path, PLACEMENT, seed=4)
    assert policy.name == "grid_ts" and policy.seed == 4 and math.isinf(policy.half_life_hours)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"policy": "nope"}, "unknown policy 'nope'"),
        ({"params": {}}, "a policy config is an object"),
        ({"policy": "static", "extra": 1}, "unknown fields"),
    ],
)
def test_bad_configs_are_rejected(tmp_path: Path, body: dict, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(body))
    with pytest.raises(InvalidConfig, match=message):
        read_policy_config(path)


def test_bad_parameters_surface_when_building() -> None:
    with pytest.raises(InvalidConfig, match="epsilon"):
        PolicyConfig("epsilon_greedy", {"epsilon": 2.0}).build(PLACEMENT)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="cannot read policy config"):
        read_policy_config(tmp_path / "missing.json")
