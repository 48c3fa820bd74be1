"""Ray fan-out of simulation runs: scenarios × policies × seeds as independent tasks.

Each run is a stateless ``@ray.remote`` task that builds its policy from
``(name, params)`` with :func:`bandit.make_policy` and calls
:func:`simulator.runner.run`, so a run on Ray is the very same computation as in
process: the same seed gives the same trajectory. Markets are ``ray.put`` once per
scenario and shared by all of its tasks. Seeds come from
``np.random.SeedSequence(root_seed).spawn(n_seeds)``; seed ``i`` is the same for every
policy, so policies are compared on common random numbers.

``ray.init(address=None)`` starts a local cluster; pass ``address="auto"`` or
``"ray://host:10001"`` to use an existing one (the project must be installed on its
nodes). This is the only module of :mod:`simulator` that imports Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import ray

from simulator.market import Market
from simulator.progress import Progress
from simulator.runner import SegmentCapture, build_policy, capture, run, summarize, table_report
from simulator.scenario import Scenario


@dataclass(frozen=True)
class PolicySpec:
    """A policy to build inside a task: registry ``name``, constructor ``params`` and the
    ``label`` it carries in results (default: the name)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def tag(self) -> str:
        return self.label or self.name

    @classmethod
    def of(cls, spec: PolicySpec | str | tuple[str, Mapping[str, Any]]) -> PolicySpec:
        """Accept a spec, a bare name, or a ``(name, params)`` pair."""
        if isinstance(spec, PolicySpec):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        name, params = spec
        return cls(name, dict(params))


@dataclass(frozen=True)
class RunSpec:
    """One simulation run: scenario (index into the job's markets), policy, seed, length."""

    scenario: int
    policy: PolicySpec
    seed_index: int
    seed: np.random.SeedSequence
    n_requests: int


def seed_sequences(root_seed: int, n_seeds: int) -> list[np.random.SeedSequence]:
    """The run seeds of a job: ``SeedSequence(root_seed).spawn(n_seeds)``."""
    return np.random.SeedSequence(root_seed).spawn(n_seeds)


def run_one(market: Market, spec: RunSpec, run_kwargs: Mapping[str, Any]) -> pl.DataFrame:
    """Build the policy and run it: the body of every task (also usable in process)."""
    policy = build_policy(spec.policy.name, market, dict(spec.policy.params), seed=spec.seed)
    traj = run(policy, market, spec.n_requests, seed=spec.seed, **run_kwargs)
    return _label(traj, market, spec)


def tables_one(market: Market, spec: RunSpec, segments: Sequence[str], run_kwargs: Mapping[str, Any]) -> pl.DataFrame:
    """Build the policy, run it, and report its final tables of ``segments`` and their capture
    over the run (:func:`simulator.runner.table_report`; also usable in process)."""
    policy = build_policy(spec.policy.name, market, dict(spec.policy.params), seed=spec.seed)
    during = SegmentCapture(market)
    run(policy, market, spec.n_requests, seed=spec.seed, on_batch=during, **run_kwargs)
    return _label(table_report(policy, market, segments, during=during), market, spec)


def _label(frame: pl.DataFrame, market: Market, spec: RunSpec) -> pl.DataFrame:
    return frame.with_columns(
        pl.lit(market.scenario.name).alias("scenario"),
        pl.lit(spec.policy.tag).alias("policy"),
        pl.lit(spec.seed_index).alias("seed"),
    )


@ray.remote(num_cpus=1)
def _run_task(market: Market, spec: RunSpec, run_kwargs: Mapping[str, Any]) -> pl.DataFrame:
    return run_one(market, spec, run_kwargs)


