"""The README figures: control choice and Markdown rendering (synthetic trajectories)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.report import main, markdown, versus_best_baseline
from tests.experiments.trajectories import synthetic

POLICIES = ["static", "ucb1", "ts_gmm"]


def _trajectories(levels: dict[str, float], seeds: int = 4) -> dict:
    rng = np.random.default_rng(0)
    return {
        p: [synthetic(np.full(12, c) + 0.01 * rng.random(12), seed=s) for s in range(seeds)] for p, c in levels.items()
    }


def test_control_is_the_best_baseline() -> None:
    table = versus_best_baseline(_trajectories({"static": 0.80, "ucb1": 0.90, "ts_gmm": 0.95}), POLICIES)
    lifts = dict(zip(table["arm"], table["lift"], strict=True))
    assert lifts["ucb1"] is None  # the control
    assert 0.04 < lifts["ts_gmm"] < 0.07
    assert lifts["static"] < 0


def test_markdown_has_a_capture_row_per_scenario_and_the_lift_table() -> None:
    stationary = _trajectories({"static": 0.8, "ucb1": 0.9, "ts_gmm": 0.97})
    drift = _trajectories({"static": 0.9, "ucb1": 0.7, "ts_gmm": 0.85})
    tables = {
        "stationary": (versus_best_baseline(stationary, POLICIES), stationary),
        "drift": (versus_best_baseline(drift, POLICIES), drift),
    }
    text = markdown(tables, 4, POLICIES)
    lines = text.splitlines()
    assert "| scenario | static | ucb1 | ts_gmm |" in lines
    row = next(line for line in lines if line.startswith("| stationary |") and "±" in line)
    assert row.count("**") == 2 and "**0.97" in row  # best policy in bold
    lift_row = next(line for line in lines if line.startswith("| drift | static |"))
    assert "-5." in lift_row or "−5." in lift_row
    assert "| stationary | ucb1 |" in text
    # The last-fifth table: one row per scenario, every policy's capture over its last fifth.
    tail = lines[lines.index(next(line for line in lines if line.startswith("Capture over the last fifth"))) :]
    assert next(line for line in tail if line.startswith("| drift |")).count("±") == len(POLICIES)
    # Where the main policy's regret goes: a quarter network choice, the rest floors (synthetic).
    split = next(line for line in lines if line.startswith("| stationary |") and line.count("%") == 4)
    cells = [cell.strip(" %") for cell in split.strip("|").split("|")]  # scenario, first tenth ×2, rest ×2
    network, floor = float(cells[3]), float(cells[4])
    rest = [t.filter(t["requests_total"] > 2000) for t in stationary["ts_gmm"]]  # rows wholly after the tenth
    regret = 100 * (1 - np.mean([t["expected_revenue"].sum() / t["oracle_revenue"].sum() for t in rest]))
    assert network + floor == pytest.approx(regret, abs=0.01)
    assert floor == pytest.approx(3 * network, abs=0.02)


@pytest.mark.parametrize("policies", ["ts_gmm", "grid_ts,ucb1"])
def test_report_needs_ts_gmm_and_a_baseline_before_running(policies: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--seeds", "2", "--policies", policies, "--scenarios", "stationary"])
    assert exit_info.value.code == 2
    assert "at least one baseline" in capsys.readouterr().err
