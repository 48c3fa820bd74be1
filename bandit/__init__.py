"""adbandit core: outcome events → sufficient statistics → posterior → decisions.

Pure numpy/scipy (polars only when reading frames or files). The simulator and the
live service run these very policy objects.
"""

from bandit.errors import (
    AdbanditError,
    InvalidConfig,
    InvalidDecisionRequest,
    InvalidOutcome,
    InvalidState,
    UnknownNetwork,
    UnknownPlacement,
)
from bandit.events import EventBatch
from bandit.io import load_state, read_events, save_state
from bandit.policy import DecisionBatch, Policy
from bandit.registry import POLICIES, make_policy, policy_from_state
from bandit.types import (
    ALL_SEGMENTS,
    MAX_CPM,
    Allocation,
    Decision,
    NetworkAllocation,
    NetworkConfig,
    OutcomeEvent,
    PlacementConfig,
)

__all__ = [
    "ALL_SEGMENTS",
    "MAX_CPM",
    "POLICIES",
    "AdbanditError",
    "Allocation",
    "Decision",
    "DecisionBatch",
    "EventBatch",
    "InvalidConfig",
    "InvalidDecisionRequest",
    "InvalidOutcome",
    "InvalidState",
    "NetworkAllocation",
    "NetworkConfig",
    "OutcomeEvent",
    "PlacementConfig",
    "Policy",
    "UnknownNetwork",
    "UnknownPlacement",
    "load_state",
    "make_policy",
    "policy_from_state",
    "read_events",
    "save_state",
]
