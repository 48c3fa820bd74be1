"""Allocation maths against brute force: P(best), the contract LP, projections."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from bandit.allocation import greedy_fill, matched_shares, prob_best_normal, project_shares


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
