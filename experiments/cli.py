"""``adbandit simulate | ab | ope | relearn | tune | promote``: the experiment commands.

:func:`register` adds them to the adbandit parser (adbandit/cli.py). Each handler
returns the exit code; domain errors print one line to stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bandit import POLICIES, AdbanditError


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _guard(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn domain errors into a one-line message and exit code 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except AdbanditError as exc:
            print(f"adbandit {args.command}: {exc}", file=sys.stderr)
            return 2

    wrapped.__doc__ = handler.__doc__
    return wrapped


def _choices_text() -> tuple[str, str]:
    """The policy names and the bundled scenario names, for help texts."""
    from simulator.scenario import list_scenarios

    return ", ".join(sorted(POLICIES)), ", ".join(list_scenarios())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate``, ``ab``, ``ope``, ``relearn``, ``tune`` and ``promote`` to the ``adbandit`` parser."""
    policies, scenarios = _choices_text()
    policy_names = sorted(POLICIES)
    scenario_help = f"bundled scenario ({scenarios}) or a .toml path"
    sim = subparsers.add_parser(
        "simulate",
        help="simulate a policy on a scenario over seeds (Ray), tracked in MLflow",
        description="Run one policy on one simulated market over several seeds; log an MLflow run "
        "(metrics, plots, scenario, final policy state) and print capture vs the oracle.",
    )
    sim.add_argument("--scenario", required=True, metavar="SCENARIO", help=scenario_help)
    policy = sim.add_mutually_exclusive_group()
    policy.add_argument(
        "--policy", default="ts_gmm", choices=policy_names, metavar="NAME", help=f"{policies} (default ts_gmm)"
    )
    policy.add_argument("--config", type=Path, help="policy config JSON (as written by tune --out)")
    sim.add_argument("--seeds", type=_positive, default=5, help="number of seeds (default 5)")
    sim.add_argument("--requests", type=_positive, default=None, help="requests per run (default: scenario's)")
    sim.add_argument("--batch-size", type=_positive, default=2000, help="feedback batch size (default 2000)")
    sim.add_argument("--root-seed", type=int, default=0, help="root of the seed sequence (default 0)")
    sim.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    sim.add_argument("--experiment", default="adbandit", help="MLflow experiment (default adbandit)")
    sim.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    sim.set_defaults(func=_guard(simulate_command))

    ab = subparsers.add_parser(
        "ab",
        help="offline A/B evaluation of policies on common random numbers",
        description="Evaluate policies on the same seeds of a scenario; print revenue per request, "
        "capture, lift vs the control with a paired 95% CI and p-value, and requests until within "
        "1% of the oracle.",
    )
    ab.add_argument("--scenario", required=True, metavar="SCENARIO", help=scenario_help)
    ab.add_argument(
        "--arms",
        type=_csv,
        default=["static", "grid_ts", "ts_gmm"],
        help=f"comma-separated policy names ({policies}) or label=config.json (default static,grid_ts,ts_gmm)",
    )
    ab.add_argument("--control", default=None, help="control arm (default: the first)")
    ab.add_argument("--seeds", type=_positive, default=20, help="number of seeds (default 20)")
    ab.add_argument("--requests", type=_positive, default=None, help="requests per run (default: scenario's)")
    ab.add_argument("--batch-size", type=_positive, default=2000, help="feedback batch size (default 2000)")
    ab.add_argument("--root-seed", type=int, default=0, help="root of the seed sequence (default 0)")
    ab.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    ab.add_argument("--experiment", default="adbandit-ab", help="MLflow experiment (default adbandit-ab)")
    ab.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    ab.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    ab.add_argument(
        "--modes",
        type=_csv,
        default=None,
        help="compare ways of calling the networks instead of policies: comma-separated single, waterfall, "
        "auction (the scenario's networks, learned by ts_gmm, on the same requests and bids); the first is the control",
    )
    ab.set_defaults(func=_guard(ab_command))

    ope = subparsers.add_parser(
        "ope",
        help="off-policy evaluation of a policy on logged decisions (IPS, SNIPS, DR, kernel IPS/SNIPS/DR)",
        description="Estimate a candidate policy's revenue per request from logged decisions with "
        "propensities. Logs need network, floor_cpm, propensity, floor_propensity, revenue_cpm (or "
        "reward) and segment (or context); floor_density (density of log floor, NaN for discrete "
        "floors) enables the kernel estimators for continuous (jittered) floors. ips/snips/dr weight "
        "by (network, floor bin); kernel_* smooth the candidate's floors with a Gaussian kernel of "
        "bandwidth h in log CPM (Silverman's rule per network on the logged log floors, "
        "0.9 min(sd, IQR/1.349) n^(-1/5), unless --bandwidth). Every estimate reports its effective "
        "sample size (ESS, and % of n), largest weight's share, the candidate's probability mass "
        "without logged support and the logging policy's own value; a warning is printed when "
        "more than 3% of the mass is unsupported or an ESS is below 100 or 1% of n.",
    )
    ope.add_argument("--logs", nargs="+", type=Path, required=True, metavar="PATH", help=".parquet/.ndjson logs")
    cand = ope.add_mutually_exclusive_group(required=True)
    cand.add_argument(
        "--policy", choices=policy_names, metavar="NAME", help=f"{policies}, with default parameters (fresh, unlearned)"
    )
    cand.add_argument("--config", type=Path, help="policy config JSON")
    cand.add_argument("--state", type=Path, help="saved policy state (.npz), e.g. a snapshot or MLflow artifact")
    where = ope.add_mutually_exclusive_group()
    where.add_argument("--placement", type=Path, help="placement JSON (PUT body) for --policy/--config")
    where.add_argument("--scenario", metavar="SCENARIO", help=f"take the placement from a {scenario_help}")
    ope.add_argument("--placement-id", default=None, help="placement id for --placement (default: file stem)")
    ope.add_argument("--folds", type=_positive, default=2, help="cross-fitting folds of the DR model (default 2)")
    ope.add_argument(
        "--bandwidth", type=float, default=None, help="kernel bandwidth in log CPM (default: Silverman's rule)"
    )
    ope.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        metavar="SD",
        help="evaluate the candidate with its floors jittered log-normally by SD (log CPM; default 0: fixed floors)",
    )
    ope.add_argument("--estimators", type=_csv, default=None, help="comma-separated estimators (default: all)")
    ope.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ope.set_defaults(func=_guard(ope_command))

    relearn = subparsers.add_parser(
        "relearn",
        help="re-learn a placement's policy from a day of Parquet logs on Ray, tracked in MLflow",
        description="Read partitioned Parquet outcome logs (or the service's archive, "
        "state/outcomes/*.parquet) with Ray Data, compute the additive statistics of every "
        "partition in parallel, merge them, fit the policy once and write its state (.npz), "
        "loadable by the service and logged as an MLflow run that `adbandit promote` registers. "
        "The result equals learning all the events in one batch in one process. Rows of other "
        "placements are skipped; an invalid row fails the job, naming it.",
    )
    relearn.add_argument(
        "--logs", nargs="+", required=True, metavar="GLOB", help="Parquet files, globs or directories (or s3://…)"
    )
    relearn.add_argument("--placement", type=Path, required=True, help="placement JSON (the PUT body)")
    relearn.add_argument("--placement-id", default=None, help="placement id (default: the file's stem)")
    relearn_policy = relearn.add_mutually_exclusive_group()
    relearn_policy.add_argument(
        "--policy", default="ts_gmm", choices=policy_names, metavar="NAME", help=f"{policies} (default ts_gmm)"
    )
    relearn_policy.add_argument("--config", type=Path, help="policy config JSON (as written by tune --out)")
    relearn.add_argument("--seed", type=int, default=None, help="seed of the policy's draws (default: fresh)")
    relearn.add_argument("--out", type=Path, default=None, help="state file (default relearned-<placement>.npz)")
    relearn.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    relearn.add_argument(
        "--workers", type=_positive, default=None, help="parallel tasks (default: every CPU of the local Ray/cluster)"
    )
    relearn.add_argument(
        "--experiment", default="adbandit-relearn", help="MLflow experiment (default adbandit-relearn)"
    )
    relearn.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    relearn.set_defaults(func=_guard(relearn_command))

    tune = subparsers.add_parser(
        "tune",
        help="tune policy hyperparameters with Ray Tune (every trial an MLflow run)",
        description="Random search over the policy's hyperparameters; objective = mean capture "
        "over scenarios x seeds; the best configuration is written as JSON.",
    )
    tune.add_argument(
        "--scenarios",
        type=_csv,
        default=["core_stationary", "core_drift"],
        help=f"comma-separated scenarios: {scenarios}, or .toml paths (default core_stationary,core_drift)",
    )
    tune.add_argument("--trials", type=_positive, default=20, help="number of trials (default 20)")
    tune.add_argument(
        "--policy",
        default="ts_gmm",
        choices=policy_names,
        metavar="NAME",
        help=f"policy to tune: {policies} (default ts_gmm)",
    )
    tune.add_argument("--seeds", type=_positive, default=3, help="seeds per scenario (default 3)")
    tune.add_argument("--requests", type=_positive, default=None, help="requests per run (default: scenario's)")
    tune.add_argument("--batch-size", type=_positive, default=2000, help="feedback batch size (default 2000)")
    tune.add_argument("--root-seed", type=int, default=0, help="seeds both the runs and the search")
    tune.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    tune.add_argument("--out", type=Path, default=Path("best.json"), help="best config file (default best.json)")
    tune.add_argument("--experiment", default="adbandit-tune", help="MLflow experiment (default adbandit-tune)")
    tune.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    tune.set_defaults(func=_guard(tune_command))

    promote = subparsers.add_parser(
        "promote",
        help="register a run's policy state in the MLflow registry and move an alias to it",
        description="Register the policy_state artifact of an MLflow run as a new model version and "
        "point the alias (default champion) at it; `adbandit serve --model champion` loads it.",
    )
    promote.add_argument("run_id", metavar="RUN_ID", help="MLflow run id (printed by simulate)")
    promote.add_argument("--name", default="adbandit-policy", help="registered model name")
    promote.add_argument("--alias", default="champion", help="alias to set (default champion)")
    promote.set_defaults(func=_guard(promote_command))


