"""Allocation maths against brute force: P(best), the contract LP, projections."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import linprog

from bandit.allocation import SegmentTable, greedy_fill, matched_shares, prob_best_normal, project_shares
from bandit.stats import N_BINS, log_price, price_bin


@pytest.mark.parametrize("seed", range(5))
def test_prob_best_matches_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    mean, sd = rng.uniform(1, 2, 4), rng.uniform(0.05, 0.4, 4)
    draws = rng.normal(mean, sd, size=(400_000, 4))
    mc = np.bincount(draws.argmax(axis=1), minlength=4) / len(draws)
    np.testing.assert_allclose(prob_best_normal(mean, sd), mc, atol=4e-3)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_fill_solves_the_share_lp(seed):
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 3, size=(20, 5))
    lo = np.array([0.1, 0.0, 0.05, 0.0, 0.0])
    hi = np.array([0.5, 0.3, 1.0, 0.4, 1.0])
    w = greedy_fill(values, lo, hi)
    for row, v in zip(w, values, strict=True):
        lp = linprog(-v, A_eq=np.ones((1, 5)), b_eq=[1.0], bounds=list(zip(lo, hi, strict=True)))
        assert row @ v == pytest.approx(-lp.fun, rel=1e-9)
        assert np.all(row >= lo - 1e-12) and np.all(row <= hi + 1e-12) and row.sum() == pytest.approx(1.0)


def test_matched_shares_meet_the_contract_and_favour_the_runner_up():
    rng = np.random.default_rng(0)
    samples = rng.normal([3.0, 2.0, 1.0], 0.05, size=(2000, 3))
    lo, hi = np.array([0.0, 0.0, 0.1]), np.array([0.6, 1.0, 1.0])
    w = matched_shares(samples, lo, hi)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(w, [0.6, 0.3, 0.1], atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_project_shares_is_the_euclidean_projection(seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(4))
    lo, hi = np.array([0.1, 0.0, 0.0, 0.2]), np.array([0.3, 1.0, 0.5, 1.0])
    w = project_shares(p, lo, hi)
    assert np.all(w >= lo - 1e-12) and np.all(w <= hi + 1e-12) and w.sum() == pytest.approx(1.0, abs=1e-12)
    # No other feasible point is closer (random feasible candidates from the same box).
    for _ in range(200):
        c = greedy_fill(rng.normal(size=(1, 4)), lo, hi)[0]
        assert np.sum((w - p) ** 2) <= np.sum((c - p) ** 2) + 1e-12


def jittered_table(sd: float = 0.3) -> SegmentTable:
    """Network 0: floors 0 (a point mass), 0.02 (near the lowest bin) and 2.0 jittered by ``sd``
    inside [log 0.012, log 3] (the bound binds); network 1: two fixed floors, no jitter."""
    return SegmentTable(
        weights=np.array([0.6, 0.4]),
        floors=np.array([[0.0, 0.02, 2.0], [1.0, 1.5, 1.5]]),
        floor_probs=np.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]]),
        floor_propensity=np.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.5]]),
        summary=np.zeros((2, 7)),
        floor_log_sd=np.array([sd, 0.0]),
        floor_bounds=np.log([[0.012, 3.0], [0.01, 1000.0]]),
    )


def test_jittered_floors_bin_probabilities_match_their_frequencies_without_warnings():
    table = jittered_table()
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 on the network without jitter
        net, floor, _, fprop = table.sample(rng.random(200_000), rng.random(200_000))
    rows = net == 0
    bins = price_bin(log_price(floor[rows]))
    freq = np.bincount(bins, minlength=N_BINS) / rows.sum()
    # The lowest bin holds the floors below PRICE_MIN and the point mass at 0.
    np.testing.assert_allclose(fprop[rows], freq[bins], atol=5e-3)
    assert (floor[rows] == 0).mean() == pytest.approx(0.2, abs=5e-3)
    np.testing.assert_array_equal(fprop[net == 1], 0.5)  # fixed floors keep the table's propensity
    density = table.log_floor_density(net, floor)
    assert np.isnan(density[(net == 1) | (floor == 0)]).all()
    assert (density[(net == 0) & (floor > 0)] > 0).all()


@pytest.mark.parametrize("h", [0.05, 0.3])
def test_kernel_smoothed_floor_density_is_the_convolution(h):
    """``extra_sd = h`` gives the density of ``log f + h·ε`` (ε standard normal), truncation
    of the jitter included; it integrates to the jittered mass (0.8 here: 0.2 is a point mass)."""
    table = jittered_table()
    rng = np.random.default_rng(1)
    net, floor, _, _ = table.sample(rng.random(400_000), rng.random(400_000))
    x = np.log(floor[(net == 0) & (floor > 0)]) + h * rng.standard_normal(int(((net == 0) & (floor > 0)).sum()))
    edges = np.linspace(-5.5, 2.0, 61)
    hist = np.histogram(x, bins=edges)[0] / (net == 0).sum() / np.diff(edges)
    centres = np.exp(0.5 * (edges[1:] + edges[:-1]))
    smoothed = table.log_floor_density(np.zeros(60, dtype=np.int64), centres, extra_sd=h)
    np.testing.assert_allclose(smoothed, hist, atol=0.03)
    grid = np.linspace(-9.0, 4.0, 20001)
    total = np.trapezoid(table.log_floor_density(np.zeros(len(grid), dtype=np.int64), np.exp(grid), extra_sd=h), grid)
    assert total == pytest.approx(0.8, abs=1e-4)
    # Fixed floors smoothed: Σ_m p_m φ_h(x - log f_m).
    point = table.log_floor_density(np.array([1]), np.array([1.2]), extra_sd=h)[0]
    z = (np.log(1.2) - np.log([1.0, 1.5])) / h
    expected = float(np.sum(0.5 * np.exp(-0.5 * z**2) / (h * np.sqrt(2 * np.pi))))
    assert point == pytest.approx(expected, rel=1e-9)
