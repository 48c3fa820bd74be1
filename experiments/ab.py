"""Offline A/B evaluation of policies in a simulated market.

Every arm runs on the same seeds; a seed fixes the requests and the bidders' draws for
every arm (common random numbers), so per-seed revenues are paired and the lift's
interval is much tighter than with independent traffic (:func:`bandit.abstats.paired_lift`).

The lift is measured on *expected* revenue per request — the exact expectation of each
decision's revenue given the request (``market.expected``) — which removes the auction
noise but keeps every effect of the policy's choices. Realised revenue is reported too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from bandit import InvalidConfig
from bandit.abstats import paired_lift

DEFAULT_ARMS = ("static", "grid_ts", "ts_gmm")
#: "Within 1% of the oracle": trailing-window capture at or above this.
NEAR_ORACLE = 0.99
#: Trailing window (requests) of the rolling capture; shorter runs use a fifth of their length.
ROLLING_WINDOW = 10_000

AB_COLUMNS = (
    "arm",
    "seeds",
    "revenue_per_request",
    "expected_revenue_per_request",
    "oracle_revenue_per_request",
    "capture",
    "capture_sd",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "p_value",
    "requests_to_99",
    "reached_99",
)


def rolling_capture(trajectory: pl.DataFrame, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Capture over the trailing ``window`` requests at the end of each row.

    Returns (requests_total [R], capture [R]); NaN where fewer than ``window`` requests
    have been served. A window spans whole rows (at least ``window`` requests).
    """
    total = trajectory["requests_total"].to_numpy()
    exp = np.concatenate([[0.0], np.cumsum(trajectory["expected_revenue"].to_numpy())])
    orc = np.concatenate([[0.0], np.cumsum(trajectory["oracle_revenue"].to_numpy())])
    before = np.concatenate([[0], total])  # requests served before row k is before[k]
    # First row j of the window ending at row k: the last j with before[j] <= total[k] - window.
    j = np.searchsorted(before, total - window, side="right") - 1
    valid = (total >= window) & (j >= 0)
    j = np.clip(j, 0, None)
    k = np.arange(len(total)) + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        cap = (exp[k] - exp[j]) / (orc[k] - orc[j])
    return total, np.where(valid, cap, np.nan)


def requests_to_near_oracle(
    trajectory: pl.DataFrame, *, threshold: float = NEAR_ORACLE, window: int | None = None
) -> int | None:
    """Requests served when the trailing-window capture first reaches ``threshold``
    (None if it never does)."""
    if trajectory.height == 0:
        return None
    if window is None:
        window = default_window(int(trajectory["requests_total"].max()))
    total, cap = rolling_capture(trajectory, window)
    hit = np.flatnonzero(cap >= threshold)
    return int(total[hit[0]]) if len(hit) else None


