"""Markets outside the policies' model: each mechanism's exact truth against Monte Carlo
(an independent brute-force auction and :meth:`Market.sample`), scenario validation, the
``ood_*`` scenarios' shape, and common random numbers."""

from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import replace

import numpy as np
import pytest

from bandit.errors import InvalidConfig
from simulator import Market, Scenario, list_scenarios, load_scenario
from simulator.auction import quantile_nodes
from simulator.scenario import SCENARIO_DIR

WEIGHTS, MEANS, SDS = [0.7, 0.3], [0.2, 1.1], [0.5, 0.4]
SHADING = 0.7
OOD = [n for n in list_scenarios() if n.startswith("ood_")]


def network(auction: str, **extra: object) -> dict:
    net = {"id": "net", "auction": auction, "bidders": 3.0}
    if extra.get("value_dist") != "pareto":
        net |= {"value_weights": WEIGHTS, "value_log_means": MEANS, "value_log_sds": SDS}
    if auction == "first":
        net["shading"] = SHADING
    return net | extra


def one_network(net: dict, shock_sd: float = 0.0, **body: object) -> Market:
    return Market(Scenario.from_dict({"name": "one", "shock_sd": shock_sd, "networks": [net], **body}))


def draw_values(net: dict, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Independent draws of the value law of ``net`` (log-normal mixture and/or Pareto)."""
    dist = net.get("value_dist", "lognormal")
    wp = {"lognormal": 0.0, "pareto": 1.0}.get(dist, net.get("pareto_weight", 0.0))
    out = np.empty(shape)
    pareto = rng.random(shape) < wp
    if wp > 0:
        u = rng.random(shape)
        out[pareto] = net["pareto_scale_cpm"] * u[pareto] ** (-1.0 / net["pareto_alpha"])
    if wp < 1:
        comp = rng.random(shape) < WEIGHTS[0]
        z = rng.standard_normal(shape)
        ln = np.exp(np.where(comp, MEANS[0] + SDS[0] * z, MEANS[1] + SDS[1] * z))
        out[~pareto] = ln[~pareto]
    return out


def brute_force(net: dict, floor: float, shock_sd: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Revenue [n] and fill [n] by drawing every bidder's value and running the auction."""
    rng = np.random.default_rng(seed)
    d, lam = net.get("dispersion", 0.0), net["bidders"]
    rate = rng.gamma(1 / d, d * lam, n) if d > 0 else np.full(n, lam)
    k = rng.poisson(rate)
    kmax = max(int(k.max()), 2)
    v = draw_values(net, rng, (n, kmax))
    v[np.arange(kmax)[None, :] >= k[:, None]] = 0.0
    shock = np.exp(shock_sd * rng.standard_normal(n) - 0.5 * shock_sd**2)
    v = np.sort(v, axis=1) * shock[:, None]
    v1, v2 = v[:, -1], v[:, -2]
    s = net.get("shading", 1.0)
    if net["auction"] == "second":
        filled = (v1 > 0) & (v1 >= floor)
        price = np.minimum(v1, np.maximum(v2, floor) + net.get("price_increment_cpm", 0.0))
    elif net.get("floor_responsive"):
        filled = (v1 > 0) & (v1 >= floor)
        price = np.maximum(s * v1, floor)
    else:
        filled = (v1 > 0) & (s * v1 >= floor)
        price = s * v1
    if "throttle_floor_cpm" in net:
        t = 1 / (1 + (floor / net["throttle_floor_cpm"]) ** net.get("throttle_power", 2.0))
        filled &= rng.random(n) < t
    return np.where(filled, np.minimum(price, 1000.0), 0.0), filled


def assert_close(revenue: np.ndarray, filled: np.ndarray, truth: tuple[np.ndarray, np.ndarray]) -> None:
    """Mean revenue and fill within 4 Monte Carlo standard errors of the exact values."""
    n = len(revenue)
    rev, fill = float(truth[0][0]), float(truth[1][0])
    se = revenue.std() / math.sqrt(n)
    assert abs(revenue.mean() - rev) < 4 * se + 1e-12, (revenue.mean(), rev, se)
    assert abs(filled.mean() - fill) < 4 * math.sqrt(fill * (1 - fill) / n) + 1e-9, (filled.mean(), fill)


MECHANISMS = {
    "cents": (network("second", price_increment_cpm=0.3), 0.0),
    "cents_nb_shock": (network("second", price_increment_cpm=0.05, dispersion=0.8), 0.4),
    "responsive": (network("first", floor_responsive=True), 0.0),
    "responsive_nb_shock": (network("first", floor_responsive=True, dispersion=1.0), 0.4),
    "pareto_second": (network("second", value_dist="pareto", pareto_alpha=2.5, pareto_scale_cpm=0.8), 0.0),
    "pareto_first": (network("first", value_dist="pareto", pareto_alpha=2.5, pareto_scale_cpm=0.8), 0.3),
    "lognormal_pareto": (
        network(
            "second",
            value_dist="lognormal_pareto",
            pareto_alpha=2.0,
            pareto_scale_cpm=1.0,
            pareto_weight=0.2,
            price_increment_cpm=0.01,
        ),
        0.3,
    ),
    "throttle": (network("second", throttle_floor_cpm=1.5, throttle_power=3.0), 0.0),
    "throttle_responsive": (network("first", floor_responsive=True, throttle_floor_cpm=2.0, throttle_power=4.0), 0.2),
}
FLOORS = (0.5, 1.6, 3.0)


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_truth_matches_brute_force_auction(name):
    net, shock_sd = MECHANISMS[name]
    market = one_network(net, shock_sd)
    for i, floor in enumerate(FLOORS):
        revenue, filled = brute_force(net, floor, shock_sd, 60_000, seed=100 + i)
        assert_close(revenue, filled, market.expected(market.scenario.start_ts, 0, 0, floor))


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_market_sampler_matches_truth(name):
    net, shock_sd = MECHANISMS[name]
    market = one_network(net, shock_sd)
    n = 150_000
    req = market.requests(n, np.random.default_rng(7))
    for floor in FLOORS:
        out = market.sample(req, np.zeros(n, dtype=np.int64), np.full(n, floor))
        assert_close(out.revenue, out.filled, market.expected(req.ts[:1], 0, 0, floor))
        assert np.all(out.revenue[out.filled] >= floor) and not out.revenue[~out.filled].any()


@pytest.mark.parametrize("delta", [0.01, 0.3])
def test_increment_adds_exactly_its_expected_price_lift(delta):
    """R_δ(f) − R_0(f) = E[min(V1 − max(V2, f), δ); fill], checked with common random
    numbers (the per-request lift lies in [0, δ], so its Monte Carlo error is tiny)."""
    plain = one_network(network("second"))
    cents = one_network(network("second", price_increment_cpm=delta))
    n = 200_000
    req = plain.requests(n, np.random.default_rng(3))
    for floor in FLOORS:
        base = plain.sample(req, np.zeros(n, dtype=np.int64), np.full(n, floor))
        lifted = cents.sample(req, np.zeros(n, dtype=np.int64), np.full(n, floor))
        assert np.array_equal(base.filled, lifted.filled)
        lift = lifted.revenue - base.revenue
        assert lift.min() >= 0 and lift.max() <= delta * (1 + 1e-12)
        # One bidder above the floor pays floor + δ (or its bid when it is below that).
        single = base.filled & (base.revenue == floor)
        top, _ = plain.bids(req.take(single), 0)
        assert np.allclose(lifted.revenue[single], np.minimum(top, floor + delta))
        exact = cents.expected(req.ts[:1], 0, 0, floor)[0] - plain.expected(req.ts[:1], 0, 0, floor)[0]
        assert abs(lift.mean() - exact[0]) < 4 * lift.std() / math.sqrt(n) + 1e-12


def test_throttle_thins_the_same_auction():
    """The throttle is a fresh coin per (request, network): the throttled market fills a
    subset of the plain market's fills, at the same prices, in proportion t(f)."""
    plain = one_network(network("second"))
    throttled = one_network(network("second", throttle_floor_cpm=1.5, throttle_power=3.0))
    n = 100_000
    req = plain.requests(n, np.random.default_rng(4))
    for floor in FLOORS:
        a = plain.sample(req, np.zeros(n, dtype=np.int64), np.full(n, floor))
        b = throttled.sample(req, np.zeros(n, dtype=np.int64), np.full(n, floor))
        assert not (b.filled & ~a.filled).any()
        assert np.array_equal(b.revenue[b.filled], a.revenue[b.filled])
        t = 1 / (1 + (floor / 1.5) ** 3)
        r0, p0 = plain.expected(req.ts[:1], 0, 0, floor)
        r1, p1 = throttled.expected(req.ts[:1], 0, 0, floor)
        assert r1[0] == pytest.approx(t * r0[0], rel=1e-12) and p1[0] == pytest.approx(t * p0[0], rel=1e-12)


def test_pareto_quantile_tables_invert_the_survival():
    t = quantile_nodes()
    for net in (MECHANISMS["pareto_second"][0], MECHANISMS["lognormal_pareto"][0]):
        bids = one_network(net).bid_distributions[0]
        assert np.allclose(bids.log_survival_log(bids.quantiles[0]), t, atol=1e-8)
        # A pure Pareto's F(x) ~ α(x − x_m)/x_m near x_m: below e^-25 x is x_m to double precision.
        ok = t > (-25.0 if bids.pareto_weight == 1.0 else -math.inf)
        assert np.allclose(bids.log_cdf_log(bids.quantiles[1])[ok], t[ok], atol=1e-6)
    bids = one_network(MECHANISMS["pareto_second"][0]).bid_distributions[0]
    assert (
        math.log(0.8) in set(np.round(bids.grid_log_x, 12).tolist())
        or np.isclose(bids.grid_log_x, math.log(0.8), rtol=0, atol=1e-12).any()
    )


def test_lognormal_path_is_unchanged_by_the_pareto_machinery():
    from simulator.auction import BidDistribution

    plain = BidDistribution(np.array(WEIGHTS), np.array(MEANS), np.array(SDS))
    again = BidDistribution(np.array(WEIGHTS), np.array(MEANS), np.array(SDS), pareto_weight=0.0)
    assert np.array_equal(plain.grid_log_x, again.grid_log_x) and np.array_equal(plain.quantiles, again.quantiles)
    assert np.isclose(plain.grid_log_x[0], min(np.array(MEANS) - 9 * np.array(SDS)))


def test_value_cycle_scales_the_truth_per_hour():
    """With a value multiplier c_h at hour h: R_h(f) = c_h · R(f / c_h), fill_h(f) = fill(f / c_h)."""
    net = network("second", dispersion=0.5)
    cycle = one_network(net, 0.2, seasonality={"value_amplitude": 0.3, "value_peak_hour": 20})
    flat = one_network(net, 0.2)
    start = cycle.scenario.start_ts
    for h in (0, 8, 14, 20):
        c = cycle.scenario.seasonality.value[h]
        ts = start + (h + 0.5) * 3600
        for floor in FLOORS:
            r, p = cycle.expected(ts, 0, 0, floor)
            r0, p0 = flat.expected(start, 0, 0, floor / c)
            assert r[0] == pytest.approx(c * r0[0], rel=1e-9) and p[0] == pytest.approx(p0[0], rel=1e-9)
    assert cycle.scenario.seasonality.value[20] == pytest.approx(1.3)


@pytest.mark.parametrize("name", ["ood_all", "ood_segments"])
def test_scenario_sampler_matches_truth_over_a_day(name):
    """Random networks and floors over a simulated day: realised minus exact expected
    revenue (and fill) averages to zero within 4 standard errors."""
    market = Market(name)
    n = 100_000
    req = market.requests(n, np.random.default_rng(11))
    choice = np.random.default_rng(12)
    net = choice.integers(0, market.n_networks, n)
    floor = np.exp(choice.uniform(math.log(0.1), math.log(5.0), n))
    out = market.sample(req, net, floor)
    rev, fill = market.expected(req.ts, req.segment_index, net, floor)
    for diff in (out.revenue - rev, out.filled - fill):
        assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(n)


def test_common_random_numbers_hold_with_every_mechanism():
    market = Market("ood_all")
    req = market.requests(20_000, np.random.default_rng(9))
    floor = np.random.default_rng(1).uniform(0.1, 3.0, len(req))
    for j in range(market.n_networks):
        alone = market.sample(req, np.full(len(req), j), floor)
        mixed = np.random.default_rng(j).integers(0, market.n_networks, len(req))
        mixed[::3] = j
        out = market.sample(req, mixed, floor)
        rows = mixed == j
        assert np.array_equal(alone.filled[rows], out.filled[rows])
        assert np.array_equal(alone.revenue[rows], out.revenue[rows])


# ----------------------------------------------------------------------- scenarios
def lead_and_interior(market: Market, ts: float, segment: int) -> tuple[float, int]:
    alloc = market.oracle_at(ts, segment)
    best = np.sort(alloc.revenue)[::-1]
    inside = sum(
        cfg.floor_min_cpm * (1 + 1e-6) < f < cfg.floor_max_cpm * (1 - 1e-6)
        for cfg, f in zip(market.placement.networks, alloc.floors, strict=True)
    )
    return float(best[0] / best[1] - 1), int(inside)


@pytest.mark.parametrize("name", [n for n in OOD if n != "ood_seasonal_only"])
def test_ood_scenario_has_a_non_trivial_oracle(name):
    market = Market(name)
    sc = market.scenario
    assert len(sc.networks) == 4 and sc.requests_per_hour >= 10_000 and sc.default_requests >= 200_000
    assert (market.n_segments > 1) == (name == "ood_segments")
    hours = range(0, 24, 3) if any(len(set(v)) > 1 for v in (sc.seasonality.value,)) else [0]
    for h in hours:
        for s in range(market.n_segments):
            lead, inside = lead_and_interior(market, sc.start_ts + (h + 0.5) * 3600, s)
            assert 0.05 <= lead <= 0.15, (h, s, lead)
            assert inside >= 2


def test_ood_scenarios_use_their_mechanism():
    sc = {n: load_scenario(n) for n in OOD}
    assert sc["ood_shock"].shock_sd == 0.5
    assert all(n.dispersion >= 0.8 for n in sc["ood_dispersion"].networks)
    single = [n for n in sc["ood_single"].networks if n.dispersion == -1.0]
    assert len(single) == 2 and all(n.auction == "second" and n.bidders <= 1 for n in single)
    assert sum(n.price_increment_cpm == 0.01 for n in sc["ood_cents"].networks) >= 2
    assert sum(n.floor_responsive for n in sc["ood_responsive"].networks) >= 1
    assert all(n.value_dist != "lognormal" and n.pareto_alpha == 2.5 for n in sc["ood_pareto"].networks)
    assert sum(math.isfinite(n.throttle_floor_cpm) for n in sc["ood_throttle"].networks) == 1
    assert max(sc["ood_daily"].seasonality.value) == pytest.approx(1.22)
    assert min(sc["ood_daily"].seasonality.value) == pytest.approx(0.78)
    seg = sc["ood_segments"]
    assert seg.shock_sd > 0 and all(n.dispersion > 0 for n in seg.networks) and len(seg.segments) >= 3
    every = sc["ood_all"]
    nets = every.networks
    assert every.shock_sd > 0 and all(n.dispersion > 0 for n in nets)
    assert any(n.price_increment_cpm > 0 for n in nets) and any(n.floor_responsive for n in nets)
    assert sum(n.value_dist != "lognormal" for n in nets) == 1
    assert sum(math.isfinite(n.throttle_floor_cpm) for n in nets) == 1
    assert 1.0 < max(every.seasonality.value) <= 1.15
    together = sc["ood_together"]  # the same market without the cycle
    assert together.networks == nets and together.shock_sd == every.shock_sd
    assert set(together.seasonality.value) == {1.0}


def test_segments_have_different_best_networks():
    market = Market("ood_segments")
    best = {int(np.argmax(market.oracle_at(market.scenario.start_ts, s).weights)) for s in range(market.n_segments)}
    assert len(best) == market.n_segments


def test_seasonal_only_market_is_purely_seasonal():
    market = Market("ood_seasonal_only")
    sc = market.scenario
    assert len(sc.networks) == 2 and not sc.events and sc.shock_sd == 0
    assert sc.requests_per_hour == 5000 and sc.default_requests == 7 * 24 * 5000
    assert len(set(sc.seasonality.traffic)) == 1 and len(set(sc.seasonality.demand)) == 1
    assert max(sc.seasonality.value) == pytest.approx(1.3) and min(sc.seasonality.value) == pytest.approx(0.7)
    allocs = [market.oracle_at(sc.start_ts + (h + 0.5) * 3600) for h in range(24)]
    assert len({int(np.argmax(a.weights)) for a in allocs}) == 1  # the best network never changes
    floors = np.array([a.floors[np.argmax(a.weights)] for a in allocs])
    assert floors.max() / floors.min() == pytest.approx(1.3 / 0.7, rel=0.02)


def _best_floors(name: str, key: str, off: object) -> list[tuple[int, tuple, tuple]]:
    """(network, true best floor triple, best floor triple with ``key`` set to ``off``) for
    the networks of scenario ``name`` that use the mechanism ``key``."""
    body = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    true = Market(Scenario.from_dict(body))
    for net in body["networks"]:
        if key in net:
            net[key] = off
    plain = Market(Scenario.from_dict(body))
    nets = [j for j, n in enumerate(true.scenario.networks) if getattr(n, key) not in (0.0, False)]
    return [(j, true.best_floor(0, 0, j), plain.best_floor(0, 0, j)) for j in nets]


def test_responsive_bidders_move_the_best_floor_inside():
    rows = _best_floors("ood_responsive", "floor_responsive", False)
    market = Market("ood_responsive")
    for j, (f_true, _, _), (f_plain, _, _) in rows:
        cfg = market.placement.networks[j]
        assert f_plain == cfg.floor_min_cpm  # a plain first-price floor only cuts fills
        assert cfg.floor_min_cpm * 2 < f_true < cfg.floor_max_cpm / 2
    # adfit wins only at its interior floor: at floor_min it would trail the runner-up.
    adfit = market.placement.network_index("adfit")
    alloc = market.oracle_at(market.scenario.start_ts)
    at_min = market.expected(market.scenario.start_ts, 0, adfit, market.placement.networks[adfit].floor_min_cpm)[0][0]
    assert alloc.weights[adfit] == 1.0 and at_min < np.sort(alloc.revenue)[-2]


def test_cent_increment_lowers_the_best_second_price_floor():
    rows = _best_floors("ood_cents", "price_increment_cpm", 0.0)
    assert len(rows) == 3
    for _, (f_true, r_true, _), (f_plain, r_plain, _) in rows:
        assert 0.3 * 0.01 < f_plain - f_true < 0.01
        assert r_true > r_plain  # the cent is paid on top


# ----------------------------------------------------------------------- validation
def base() -> dict:
    with open(SCENARIO_DIR / "ood_all.toml", "rb") as fh:
        return tomllib.load(fh)


def set_net(j: int, **changes: object) -> dict:
    body = copy.deepcopy(base())
    for key, value in changes.items():
        if value is None:
            body["networks"][j].pop(key, None)
        else:
            body["networks"][j][key] = value
    return body


BAD = [
    (set_net(0, price_increment_cpm=-0.01), r"^networks\[0\]\.price_increment_cpm: must lie in \[0, 1\]"),
    (set_net(1, price_increment_cpm=0.01), r"^networks\[1\]\.price_increment_cpm: applies to second-price"),
    (set_net(0, floor_responsive=True), r"^networks\[0\]\.floor_responsive: applies to first-price"),
    (set_net(1, floor_responsive="yes"), r"^networks\[1\]\.floor_responsive: must be true or false"),
    (set_net(2, value_dist="cauchy"), r"^networks\[2\]\.value_dist: must be 'lognormal' or 'pareto' or"),
    (set_net(2, pareto_alpha=1.0), r"^networks\[2\]\.pareto_alpha: must lie in \[1\.5, 20\]"),
    (set_net(2, pareto_alpha=None), r"^networks\[2\]\.pareto_alpha: is required"),
    (set_net(2, pareto_scale_cpm=0.0), r"^networks\[2\]\.pareto_scale_cpm: must lie in"),
    (set_net(2, pareto_weight=0.0), r"^networks\[2\]\.pareto_weight: must lie in \(0, 1\]"),
    (set_net(2, pareto_weight=1.0), r"^networks\[2\]\.pareto_weight: must be < 1 with value_dist 'lognormal_pareto'"),
    (set_net(0, pareto_alpha=2.5), r"^networks\[0\]\.pareto_alpha: needs value_dist 'pareto' or"),
    (set_net(2, value_dist="pareto"), r"^networks\[2\]\.value_weights: does not apply to value_dist 'pareto'"),
    (set_net(2, value_dist="lognormal"), r"^networks\[2\]\.pareto_alpha: needs value_dist"),
    (set_net(0, throttle_floor_cpm=0.0), r"^networks\[0\]\.throttle_floor_cpm: must lie in \(0"),
    (set_net(0, throttle_power=3.0), r"^networks\[0\]\.throttle_power: needs throttle_floor_cpm"),
    (set_net(3, throttle_power=0.1), r"^networks\[3\]\.throttle_power: must lie in \[0\.5, 20\]"),
    ({**base(), "seasonality": {"value": [1.0] * 23}}, r"^seasonality\.value: must have 24 entries"),
    ({**base(), "seasonality": {"value_amplitude": 1.2}}, r"^seasonality\.value_amplitude: must lie in"),
    (
        {**base(), "seasonality": {"value": [1.0] * 24, "value_amplitude": 0.1}},
        r"^seasonality\.value: give either value or value_amplitude",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m[1:40] for _, m in BAD])
def test_bad_ood_field_names_the_field(body, message):
    with pytest.raises(InvalidConfig, match=message):
        Scenario.from_dict(body)


def test_pure_pareto_network_needs_no_lognormal_fields():
    body = base()
    body["networks"][2] = {
        "id": "pangle",
        "auction": "second",
        "bidders": 3.0,
        "value_dist": "pareto",
        "pareto_alpha": 2.5,
        "pareto_scale_cpm": 0.8,
    }
    spec = Scenario.from_dict(body).networks[2]
    assert spec.pareto_weight == 1.0 and spec.value_log_means == () and spec.mechanisms == ("pareto(alpha=2.5)",)
    assert replace(spec, value_dist="lognormal").mechanisms == ()
