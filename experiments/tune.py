"""Hyperparameter tuning of a policy with Ray Tune, every trial tracked in MLflow.

A trial is one policy configuration, evaluated on every scenario × seed (the same seeds
for every trial: common random numbers make trials comparable). The objective is the
mean capture (expected revenue / oracle revenue on the same requests). Trials run as
Ray Tune trials (random search, seeded); the driver logs each as an MLflow child run
under one parent run, and writes the best configuration as
``{"policy": name, "params": {...}}`` — what :func:`experiments.config.policy_from_file`
and ``adbandit serve`` read.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandit import POLICIES, InvalidConfig
from experiments.config import PolicyConfig, write_policy_config

#: Search space per policy: name → (kind, low, high) with kind in loguniform/uniform/int.
TUNABLE: dict[str, dict[str, tuple[str, float, float]]] = {
    "ts_gmm": {
        "half_life_hours": ("loguniform", 1.0, 336.0),
        "prior_strength": ("loguniform", 0.25, 20.0),
        "n_components": ("int", 1, 4),
        "explore_floor": ("uniform", 0.0, 0.1),
    },
    "grid_ts": {
        "half_life_hours": ("loguniform", 1.0, 336.0),
        "floor_levels": ("int", 4, 16),
    },
    "epsilon_greedy": {
        "epsilon": ("loguniform", 0.01, 0.3),
        "half_life_hours": ("loguniform", 1.0, 336.0),
        "floor_levels": ("int", 4, 16),
    },
    "ucb1": {
        "c": ("loguniform", 0.05, 5.0),
        "half_life_hours": ("loguniform", 1.0, 336.0),
        "floor_levels": ("int", 4, 16),
    },
}

DEFAULT_SCENARIOS = ("core_stationary", "core_drift")


def search_space(policy: str) -> dict[str, Any]:
    """The Ray Tune ``param_space`` of a policy (from :data:`TUNABLE`)."""
    from ray import tune

    space = TUNABLE.get(policy)
    if space is None:
        raise InvalidConfig(f"no search space for policy {policy!r}; tunable: {sorted(TUNABLE)}")
    out: dict[str, Any] = {}
    for name, (kind, lo, hi) in space.items():
        if kind == "loguniform":
            out[name] = tune.loguniform(lo, hi)
        elif kind == "uniform":
            out[name] = tune.uniform(lo, hi)
        elif kind == "int":
            out[name] = tune.randint(int(lo), int(hi) + 1)  # randint's upper bound is exclusive
        else:
            raise InvalidConfig(f"unknown search kind {kind!r} for {policy}.{name}")
    return out


def clean_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Trial config → policy parameters with plain Python types (ints stay ints)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def evaluate_config(
    policy: str,
    params: Mapping[str, Any],
    scenarios: Sequence[str],
    seeds: Sequence[int],
    n_requests: int | None,
    *,
    batch_size: int = 2000,
    report: Any = None,
) -> dict[str, float]:
    """Mean capture of one configuration over scenarios × seeds, run in this process.

    ``report`` (if given) is called after each scenario with the running metrics, so a
    Ray Tune scheduler could stop a poor trial early. Returns ``capture`` (the objective),
    ``capture_<scenario>`` and ``capture_sd`` (over all runs).
    """
    from simulator.market import Market
    from simulator.runner import build_policy, run, summarize

    metrics: dict[str, float] = {}
    captures: list[float] = []
    for sc in scenarios:
        market = Market(sc)
        n = int(n_requests or market.scenario.default_requests)
        per_seed = []
        for seed in seeds:
            pol = build_policy(policy, market, dict(params), seed=seed)
            market.reset()
            per_seed.append(summarize(run(pol, market, n, seed=seed, batch_size=batch_size))["capture"])
        metrics[f"capture_{sc}"] = float(np.mean(per_seed))
        captures.extend(per_seed)
        metrics["capture"] = float(np.mean(captures))
        if report is not None:
            report(dict(metrics))
    metrics["capture_sd"] = float(np.std(captures, ddof=1)) if len(captures) > 1 else 0.0
    return metrics


def _trainable(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: evaluates ``config["params"]`` and reports capture."""
    from ray import tune

    setup = config["setup"]
    params = clean_params(config["params"])
    metrics = evaluate_config(
        setup["policy"],
        params,
        setup["scenarios"],
        setup["seeds"],
        setup["n_requests"],
        batch_size=setup["batch_size"],
        report=tune.report,
    )
    tune.report(metrics)


@dataclass(frozen=True, slots=True)
class TuneResult:
    """Best configuration, its objective, every trial (params + metrics) and the parent run."""

    best: PolicyConfig
    best_capture: float
    trials: list[dict[str, Any]]
    parent_run_id: str | None


def trial_seeds(root: int, n: int) -> list[int]:
    """``n`` run seeds from one root (``SeedSequence(root).spawn``), the same for every trial."""
    return [int(s.generate_state(1, dtype=np.uint32)[0]) for s in np.random.SeedSequence(root).spawn(n)]


