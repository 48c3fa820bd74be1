"""Ground truth of the market against Monte Carlo, oracle optimality, common random numbers."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
from scipy.optimize import linprog

from bandit.types import PlacementConfig
from simulator import Market, Scenario, list_scenarios, load_scenario
from simulator.auction import SINGLE_BIDDER, tail_count_prob
from simulator.oracle import share_allocation

WEIGHTS, MEANS, SDS = [0.7, 0.3], [0.2, 1.1], [0.5, 0.4]


def one_network(auction: str, *, dispersion: float = 0.0, shock_sd: float = 0.0, bidders: float = 3.0) -> Market:
    net = {
        "id": "net",
        "auction": auction,
        "bidders": bidders,
        "dispersion": dispersion,
        "value_weights": WEIGHTS,
        "value_log_means": MEANS,
        "value_log_sds": SDS,
    }
    if auction == "first":
        net["shading"] = 0.8
    return Market(Scenario.from_dict({"name": "one", "shock_sd": shock_sd, "networks": [net]}))


def brute_force(
    auction: str,
    floor: float,
    dispersion: float,
    shock_sd: float,
    bidders: float,
    n: int,
    seed: int,
):
    """Independent Monte Carlo: draw the bidder count, every bidder's value, sort."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(1 / dispersion, dispersion * bidders, n) if dispersion > 0 else np.full(n, bidders)
    k = rng.binomial(1, bidders, n) if dispersion == SINGLE_BIDDER else rng.poisson(lam)
    kmax = max(int(k.max()), 2)
    comp = rng.random((n, kmax)) < WEIGHTS[0]
    z = rng.standard_normal((n, kmax))
    v = np.exp(np.where(comp, MEANS[0] + SDS[0] * z, MEANS[1] + SDS[1] * z))
    v[np.arange(kmax)[None, :] >= k[:, None]] = 0.0
    shock = np.exp(shock_sd * rng.standard_normal(n) - 0.5 * shock_sd**2)
    v = np.sort(v, axis=1) * shock[:, None]
    shading = 0.8 if auction == "first" else 1.0
    top, second = shading * v[:, -1], v[:, -2]
    filled = (top > 0) & (top >= floor)
    price = np.maximum(second, floor) if auction == "second" else top
    return np.where(filled, price, 0.0), filled


CASES = [
    ("first", 0.0, 0.0, 1.5),
    ("second", 0.0, 0.0, 2.0),
    ("second", 0.0, 0.0, 0.3),
    ("first", 0.6, 0.0, 1.0),
    ("second", 0.6, 0.0, 2.5),
    ("first", 0.0, 0.3, 2.0),
    ("second", 0.4, 0.3, 1.8),
    ("second", SINGLE_BIDDER, 0.0, 2.0),
    ("second", SINGLE_BIDDER, 0.3, 1.5),
    ("first", SINGLE_BIDDER, 0.0, 1.5),
]


def bidders_of(dispersion: float) -> float:
    """Mean bidders of the test network: a single bidder bids 80% of the time."""
    return 0.8 if dispersion == SINGLE_BIDDER else 3.0


@pytest.mark.parametrize(("auction", "dispersion", "shock_sd", "floor"), CASES)
def test_truth_matches_independent_monte_carlo(auction, dispersion, shock_sd, floor):
    market = one_network(auction, dispersion=dispersion, shock_sd=shock_sd, bidders=bidders_of(dispersion))
    rev_mc, fill_mc = brute_force(auction, floor, dispersion, shock_sd, bidders_of(dispersion), 200_000, seed=11)
    rev, fill = market.expected(np.array([market.scenario.start_ts]), 0, 0, np.array([floor]))
    se = rev_mc.std() / np.sqrt(len(rev_mc))
    assert abs(rev_mc.mean() - rev[0]) < 4.5 * se
    assert abs(fill_mc.mean() - fill[0]) < 4.5 * np.sqrt(fill[0] * (1 - fill[0]) / len(fill_mc)) + 1e-9


