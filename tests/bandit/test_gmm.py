"""Censored EM and revenue curves against brute-force auctions with known parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr

from bandit import gmm
from bandit.gmm import (
    GmmParams,
    ObservationSets,
    Prior,
    ResponsiveCurve,
    RevenueCurve,
    best_floor,
    censored_data,
    em_step,
    fit,
    fit_effects,
    initial_params,
    is_single_bidder,
    log_likelihood,
)
from bandit.stats import FILLS, REQUESTS, accumulate
from tests.bandit.auctions import sample_auctions

TRUE = dict(lam=3.0, pi=[0.6, 0.4], mu=[math.log(0.5), math.log(3.0)], sd=[0.5, 0.4])


def _stats(rng, n, second_price, floors=None, **truth):
    if floors is None:
        floors = np.exp(rng.uniform(math.log(0.05), math.log(20.0), n))
        floors[rng.random(n) < 0.2] = 0.0
    filled, revenue = sample_auctions(rng, floors, second_price=second_price, **truth)
    return accumulate(np.zeros(n, np.int64), 1, floors, filled, revenue, np.ones(n))[0]


def _prior(strength=1.0):
    return Prior(lam0=2.0, center=np.array([[math.log(0.3), math.log(3.0)]]), spread=1.0, strength=strength)


def _fit(stats, second_price, strength=1.0):
    prior = _prior(strength)
    return fit(censored_data(stats, second_price), initial_params(prior), prior, max_iter=2000, tol=1e-8)


@pytest.mark.parametrize("second_price", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_censored_em_recovers_known_mixture(seed, second_price):
    rng = np.random.default_rng(seed)
    p = _fit(_stats(rng, 150_000, second_price, **TRUE), second_price)
    order = np.argsort(p.mu[0])
    assert p.lam[0] == pytest.approx(TRUE["lam"], rel=0.06)
    np.testing.assert_allclose(p.pi[0, order], TRUE["pi"], atol=0.04)
    np.testing.assert_allclose(p.mu[0, order], TRUE["mu"], atol=0.06)
    np.testing.assert_allclose(p.sd[0, order], TRUE["sd"], atol=0.05)


def test_no_fills_enter_the_likelihood():
    """Dropping the censored no-fills biases the model: the revenue it predicts goes wrong."""
    rng = np.random.default_rng(7)
    stats = _stats(rng, 100_000, True, **TRUE)
    dropped = stats.copy()
    dropped[REQUESTS] = dropped[FILLS]  # as if no-fills had been thrown away
    truth = GmmParams(np.array([TRUE["lam"]]), np.array([TRUE["pi"]]), np.array([TRUE["mu"]]), np.array([TRUE["sd"]]))
    at = np.log([[0.3, 1.0, 2.0, 4.0]])
    expected = RevenueCurve.of(truth, True).revenue(at)
    error = lambda p: np.max(np.abs(RevenueCurve.of(p, True).revenue(at) / expected - 1))  # noqa: E731
    assert error(_fit(stats, True)) < 0.02
    assert error(_fit(dropped, True)) > 0.10


@pytest.mark.parametrize("second_price", [False, True])
def test_em_never_decreases_the_likelihood(second_price):
    rng = np.random.default_rng(3)
    data = censored_data(_stats(rng, 30_000, second_price, **TRUE), second_price)
    prior = _prior(strength=1e-9)
    p = initial_params(prior)
    previous = -np.inf
    for _ in range(40):
        p = em_step(ObservationSets.of(data), p, prior)
        ll = float(log_likelihood(data, p)[0])
        assert ll >= previous - 1e-6 * abs(ll)
        previous = ll


@pytest.mark.parametrize("second_price", [False, True])
@pytest.mark.parametrize("floor", [0.0, 0.5, 1.5, 4.0])
def test_revenue_curve_matches_brute_force_auctions(second_price, floor):
    truth = GmmParams(np.array([TRUE["lam"]]), np.array([TRUE["pi"]]), np.array([TRUE["mu"]]), np.array([TRUE["sd"]]))
    curve = RevenueCurve.of(truth, second_price)
    rng = np.random.default_rng(11)
    n = 400_000
    filled, revenue = sample_auctions(rng, np.full(n, floor), second_price=second_price, **TRUE)
    at = np.array([[math.log(floor) if floor > 0 else -50.0]])
    se = revenue.std() / math.sqrt(n)
    assert curve.revenue(at)[0, 0] == pytest.approx(revenue.mean(), abs=4 * se + 2e-3)
    assert curve.fill_rate(at)[0, 0] == pytest.approx(filled.mean(), abs=0.004)


def test_best_floor_is_continuous_inside_bounds_and_beats_a_dense_grid():
    truth = GmmParams(np.array([3.0]), np.array([TRUE["pi"]]), np.array([TRUE["mu"]]), np.array([TRUE["sd"]]))
    curve = RevenueCurve.of(truth, second_price=True)
    floor, revenue = best_floor(curve, 0.2, 20.0)
    dense = np.linspace(math.log(0.2), math.log(20.0), 20_001)
    brute = curve.revenue(dense[None, :])[0]
    assert 0.2 < floor[0] < 20.0
    assert revenue[0] >= brute.max() - 1e-6
    assert abs(math.log(floor[0]) - dense[np.argmax(brute)]) < 2e-3
    # Bounds bind when the optimum lies outside them.
    clipped, _ = best_floor(curve, 0.2, 1.0)
    assert clipped[0] == pytest.approx(1.0, rel=1e-3)


def test_first_price_floor_only_cuts_fills():
    truth = GmmParams(np.array([2.0]), np.array([[1.0]]), np.array([[0.4]]), np.array([[0.6]]))
    curve = RevenueCurve.of(truth, second_price=False)
    grid = np.log(np.linspace(0.05, 10.0, 200))[None, :]
    assert np.all(np.diff(curve.revenue(grid)[0]) <= 1e-12)


def test_bootstrap_draws_spread_shrinks_with_data():
    rng = np.random.default_rng(5)
    spreads = []
    for n in (2_000, 50_000):
        data = censored_data(_stats(rng, n, True, **TRUE), True)
        prior = _prior()
        mle = fit(data, initial_params(prior), prior, max_iter=500, tol=1e-7)
        draws = fit(data.reweighted(rng, 32), mle.repeat(32), prior, max_iter=20)
        _, revenue = best_floor(RevenueCurve.of(draws, True), 0.0, 20.0)
        spreads.append(revenue.std())
    assert spreads[1] < 0.5 * spreads[0]


# --------------------------------------------------------------------------- a single bidder
#: One buyer who bids 80% of the time, value log-normal (median 8 CPM, log-sd 0.3); second
#: price, so every fill pays the floor (the Prebid browser test's bidder "gamma").
SINGLE = dict(bids=0.8, median=8.0, sd=0.3)


def _single_stats(rng, floors):
    value = SINGLE["median"] * np.exp(SINGLE["sd"] * rng.standard_normal(len(floors)))
    filled = (rng.random(len(floors)) < SINGLE["bids"]) & (value >= floors)
    n = len(floors)
    return accumulate(np.zeros(n, np.int64), 1, floors, filled, np.where(filled, floors, 0.0), np.ones(n))[0]


def single_revenue(floors):
    z = np.log(floors / SINGLE["median"]) / SINGLE["sd"]
    return floors * SINGLE["bids"] * ndtr(-z)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_single_bidder_is_fitted_as_one(seed):
    """Fills only at the floor while filling often: no Poisson crowd does that (one filling half
    the time pays above the floor in a third of its fills). Fitted as a crowd, the curve stays
    wrong by a fifth of the best revenue whatever the data; as a single bidder it converges,
    and from 600 requests its best floor earns within 1.5% of the best."""
    rng = np.random.default_rng(seed)
    prior = _prior()
    grid = np.linspace(3.0, 10.0, 200)
    truth = single_revenue(grid)
    floors = np.exp(rng.uniform(math.log(3.0), math.log(10.0), 5_000))
    stats = _single_stats(rng, floors)
    assert is_single_bidder(stats)
    single = fit(censored_data(stats, True, single_bid=True), initial_params(prior), prior, max_iter=2000, tol=1e-8)
    crowd = fit(censored_data(stats, True), initial_params(prior), prior, max_iter=2000, tol=1e-8)
    single_error = np.abs(RevenueCurve.of(single, True, single_bid=True).revenue(np.log(grid)[None, :])[0] - truth)
    crowd_error = np.abs(RevenueCurve.of(crowd, True).revenue(np.log(grid)[None, :])[0] - truth)
    assert single_error.max() < 0.12 * truth.max() and crowd_error.max() > 0.15 * truth.max()
    assert single_error.mean() < 0.5 * crowd_error.mean()
    few = _single_stats(rng, floors[:600])
    single = fit(censored_data(few, True, single_bid=True), initial_params(prior), prior, max_iter=2000, tol=1e-8)
    floor, _ = best_floor(RevenueCurve.of(single, True, single_bid=True), 0.1, 20.0)
    assert single_revenue(floor)[0] >= 0.985 * truth.max(), floor


def test_a_single_bidders_curve_matches_brute_force_and_em_never_decreases_its_likelihood():
    lam, mu, sd = 0.8, math.log(8.0), 0.3
    truth = GmmParams(np.array([lam]), np.array([[1.0]]), np.array([[mu]]), np.array([[sd]]))
    curve = RevenueCurve.of(truth, True, single_bid=True)
    floors = np.array([2.0, 6.0, 9.0])
    at = np.log(floors)[None, :]
    np.testing.assert_allclose(curve.revenue(at)[0], single_revenue(floors), rtol=1e-3)
    np.testing.assert_allclose(curve.fill_rate(at)[0], single_revenue(floors) / floors, rtol=1e-3)
    assert np.all(curve.pay_cdf(at) == 1.0)  # pays the floor: never more
    rng = np.random.default_rng(3)
    data = censored_data(_single_stats(rng, np.exp(rng.uniform(math.log(1.0), math.log(15.0), 5_000))), True, True)
    prior = _prior()
    p = initial_params(prior)
    obs = ObservationSets.of(data)
    last = -np.inf
    for _ in range(40):
        p = em_step(obs, p, prior)
        ll = log_likelihood(data, p)[0]
        assert ll >= last - 1e-6
        last = ll
    assert p.lam[0] < 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_poisson_crowd_and_a_first_price_network_are_no_single_bidder(seed):
    rng = np.random.default_rng(seed)
    assert not is_single_bidder(_stats(rng, 5_000, True, **TRUE))
    # Few fills at high floors (a crowd's fills there are mostly at the floor too): too few to tell.
    high = _stats(rng, 5_000, True, floors=np.full(5_000, 15.0), **TRUE)
    assert high[FILLS].sum() < 0.2 * high[REQUESTS].sum() and not is_single_bidder(high)


def _responsive(rng, floors, shading):
    """Statistics [F, B] of a first-price network whose ``TRUE`` bidders respond to the floor
    (the top bid is ``shading`` × the top value, lifted to the floor when the value clears
    it), served at ``floors``; and its true curve."""
    n = len(floors)
    k = rng.poisson(TRUE["lam"], n)
    width = max(int(k.max()), 1)
    comp = rng.choice(2, size=(n, width), p=TRUE["pi"])
    values = np.exp(rng.normal(np.asarray(TRUE["mu"])[comp], np.asarray(TRUE["sd"])[comp]))
    values[np.arange(width)[None, :] >= k[:, None]] = 0.0
    top = values.max(axis=1)
    filled = top >= floors
    revenue = np.where(filled, np.maximum(shading * top, floors), 0.0)
    stats = accumulate(np.zeros(n, np.int64), 1, floors, filled, revenue, np.ones(n))[0]
    truth_bids = GmmParams(
        np.array([TRUE["lam"]]),
        np.array([TRUE["pi"]]),
        np.array([TRUE["mu"]]) + math.log(shading),
        np.array([TRUE["sd"]]),
    )
    return stats, ResponsiveCurve(RevenueCurve.of(truth_bids, False), np.array([shading]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_responsive_networks_observations_read_under_its_shading_give_its_true_curve(seed):
    """First price with bidders that respond to the floor (shading 0.75: the top bid is 0.75 of
    the top value, lifted to the floor when the value clears it), served at floors from 2 to 4
    CPM. Read as plain bids (a no-fill: bid below f; a fill at the floor: a bid of f) the fit
    puts the bids too high, and its fill and revenue above the floors tried come out well
    above the truth; read under the shading they are right within a few percent."""
    rng = np.random.default_rng(seed)
    shading = 0.75
    stats, truth = _responsive(rng, np.exp(rng.uniform(math.log(2.0), math.log(4.0), 200_000)), shading)
    at = np.log(np.array([[4.0, 5.0, 6.0]]))
    prior = _prior()
    errors = {}
    for s in (1.0, shading):
        p = fit(censored_data(stats, False, shading=s), initial_params(prior), prior, max_iter=2000, tol=1e-8)
        model = ResponsiveCurve(RevenueCurve.of(p, False), np.array([shading]))
        errors[s] = (
            np.abs(model.fill_rate(at) / truth.fill_rate(at) - 1).max(),
            np.abs(model.revenue(at) / truth.revenue(at) - 1).max(),
        )
    assert min(errors[1.0]) > 0.2, errors  # plain bids: far off above the floors tried
    assert max(errors[shading]) < 0.06, errors
    # Second price ignores the shading; 1 is the plain reading.
    np.testing.assert_array_equal(
        censored_data(stats, True, shading=0.5).nofill_at, censored_data(stats, True).nofill_at
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_responsive_fills_at_the_floor_spread_over_their_interval_keep_the_curve_smooth(seed, monkeypatch):
    """Served around one floor (2.8 CPM, as a policy serves its chosen floor) with bidders
    halving their values, most fills are at the floor: each says the top bid lies in
    [s·f, f). Read as one bid at the log-midpoint, that spike in the fitted bids puts a
    cliff into the curve at f/√s (revenue ~30-40% too high at 3.3-3.8 CPM, ~60% too low at
    4.5); spread over the interval, the curve is within 15% of the truth from 0.5 to 6 CPM."""
    rng = np.random.default_rng(seed)
    shading = 0.5
    stats, truth = _responsive(rng, 2.8 * np.exp(rng.normal(0.0, 0.03, 100_000)), shading)
    at = np.log(np.array([[0.5, 1.5, 2.2, 2.8, 3.3, 3.8, 4.5, 6.0]]))
    prior = _prior()
    errors, spread = {}, gmm.AT_FLOOR_POINTS
    for points in (1, spread):
        monkeypatch.setattr(gmm, "AT_FLOOR_POINTS", points)
        p = fit(censored_data(stats, False, shading=shading), initial_params(prior), prior, max_iter=2000, tol=1e-8)
        model = ResponsiveCurve(RevenueCurve.of(p, False), np.array([shading]))
        errors[points] = model.revenue(at)[0] / truth.revenue(at)[0] - 1
    assert errors[1].max() > 0.25 and errors[1].min() < -0.4, errors
    assert np.abs(errors[spread]).max() < 0.15, errors


# --------------------------------------------------------------------------- per-request effects
def _effect_stats(seed, n, shock_sd, dispersion):
    rng = np.random.default_rng(seed)
    return _stats(rng, n, True, shock_sd=shock_sd, dispersion=dispersion, **TRUE)


def _truth(shock_sd=0.0, dispersion=0.0):
    one = lambda v: np.array([v])  # noqa: E731
    return GmmParams(one(TRUE["lam"]), one(TRUE["pi"]), one(TRUE["mu"]), one(TRUE["sd"]), shock_sd, dispersion)


@pytest.mark.parametrize(("shock_sd", "dispersion"), [(0.3, 0.4), (0.5, 0.0), (0.0, 0.8)])
def test_revenue_curve_under_effects_matches_brute_force_auctions(shock_sd, dispersion):
    """R(f) and the fill rate mixed over the effect nodes agree with auctions that draw the
    shock and the bidder count explicitly (within the Monte Carlo noise plus the quadrature's
    1%); the same curve without the effects is more than 5% off at some floor."""
    rng = np.random.default_rng(3)
    curve = RevenueCurve.of(_truth(shock_sd, dispersion), True)
    plain = RevenueCurve.of(_truth(), True)
    worst_plain = 0.0
    for floor in (0.3, 1.0, 2.0, 4.0):
        filled, revenue = sample_auctions(
            rng, np.full(200_000, floor), second_price=True, shock_sd=shock_sd, dispersion=dispersion, **TRUE
        )
        x = np.array([[math.log(floor)]])
        r, fill = float(curve.revenue(x)[0, 0]), float(curve.fill_rate(x)[0, 0])
        se = revenue.std() / math.sqrt(len(revenue))
        assert abs(r - revenue.mean()) < 4.5 * se + 0.01 * revenue.mean(), (floor, r, revenue.mean())
        assert abs(fill - filled.mean()) < 4.5 * math.sqrt(fill * (1 - fill) / len(filled)) + 0.01, floor
        worst_plain = max(worst_plain, abs(float(plain.revenue(x)[0, 0]) / revenue.mean() - 1))
    assert worst_plain > 0.05


def test_log_likelihood_with_vanishing_effects_is_the_plain_one():
    data = censored_data(_effect_stats(0, 20_000, 0.0, 0.0), True)
    p = _truth()
    assert float(log_likelihood(data, p.with_effects(1e-9, 0.0))[0]) == pytest.approx(float(log_likelihood(data, p)[0]))


@pytest.mark.parametrize("dispersion", [1e-9, 1e-4, 0.05, 0.8, 2.0])
def test_effect_nodes_integrate_the_effects_moments_for_any_dispersion(dispersion):
    """Finite nodes whose weights sum to 1 and reproduce the shock's and the rate factor's
    moments (Gamma: mean 1, variance d, third central moment 2d²), also for a dispersion so
    small that a textbook Gauss–Laguerre rule's weights overflow."""
    z, u, w = gmm.effect_nodes(0.3, dispersion)
    assert np.isfinite(z).all() and np.isfinite(u).all() and np.isfinite(w).all() and (w > 0).all()
    moments = [(w * z).sum(), (w * z**2).sum(), (w * u).sum(), (w * (u - 1) ** 2).sum(), (w * (u - 1) ** 3).sum()]
    np.testing.assert_allclose(moments, [0.0, 0.09, 1.0, dispersion, 2 * dispersion**2], rtol=1e-9, atol=1e-15)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


