"""The experiment commands through the ``adbandit`` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adbandit.cli import build_parser, main
from bandit import make_policy
from experiments import tracking
from experiments.ope import simulate_logs
from simulator.market import Market


def _write_logs(path: Path, jitter: float = 0.0) -> None:
    market = Market("core_stationary")
    logger = make_policy("epsilon_greedy", market.placement, epsilon=1.0, seed=0)
    if jitter > 0:
        from experiments.jitter import JitteredPolicy

        logger = JitteredPolicy(make_policy("static", market.placement, floors={"admob": 2.0}), jitter)
    logs = simulate_logs(logger, market, 3000, seed=1)
    ids = np.array(market.placement.network_ids)
    pl.DataFrame(
        {
            "placement": market.placement.id,
            "network": ids[logs.network],
            "floor_cpm": logs.floor_cpm,
            "propensity": logs.propensity,
            "floor_propensity": logs.floor_propensity,
            "floor_density": logs.floor_density,
            "filled": logs.reward > 0,
            "revenue_cpm": logs.reward,
            "segment": [logs.segments[i] for i in logs.segment_index],
        }
    ).write_parquet(path)


def test_ope_command_prints_estimates_as_json(tmp_path: Path, capsys) -> None:
    logs = tmp_path / "logs.parquet"
    _write_logs(logs)
    code = main(["ope", "--logs", str(logs), "--policy", "static", "--scenario", "core_stationary", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"ips", "snips", "dr", "kernel_ips", "kernel_snips", "kernel_dr"}
    for est in out.values():
        assert est["n"] == 3000 and est["ci_low"] <= est["value"] <= est["ci_high"]
        assert 0 < est["ess_share"] <= 1 and est["unsupported"] == 0.0 and est["logged_value"] > 0


def test_ope_command_prints_diagnostics_and_warns_without_support(tmp_path: Path, capsys) -> None:
    """Logs with jittered floors around admob 2.0 and the others' floor_min (0.05); the
    candidate's admob floor 20 (its floor_max) lies far above anything logged."""
    logs = tmp_path / "logs.parquet"
    _write_logs(logs, jitter=0.2)
    config = tmp_path / "far.json"
    config.write_text(json.dumps({"policy": "static", "params": {"floors": {"admob": 20.0}}}))
    args = ["ope", "--logs", str(logs), "--config", str(config), "--scenario", "core_stationary"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "kernel_dr" in text and "logged policy's own value" in text
    assert "WARNING:" in text and "no logged support" in text
    config.write_text(json.dumps({"policy": "static", "params": {"floors": {"admob": 2.2}}}))
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "candidate mass without logged support 0.0%" in text and "no logged support" not in text


def test_ope_command_reads_a_saved_state(tmp_path: Path, capsys) -> None:
    from bandit import save_state

    logs = tmp_path / "logs.parquet"
    _write_logs(logs)
    state = tmp_path / "state.npz"
    save_state(state, make_policy("static", Market("core_stationary").placement).state())
    assert main(["ope", "--logs", str(logs), "--state", str(state)]) == 0
    text = capsys.readouterr().out
    assert "candidate static" in text and "dr" in text


def test_domain_errors_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    code = main(["ope", "--logs", str(tmp_path / "missing.parquet"), "--policy", "static", "--scenario", "stationary"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("adbandit ope:") and "does not exist" in err
    code = main(["ope", "--logs", str(tmp_path / "x.parquet"), "--policy", "static"])
    assert code == 2 and "--placement FILE or --scenario" in capsys.readouterr().err


def test_promote_command_moves_the_alias(mlflow_project: Path, capsys) -> None:
    policy = make_policy("static", Market("core_stationary").placement, seed=5)
    with tracking.start_run("cli", kind="simulate") as run:
        tracking.log_policy_state(policy)
    assert main(["promote", run.info.run_id, "--name", "cli-policy", "--alias", "staging"]) == 0
    assert "alias 'staging'" in capsys.readouterr().out
    from experiments.model_registry import load_model_state

    assert "meta" in load_model_state("staging", name="cli-policy")


def test_simulate_command_prints_capture_and_run_id(ray_cluster, mlflow_project: Path, capsys) -> None:
    code = main(
        ["simulate", "--scenario", "core_stationary", "--policy", "static", "--seeds", "2", "--requests", "2000"]
    )
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "static on core_stationary: capture 0." in out
    assert "adbandit promote " in out
    # stderr is not a terminal here: the runs are counted in log lines, not a bar.
    assert "simulate: 2/2 runs done, " in captured.err and "\r" not in captured.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ab", "--scenario", "drift"], {"arms": ["static", "grid_ts", "ts_gmm"], "seeds": 20, "requests": None}),
        (
            ["ab", "--scenario", "drift", "--arms", "static, ucb1", "--seeds", "5"],
            {"arms": ["static", "ucb1"], "seeds": 5},
        ),
        (
            ["tune", "--scenarios", "a,b", "--trials", "7", "--out", "x.json"],
            {"scenarios": ["a", "b"], "trials": 7, "policy": "ts_gmm", "out": Path("x.json")},
        ),
        (["simulate", "--scenario", "s", "--address", "auto"], {"policy": "ts_gmm", "seeds": 5, "address": "auto"}),
    ],
)
def test_arguments_parse_with_documented_defaults(argv: list[str], expected: dict) -> None:
    args = build_parser().parse_args(argv)
    for key, value in expected.items():
        assert getattr(args, key) == value


def test_seeds_must_be_positive(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ab", "--scenario", "s", "--seeds", "0"])
    assert "must be >= 1" in capsys.readouterr().err
