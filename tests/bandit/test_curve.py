"""The best floor of curve draws on a grid, and the floor jitter a curve can afford."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr

from bandit.curve import affordable_jitter, best_on_grid, floor_grid

GRID = floor_grid(0.05, 20.0)  # bin centres inside the bounds, plus both bounds


def parabola(x_best: float, peak: float, a: float) -> np.ndarray:
    return peak - a * (GRID - x_best) ** 2


@pytest.mark.parametrize("x_best", [math.log(0.3), math.log(1.234), math.log(7.0)])
def test_best_on_grid_finds_the_vertex_of_a_parabola_between_grid_points(x_best: float) -> None:
    curves = np.stack([parabola(x_best, 2.0, 1.5), parabola(x_best + 0.03, 1.0, 0.2)])
    x, value = best_on_grid(GRID, curves)
    np.testing.assert_allclose(x, [x_best, x_best + 0.03], atol=1e-9)
    np.testing.assert_allclose(value, [2.0, 1.0], atol=1e-9)


def test_best_on_grid_keeps_a_best_floor_on_a_bound() -> None:
    rising = np.exp(0.1 * GRID)[None, :]
    x, value = best_on_grid(GRID, rising)
    assert x[0] == GRID[-1] and value[0] == rising[0, -1]


def test_the_jitter_of_a_parabola_costs_exactly_the_budget() -> None:
    # y* - a s²: a jitter of sd σ costs a σ² in expectation, a share a σ² / y* of the peak.
    sd = affordable_jitter(GRID, parabola(math.log(2.0), 2.0, 3.0), cap=1.0, loss=0.001)
    assert sd == pytest.approx(math.sqrt(0.001 * 2.0 / 3.0), rel=1e-9)


def test_the_jitter_narrows_as_the_peak_sharpens_and_stops_at_its_cap() -> None:
    sds = [affordable_jitter(GRID, parabola(math.log(2.0), 2.0, a), cap=0.15, loss=0.001) for a in (0.01, 0.05, 1, 10)]
    assert sds[0] == sds[1] == 0.15  # flat: the cap
    assert sds[1] > sds[2] > sds[3]


def test_a_best_floor_on_a_bound_or_a_flat_curve_keeps_the_cap() -> None:
    assert affordable_jitter(GRID, np.exp(0.1 * GRID), cap=0.15, loss=0.001) == 0.15
    assert affordable_jitter(GRID, np.ones_like(GRID), cap=0.15, loss=0.001) == 0.15


def test_on_a_kinked_revenue_curve_the_jitter_costs_about_its_budget() -> None:
    """A floor-responsive first-price network (revenue f·P(f ≤ V < f/s) + s·E[V; V ≥ f/s]
    for a log-normal top value V and shading s): its peak is no parabola, yet the jitter
    chosen from the grid costs its budget within a factor 1.5 (Monte Carlo on the exact curve)."""
    mu, sigma, shading = 1.3, 0.3, 0.5

    def revenue(log_floor: np.ndarray) -> np.ndarray:
        f, upper = np.exp(log_floor), np.exp(log_floor) / shading
        mean_above = math.exp(mu + sigma**2 / 2) * ndtr((mu + sigma**2 - np.log(upper)) / sigma)
        cdf = lambda v: ndtr((np.log(v) - mu) / sigma)  # noqa: E731
        return f * (cdf(upper) - cdf(f)) + shading * mean_above

    curve = revenue(GRID)
    sd = affordable_jitter(GRID, curve, cap=1.0, loss=0.001)
    x = GRID[np.argmax(curve)] + np.linspace(-0.2, 0.2, 4001)
    x_best = x[np.argmax(revenue(x))]
    z = np.random.default_rng(7).standard_normal(200_000)
    cost = 1 - revenue(x_best + sd * z).mean() / revenue(np.array([x_best]))[0]
    assert 0.001 / 1.5 <= cost <= 0.001 * 1.5, (sd, cost)
