"""MLflow tracking of simulations, A/B evaluations and tuning runs.

Every experiment is an MLflow run: parameters, the scenario file, per-step metrics
(capture, revenue, regret), summary metrics, PNG plots, the final policy state and the
git commit. The default store is embedded — ``sqlite:///<project dir>/mlflow.db`` with
artifacts under ``<project dir>/mlruns`` (project dir = the current working directory);
``MLFLOW_TRACKING_URI`` overrides it (e.g. a shared tracking server).

This module and :mod:`experiments.model_registry` are the only ones importing mlflow.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit import Policy, save_state

DEFAULT_EXPERIMENT = "adbandit"
#: Artifact path of a run's final policy state (what :func:`model_registry.promote` registers).
POLICY_STATE_DIR = "policy_state"
POLICY_STATE_FILE = "state.npz"
#: At most this many points per step-metric series (longer trajectories are thinned).
MAX_STEPS = 500

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri(project_dir: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded SQLite store of the project dir."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(project_dir or Path.cwd()).resolve() / 'mlflow.db')}"


def artifact_root(project_dir: str | os.PathLike | None = None) -> str:
    return (Path(project_dir or Path.cwd()).resolve() / "mlruns").as_uri()


def setup(experiment: str = DEFAULT_EXPERIMENT, project_dir: str | os.PathLike | None = None) -> str:
    """Point MLflow at the store and make sure ``experiment`` exists; returns its id."""
    import mlflow

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's own SQLAlchemy usage, not ours.
    warnings.filterwarnings("ignore", message=".*noload.*loader strategy", module="mlflow")
    warnings.filterwarnings("ignore", message=".*noload.*loader strategy")
    uri = tracking_uri(project_dir)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    # The embedded store keeps artifacts beside the database; a server picks its own root.
    location = artifact_root(project_dir) if "MLFLOW_TRACKING_URI" not in os.environ else None
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except Exception:  # created concurrently by another process?
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the code's repository (by default the one holding this
    package, whatever the working directory), or None outside a repository."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@contextlib.contextmanager
def start_run(
    run_name: str,
    *,
    kind: str,
    experiment: str = DEFAULT_EXPERIMENT,
    nested: bool = False,
    tags: Mapping[str, str] | None = None,
    project_dir: str | os.PathLike | None = None,
) -> Iterator[Any]:
    """An MLflow run tagged with its kind (simulate/ab/tune/trial) and the git commit."""
    import mlflow

    experiment_id = setup(experiment, project_dir)
    all_tags = {"adbandit.kind": kind, **(tags or {})}
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    with mlflow.start_run(run_name=run_name, experiment_id=experiment_id, nested=nested, tags=all_tags) as run:
        yield run


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``a.b`` keys with string values (what MLflow stores)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params(flatten_params(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite metrics (NaN/inf are skipped: MLflow stores them, but they break plots)."""
    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_step_metrics(series: Mapping[str, Sequence[float]], steps: Sequence[int]) -> None:
    """Per-step metric series (same length as ``steps``), thinned to :data:`MAX_STEPS` points,
    sent in batches of 1000 (MLflow's batch limit)."""
    import mlflow
    from mlflow.entities import Metric

    steps = np.asarray(steps, dtype=np.int64)
    if len(steps) == 0:
        return
    keep = np.unique(np.linspace(0, len(steps) - 1, min(MAX_STEPS, len(steps))).astype(np.int64))
    run_id = mlflow.active_run().info.run_id
    ts = int(1000 * time.time())
    metrics = []
    for key, values in series.items():
        arr = np.asarray(values, dtype=np.float64)
        metrics.extend(Metric(key, float(arr[i]), ts, int(steps[i])) for i in keep if math.isfinite(arr[i]))
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_file(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(text, artifact_file)


def log_policy_state(policy_or_state: Policy | Mapping[str, np.ndarray]) -> str:
    """Save the policy state (``bandit.save_state`` .npz) as ``policy_state/state.npz``;
    returns its artifact URI."""
    import mlflow

    state = policy_or_state.state() if isinstance(policy_or_state, Policy) else policy_or_state
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / POLICY_STATE_FILE
        save_state(path, state)
        mlflow.log_artifact(str(path), artifact_path=POLICY_STATE_DIR)
    return f"{mlflow.get_artifact_uri(POLICY_STATE_DIR)}"


def log_figure(fig: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact and close it."""
    import matplotlib.pyplot as plt
    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def run_artifacts(run_id: str, path: str = "") -> list[str]:
    """Artifact paths of a run (recursively), for tests and reports."""
    import mlflow

    client = mlflow.MlflowClient()
    out: list[str] = []
    stack = [path]
    while stack:
        for info in client.list_artifacts(run_id, stack.pop() or None):
            (stack if info.is_dir else out).append(info.path)
    return sorted(out)
