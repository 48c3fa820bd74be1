"""A/B statistics against scipy, brute force and simulated data with a known lift."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bandit.abstats import fieller_ratio_interval, paired_lift, unpaired_lift
from bandit.errors import AdbanditError


def test_paired_p_value_matches_scipy_ttest_rel() -> None:
    rng = np.random.default_rng(1)
    c = rng.normal(2.0, 0.3, 20)
    t = c * 1.03 + rng.normal(0, 0.05, 20)
    res = paired_lift(c, t)
    assert res.p_value == pytest.approx(stats.ttest_rel(t, c).pvalue, rel=1e-9)
    assert res.lift == pytest.approx(t.mean() / c.mean() - 1, rel=1e-12)
    assert res.n == 20
    assert res.ci_low < res.lift < res.ci_high


def test_paired_ci_is_the_set_of_ratios_the_t_test_does_not_reject() -> None:
    """Brute force: scan ratios R; R is inside the interval iff the paired t-test of
    t - R·c = 0 has p >= 0.05."""
    rng = np.random.default_rng(2)
    c = rng.normal(1.0, 0.4, 12)
    t = 1.1 * c + rng.normal(0, 0.2, 12)
    res = paired_lift(c, t)
    grid = np.linspace(0.5, 1.8, 2601)
    accepted = [r for r in grid if stats.ttest_1samp(t - r * c, 0.0).pvalue >= 0.05]
    assert res.ci_low + 1 == pytest.approx(min(accepted), abs=1e-3)
    assert res.ci_high + 1 == pytest.approx(max(accepted), abs=1e-3)


def test_paired_ci_excludes_zero_iff_significant() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        c = rng.normal(1.0, 0.2, 8)
        t = c * (1 + rng.normal(0, 0.02)) + rng.normal(0, 0.03, 8)
        res = paired_lift(c, t)
        excludes = res.ci_low > 0 or res.ci_high < 0
        assert excludes == (res.p_value < 0.05)


@pytest.mark.parametrize("true_lift", [0.0, 0.05])
def test_paired_ci_coverage_is_about_95_percent(true_lift: float) -> None:
    """Seeds differ a lot in level (common random numbers), treatment scales it by 1+L."""
    rng = np.random.default_rng(4)
    reps, seeds = 2000, 10
    covered = 0
    for _ in range(reps):
        level = rng.lognormal(0.0, 0.3, seeds)
        c = level * (1 + rng.normal(0, 0.02, seeds))
        t = level * (1 + true_lift) * (1 + rng.normal(0, 0.02, seeds))
        res = paired_lift(c, t)
        covered += res.ci_low <= true_lift <= res.ci_high
    assert 0.93 <= covered / reps <= 0.97


def test_unpaired_matches_welch_from_raw_samples() -> None:
    rng = np.random.default_rng(5)
    # Revenue per request: 0 for no-fill, else a lognormal price.
    c = np.where(rng.random(5000) < 0.6, rng.lognormal(0.5, 0.6, 5000), 0.0)
    t = np.where(rng.random(4000) < 0.6, 1.05 * rng.lognormal(0.5, 0.6, 4000), 0.0)
    res = unpaired_lift(len(c), c.sum(), (c**2).sum(), len(t), t.sum(), (t**2).sum())
    assert res.p_value == pytest.approx(stats.ttest_ind(t, c, equal_var=False).pvalue, rel=1e-6)
    assert res.lift == pytest.approx(t.mean() / c.mean() - 1, rel=1e-12)
    assert res.n == 9000
    assert (res.ci_low > 0 or res.ci_high < 0) == (res.p_value < 0.05)


def test_unpaired_ci_coverage_is_about_95_percent() -> None:
    rng = np.random.default_rng(6)
    reps, n, true_lift = 1500, 2000, 0.08
    p_fill, mu, s = 0.5, 0.3, 0.8
    covered = 0
    for _ in range(reps):
        c = np.where(rng.random(n) < p_fill, rng.lognormal(mu, s, n), 0.0)
        t = np.where(rng.random(n) < p_fill, (1 + true_lift) * rng.lognormal(mu, s, n), 0.0)
        res = unpaired_lift(n, c.sum(), (c**2).sum(), n, t.sum(), (t**2).sum())
        covered += res.ci_low <= true_lift <= res.ci_high
    assert 0.93 <= covered / reps <= 0.97


def test_fieller_unbounded_when_control_mean_is_not_distinguishable_from_zero() -> None:
    lo, hi = fieller_ratio_interval(1.0, 0.01, 0.01, 0.01, 0.0, 1.96)
    assert lo == -math.inf and hi == math.inf


def test_fieller_tends_to_delta_method_for_precise_means() -> None:
    mt, mc, vt, vc = 2.2, 2.0, 1e-6, 1e-6
    lo, hi = fieller_ratio_interval(mt, mc, vt, vc, 0.0, 1.96)
    r = mt / mc
    se = r * math.sqrt(vt / mt**2 + vc / mc**2)
    assert lo == pytest.approx(r - 1.96 * se, rel=1e-5)
    assert hi == pytest.approx(r + 1.96 * se, rel=1e-5)


def test_identical_arms_give_zero_lift_and_p_one() -> None:
    c = np.array([1.0, 1.1, 0.9, 1.05, 0.95])
    res = paired_lift(c, c.copy())
    assert res.lift == 0.0 and res.p_value == 1.0
    assert res.ci_low == pytest.approx(0.0, abs=1e-12)
    assert res.ci_high == pytest.approx(0.0, abs=1e-12)


def test_noisy_control_with_few_seeds_gives_an_unbounded_interval() -> None:
    res = paired_lift([1.0, 2.0, 3.0], [1.1, 2.0, 3.2])
    assert res.ci_low == -math.inf and res.ci_high == math.inf


@pytest.mark.parametrize(
    ("control", "treatment", "message"),
    [
        ([1.0], [1.0], "at least 2 seeds"),
        ([1.0, 2.0], [1.0], "equal length"),
        ([1.0, np.nan], [1.0, 2.0], "finite"),
    ],
)
def test_paired_rejects_bad_input(control, treatment, message: str) -> None:
    with pytest.raises(AdbanditError, match=message):
        paired_lift(control, treatment)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 1.0, 1.0, 10, 5.0, 5.0), "control: need at least 2"),
        ((10, 5.0, 5.0, 0, 0.0, 0.0), "treatment: need at least 2"),
        ((10, math.inf, 5.0, 10, 5.0, 5.0), "finite"),
    ],
)
def test_unpaired_rejects_bad_input(args, message: str) -> None:
    with pytest.raises(AdbanditError, match=message):
        unpaired_lift(*args)
