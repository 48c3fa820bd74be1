"""Policy configuration files: ``{"policy": name, "params": {...}}`` as written by tuning.

The same file configures a simulation, an A/B arm or the live service's policy, so a
tuned configuration goes to production unchanged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bandit import POLICIES, InvalidConfig, PlacementConfig, Policy, make_policy


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """A policy name and its constructor parameters (``half_life_hours`` included)."""

    policy: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidConfig(f"unknown policy {self.policy!r}; choose one of {sorted(POLICIES)}")
        if not isinstance(self.params, Mapping):
            raise InvalidConfig("params must be an object of policy parameters")
        object.__setattr__(self, "params", dict(self.params))

    def build(self, placement: PlacementConfig, *, seed: int | None = None) -> Policy:
        params = dict(self.params)
        if seed is not None:
            params["seed"] = seed
        return make_policy(self.policy, placement, **params)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "params": _jsonable(self.params)}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> PolicyConfig:
        if not isinstance(body, Mapping) or "policy" not in body:
            raise InvalidConfig('a policy config is an object {"policy": name, "params": {...}}')
        unknown = set(body) - {"policy", "params", "objective", "scenarios", "seeds", "trials"}
        if unknown:
            raise InvalidConfig(f"policy config has unknown fields {sorted(unknown)}")
        params = dict(body.get("params") or {})
        if params.get("half_life_hours") in ("inf", "Infinity"):
            params["half_life_hours"] = math.inf
        return cls(str(body["policy"]), params)


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters with infinities spelled ``"inf"`` (JSON has no infinity)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if hasattr(v, "item"):  # numpy scalar
            v = v.item()
        out[k] = "inf" if isinstance(v, float) and math.isinf(v) else v
    return out


def read_policy_config(path: str | os.PathLike) -> PolicyConfig:
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"cannot read policy config {str(path)!r}: {exc}") from None
    return PolicyConfig.from_dict(body)


def write_policy_config(path: str | os.PathLike, config: PolicyConfig, **extra: Any) -> None:
    """Write ``{"policy", "params", **extra}`` (extra: e.g. the tuning objective) as JSON."""
    body = {**config.to_dict(), **extra}
    Path(path).write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")


def read_placement(path: str | os.PathLike, placement_id: str | None = None) -> PlacementConfig:
    """A placement from a JSON file holding its ``PUT /v1/placements/{id}`` body; the id is
    ``placement_id`` or the file's stem (``p1.json`` → ``p1``)."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"cannot read placement {str(path)!r}: {exc}") from None
    return PlacementConfig.from_dict(placement_id or path.stem, body)


def policy_from_file(path: str | os.PathLike, placement: PlacementConfig, *, seed: int | None = None) -> Policy:
    """The policy configured by a JSON file (as written by ``adbandit tune --out``)."""
    return read_policy_config(path).build(placement, seed=seed)