def test_a_curve_with_a_tiny_dispersion_is_finite_and_the_plain_one():
    """A stored fit may carry any dispersion in its allowed range (an uploaded model, say):
    one of 1e-4 reads as the curve without effects, not as NaN."""
    floors = np.log(np.array([[0.5, 2.0, 6.0]]))
    plain = RevenueCurve.of(_truth(), True).revenue(floors)
    tiny = RevenueCurve.of(_truth(0.0, 1e-4), True).revenue(floors)
    np.testing.assert_allclose(tiny, plain, rtol=1e-3)


def test_an_em_step_under_vanishing_effects_is_the_plain_one():
    """The node E-step with (almost) no effects spreads each observation over nodes that all
    sit where it is: the step equals the plain E-step, draw for draw (bootstrap draws too)."""
    data = censored_data(_effect_stats(2, 20_000, 0.0, 0.0), True).reweighted(np.random.default_rng(2), 3)
    prior = _prior()
    p = _truth().repeat(3)
    plain = em_step(ObservationSets.of(data), p, prior)
    nodes = gmm.node_em_step(data, p.with_effects(1e-9, 1e-9), prior)
    assert len(gmm.effect_nodes(1e-9, 1e-9)[0]) == 25
    for name in ("lam", "pi", "mu", "sd"):
        np.testing.assert_allclose(getattr(nodes, name), getattr(plain, name), rtol=1e-6, err_msg=name)


