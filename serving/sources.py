"""What the service takes from outside its layer, as small protocols wired at the edge.

``serving/`` imports nothing from ``experiments/`` or ``simulator/``: the ``adbandit``
command line (:mod:`adbandit.wiring`) passes these in.

* :class:`ModelSource` — where ``serve --model ALIAS`` and ``POST /v1/admin/placements/{p}/model``
  with ``mlflow_alias`` read a policy state (the CLI wires the MLflow model registry,
  :class:`experiments.model_registry.MlflowModelSource`).
* :class:`DemoSource` — the demo placement and a market that answers its decisions
  (the CLI wires :class:`simulator.demo.MarketDemo`), for ``serve --demo``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from bandit import PlacementConfig

#: Decides requests given (request_id, context) pairs: one (network, floor_cpm, decision_id) each.
Decider = Callable[[Sequence[tuple[str, dict]]], list[tuple[str, float, str | None]]]


@runtime_checkable
class ModelSource(Protocol):
    """A registry of promoted policy states."""

    def load(self, alias: str, name: str) -> dict[str, np.ndarray]:
        """The policy state (``bandit.policy_from_state`` input) of model ``name`` at ``alias``
        (or at a version number given as ``alias``). Raises :class:`bandit.InvalidState` when
        there is no such model version; any other exception means the registry is unreachable."""
        ...


@runtime_checkable
class DemoSource(Protocol):
    """A placement and a synthetic market that answers the live policy's decisions."""

    def placement(self) -> PlacementConfig:
        """The demo placement's configuration."""
        ...

    def events(self, n: int, *, seed: int, ts: float, decide: Decider, start: int) -> list[dict]:
        """``n`` outcome events (HTTP-contract dicts) answering the decisions ``decide`` makes for
        ``n`` fresh requests; event ids ``demo-<start + i>``, event times ending at ``ts``."""
        ...