@pytest.mark.parametrize(("auction", "dispersion", "shock_sd", "floor"), CASES)
def test_market_sampler_matches_truth(auction, dispersion, shock_sd, floor):
    market = one_network(auction, dispersion=dispersion, shock_sd=shock_sd, bidders=bidders_of(dispersion))
    n = 400_000
    req = market.requests(n, np.random.default_rng(5))
    filled, revenue = market.outcomes(req, np.zeros(n, dtype=np.int64), np.full(n, floor))
    rev, fill = market.expected(req.ts[:1], 0, 0, np.array([floor]))
    assert abs(revenue.mean() - rev[0]) < 4.5 * revenue.std() / np.sqrt(n)
    assert abs(filled.mean() - fill[0]) < 4.5 * np.sqrt(fill[0] * (1 - fill[0]) / n) + 1e-9
    assert np.all(revenue[filled] >= floor) and np.all(revenue[~filled] == 0)
    if auction == "second":
        # One bid above the floor pays exactly the floor: mass at the floor (all of it for a single bidder).
        assert np.mean(revenue[filled] == floor) > (0.999 if dispersion == SINGLE_BIDDER else 0.005)


def test_truth_is_accurate_on_its_own_grid():
    """R(f) from the tabulated tail integral agrees with direct quadrature to 1e-6."""
    from scipy.integrate import quad
    from scipy.special import gammainc

    market = one_network("second")
    bids = market.bid_distributions[0]
    for f in (0.0, 0.7, 1.9, 4.0):
        tail = quad(
            lambda x: gammainc(2, 3.0 * bids.survival_log(np.log(x))),
            f,
            1000.0,
            limit=400,
            points=[1, 3, 10],
        )[0]
        fill = gammainc(1, 3.0 * bids.survival_log(np.log(max(f, 1e-300))))
        direct = f * fill + tail
        rev, _ = market.expected(np.array([market.scenario.start_ts]), 0, 0, np.array([f]))
        assert rev[0] == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("dispersion", [0.0, 1e-4, 0.3, 1.0, 5.0])
def test_count_tails_in_closed_form_match_the_special_functions(dispersion):
    """P(N >= 1) and P(N >= 2) in closed form agree with the regularised incomplete gamma
    (Poisson) and beta (negative binomial) to 1e-11 relative, tiny means included."""
    from scipy.special import betainc, gammainc

    mean = np.concatenate([[0.0], np.geomspace(1e-12, 1e3, 4001)])
    for m in (1, 2, 3):
        if dispersion == 0.0:
            exact = gammainc(m, mean)
        else:
            exact = betainc(m, 1.0 / dispersion, dispersion * mean / (1.0 + dispersion * mean))
        got = tail_count_prob(m, mean, dispersion)
        assert got.shape == mean.shape
        np.testing.assert_allclose(got, exact, rtol=1e-11, atol=0.0)
    scalar, array = tail_count_prob(2, 2.0, dispersion), tail_count_prob(2, np.array([2.0]), dispersion)
    assert float(scalar) == pytest.approx(float(array[0]))


def test_no_bidders_means_no_fill_and_zero_truth():
    market = Market("new_network")  # moloco has no demand before hour 10
    j = market.placement.network_index("moloco")
    req = market.requests(20_000, np.random.default_rng(0))
    assert req.ts[-1] < market.scenario.start_ts + 10 * 3600
    filled, revenue = market.outcomes(req, np.full(len(req), j), np.zeros(len(req)))
    assert not filled.any() and not revenue.any()
    rev, fill = market.expected(req.ts[:5], 0, j, np.zeros(5))
    assert not rev.any() and not fill.any()
    late = market.requests(20_000, np.random.default_rng(0), start_ts=market.scenario.start_ts + 11 * 3600)
    assert market.outcomes(late, np.full(len(late), j), np.zeros(len(late)))[0].mean() > 0.5