def test_a_fit_under_effects_with_no_observations_is_the_plain_fit():
    """A cell with no data left (a stored fit with effects, a network not served yet) keeps to
    the prior under the effects as it does without them, instead of failing."""
    data = censored_data(np.zeros_like(_effect_stats(1, 1_000, 0.0, 0.0)), True)
    prior = _prior()
    plain = fit(data, _truth(), prior, max_iter=5)
    effects = fit(data, _truth(0.3, 0.5), prior, max_iter=5)
    for name in ("lam", "pi", "mu", "sd"):
        np.testing.assert_allclose(getattr(effects, name), getattr(plain, name), rtol=1e-12, err_msg=name)
    assert log_likelihood(data, _truth(0.3, 0.5))[0] == 0.0


def test_em_under_effects_climbs_the_likelihood():
    """Each EM step under fixed effects raises the observed-data log-likelihood (a vanishing
    prior: EM's ascent property holds for the likelihood itself)."""
    data = censored_data(_effect_stats(1, 50_000, 0.4, 0.8), True)
    prior = Prior(lam0=2.0, center=np.array([[math.log(0.3), math.log(3.0)]]), spread=1.0, strength=1e-9)
    p = initial_params(prior).with_effects(0.4, 0.8)
    lls = []
    for _ in range(15):
        p = fit(data, p, prior, max_iter=1)
        lls.append(float(log_likelihood(data, p)[0]))
    assert np.all(np.diff(lls) > -1e-6), lls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_effects_are_learned_where_the_market_has_them_and_not_elsewhere(seed):
    """Over the grid the policy searches: a market with a shock (sd 0.4) and over-dispersed
    counts (variance 0.8) gets both, and its best floor within 0.5% of the best revenue (the
    mixture alone loses ~4.5% there); a plain Poisson market keeps none."""
    prior = _prior()
    grid = [(s, d) for s in (0.0, 0.2, 0.4, 0.6) for d in (0.0, 0.4, 0.8, 1.2) if (s, d) != (0.0, 0.0)]
    x = np.log(np.linspace(0.3, 6.0, 120))[None, :]
    true_revenue = RevenueCurve.of(_truth(0.4, 0.8), True).revenue(x)[0]
    data = censored_data(_effect_stats(seed, 100_000, 0.4, 0.8), True)
    plain = fit(data, initial_params(prior), prior, max_iter=2000, tol=1e-8)
    learned = fit_effects(data, plain, prior, grid, em_steps=100, margin=2.0)
    assert abs(learned.shock_sd - 0.4) <= 0.1 and abs(learned.dispersion - 0.8) <= 0.25
    captured = lambda p: true_revenue[np.argmax(RevenueCurve.of(p, True).revenue(x)[0])] / true_revenue.max()  # noqa: E731
    assert captured(learned) >= 0.995 > 0.97 >= captured(plain)
    data = censored_data(_effect_stats(seed, 100_000, 0.0, 0.0), True)
    plain = fit(data, initial_params(prior), prior, max_iter=2000, tol=1e-8)
    assert not fit_effects(data, plain, prior, grid, em_steps=100, margin=2.0).has_effects


def test_parameters_pack_with_their_effects_and_older_rows_read_as_none():
    p = _truth(0.3, 0.8)
    back = GmmParams.unpack(p.pack())
    assert (back.shock_sd, back.dispersion) == (0.3, 0.8)
    np.testing.assert_array_equal(back.pack(), p.pack())
    older = GmmParams.unpack(p.pack()[:, : 1 + 3 * 2])  # (lam, pi, mu, sd): states before the effects
    assert not older.has_effects
    np.testing.assert_array_equal(older.mu, p.mu)
