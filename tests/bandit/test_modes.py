"""Waterfall and parallel-auction optimisation (bandit/modes.py) against brute force and Monte Carlo."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bandit.gmm import GmmParams, ResponsiveCurve, RevenueCurve
from bandit.modes import (
    PRICE_POINTS,
    PayCurves,
    allowed_floors,
    auction_floors,
    auction_value,
    best_auction,
    best_waterfall,
    explored_plans,
    pay_curves,
    plan_summary,
    plan_table,
    tier_floors,
    waterfall_value,
    waterfalls_led_by,
)


def random_curves(rng: np.random.Generator, d: int, n: int, second: list[bool] | None = None) -> list:
    """Random Poisson-bidder log-normal networks, ``d`` draws each."""
    out = []
    for j in range(n):
        lam = rng.uniform(0.3, 4.0, size=d)
        mu = rng.normal(math.log(1.5), 0.6, size=(d, 1))
        sd = rng.uniform(0.3, 0.9, size=(d, 1))
        curve = RevenueCurve.of(GmmParams(lam, np.ones((d, 1)), mu, sd), bool(second[j]) if second else j % 2 == 0)
        out.append(curve)
    return out


def curves_of(rng, d, n, lo=0.0, hi=20.0, grid_every=1, **kw) -> PayCurves:
    nets = random_curves(rng, d, n, **kw)
    allowed = allowed_floors(np.full(n, lo), np.full(n, hi))
    if grid_every > 1:  # a coarse floor grid keeps brute force affordable
        keep = np.zeros(len(PRICE_POINTS), dtype=bool)
        keep[::grid_every] = True
        allowed &= keep[None, :]
        allowed[:, 0] = True
    return pay_curves(nets, [0.0] * n, allowed, d)


def test_revenue_matches_the_mixture_curve():
    rng = np.random.default_rng(0)
    nets = [
        *random_curves(rng, 3, 2),
        ResponsiveCurve(random_curves(rng, 3, 1, second=[False])[0], np.array([0.7, 0.8, 1.0])),
    ]
    curves = pay_curves(nets, [0.0, 0.0, 0.0], allowed_floors(np.zeros(3), np.full(3, 50.0)), 3)
    rev = curves.revenue()
    x = np.log(PRICE_POINTS)
    for j, net in enumerate(nets):
        exact = net.revenue(np.broadcast_to(x, (3, len(x))))
        inside = (PRICE_POINTS > 0.05) & (PRICE_POINTS < 50)
        np.testing.assert_allclose(rev[:, j, inside], exact[:, inside], rtol=0.02, atol=2e-3)


def test_a_level_scales_bids():
    rng = np.random.default_rng(1)
    net = random_curves(rng, 1, 1)
    allowed = allowed_floors(np.zeros(1), np.full(1, 50.0))
    base = pay_curves(net, [0.0], allowed, 1).revenue()[0, 0]
    doubled = pay_curves(net, [math.log(2.0)], allowed, 1).revenue()[0, 0]
    # R_2(2f) = 2 R(f): 14 grid steps of 5% are a factor e^0.7 ≈ 2.01.
    k = np.searchsorted(PRICE_POINTS, 1.0)
    step = round(math.log(2.0) / 0.05)
    assert doubled[k + step] == pytest.approx(2 * base[k] * math.exp(step * 0.05) / 2, rel=0.03)


def test_tier_floors_match_brute_force():
    rng = np.random.default_rng(2)
    curves = curves_of(rng, 4, 3, grid_every=12)
    fill, rev = 1.0 - curves.nofill, curves.revenue()
    order = np.broadcast_to(np.array([2, 0, 1]), (4, 3))
    floors, value = tier_floors(fill[:, [2, 0, 1]], rev[:, [2, 0, 1]], curves.allowed[None][:, [2, 0, 1]])
    choices = [np.flatnonzero(curves.allowed[j]) for j in (2, 0, 1)]
    for d in range(4):
        best = max(
            waterfall_value(fill[d : d + 1], rev[d : d + 1], order[d : d + 1], np.array([combo]))[0]
            for combo in itertools.product(*choices)
        )
        assert value[d] == pytest.approx(best, rel=1e-9)
        assert waterfall_value(fill[d : d + 1], rev[d : d + 1], order[d : d + 1], floors[d : d + 1])[
            0
        ] == pytest.approx(best)


@pytest.mark.parametrize("depth", [2, 4])
def test_waterfall_local_search_is_near_exhaustive(depth, monkeypatch):
    rng = np.random.default_rng(3)
    curves = curves_of(rng, 24, 6)
    fill, rev = 1.0 - curves.nofill, curves.revenue()
    exact_order, _, exact = best_waterfall(fill, rev, curves.allowed, depth)
    monkeypatch.setattr("bandit.modes.EXHAUSTIVE_NETWORKS", 0)
    order, floors, value = best_waterfall(fill, rev, curves.allowed, depth)
    assert (value <= exact + 1e-9).all()
    ratio = value / exact
    assert ratio.mean() > 0.999 and ratio.min() > 0.99, ratio
    np.testing.assert_allclose(waterfall_value(fill, rev, order, floors), value)
    assert len({tuple(o) for o in exact_order}) > 1  # the draws disagree: a real test of the search


def test_auction_value_matches_monte_carlo():
    """The highest bid of an auction, sampled from the bidders themselves: Poisson counts,
    log-normal values; first price pays the top bid, second price max(second bid, floor)."""
    rng = np.random.default_rng(4)
    lam, mu, sd = np.array([2.0, 1.2, 3.0]), np.log([1.5, 2.0, 0.8]), np.array([0.5, 0.7, 0.4])
    second = [True, False, True]
    nets = [
        RevenueCurve.of(GmmParams(lam[j : j + 1], np.ones((1, 1)), mu[j : j + 1, None], sd[j : j + 1, None]), second[j])
        for j in range(3)
    ]
    curves = pay_curves(nets, [0.0] * 3, allowed_floors(np.zeros(3), np.full(3, 50.0)), 1)
    floors = np.array([[np.searchsorted(PRICE_POINTS, f) for f in (1.2, 1.5, 0.6)]])
    n = 200_000
    best = np.zeros(n)
    for j in range(3):
        count = rng.poisson(lam[j], n)
        values = np.sort(
            np.exp(mu[j] + sd[j] * rng.standard_normal((n, 12))) * (np.arange(12)[None, :] < count[:, None]), axis=1
        )
        top, runner = values[:, -1], values[:, -2]
        f = PRICE_POINTS[floors[0, j]]
        pay = np.where(top >= f, np.maximum(runner, f) if second[j] else top, 0.0)
        best = np.maximum(best, pay)
    assert auction_value(curves, np.ones((1, 3), dtype=bool), floors)[0] == pytest.approx(best.mean(), rel=0.01)


def test_auction_floors_match_brute_force():
    rng = np.random.default_rng(5)
    curves = curves_of(rng, 6, 3, grid_every=10)
    called = np.ones((6, 3), dtype=bool)
    choices = [np.flatnonzero(curves.allowed[j]) for j in range(3)]
    combos = np.array(list(itertools.product(*choices)))
    _, floors, value = best_auction(curves, 3)
    for d in range(6):
        sub = PayCurves(
            curves.nofill[d : d + 1].repeat(len(combos), 0),
            curves.cdf[d : d + 1].repeat(len(combos), 0),
            curves.allowed,
        )
        brute = auction_value(sub, np.ones((len(combos), 3), dtype=bool), combos).max()
        assert value[d] >= brute * 0.995
        assert value[d] <= brute + 1e-9
    again, _v2 = auction_floors(curves, called, floors)
    np.testing.assert_array_equal(again, floors)


def test_auction_subset_under_a_cap_matches_brute_force():
    rng = np.random.default_rng(6)
    curves = curves_of(rng, 8, 6)
    called, _floors, value = best_auction(curves, 2)
    assert (called.sum(axis=1) == 2).all()
    for d in range(8):
        one = PayCurves(curves.nofill[d : d + 1], curves.cdf[d : d + 1], curves.allowed)
        best = 0.0
        for pair in itertools.combinations(range(6), 2):
            mask = np.zeros((1, 6), dtype=bool)
            mask[0, list(pair)] = True
            _, _, v = best_auction(
                PayCurves(one.nofill[:, list(pair)], one.cdf[:, list(pair)], one.allowed[list(pair)]), 2
            )
            best = max(best, v[0])
        assert value[d] >= best * 0.995 and value[d] <= best * 1.0001


def test_calling_more_networks_never_earns_less():
    rng = np.random.default_rng(7)
    curves = curves_of(rng, 8, 5)
    values = [best_auction(curves, cap)[2] for cap in (1, 2, 3, 5)]
    for a, b in itertools.pairwise(values):
        assert (b >= a - 1e-9).all()
    # and an auction of all beats the best single network at its own best floor
    solo = np.where(curves.allowed[None], curves.revenue(), -np.inf).max(axis=2).max(axis=1)
    assert (values[-1] >= solo - 1e-9).all()


def test_waterfalls_led_by_each_network_match_exhaustive_search():
    rng = np.random.default_rng(8)
    curves = curves_of(rng, 6, 5, grid_every=4)
    fill, rev = 1.0 - curves.nofill, curves.revenue()
    orders, floors, values = waterfalls_led_by(fill, rev, curves.allowed, 3)
    for j in range(5):
        best = np.full(6, -np.inf)
        for perm in itertools.permutations([i for i in range(5) if i != j], 2):
            order = np.broadcast_to(np.array([j, *perm]), (6, 3))
            _, v = tier_floors(fill[:, list(order[0])], rev[:, list(order[0])], curves.allowed[None][:, list(order[0])])
            best = np.maximum(best, v)
        np.testing.assert_allclose(values[:, j], best, rtol=1e-9)
        assert (orders[:, j, 0] == j).all()
        np.testing.assert_allclose(waterfall_value(fill, rev, orders[:, j], floors[:, j]), values[:, j])


def test_a_first_tier_share_contract_holds_in_the_plans():
    rng = np.random.default_rng(9)
    curves = curves_of(rng, 16, 4)
    lo_f, hi_f = np.zeros(4), np.full(4, 20.0)
    free_t, _, free_p = plan_table(curves, "waterfall", 4, lo_f, hi_f)
    free_first = ((free_t == 0) * free_p[:, None]).sum(axis=0)
    weak = int(np.argmin(free_first))
    lo, hi = np.zeros(4), np.ones(4)
    lo[weak] = 0.3
    strong = int(np.argmax(free_first))
    hi[strong] = 0.4
    tiers, _floors, probs = plan_table(curves, "waterfall", 4, lo_f, hi_f, first_shares=(lo, hi))
    first = ((tiers == 0) * probs[:, None]).sum(axis=0)
    assert probs.sum() == pytest.approx(1.0)
    assert first[weak] >= 0.3 - 1e-9 and first[strong] <= 0.4 + 1e-9, first
    assert (first >= lo - 1e-9).all() and (first <= hi + 1e-9).all()
    called = tiers[probs > 0] >= 0
    assert called.sum(axis=1).min() >= 1


def test_priced_auctions_with_no_price_match_the_unpriced_search():
    from bandit.modes import best_priced_auction

    rng = np.random.default_rng(10)
    curves = curves_of(rng, 8, 6)
    for cap in (2, 6):
        _, _, free = best_auction(curves, cap)
        called, floors, value = best_priced_auction(curves, cap, np.zeros((8, 6)))
        assert (called.sum(axis=1) <= cap).all() and (called.sum(axis=1) >= 1).all()
        np.testing.assert_allclose(value, auction_value(curves, called, floors))
        assert (value >= free * 0.995).all()


def test_priced_auctions_match_brute_force_over_subsets():
    """value + Σ bonus over called networks, each subset at its best floors (coordinate ascent)."""
    from bandit.modes import best_priced_auction

    rng = np.random.default_rng(11)
    d, n, cap = 6, 5, 3
    curves = curves_of(rng, d, n)
    bonus = rng.normal(0.0, 0.4, size=(d, n))
    called, _floors, value = best_priced_auction(curves, cap, bonus)
    got = value + (bonus * called).sum(axis=1)
    best = np.full(d, -np.inf)
    for size in range(1, cap + 1):
        for subset in itertools.combinations(range(n), size):
            mask = np.zeros((d, n), dtype=bool)
            mask[:, list(subset)] = True
            _, v = auction_floors(curves, mask, np.argmax(curves.allowed, axis=1)[None].repeat(d, 0))
            solo = np.argmax(np.where(curves.allowed[None], curves.revenue(), -np.inf), axis=2)
            _, v2 = auction_floors(curves, mask, solo)
            best = np.maximum(best, np.maximum(v, v2) + bonus[:, list(subset)].sum(axis=1))
    assert (got >= best - 0.005 * np.abs(best) - 1e-9).all(), (got, best)


def call_shares(tiers, probs):
    return ((tiers >= 0) * probs[:, None]).sum(axis=0)


@pytest.mark.parametrize("cap", [1, 2, 4])
def test_an_auction_call_share_contract_holds_in_the_plans(cap):
    """Minimum and maximum shares of requests calling a network hold exactly in the plan
    table, and the plans stay the best they can: no worse than the free plans by more than
    the contract costs, and the free optimum where the contract does not bind."""
    rng = np.random.default_rng(12)
    n = 5
    curves = curves_of(rng, 16, n)
    lo_f, hi_f = np.zeros(n), np.full(n, 20.0)
    free_t, _, free_p = plan_table(curves, "auction", cap, lo_f, hi_f)
    free = call_shares(free_t, free_p)
    weak, strong = int(np.argmin(free)), int(np.argmax(free))
    lo, hi = np.zeros(n), np.ones(n)
    lo[weak] = 0.6
    hi[strong] = max(0.0, free[strong] - 0.35)
    if hi.sum() < 1:
        hi[strong] = 1 - (hi.sum() - hi[strong])
    tiers, floors, probs = plan_table(curves, "auction", cap, lo_f, hi_f, first_shares=(lo, hi))
    assert len(probs) == n * 16 and probs.sum() == pytest.approx(1.0)
    shares = call_shares(tiers, probs)
    assert (shares >= lo - 1e-7).all() and (shares <= hi + 1e-7).all(), (shares, lo, hi)
    used = probs > 0
    assert ((tiers[used] >= 0).sum(axis=1) <= cap).all() and ((tiers[used] >= 0).sum(axis=1) >= 1).all()
    assert ((floors[used] > 0) | (tiers[used] < 0) | (lo_f[None] == 0)).all()
    # A contract that does not bind changes nothing.
    loose_t, _, loose_p = plan_table(curves, "auction", cap, lo_f, hi_f, first_shares=(np.zeros(n), np.ones(n)))
    np.testing.assert_allclose(call_shares(loose_t, loose_p), free, atol=1e-9)


def test_an_auction_contract_costs_no_more_than_needed():
    """Forcing a weak network into some auctions costs at most what calling it in the free
    plans' place costs, draw by draw: the mixture's value is at least that of the free best
    auction mixed with the best auction that calls the weak network."""
    from bandit.modes import best_priced_auction, contracted_auctions

    rng = np.random.default_rng(13)
    d, n, cap = 8, 4, 1
    curves = curves_of(rng, d, n)
    free_called, _, free_value = best_auction(curves, cap)
    weak = int(np.argmin(free_called.mean(axis=0)))
    lo, hi = np.zeros(n), np.ones(n)
    lo[weak] = 0.5
    called, floors, weights = contracted_auctions(curves, cap, lo, hi)
    values = np.stack([auction_value(curves, called[:, c], floors[:, c]) for c in range(called.shape[1])], axis=1)
    got = (weights * values).sum(axis=1)
    forced_bonus = np.zeros((d, n))
    forced_bonus[:, weak] = 1e6
    _, _, forced = best_priced_auction(curves, cap, forced_bonus)
    reference = 0.5 * free_value + 0.5 * np.maximum(forced, 0)
    assert (got >= reference - 1e-6 * np.abs(reference)).all()
    assert ((weights * called[:, :, weak]).sum(axis=1) >= 0.5 - 1e-7).all()


def test_explored_plans_lower_one_floor_and_keep_call_shares_and_exact_probabilities():
    """Each of the most probable plans gives 5% of its probability, in equal parts, to
    variants with one called network's floor times 0.5 or 0.75 (clipped to the bounds); the
    networks called, and so the call shares, do not change; variants that equal another plan
    (a clipped floor) merge with it, so every distinct plan has exactly its probability, here
    checked against a dictionary built plan by plan, and by sampling the table."""
    rng = np.random.default_rng(21)
    n, cap, share, factors = 4, 2, 0.05, (0.5, 0.75)
    curves = curves_of(rng, 16, n)
    lo, hi = np.full(n, 0.05), np.full(n, 20.0)
    tiers, floors, probs = plan_table(curves, "auction", cap, lo, hi)
    top = np.argsort(-probs, kind="stable")[:4]
    floors[top[0], tiers[top[0]] >= 0] = 0.06  # both factors clip to the bound: the variants merge
    expected: dict[tuple, float] = {}
    for i in range(len(probs)):
        if probs[i] <= 0:
            continue
        explored = i in top
        key = tuple(tiers[i]) + tuple(floors[i])
        expected[key] = expected.get(key, 0.0) + probs[i] * (1 - share if explored else 1.0)
        called = np.flatnonzero(tiers[i] >= 0)
        for j in called if explored else []:
            for factor in factors:
                variant = floors[i].copy()
                variant[j] = np.clip(floors[i, j] * factor, lo[j], hi[j])
                key = tuple(tiers[i]) + tuple(variant)
                expected[key] = expected.get(key, 0.0) + probs[i] * share / (len(called) * len(factors))
    out_t, out_f, out_p = explored_plans(tiers, floors, probs, share, factors, lo, hi, cap, rows=4)
    assert len(out_p) == len(probs) + 4 * cap * len(factors) and out_p.sum() == pytest.approx(1.0)
    got = {tuple(t) + tuple(f): p for t, f, p in zip(out_t, out_f, out_p, strict=True) if p > 0}
    assert got.keys() == expected.keys()
    for key, p in expected.items():
        assert got[key] == pytest.approx(p, rel=1e-12)
    assert len(got) < sum(1 for i in top for _ in factors for _ in np.flatnonzero(tiers[i] >= 0)) + (probs > 0).sum()
    np.testing.assert_allclose(call_shares(out_t, out_p), call_shares(tiers, probs), atol=1e-12)
    # Sampling the table: each distinct plan's frequency is its probability.
    cum = np.cumsum(out_p)
    draws = np.minimum(np.searchsorted(cum / cum[-1], rng.random(400_000), side="right"), len(cum) - 1)
    freq = np.bincount(draws, minlength=len(out_p)) / 400_000
    assert (np.abs(freq - out_p) <= 4 * np.sqrt(out_p * (1 - out_p) / 400_000) + 1e-9).all()


def test_no_exploration_share_leaves_the_plans_as_they_are():
    rng = np.random.default_rng(22)
    curves = curves_of(rng, 16, 3)
    lo, hi = np.zeros(3), np.full(3, 20.0)
    tiers, floors, probs = plan_table(curves, "auction", 2, lo, hi)
    _, _, out_p = explored_plans(tiers, floors, probs, 0.0, (0.5, 0.75), lo, hi, 2, rows=4)
    used = out_p > 0
    assert used.sum() == (probs > 0).sum()
    np.testing.assert_allclose(np.sort(out_p[used]), np.sort(probs[probs > 0]))


def test_plan_summary_describes_each_network_by_the_floors_its_plans_give_it():
    """Weights are first-call shares; floor, p10 and p90 are the probability-weighted mean and
    percentiles of the floors of the plans that call the network (a dictionary reference);
    a network no plan calls keeps its own summary row."""
    tiers = np.array([[0, 1, -1], [1, 0, -1], [0, -1, -1], [0, 1, -1]])
    floors = np.array([[2.0, 1.0, 0.0], [4.0, 3.0, 0.0], [8.0, 0.0, 0.0], [1.0, 5.0, 0.0]])
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    own = np.arange(24, dtype=np.float64).reshape(3, 8)
    weights, summary = plan_summary(tiers, floors, probs, own)

    np.testing.assert_allclose(weights, [0.7, 0.3, 0.0])
    for j in range(2):
        given: dict[float, float] = {}
        for t, f, p in zip(tiers[:, j], floors[:, j], probs, strict=True):
            if t >= 0:
                given[f] = given.get(f, 0.0) + p
        mass = sum(given.values())
        cum, pct = 0.0, {}
        for f in sorted(given):
            cum += given[f] / mass
            for q in (0.1, 0.9):
                if q not in pct and cum >= q - 1e-12:
                    pct[q] = f
        assert summary[j, 0] == pytest.approx(sum(f * p for f, p in given.items()) / mass)
        assert (summary[j, 1], summary[j, 2]) == (pct[0.1], pct[0.9])
        assert summary[j, 1] <= summary[j, 0] <= summary[j, 2]
        np.testing.assert_array_equal(summary[j, 3:], own[j, 3:])
    np.testing.assert_array_equal(summary[2], own[2])
    np.testing.assert_array_equal(own, np.arange(24).reshape(3, 8))  # not modified in place