@pytest.mark.parametrize("name", ["core_stationary", "segments", "many_networks", "sparse"])
def test_oracle_floors_inside_bounds_and_beat_a_grid(name):
    market = Market(name)
    ts = market.scenario.start_ts + 1800.0
    regime = int(market.regime_of(np.array([ts]))[0])
    for s in range(market.n_segments):
        for j, cfg in enumerate(market.placement.networks):
            f, r, p = market.best_floor(regime, s, j)
            assert cfg.floor_min_cpm <= f <= cfg.floor_max_cpm
            grid = np.linspace(cfg.floor_min_cpm, cfg.floor_max_cpm, 2001)
            rev, _ = market.expected(np.full(len(grid), ts), s, j, grid)
            assert r >= rev.max() - 1e-9 * max(rev.max(), 1.0)
            assert 0.0 <= p <= 1.0


def test_core_stationary_shape():
    """Four networks, 2 first + 2 second price, no segments; best network 10-15% ahead;
    second-price best floors strictly inside their bounds (first-price: at floor_min)."""
    market = Market("core_stationary")
    sc = market.scenario
    assert len(sc.networks) == 4 and sorted(n.auction for n in sc.networks) == [
        "first",
        "first",
        "second",
        "second",
    ]
    assert market.segments == ("*",) and sc.requests_per_hour == 10_000
    assert all(n.dispersion == 0 for n in sc.networks) and sc.shock_sd == 0
    alloc = market.oracle_at(sc.start_ts)
    best = np.sort(alloc.revenue)[::-1]
    assert 1.10 <= best[0] / best[1] <= 1.15
    for j, n in enumerate(sc.networks):
        cfg = market.placement.networks[j]
        if n.auction == "second":
            assert cfg.floor_min_cpm * 1.5 < alloc.floors[j] < cfg.floor_max_cpm / 2
        else:
            assert alloc.floors[j] == cfg.floor_min_cpm
        assert 0.2 < alloc.revenue[j] < 20


def test_core_drift_best_network_halves_at_hour_15():
    market = Market("core_drift")
    start = market.scenario.start_ts
    before, after = market.oracle_at(start + 14.9 * 3600), market.oracle_at(start + 15.1 * 3600)
    admob = market.placement.network_index("admob")
    assert before.weights[admob] == 1.0 and after.weights[admob] == 0.0
    assert after.revenue[admob] == pytest.approx(before.revenue[admob] / 2, rel=1e-6)  # R scales with prices
    assert after.floors[admob] == pytest.approx(before.floors[admob] / 2, rel=1e-4)
    same = Market("core_stationary").oracle_at(start)
    assert np.allclose(before.revenue, same.revenue)


def test_share_allocation_is_the_lp_optimum():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 5
        lo = rng.uniform(0, 0.15, n)
        hi = np.maximum(lo, rng.uniform(0.1, 1.0, n))
        hi[0] = 1.0
        nets = [{"id": f"n{i}", "min_share": float(lo[i]), "max_share": float(hi[i])} for i in range(n)]
        placement = PlacementConfig.from_dict("p", {"networks": nets})
        revenue = rng.uniform(0.1, 3.0, n)
        alloc = share_allocation(np.zeros(n), revenue, np.ones(n), placement)
        lp = linprog(
            -revenue,
            A_eq=np.ones((1, n)),
            b_eq=[1.0],
            bounds=list(zip(lo, hi, strict=True)),
            method="highs",
        )
        assert alloc.revenue_per_request == pytest.approx(-lp.fun, rel=1e-9)
        assert np.all(alloc.weights >= lo - 1e-12) and np.all(alloc.weights <= hi + 1e-12)