def tune_policy(
    policy: str = "ts_gmm",
    scenarios: Sequence[str] = DEFAULT_SCENARIOS,
    *,
    trials: int = 20,
    seeds: int = 3,
    n_requests: int | None = None,
    batch_size: int = 2000,
    root_seed: int = 0,
    address: str | None = None,
    out: str | os.PathLike | None = None,
    track: bool = True,
    experiment: str = "adbandit-tune",
    progress: bool | str = False,
) -> TuneResult:
    """Random search over :data:`TUNABLE[policy]` with Ray Tune; see the module docstring.

    ``address`` connects to a Ray cluster (None: a local one, started if needed).
    With ``track`` every trial is an MLflow child run of one parent run. ``progress`` counts
    finished trials (:class:`simulator.progress.Progress`; a string labels its lines).
    """
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from simulator.progress import Progress

    if policy not in POLICIES:
        raise InvalidConfig(f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}")
    if trials < 1 or seeds < 1:
        raise InvalidConfig("need trials >= 1 and seeds >= 1")
    from simulator.scenario import load_scenario

    for sc in scenarios:  # fail fast, before any trial starts
        load_scenario(sc)
    space = search_space(policy)
    run_seeds = trial_seeds(root_seed, seeds)
    setup = {
        "policy": policy,
        "scenarios": list(scenarios),
        "seeds": run_seeds,
        "n_requests": n_requests,
        "batch_size": batch_size,
    }
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    storage = tempfile.mkdtemp(prefix="adbandit-tune-")
    label = progress if isinstance(progress, str) else "tune"
    shown = Progress(label, trials, unit="trials", enabled=bool(progress))

    class CountTrials(tune.Callback):
        """Counts trials as they end (on the driver). Tune pickles its run config for resuming:
        a copy counts nothing (the progress holds a stream)."""

        def __init__(self, progress: Progress | None) -> None:
            self.progress = progress

        def __getstate__(self) -> dict[str, Any]:
            return {"progress": None}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.progress is not None:
                self.progress.update()

        on_trial_error = on_trial_complete

    try:
        tuner = tune.Tuner(
            _trainable,
            param_space={"setup": setup, "params": space},
            tune_config=tune.TuneConfig(
                num_samples=trials,
                metric="capture",
                mode="max",
                search_alg=BasicVariantGenerator(random_state=root_seed),
            ),
            run_config=tune.RunConfig(
                storage_path=storage, name=f"tune-{policy}", verbose=0, callbacks=[CountTrials(shown)]
            ),
        )
        grid = tuner.fit()
    finally:
        shown.close()
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
    records = []
    for res in grid:
        if res.error is not None or "capture" not in (res.metrics or {}):
            records.append(
                {
                    "params": clean_params(res.config["params"]),
                    "metrics": {},
                    "error": str(res.error),
                }
            )
            continue
        metrics = {k: float(v) for k, v in res.metrics.items() if k.startswith("capture")}
        records.append({"params": clean_params(res.config["params"]), "metrics": metrics, "error": None})
    ok = [r for r in records if r["error"] is None]
    if not ok:
        raise InvalidConfig(f"every tuning trial failed; first error: {records[0]['error']}")
    best = max(ok, key=lambda r: r["metrics"]["capture"])
    best_config = PolicyConfig(policy, best["params"])
    parent = _track(policy, setup, records, best_config, best, experiment) if track else None
    if out is not None:
        write_policy_config(
            out,
            best_config,
            objective={"capture": best["metrics"]["capture"]},
            scenarios=list(scenarios),
            seeds=seeds,
            trials=trials,
        )
    return TuneResult(best_config, best["metrics"]["capture"], records, parent)


def _track(
    policy: str,
    setup: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    best: PolicyConfig,
    best_record: Mapping[str, Any],
    experiment: str,
) -> str:
    """Log the tuning as a parent run with one child run per trial; returns the parent id."""
    import json

    from experiments import tracking

    with tracking.start_run(f"tune {policy}", kind="tune", experiment=experiment) as parent:
        tracking.log_params(
            {
                "policy": policy,
                "scenarios": ",".join(setup["scenarios"]),
                "seeds": len(setup["seeds"]),
                "n_requests": setup["n_requests"],
                "trials": len(records),
                "batch_size": setup["batch_size"],
                "search_space": json.dumps(TUNABLE[policy]),
            }
        )
        from experiments.simulate import scenario_path

        for sc in setup["scenarios"]:
            path = scenario_path(sc)
            if path is not None:
                tracking.log_file(path, "scenarios")
        for i, rec in enumerate(records):
            with tracking.start_run(f"trial {i}", kind="trial", experiment=experiment, nested=True):
                tracking.log_params({"policy": policy, **rec["params"]})
                if rec["error"] is None:
                    tracking.log_metrics(rec["metrics"])
                else:
                    tracking.log_text(rec["error"], "error.txt")
        tracking.log_metrics(
            {
                "best_capture": best_record["metrics"]["capture"],
                "failed_trials": sum(r["error"] is not None for r in records),
            }
        )
        tracking.log_text(json.dumps(best.to_dict(), indent=2), "best.json")
        for k, v in best.to_dict()["params"].items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                tracking.log_metrics({f"best.{k}": float(v)})
    return parent.info.run_id