def simulate_command(args: argparse.Namespace) -> int:
    from experiments.config import PolicyConfig, read_policy_config
    from experiments.simulate import simulate

    config = read_policy_config(args.config) if args.config else PolicyConfig(args.policy)
    result = simulate(
        args.scenario,
        config,
        seeds=args.seeds,
        n_requests=args.requests,
        root_seed=args.root_seed,
        address=args.address,
        batch_size=args.batch_size,
        track=not args.no_track,
        experiment=args.experiment,
        progress="simulate",
    )
    s = result.summary
    print(
        f"{config.policy} on {Path(args.scenario).stem}: capture {s['capture']:.4f} "
        f"(sd {s['capture_sd']:.4f} over {args.seeds} seeds; last 20%: {s['capture_last']:.4f}), "
        f"revenue per request {s['expected_revenue_per_request']:.4f} vs oracle "
        f"{s['oracle_revenue_per_request']:.4f} CPM"
    )
    if result.run_id:
        print(f"MLflow run {result.run_id}  (promote with: adbandit promote {result.run_id})")
    return 0


def ab_command(args: argparse.Namespace) -> int:
    from experiments.ab import format_modes, format_table, run_ab, run_mode_ab

    if args.modes:
        table = run_mode_ab(
            args.scenario,
            args.modes,
            args.seeds,
            args.requests,
            args.control,
            root_seed=args.root_seed,
            batch_size=args.batch_size,
            progress="ab",
        )
        print(format_modes(table, args.control or args.modes[0]))
        if args.csv:
            table.write_csv(args.csv)
        return 0
    table = run_ab(
        args.scenario,
        args.arms,
        args.seeds,
        args.requests,
        args.control,
        args.address,
        root_seed=args.root_seed,
        batch_size=args.batch_size,
        track=not args.no_track,
        experiment=args.experiment,
        progress="ab",
    )
    print(format_table(table))
    if args.csv:
        table.write_csv(args.csv)
    return 0