def test_contract_shares_oracle_respects_shares_and_caps():
    market = Market("contract_shares")
    sc = market.scenario
    alloc = market.oracle_at(sc.start_ts)
    assert alloc.weights.sum() == pytest.approx(1.0)
    for j, cfg in enumerate(market.placement.networks):
        assert cfg.min_share - 1e-9 <= alloc.weights[j] <= cfg.max_share + 1e-9
    unity = market.placement.network_index("unity")
    fills_per_hour = sc.requests_per_hour * alloc.weights[unity] * alloc.fill[unity]
    assert fills_per_hour <= sc.networks[unity].cap_fills_per_hour * (1 + 1e-6)
    assert alloc.weights[unity] > 0.05  # the capped network still earns its part
    # Without the cap the same market would give unity more traffic.
    uncapped = copy.deepcopy(load_scenario("contract_shares"))
    nets = list(uncapped.networks)
    from dataclasses import replace

    nets[unity] = replace(nets[unity], cap_fills_per_hour=float("inf"))
    free = Market(replace(uncapped, networks=tuple(nets))).oracle_at(sc.start_ts)
    assert free.revenue_per_request > alloc.revenue_per_request


def test_demand_cap_blocks_fills_within_the_hour():
    market = Market("contract_shares")
    unity = market.placement.network_index("unity")
    req = market.requests(30_000, np.random.default_rng(1))
    out = market.sample(req, np.full(len(req), unity), np.full(len(req), 0.5))
    hours = np.floor(req.ts / 3600).astype(int)
    counts = np.bincount(hours - hours.min(), weights=out.filled)
    assert counts.max() == market.scenario.networks[unity].cap_fills_per_hour
    assert not out.available.all() and not out.filled[~out.available].any()


def test_common_random_numbers_requests_and_bids():
    market = Market("segments")
    a = market.requests(3000, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    b1 = market.requests(1000, rng)
    b2 = market.requests(2000, rng, start_ts=b1.ts[-1])
    for name in ("key", "segment_index", "shock", "regime"):
        assert np.array_equal(getattr(a, name), np.concatenate([getattr(b1, name), getattr(b2, name)]))
    assert np.allclose(a.ts, np.concatenate([b1.ts, b2.ts]), rtol=0, atol=1e-6)
    # Bids at a network do not depend on which networks the other requests were sent to.
    for j in range(market.n_networks):
        top_all, sec_all = market.bids(a, j)
        mixed = np.random.default_rng(j).integers(0, market.n_networks, len(a))
        mixed[::3] = j
        top_mixed, sec_mixed = market.bids(a, mixed)
        rows = mixed == j
        assert np.array_equal(top_all[rows], top_mixed[rows]) and np.array_equal(sec_all[rows], sec_mixed[rows])


def test_seasonal_traffic_follows_the_hourly_rate():
    market = Market("seasonality")
    sc = market.scenario
    req = market.requests(int(sc.requests_per_hour * 24 * 1.02), np.random.default_rng(2))
    hours = ((req.ts - sc.start_ts) // 3600).astype(int)
    counts = np.bincount(hours, minlength=24)[:24]
    expected = sc.requests_per_hour * np.array(sc.seasonality.traffic)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    assert counts.argmax() == 12


@pytest.mark.parametrize("name", list_scenarios())
def test_bundled_scenarios_load_with_realistic_prices(name):
    market = Market(name)
    ts = market.scenario.start_ts + 3600.0
    for s in range(market.n_segments):
        alloc = market.oracle_at(ts, s)
        assert 0.2 <= alloc.revenue_per_request <= 20.0
    if name == "many_networks":
        assert len(market.placement.networks) >= 12


def test_oracle_table_lists_the_truth_per_segment_and_network():
    market = Market("segments")
    table = market.oracle_table()
    assert table.height == market.n_segments * market.n_networks
    weights = table.group_by("segment").agg(pl.col("oracle_weight").sum())
    assert np.allclose(weights["oracle_weight"].to_numpy(), 1.0)
    best = table.filter(pl.col("oracle_weight") > 0.5)
    assert np.allclose(best["best_revenue_cpm"].to_numpy(), best["segment_oracle_revenue_cpm"].to_numpy())
    # An int seed works as the request stream too.
    assert np.array_equal(market.requests(10, 4).key, market.requests(10, np.random.default_rng(4)).key)
