"""Fixtures shared by the experiments tests: a throw-away MLflow store and one small Ray cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _mlflow_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One store for the session: creating the SQLite schema costs about a second.
    return tmp_path_factory.mktemp("mlflow_project")


@pytest.fixture
def mlflow_project(_mlflow_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in a project dir whose embedded store is ``mlflow.db`` + ``mlruns/``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(_mlflow_project)
    return _mlflow_project


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One small local Ray cluster for the few tests that fan out."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