def _candidate(args: argparse.Namespace) -> Any:
    from bandit import InvalidConfig, load_state, policy_from_state
    from experiments.config import PolicyConfig, read_placement, read_policy_config

    if args.state:
        return policy_from_state(load_state(args.state))
    if args.scenario:
        from simulator.scenario import load_scenario

        placement = load_scenario(args.scenario).placement()
    elif args.placement:
        placement = read_placement(args.placement, args.placement_id)
    else:
        raise InvalidConfig("--policy/--config need the placement: give --placement FILE or --scenario NAME")
    config = read_policy_config(args.config) if args.config else PolicyConfig(args.policy)
    return config.build(placement)


def ope_command(args: argparse.Namespace) -> int:
    import warnings

    from bandit import read_events
    from experiments.ope import ESTIMATORS, LoggedDecisions, OPEWarning, evaluate

    policy = _candidate(args)
    if args.jitter > 0:
        from experiments.jitter import JitteredPolicy

        policy = JitteredPolicy(policy, args.jitter)
    logs = LoggedDecisions.from_frame(policy.placement, read_events(args.logs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OPEWarning)
        estimates = evaluate(
            logs, policy, folds=args.folds, bandwidth=args.bandwidth, estimators=args.estimators or ESTIMATORS
        )
    notes = [str(w.message) for w in caught if issubclass(w.category, OPEWarning)]
    if args.json:
        print(json.dumps({k: e.to_dict() for k, e in estimates.items()}, indent=2))
        for note in notes:
            print(f"adbandit ope: warning: {note}", file=sys.stderr)
        return 0
    print(f"candidate {policy.name} ({policy.model_version}) on {len(logs):,} logged requests")
    print(f"{'estimator':<14}{'rev/req':>10}{'95% CI':>22}{'ESS':>9}{'ESS %':>8}{'max w %':>9}{'h':>7}")
    for e in estimates.values():
        ci = f"[{e.ci_low:.4f}, {e.ci_high:.4f}]"
        h = "-" if math.isnan(e.bandwidth) else f"{e.bandwidth:.3f}"
        print(
            f"{e.estimator:<14}{e.value:>10.4f}{ci:>22}{e.ess:>9.0f}{e.ess_share:>8.1%}{e.max_weight_share:>9.1%}{h:>7}"
        )
    first = next(iter(estimates.values()))
    print(f"logged policy's own value {first.logged_value:.4f} CPM per request")
    print(f"candidate mass without logged support {first.unsupported:.1%}")
    for note in notes:
        print(f"WARNING: {note}")
    return 0


def relearn_command(args: argparse.Namespace) -> int:
    from experiments.config import PolicyConfig, read_placement, read_policy_config
    from experiments.relearn import relearn, summary_lines

    placement = read_placement(args.placement, args.placement_id)
    config = read_policy_config(args.config) if args.config else PolicyConfig(args.policy)
    result = relearn(
        args.logs,
        placement,
        config,
        out=args.out or Path(f"relearned-{placement.id}.npz"),
        address=args.address,
        workers=args.workers,
        seed=args.seed,
        track=not args.no_track,
        experiment=args.experiment,
        progress="relearn",
    )
    for line in summary_lines(result):
        print(line)
    return 0


def tune_command(args: argparse.Namespace) -> int:
    from experiments.tune import tune_policy

    result = tune_policy(
        args.policy,
        args.scenarios,
        trials=args.trials,
        seeds=args.seeds,
        n_requests=args.requests,
        batch_size=args.batch_size,
        root_seed=args.root_seed,
        address=args.address,
        out=args.out,
        track=not args.no_track,
        experiment=args.experiment,
        progress="tune",
    )
    print(
        f"best {result.best.policy}: capture {result.best_capture:.4f} "
        f"with {json.dumps(result.best.to_dict()['params'])}"
    )
    print(f"written to {args.out}")
    if result.parent_run_id:
        print(f"MLflow parent run {result.parent_run_id}")
    return 0


def promote_command(args: argparse.Namespace) -> int:
    from experiments.model_registry import promote

    promoted = promote(args.run_id, args.name, alias=args.alias)
    print(f"registered {promoted.name} version {promoted.version} from run {promoted.run_id}; "
          f"alias {promoted.alias!r} -> version {promoted.version}")  # fmt: skip
    return 0
