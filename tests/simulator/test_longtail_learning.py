"""Segments that borrow the right strength, on a long-tail market (``longtail``: 1,152
segments country × os × app_version, Zipf traffic shares, truly different optima).

ts_gmm learns every segment's events, but rebuilds (and evaluates) the tables of four large
segments (9,000–42,000 requests each) and 16 small ones (30–270 requests each) only: the
others are served by the placement's table, which is what a refit of 1,152 × 3 cells per
batch would otherwise cost. Per run and followed segment, the final table is valued exactly
against the oracle, and the segment's capture over the run is kept
(:func:`simulator.runner.table_report`). Claims, over four seeds:

- large segments reach their own optimum: capture ≥ 0.98 (their prior weighs a few
  requests, not tens of thousands), the oracle's network gets the traffic and its floor is
  the segment's own best floor, far from what the placement's table would do there;
- small segments do better with the prior predicted from their fields than with the flat
  placement pool (``pool_fields=0``): over the run on every seed, and with their final
  tables on average.

Measured: large segments' table capture 0.9985–0.9987 (the placement's table: 0.03–0.996,
0.54 on average), best floors within 8.1%; small segments over the run 0.762–0.791 against
0.746–0.766 flat (+0.004 to +0.045 per seed, mean +0.019), final tables 0.899–0.934 against
0.843–0.913.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from simulator.market import Market
from simulator.parallel import PolicySpec, run_tables

SEEDS = 4
N_REQUESTS = 240_000
BATCH = 40_000
N_LARGE = 4
SMALL_RANKS = range(100, 740, 40)  # 16 segments of 30-270 expected requests
#: Half the default curve draws keeps the runs short; pooling does not depend on them.
PARAMS = {"n_draws": 64}
ARMS = (
    PolicySpec("ts_gmm", {**PARAMS, "pool_fields": 1}, "fields"),
    PolicySpec("ts_gmm", {**PARAMS, "pool_fields": 0}, "flat"),
)


@pytest.fixture(scope="module")
def longtail(ray_cluster) -> tuple[pl.DataFrame, list[str], list[str]]:
    market = Market("longtail")
    shares = np.array([s.share for s in market.scenario.segments])
    order = np.argsort(-shares, kind="stable")
    large = [market.segments[i] for i in order[:N_LARGE]]
    small = [market.segments[i] for i in order[list(SMALL_RANKS)]]
    # The oracle of every segment once, shipped with the market to every run.
    market.oracle(np.full(market.n_segments, market.scenario.start_ts), np.arange(market.n_segments))
    report = run_tables(
        market,
        ARMS,
        large + small,
        n_seeds=SEEDS,
        n_requests=N_REQUESTS,
        batch_size=BATCH,
        refresh_segments=frozenset(large + small),
        progress=False,
    )
    with pl.Config(tbl_rows=-1):
        print(_figures(report, large, small))
    return report, large, small


def _figures(report: pl.DataFrame, large: list[str], small: list[str]) -> pl.DataFrame:
    """Mean capture (final table, and over the run) of the large and of the small segments per
    arm and seed (printed with -s)."""
    group = pl.when(pl.col("segment").is_in(large)).then(pl.lit("large")).otherwise(pl.lit("small"))
    return (
        report.with_columns(group.alias("group"))
        .group_by("policy", "group", "seed")
        .agg(pl.col("capture").mean(), pl.col("run_capture").mean(), pl.col("weight_best").mean())
        .sort("policy", "group", "seed")
    )


def _part(report: pl.DataFrame, arm: str, segments: list[str]) -> pl.DataFrame:
    return report.filter((pl.col("policy") == arm) & pl.col("segment").is_in(segments)).sort("seed", "segment")


@pytest.mark.slow
def test_large_segments_reach_their_own_optimum(longtail):
    report, large, _ = longtail
    part = _part(report, "fields", large)
    capture = part["capture"].to_numpy().reshape(SEEDS, N_LARGE)
    assert capture.mean(axis=1).min() >= 0.98 and capture.min() >= 0.95, capture
    assert part["weight_best"].min() >= 0.9, part["weight_best"]
    # Their own optimum is not the placement's: its table would earn far less there.
    assert part["pooled_capture"].mean() <= 0.9, part["pooled_capture"]
    # The best network's floor is the segment's own best floor (second price: a first-price
    # network's best floor is its floor_min): within 15% in the median over seeds, within
    # 20% on at least three seeds of four.
    for segment, rows in part.group_by("segment"):
        best = rows["oracle_network"][0]
        if best == "adfit":
            continue
        error = np.abs(np.log(rows[f"floor_{best}"].to_numpy() / rows[f"oracle_floor_{best}"].to_numpy()))
        assert np.median(error) < 0.15 and (error < 0.2).sum() >= SEEDS - 1, (segment, error)


@pytest.mark.slow
def test_small_segments_do_better_with_a_prior_from_their_fields(longtail):
    report, _, small = longtail

    def per_seed(arm: str, column: str) -> np.ndarray:
        return _part(report, arm, small)[column].to_numpy().reshape(SEEDS, len(small)).mean(axis=1)

    # What their traffic earned over the run, paired on common random numbers.
    gain = per_seed("fields", "run_capture") - per_seed("flat", "run_capture")
    # +0.031 to +0.054 per seed with a fixed floor jitter of sd 0.05; +0.009 to +0.045 (mean
    # +0.020) since the jitter widens up to 0.15 where a curve looks flat, as a small
    # segment's does to both arms; +0.004 to +0.045 (mean +0.019) since second-price revenue
    # evidence is read through the fills, which lifted the flat arm on two seeds (its small
    # segments 0.763 → 0.766 and 0.747 → 0.758, a third 0.765 → 0.762) and moved the fields
    # arm by −0.002 to +0.007: better on every seed, by 1.5% on average.
    assert np.all(gain > 0.0) and gain.mean() >= 0.015, gain
    # Their final tables: better on average, and never clearly worse. The final tables of 16
    # segments of 30-270 requests vary by about ±0.03 between seeds: with hour levels served
    # only where a day shows a cycle, one seed of four is at -0.013 (+0.014 to +0.052 before;
    # means +0.030 and +0.030), so "clearly" is a loss of more than 0.02.
    table_gain = per_seed("fields", "capture") - per_seed("flat", "capture")
    assert table_gain.mean() >= 0.01 and table_gain.min() > -0.02, table_gain
    assert per_seed("fields", "capture").mean() >= 0.88
