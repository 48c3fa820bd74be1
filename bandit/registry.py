"""Policy names → classes, and rebuilding a policy from its saved state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bandit.errors import InvalidConfig, InvalidState
from bandit.io import state_meta
from bandit.policies.epsilon_greedy import EpsilonGreedyPolicy
from bandit.policies.grid_ts import GridThompsonPolicy
from bandit.policies.static import StaticPolicy
from bandit.policies.ts_gmm import ThompsonGmmPolicy
from bandit.policies.ucb1 import UCB1Policy
from bandit.policy import STATE_SCHEMA_VERSION, Policy
from bandit.types import PlacementConfig

_CLASSES = (EpsilonGreedyPolicy, GridThompsonPolicy, StaticPolicy, ThompsonGmmPolicy, UCB1Policy)
POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in _CLASSES}


def make_policy(name: str, placement: PlacementConfig, **params: Any) -> Policy:
    """Build the policy called ``name`` (see :data:`POLICIES`) for a placement."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise InvalidConfig(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
    try:
        return cls(placement, **params)
    except TypeError as exc:
        raise InvalidConfig(f"bad parameters for policy {name!r}: {exc}") from None


def policy_from_state(state: Mapping[str, np.ndarray]) -> Policy:
    """Rebuild a policy exactly from :meth:`Policy.state` (checks the schema version)."""
    meta = state_meta(state)
    if meta.get("schema_version") != STATE_SCHEMA_VERSION:
        raise InvalidState(
            f"policy state has schema version {meta.get('schema_version')}, this build reads {STATE_SCHEMA_VERSION}"
        )
    cls = POLICIES.get(meta.get("policy"))
    if cls is None:
        raise InvalidState(f"policy state names unknown policy {meta.get('policy')!r}")
    try:
        return cls._from_state(state, meta)
    except InvalidState:
        raise
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        # Missing arrays or fields, wrong shapes, a meta that no longer validates.
        raise InvalidState(f"policy state of {meta.get('policy')!r} is corrupt: {exc!r}") from None
