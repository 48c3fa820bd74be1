"""Promoting a run's policy to production through the MLflow model registry.

A promoted model version's source is the run's ``policy_state`` artifact directory (the
``bandit.save_state`` .npz written by :func:`experiments.tracking.log_policy_state`); the
``champion`` alias points at the version the live service loads
(``adbandit serve --model champion``, through :class:`MlflowModelSource`). No pickle: the
service rebuilds the policy with :func:`bandit.policy_from_state`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit import InvalidState, load_state, policy_from_state
from experiments.tracking import POLICY_STATE_DIR, POLICY_STATE_FILE, setup

DEFAULT_MODEL_NAME = "adbandit-policy"
DEFAULT_ALIAS = "champion"


@dataclass(frozen=True, slots=True)
class PromotedModel:
    name: str
    version: str
    alias: str
    run_id: str
    source: str


def _client(project_dir: str | os.PathLike | None):  # -> mlflow.MlflowClient (imported lazily)
    import mlflow

    setup(project_dir=project_dir)
    return mlflow.MlflowClient()


def promote(
    run_id: str,
    name: str = DEFAULT_MODEL_NAME,
    *,
    alias: str = DEFAULT_ALIAS,
    project_dir: str | os.PathLike | None = None,
) -> PromotedModel:
    """Register run ``run_id``'s policy state as a new version of model ``name`` and point
    ``alias`` at it. Raises :class:`InvalidState` if the run has no loadable policy state."""
    from mlflow.exceptions import MlflowException

    client = _client(project_dir)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise InvalidState(f"no MLflow run {run_id!r}: {exc.message}") from None
    files = [a.path for a in client.list_artifacts(run_id, POLICY_STATE_DIR)]
    if f"{POLICY_STATE_DIR}/{POLICY_STATE_FILE}" not in files:
        raise InvalidState(f"run {run_id!r} has no {POLICY_STATE_DIR}/{POLICY_STATE_FILE} artifact to promote")
    # Check the state is readable before it can reach production.
    state = _download_state(f"runs:/{run_id}/{POLICY_STATE_DIR}")
    meta_policy = policy_from_state(state).name
    try:
        client.create_registered_model(name, description="adbandit policy state (.npz, no pickle)")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{POLICY_STATE_DIR}",
        run_id=run_id,
        tags={"adbandit.policy": meta_policy, "adbandit.run_name": run.info.run_name or ""},
    )
    client.set_registered_model_alias(name, alias, version.version)
    return PromotedModel(name, str(version.version), alias, run_id, version.source)


def _download_state(uri: str) -> dict[str, np.ndarray]:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        path = local / POLICY_STATE_FILE if local.is_dir() else local
        if not path.exists():
            raise InvalidState(f"{uri} holds no {POLICY_STATE_FILE}")
        return load_state(path)


def load_model_state(
    alias: str = DEFAULT_ALIAS,
    name: str = DEFAULT_MODEL_NAME,
    *,
    project_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """The policy state of model ``name`` at ``alias`` (or at a version number given as
    ``alias``), ready for :func:`bandit.policy_from_state`."""
    from mlflow.exceptions import MlflowException

    client = _client(project_dir)
    try:
        if alias.isdigit():
            version = client.get_model_version(name, alias)
        else:
            version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise InvalidState(f"no model version {name}@{alias}: {exc.message}") from None
    return _download_state(version.source)


@dataclass(frozen=True, slots=True)
class MlflowModelSource:
    """The MLflow model registry as the service's :class:`serving.sources.ModelSource`
    (``adbandit serve`` wires it in; ``project_dir`` as in :func:`experiments.tracking.setup`)."""

    project_dir: str | os.PathLike | None = None

    def load(self, alias: str, name: str) -> dict[str, np.ndarray]:
        return load_model_state(alias=alias, name=name, project_dir=self.project_dir)