@ray.remote(num_cpus=1)
def _tables_task(market: Market, spec: RunSpec, segments: Sequence[str], run_kwargs: Mapping[str, Any]) -> pl.DataFrame:
    return tables_one(market, spec, segments, run_kwargs)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once: a local cluster (``address=None``) or an existing one."""
    if ray.is_initialized():
        return
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    else:
        ray.init(address=address)


def run_grid(
    scenarios: Sequence[str | Scenario | Market],
    policies: Sequence[PolicySpec | str | tuple[str, Mapping[str, Any]]],
    *,
    n_seeds: int,
    n_requests: int | None = None,
    root_seed: int = 0,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool | str = True,
    **run_kwargs: Any,
) -> pl.DataFrame:
    """Run every scenario × policy × seed as a Ray task; return all trajectories.

    The result stacks the trajectories (see :func:`simulator.runner.run`) with columns
    ``scenario``, ``policy`` (the spec's label) and ``seed`` (index); per-network columns
    of different scenarios are kept side by side (null where a network is absent).
    ``n_requests`` defaults to each scenario's ``default_requests``. Other keyword
    arguments go to :func:`simulator.runner.run` (``batch_size``, ``record_every``, ...).
    ``progress`` counts finished runs on stderr (:class:`simulator.progress.Progress`: a bar on
    a terminal, a line every 10 s or 10% otherwise); a string is the label of those lines.
    """
    markets = [m if isinstance(m, Market) else Market(m) for m in scenarios]
    specs = [PolicySpec.of(p) for p in policies]
    seeds = seed_sequences(root_seed, n_seeds)
    runs = [
        RunSpec(s, p, i, seed, n_requests or m.scenario.default_requests)
        for s, m in enumerate(markets)
        for p in specs
        for i, seed in enumerate(seeds)
    ]
    ensure_ray(address, num_cpus)
    market_refs = [ray.put(m) for m in markets]
    kwargs_ref = ray.put(dict(run_kwargs))
    refs = [_run_task.remote(market_refs[r.scenario], r, kwargs_ref) for r in runs]
    _wait_all(refs, progress)
    return pl.concat(ray.get(refs), how="diagonal_relaxed")


def run_tables(
    scenario: str | Scenario | Market,
    policies: Sequence[PolicySpec | str | tuple[str, Mapping[str, Any]]],
    segments: Sequence[str],
    *,
    n_seeds: int,
    n_requests: int | None = None,
    root_seed: int = 0,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool | str = True,
    **run_kwargs: Any,
) -> pl.DataFrame:
    """Run every policy × seed on one market as Ray tasks and report, per run, the final
    decision tables of ``segments`` against the oracle (one row per run and segment; see
    :func:`simulator.runner.table_report`), with columns ``scenario``, ``policy``, ``seed``.
    Other keyword arguments go to :func:`simulator.runner.run` (e.g. ``refresh_segments``).
    """
    market = scenario if isinstance(scenario, Market) else Market(scenario)
    specs = [PolicySpec.of(p) for p in policies]
    seeds = seed_sequences(root_seed, n_seeds)
    runs = [
        RunSpec(0, p, i, seed, n_requests or market.scenario.default_requests)
        for p in specs
        for i, seed in enumerate(seeds)
    ]
    ensure_ray(address, num_cpus)
    market_ref = ray.put(market)
    segments_ref = ray.put(list(segments))
    kwargs_ref = ray.put(dict(run_kwargs))
    refs = [_tables_task.remote(market_ref, r, segments_ref, kwargs_ref) for r in runs]
    _wait_all(refs, progress)
    return pl.concat(ray.get(refs), how="diagonal_relaxed")


def _wait_all(refs: list[ray.ObjectRef], progress: bool | str) -> None:
    """Block until every task is done, counting runs as they finish (:class:`Progress`: a bar
    on a terminal, periodic lines otherwise; a string ``progress`` is the lines' label)."""
    label = progress if isinstance(progress, str) else "runs"
    pending = list(refs)
    with Progress(label, len(refs), unit="runs", enabled=bool(progress)) as shown:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            shown.update(len(done))


def grid_summary(trajectories: pl.DataFrame, *, last: int | None = None) -> pl.DataFrame:
    """One row per (scenario, policy, seed): capture (over the ``last`` requests if given)
    and the totals of :func:`simulator.runner.summarize`."""
    rows = []
    for key, part in trajectories.group_by(["scenario", "policy", "seed"], maintain_order=True):
        part = part.drop_nulls("requests")
        row = dict(zip(("scenario", "policy", "seed"), key, strict=True))
        row.update(summarize(part))
        if last is not None:
            row["capture_last"] = capture(part, last=last)
        rows.append(row)
    return pl.DataFrame(rows).sort(["scenario", "policy", "seed"])
