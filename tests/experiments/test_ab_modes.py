"""adbandit ab --modes: the same market called as single, waterfall and auction, on the same traffic."""

from __future__ import annotations

import math

import pytest

from adbandit.cli import main
from bandit import InvalidConfig
from experiments.ab import run_mode_ab


@pytest.fixture(scope="module")
def table():
    return run_mode_ab("auction_5", ["single", "waterfall", "auction"], seeds=3, n_requests=8000)


def test_calling_several_networks_earns_more_than_one(table):
    rows = {r["mode"]: r for r in table.iter_rows(named=True)}
    assert rows["single"]["lift"] == 0.0 and math.isnan(rows["single"]["p_value"])
    for mode in ("waterfall", "auction"):
        r = rows[mode]
        # Five networks at once beat the best one by far on this market (> +50%), significantly.
        assert r["lift"] > 0.5 and r["lift_ci_low"] > 0.3 and r["p_value"] < 0.05, r
        assert r["lift_ci_low"] <= r["lift"] <= r["lift_ci_high"]
        assert r["revenue_per_request"] > rows["single"]["revenue_per_request"]


def test_same_seeds_give_the_same_table(table):
    again = run_mode_ab("auction_5", ["single", "waterfall", "auction"], seeds=3, n_requests=8000)
    assert again.equals(table)


@pytest.mark.parametrize(
    ("modes", "control", "message"),
    [
        (["single", "parallel"], None, "modes must be among"),
        (["single", "auction"], "waterfall", "control 'waterfall' is not one of the modes"),
    ],
)
def test_bad_modes_are_refused_by_name(modes, control, message):
    with pytest.raises(InvalidConfig, match=message):
        run_mode_ab("auction_5", modes, seeds=2, n_requests=100, control=control)


def test_the_command_prints_the_comparison(capsys):
    code = main(["ab", "--scenario", "auction_5", "--modes", "single,auction", "--seeds", "2", "--requests", "4000"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0
    assert "lift vs single" in out and "auction" in out and "95% CI" in out
    # stderr is not a terminal here: progress comes as log lines, the last one at the end.
    assert captured.err.splitlines()[-1].startswith("ab: 4/4 runs done, ")
