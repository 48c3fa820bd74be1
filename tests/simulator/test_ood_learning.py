"""Learning quality on markets outside the price model's family (five seeds each).

The censored mixture is exact for Poisson bidders with log-normal-mixture values, second
price at max(second bid, floor), first price at the top bid. These markets break that:
a value shock shared by the bidders, negative-binomial bidder counts, second-price
payments a cent above the floor, floor-responsive first-price bidders, Pareto value
tails, fill throttled under high floors, a daily value cycle (see
``simulator/scenarios/ood_*.toml``). TS+GMM must earn close to the oracle on each and stay
ahead of grid Thompson sampling (the plain baseline), the claims checked on means over
seeds with tolerances, never one seed. Each market's runs go out as one Ray job.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from simulator.parallel import PolicySpec, run_grid
from simulator.runner import capture

SEEDS = 5
STATIONARY = (
    "ood_shock",
    "ood_dispersion",
    "ood_cents",
    "ood_responsive",
    "ood_pareto",
    "ood_throttle",
    "ood_together",
)
POLICIES = ("ts_gmm", "grid_ts")
#: Requests per stationary run: 30 simulated hours at 10,000 requests an hour.
N_REQUESTS = 300_000


@pytest.fixture(scope="module", params=STATIONARY)
def stationary_runs(request, ray_cluster) -> tuple[str, pl.DataFrame]:
    """One market's runs (its own Ray job, so no test setup outlasts the timeout)."""
    frame = run_grid([request.param], list(POLICIES), n_seeds=SEEDS, n_requests=N_REQUESTS, progress=False)
    return request.param, frame


def _runs(frame: pl.DataFrame, scenario: str, policy: str) -> list[pl.DataFrame]:
    part = frame.filter((pl.col("scenario") == scenario) & (pl.col("policy") == policy))
    return [part.filter(pl.col("seed") == s).sort("row") for s in range(SEEDS)]


@pytest.mark.slow
def test_captures_the_oracle_on_a_market_outside_the_model(stationary_runs):
    scenario, frame = stationary_runs
    runs = _runs(frame, scenario, "ts_gmm")
    whole = np.array([capture(t) for t in runs])
    tail = np.array([capture(t, last=N_REQUESTS // 5) for t in runs])
    assert whole.mean() >= 0.985, whole
    assert tail.mean() >= 0.993, tail
    assert whole.min() >= 0.975 and tail.min() >= 0.985, (whole, tail)


@pytest.mark.slow
def test_stays_ahead_of_grid_thompson_sampling(stationary_runs):
    """Paired over seeds (common random numbers): the mean gain is positive, and never a
    loss larger than its own noise would allow."""
    scenario, frame = stationary_runs
    gmm = np.array([capture(t) for t in _runs(frame, scenario, "ts_gmm")])
    grid = np.array([capture(t) for t in _runs(frame, scenario, "grid_ts")])
    gain = gmm - grid
    assert gain.mean() > 0, gain
    # Not worse with significance: the upper end of a one-sided 95% interval stays above 0.
    assert gain.mean() + 2.132 * gain.std(ddof=1) / math.sqrt(SEEDS) > 0, gain


@pytest.fixture(scope="module")
def seasonal_runs(ray_cluster) -> pl.DataFrame:
    """A daily value cycle (three days, no hour segments) and a purely seasonal market (a
    week), fed back in batches of 2,000 requests (12 to 24 minutes of traffic)."""
    return run_grid(["ood_daily", "ood_seasonal_only"], [PolicySpec("ts_gmm")], n_seeds=SEEDS, progress=False)


@pytest.mark.slow
def test_follows_a_daily_price_cycle(seasonal_runs):
    runs = _runs(seasonal_runs, "ood_daily", "ts_gmm")
    whole = np.array([capture(t) for t in runs])
    # 0.982-0.985 before hour levels learned at their stated speed (level_events) and were
    # shrunk toward the segment's common level; 0.991 after (3 seeds, README).
    assert whole.mean() >= 0.985 and whole.min() >= 0.97, whole
    # After the first day, with the cycle learned, no worse than over the whole run.
    later = np.array([capture(t, start=24 * 10_000) for t in runs])
    assert later.mean() >= whole.mean(), (later, whole)


@pytest.mark.slow
def test_a_purely_seasonal_market_raises_at_most_one_alarm_per_cell_and_week(seasonal_runs):
    runs = _runs(seasonal_runs, "ood_seasonal_only", "ts_gmm")
    cells = 2  # one segment × two networks
    weeks = [float(t["hour"].max()) / (24 * 7) for t in runs]
    alarms = np.array([int(t["change_alarms"].max()) for t in runs])
    assert np.all(alarms <= np.ceil(cells * np.array(weeks))), alarms
    # And it keeps learning the market while quiet (a ±30% cycle, stronger than ood_daily's):
    # 0.972 before networks were learned at the levels they are served at, 0.997 after.
    assert np.mean([capture(t) for t in runs]) >= 0.99


#: Two simulated days of ``seasonality`` (8,000 requests an hour on average).
DEMAND_CYCLE_REQUESTS = 2 * 24 * 8000


@pytest.fixture(scope="module")
def demand_cycle_runs(ray_cluster) -> pl.DataFrame:
    """A daily demand cycle under which the best network changes with the hour: a
    second-price network gains more from the evening's bidders than a first-price one."""
    return run_grid(["seasonality"], list(POLICIES), n_seeds=SEEDS, n_requests=DEMAND_CYCLE_REQUESTS, progress=False)


@pytest.mark.slow
def test_serves_each_hour_its_own_best_network(demand_cycle_runs):
    """Grid TS can only learn the day's average best network (about 0.967 of the oracle);
    TS+GMM learns each network's hour levels, serving a seldom-served network at the level
    it would be learned at and exploring it while its level is in doubt."""
    gmm = [capture(t) for t in _runs(demand_cycle_runs, "seasonality", "ts_gmm")]
    grid = [capture(t) for t in _runs(demand_cycle_runs, "seasonality", "grid_ts")]
    gain = np.array(gmm) - np.array(grid)
    assert gain.mean() >= 0.01 and gain.min() > 0, gain
    day_two = np.array(
        [capture(t, start=DEMAND_CYCLE_REQUESTS // 2) for t in _runs(demand_cycle_runs, "seasonality", "ts_gmm")]
    )
    assert day_two.mean() >= 0.99 and day_two.min() >= 0.97, day_two
