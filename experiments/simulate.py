"""Tracked simulations: one policy on one scenario over several seeds, as one MLflow run.

The seeds fan out as Ray tasks (:func:`simulator.parallel.run_grid`). The final policy
state of seed 0 is rebuilt in process by replaying that run — the same seed gives the
same trajectory, which is checked — so it can be logged and later promoted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bandit import InvalidConfig, Policy
from experiments.config import PolicyConfig

#: Per-step metrics logged to MLflow (mean over seeds at each feedback batch), series → metric
#: name (distinct from the run's summary metrics ``capture``, ``revenue_per_request``, ...).
STEP_METRICS = {
    "capture": "step_capture",
    "cumulative_capture": "step_cumulative_capture",
    "revenue_per_request": "step_revenue_per_request",
    "regret_per_request": "step_regret_per_request",
}


@dataclass(frozen=True)
class ArmSpec:
    """A policy to evaluate: its label in tables and its configuration."""

    label: str
    config: PolicyConfig

    @classmethod
    def parse(cls, text: str) -> ArmSpec:
        """``name`` (default parameters) or ``label=path.json`` (a policy config file)."""
        from experiments.config import read_policy_config

        if "=" in text:
            label, path = text.split("=", 1)
            return cls(label.strip(), read_policy_config(path.strip()))
        return cls(text.strip(), PolicyConfig(text.strip()))

    def policy_spec(self) -> Any:
        from simulator.parallel import PolicySpec

        return PolicySpec(self.config.policy, dict(self.config.params), self.label)


def scenario_path(scenario: str) -> Path | None:
    """The TOML file of a scenario given by name or path (None if it cannot be found)."""
    from simulator.scenario import SCENARIO_DIR

    path = Path(scenario)
    if path.suffix == ".toml" and path.exists():
        return path
    bundled = SCENARIO_DIR / f"{scenario}.toml"
    return bundled if bundled.exists() else None


def fan_out(
    scenario: str,
    arms: Sequence[ArmSpec],
    *,
    seeds: int,
    n_requests: int | None,
    root_seed: int = 0,
    address: str | None = None,
    batch_size: int = 2000,
    progress: bool | str = False,
) -> dict[str, list[pl.DataFrame]]:
    """Trajectories per arm label, each a list ordered by seed index (common random numbers)."""
    from simulator.parallel import run_grid

    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise InvalidConfig(f"arm labels must be unique, got {labels}")
    stacked = run_grid(
        [scenario],
        [a.policy_spec() for a in arms],
        n_seeds=seeds,
        n_requests=n_requests,
        root_seed=root_seed,
        address=address,
        progress=progress,
        batch_size=batch_size,
    )
    out: dict[str, list[pl.DataFrame]] = {}
    for label in labels:
        part = stacked.filter(pl.col("policy") == label)
        out[label] = [part.filter(pl.col("seed") == i).sort("row") for i in range(seeds)]
    return out


def mean_series(trajectories: Sequence[pl.DataFrame]) -> dict[str, np.ndarray]:
    """Per-step metrics averaged over seeds (trajectories share the batch schedule)."""
    length = min(t.height for t in trajectories)

    def col(name: str) -> np.ndarray:
        return np.array([t[name].to_numpy()[:length] for t in trajectories], dtype=float)

    requests = col("requests")
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "requests_total": col("requests_total")[0],
            "capture": np.nanmean(col("capture"), axis=0),
            "cumulative_capture": np.nanmean(col("cumulative_capture"), axis=0),
            "revenue_per_request": np.mean(col("expected_revenue") / requests, axis=0),
            "regret_per_request": np.mean((col("oracle_revenue") - col("expected_revenue")) / requests, axis=0),
        }


def summary_metrics(trajectories: Sequence[pl.DataFrame], *, last: int | None = None) -> dict[str, float]:
    """Run-level metrics: mean (and sd) over seeds of capture and revenue per request."""
    from simulator.runner import capture, summarize

    per_seed = [summarize(t) for t in trajectories]
    caps = np.array([s["capture"] for s in per_seed])
    out = {
        "capture": float(np.mean(caps)),
        "capture_sd": float(np.std(caps, ddof=1)) if len(caps) > 1 else 0.0,
        "revenue_per_request": float(np.mean([s["revenue_per_request"] for s in per_seed])),
        "expected_revenue_per_request": float(np.mean([s["expected_revenue_per_request"] for s in per_seed])),
        "oracle_revenue_per_request": float(np.mean([s["oracle_revenue_per_request"] for s in per_seed])),
        "regret_per_request": float(
            np.mean([s["oracle_revenue_per_request"] - s["expected_revenue_per_request"] for s in per_seed])
        ),
        "fill_rate": float(np.mean([s["fill_rate"] for s in per_seed])),
        "requests": float(per_seed[0]["requests"]),
    }
    if last is not None:
        out["capture_last"] = float(np.mean([capture(t, last=last) for t in trajectories]))
    return out


@dataclass(frozen=True)
class SimulationResult:
    trajectories: list[pl.DataFrame]
    summary: dict[str, float]
    policy: Policy
    run_id: str | None


def replay_seed(
    scenario: str, arm: ArmSpec, *, seed_index: int, root_seed: int, n_requests: int | None, batch_size: int
) -> tuple[Policy, pl.DataFrame]:
    """Re-run one seed of a fan-out in process, returning the final policy and trajectory."""
    from simulator.market import Market
    from simulator.parallel import seed_sequences
    from simulator.runner import build_policy, run

    market = Market(scenario)
    seed = seed_sequences(root_seed, seed_index + 1)[seed_index]
    policy = build_policy(arm.config.policy, market, dict(arm.config.params), seed=seed)
    n = n_requests or market.scenario.default_requests
    return policy, run(policy, market, n, seed=seed, batch_size=batch_size)


def simulate(
    scenario: str,
    policy: str | PolicyConfig = "ts_gmm",
    *,
    seeds: int = 5,
    n_requests: int | None = None,
    root_seed: int = 0,
    address: str | None = None,
    batch_size: int = 2000,
    track: bool = True,
    experiment: str = "adbandit",
    progress: bool | str = False,
) -> SimulationResult:
    """Run ``policy`` on ``scenario`` for ``seeds`` seeds and (with ``track``) log one MLflow
    run: parameters, scenario file, per-step metrics, summary, plots and the final state."""
    config = policy if isinstance(policy, PolicyConfig) else PolicyConfig(policy)
    arm = ArmSpec(config.policy, config)
    trajectories = fan_out(
        scenario,
        [arm],
        seeds=seeds,
        n_requests=n_requests,
        root_seed=root_seed,
        address=address,
        batch_size=batch_size,
        progress=progress,
    )[arm.label]
    final, replayed = replay_seed(
        scenario, arm, seed_index=0, root_seed=root_seed, n_requests=n_requests, batch_size=batch_size
    )
    ray_revenue = float(trajectories[0]["expected_revenue"].sum())
    if not math.isclose(float(replayed["expected_revenue"].sum()), ray_revenue, rel_tol=1e-9):
        # A policy that is not a pure function of its seed: the logged state is still a
        # valid final state, just not the one behind seed 0's trajectory.
        warnings.warn(
            f"{config.policy}: replaying seed 0 in process did not reproduce the Ray run; "
            "the logged policy state comes from the replay",
            RuntimeWarning,
            stacklevel=2,
        )
    n_total = int(trajectories[0]["requests_total"].max())
    summary = summary_metrics(trajectories, last=max(n_total // 5, 1))
    run_id = None
    if track:
        run_id = _track_simulation(
            scenario, config, seeds, n_total, root_seed, batch_size, trajectories, summary, final, experiment
        )
    return SimulationResult(trajectories, summary, final, run_id)


def _track_simulation(
    scenario: str,
    config: PolicyConfig,
    seeds: int,
    n_requests: int,
    root_seed: int,
    batch_size: int,
    trajectories: Sequence[pl.DataFrame],
    summary: Mapping[str, float],
    final: Policy,
    experiment: str,
) -> str:
    from experiments import plots, tracking

    name = Path(scenario).stem
    with tracking.start_run(f"simulate {config.policy} on {name}", kind="simulate", experiment=experiment) as run:
        tracking.log_params(
            {
                "scenario": name,
                "policy": config.policy,
                "seeds": seeds,
                "n_requests": n_requests,
                "root_seed": root_seed,
                "batch_size": batch_size,
                "params": config.to_dict()["params"],
            }
        )
        path = scenario_path(scenario)
        if path is not None:
            tracking.log_file(path, "scenario")
        series = mean_series(trajectories)
        tracking.log_step_metrics(
            {name: series[k] for k, name in STEP_METRICS.items()}, series["requests_total"].astype(np.int64)
        )
        tracking.log_metrics(summary)
        for fname, fig in plots.all_figures(trajectories, f"{config.policy} on {name}").items():
            tracking.log_figure(fig, f"plots/{fname}")
        tracking.log_text(pl.concat(trajectories, how="diagonal_relaxed").write_csv(), "trajectory.csv")
        tracking.log_policy_state(final)
    return run.info.run_id