def default_window(n_requests: int) -> int:
    return max(1, min(ROLLING_WINDOW, n_requests // 5))


def _per_seed(trajectories: Sequence[pl.DataFrame]) -> dict[str, np.ndarray]:
    """Per-seed totals [seeds]: requests, realised / expected / oracle revenue."""
    return {
        "requests": np.array([t["requests"].sum() for t in trajectories], dtype=float),
        "revenue": np.array([t["revenue"].sum() for t in trajectories], dtype=float),
        "expected": np.array([t["expected_revenue"].sum() for t in trajectories], dtype=float),
        "oracle": np.array([t["oracle_revenue"].sum() for t in trajectories], dtype=float),
    }


def ab_table(
    trajectories: Mapping[str, Sequence[pl.DataFrame]],
    control: str,
    *,
    window: int | None = None,
) -> pl.DataFrame:
    """The A/B table from trajectories per arm (lists in the same seed order).

    One row per arm: mean revenue per request (realised, expected, oracle), capture
    (mean over seeds of expected/oracle, and its sd), lift of expected revenue per
    request over ``control`` with its paired 95% CI and p-value (null for the control),
    median requests until the rolling capture first reaches 99% (null when the median
    seed never does) and the fraction of seeds that reach it.
    """
    if control not in trajectories:
        raise InvalidConfig(f"control arm {control!r} is not among the arms {list(trajectories)}")
    seeds = {arm: len(ts) for arm, ts in trajectories.items()}
    if len(set(seeds.values())) != 1:
        raise InvalidConfig(f"every arm needs the same seeds, got {seeds}")
    totals = {arm: _per_seed(ts) for arm, ts in trajectories.items()}
    base = totals[control]["expected"] / totals[control]["requests"]
    rows = []
    for arm, ts in trajectories.items():
        tot = totals[arm]
        rpr = tot["expected"] / tot["requests"]
        capture = tot["expected"] / tot["oracle"]
        row: dict[str, Any] = {
            "arm": arm,
            "seeds": len(ts),
            "revenue_per_request": float(np.mean(tot["revenue"] / tot["requests"])),
            "expected_revenue_per_request": float(np.mean(rpr)),
            "oracle_revenue_per_request": float(np.mean(tot["oracle"] / tot["requests"])),
            "capture": float(np.mean(capture)),
            "capture_sd": float(np.std(capture, ddof=1)) if len(ts) > 1 else math.nan,
            "lift": None,
            "lift_ci_low": None,
            "lift_ci_high": None,
            "p_value": None,
        }
        if arm != control and len(ts) > 1:
            res = paired_lift(base, rpr)
            row.update(lift=res.lift, lift_ci_low=res.ci_low, lift_ci_high=res.ci_high, p_value=res.p_value)
        elif arm != control:
            row["lift"] = float(rpr[0] / base[0] - 1.0)
        hits = [requests_to_near_oracle(t, window=window) for t in ts]
        reached = np.array([h is not None for h in hits])
        # Median over seeds with "never" as +inf: null when half or more never get there.
        as_num = np.sort([h if h is not None else math.inf for h in hits])
        median = float(np.median(as_num))
        row["requests_to_99"] = int(median) if math.isfinite(median) else None
        row["reached_99"] = float(reached.mean())
        rows.append(row)
    schema = {
        "arm": pl.String,
        "seeds": pl.Int64,
        "revenue_per_request": pl.Float64,
        "expected_revenue_per_request": pl.Float64,
        "oracle_revenue_per_request": pl.Float64,
        "capture": pl.Float64,
        "capture_sd": pl.Float64,
        "lift": pl.Float64,
        "lift_ci_low": pl.Float64,
        "lift_ci_high": pl.Float64,
        "p_value": pl.Float64,
        "requests_to_99": pl.Int64,
        "reached_99": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def format_table(table: pl.DataFrame) -> str:
    """A fixed-width text rendering of an A/B table for the terminal."""
    head = f"{'arm':<16}{'rev/req':>9}{'capture':>9}{'lift':>9}{'95% CI':>21}{'p':>9}{'req→99%':>10}"
    lines = [head, "-" * len(head)]
    for r in table.iter_rows(named=True):
        lift = "—" if r["lift"] is None else f"{100 * r['lift']:+.2f}%"
        if r["lift_ci_low"] is None:
            ci = "—"
        else:
            ci = f"[{_pct(r['lift_ci_low'])}, {_pct(r['lift_ci_high'])}]"
        p = "—" if r["p_value"] is None else f"{r['p_value']:.3g}"
        hit = "never" if r["requests_to_99"] is None else f"{r['requests_to_99']:,}"
        lines.append(
            f"{r['arm']:<16}{r['expected_revenue_per_request']:>9.4f}{r['capture']:>9.4f}"
            f"{lift:>9}{ci:>21}{p:>9}{hit:>10}"
        )
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%" if math.isfinite(x) else ("-inf" if x < 0 else "+inf")


def run_ab(
    scenario: str,
    arms: Sequence[str] = DEFAULT_ARMS,
    seeds: int = 20,
    n_requests: int | None = None,
    control: str | None = None,
    address: str | None = None,
    *,
    root_seed: int = 0,
    batch_size: int = 2000,
    window: int | None = None,
    track: bool = True,
    experiment: str = "adbandit-ab",
    progress: bool | str = False,
) -> pl.DataFrame:
    """A/B evaluation of ``arms`` on ``scenario`` over ``seeds`` common-random-number seeds.

    Arms are policy names or ``label=config.json`` (a tuned configuration); the control
    is the first arm unless named. Runs fan out as Ray tasks (``address`` for a cluster).
    Returns the table of :func:`ab_table`; with ``track`` it is also an MLflow run.
    """
    from experiments.simulate import ArmSpec, fan_out

    specs = [ArmSpec.parse(a) for a in arms]
    labels = [s.label for s in specs]
    control = control or labels[0]
    if control not in labels:
        raise InvalidConfig(f"control {control!r} is not one of the arms {labels}")
    if seeds < 2:
        raise InvalidConfig(f"an A/B evaluation needs at least 2 seeds, got {seeds}")
    trajectories = fan_out(
        scenario,
        specs,
        seeds=seeds,
        n_requests=n_requests,
        root_seed=root_seed,
        address=address,
        batch_size=batch_size,
        progress=progress,
    )
    table = ab_table(trajectories, control, window=window)
    if track:
        _track_ab(scenario, specs, control, seeds, root_seed, batch_size, trajectories, table, experiment)
    return table


def _track_ab(
    scenario: str,
    specs: Sequence[Any],
    control: str,
    seeds: int,
    root_seed: int,
    batch_size: int,
    trajectories: Mapping[str, Sequence[pl.DataFrame]],
    table: pl.DataFrame,
    experiment: str,
) -> str:
    from pathlib import Path

    from experiments import plots, tracking
    from experiments.simulate import STEP_METRICS, mean_series, scenario_path

    name = Path(scenario).stem
    n_total = int(next(iter(trajectories.values()))[0]["requests_total"].max())
    with tracking.start_run(f"ab {name}: {' vs '.join(trajectories)}", kind="ab", experiment=experiment) as run:
        tracking.log_params(
            {
                "scenario": name,
                "arms": ",".join(trajectories),
                "control": control,
                "seeds": seeds,
                "n_requests": n_total,
                "root_seed": root_seed,
                "batch_size": batch_size,
                **{f"arm.{s.label}": s.config.to_dict() for s in specs},
            }
        )
        path = scenario_path(scenario)
        if path is not None:
            tracking.log_file(path, "scenario")
        for row in table.iter_rows(named=True):
            arm = row["arm"]
            tracking.log_metrics(
                {
                    f"{arm}.capture": row["capture"],
                    f"{arm}.revenue_per_request": row["expected_revenue_per_request"],
                    f"{arm}.lift": row["lift"] if row["lift"] is not None else math.nan,
                    f"{arm}.lift_ci_low": row["lift_ci_low"] if row["lift_ci_low"] is not None else math.nan,
                    f"{arm}.lift_ci_high": row["lift_ci_high"] if row["lift_ci_high"] is not None else math.nan,
                    f"{arm}.p_value": row["p_value"] if row["p_value"] is not None else math.nan,
                    f"{arm}.requests_to_99": float(row["requests_to_99"])
                    if row["requests_to_99"] is not None
                    else math.nan,
                }
            )
            series = mean_series(trajectories[arm])
            tracking.log_step_metrics(
                {f"{arm}.{name}": series[k] for k, name in STEP_METRICS.items()},
                series["requests_total"].astype(np.int64),
            )
        tracking.log_text(table.write_csv(), "ab_table.csv")
        tracking.log_text(format_table(table) + "\n", "ab_table.txt")
        tracking.log_figure(plots.compare_capture(trajectories, f"capture on {name}"), "plots/capture_by_arm.png")
        for arm, ts in trajectories.items():
            for fname, fig in plots.all_figures(ts, f"{arm} on {name}").items():
                tracking.log_figure(fig, f"plots/{arm}/{fname}")
    return run.info.run_id


# ------------------------------------------------------------------ modes on the same traffic
MODES_COLUMNS = ("mode", "seeds", "revenue_per_request", "lift", "lift_ci_low", "lift_ci_high", "p_value")


def run_mode_ab(
    scenario: str,
    modes: Sequence[str],
    seeds: int = 10,
    n_requests: int | None = None,
    control: str | None = None,
    *,
    policy: str = "ts_gmm",
    root_seed: int = 0,
    batch_size: int = 2000,
    progress: bool | str = False,
) -> pl.DataFrame:
    """Which way of calling the networks earns the publisher more: the same market run as
    ``single`` (exposure weights), ``waterfall`` and/or ``auction`` placements, each learned
    by ``policy``, on the same seeds — the same requests and the same bids (common random
    numbers, bids keyed by request and network) — with the paired lift of realised revenue
    per request over the control mode (default: the first) and its 95% CI. ``progress`` counts
    finished runs (:class:`simulator.progress.Progress`; a string labels its lines)."""
    import dataclasses

    from simulator.market import Market
    from simulator.modes import run_plans
    from simulator.parallel import seed_sequences
    from simulator.progress import Progress
    from simulator.runner import build_policy, run
    from simulator.scenario import load_scenario

    unknown = sorted(set(modes) - {"single", "waterfall", "auction"})
    if unknown or not modes:
        raise InvalidConfig(f"modes must be among single, waterfall, auction; got {list(modes)}")
    control = control or modes[0]
    if control not in modes:
        raise InvalidConfig(f"control {control!r} is not one of the modes {list(modes)}")
    if seeds < 2:
        raise InvalidConfig(f"comparing modes needs at least 2 seeds, got {seeds}")
    base = load_scenario(scenario)
    n = n_requests or base.default_requests
    revenue: dict[str, np.ndarray] = {}
    label = progress if isinstance(progress, str) else "modes"
    with Progress(label, len(modes) * seeds, unit="runs", enabled=bool(progress)) as shown:
        for mode in modes:
            market = Market(dataclasses.replace(base, mode=mode))
            per_seed = []
            for ss in seed_sequences(root_seed, seeds):
                learner = build_policy(policy, market, seed=ss)
                if mode == "single":
                    frame = run(learner, market, n, seed=ss, batch_size=batch_size)
                else:
                    frame = run_plans(learner, market, n, seed=ss, batch_size=batch_size)
                per_seed.append(float(frame["revenue"].sum()) / n)
                shown.update()
            revenue[mode] = np.array(per_seed)
    rows = []
    for mode in modes:
        lift = paired_lift(revenue[control], revenue[mode]) if mode != control else None
        rows.append(
            {
                "mode": mode,
                "seeds": seeds,
                "revenue_per_request": float(revenue[mode].mean()),
                "lift": lift.lift if lift else 0.0,
                "lift_ci_low": lift.ci_low if lift else math.nan,
                "lift_ci_high": lift.ci_high if lift else math.nan,
                "p_value": lift.p_value if lift else math.nan,
            }
        )
    return pl.DataFrame(rows, schema=list(MODES_COLUMNS), orient="row")


def format_modes(table: pl.DataFrame, control: str) -> str:
    lines = [f"{'mode':10s} {'rev/req':>9s} {'lift vs ' + control:>14s} {'95% CI':>20s} {'p':>7s}"]
    for r in table.iter_rows(named=True):
        ci = "" if math.isnan(r["lift_ci_low"]) else f"[{_pct(r['lift_ci_low'])}, {_pct(r['lift_ci_high'])}]"
        p = "" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}"
        lines.append(f"{r['mode']:10s} {r['revenue_per_request']:9.4f} {_pct(r['lift']):>14s} {ci:>20s} {p:>7s}")
    return "\n".join(lines)
