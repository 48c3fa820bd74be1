"""A/B statistics against scipy, brute force and simulated data with a known lift."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bandit.abstats import (
    fieller_ratio_interval,
    msprt_p_value,
    paired_lift,
    unpaired_lift,
    unpaired_msprt_p_value,
)
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


def test_msprt_p_value_is_one_without_evidence_and_falls_with_it() -> None:
    assert msprt_p_value(0.0, 1.0, 1.0) == 1.0
    assert msprt_p_value(0.0, 0.0, 1.0) == 1.0 and msprt_p_value(0.5, 0.0, 1.0) == 0.0
    # The same difference measured more precisely is stronger evidence.
    ps = [msprt_p_value(0.5, se2, 1.0) for se2 in (0.1, 0.01, 0.001)]
    assert ps[0] > ps[1] > ps[2]
    # The same z-score on more data is weaker evidence: the price of looking at every n.
    ps = [msprt_p_value(3.0 * math.sqrt(se2), se2, 1.0) for se2 in (0.1, 0.01, 0.001)]
    assert ps[0] < ps[1] < ps[2]
    # The closed form: 1/Λ with Λ = sqrt(V/(V+τ²)) exp(d²τ²/(2V(V+τ²))).
    d, v, t2 = 0.8, 0.04, 0.25
    expected = 1.0 / (math.sqrt(v / (v + t2)) * math.exp(d * d * t2 / (2 * v * (v + t2))))
    assert msprt_p_value(d, v, t2) == pytest.approx(expected)


def test_msprt_p_value_is_always_valid_under_continuous_peeking() -> None:
    """Watching after every batch and stopping at the first p < 5%: the false-positive rate
    stays under 5% (the t-test's peeked p-value goes far over it)."""
    rng = np.random.default_rng(3)
    runs, batches, per = 400, 50, 20
    fp_msprt = fp_t = 0
    for _ in range(runs):
        c = rng.exponential(2.0, size=(batches, per))
        t = rng.exponential(2.0, size=(batches, per))
        hit_m = hit_t = False
        for k in range(2, batches + 1):
            cc, tt = c[:k].ravel(), t[:k].ravel()
            sums = (len(cc), cc.sum(), (cc * cc).sum(), len(tt), tt.sum(), (tt * tt).sum())
            hit_m |= unpaired_msprt_p_value(*sums, relative_tau=0.2) < 0.05
            hit_t |= unpaired_lift(*sums).p_value < 0.05
        fp_msprt += hit_m
        fp_t += hit_t
    assert fp_msprt / runs <= 0.05
    assert fp_t / runs > 0.15


def test_msprt_p_value_detects_a_real_lift() -> None:
    rng = np.random.default_rng(4)
    c, t = rng.exponential(2.0, 20_000), rng.exponential(2.3, 20_000)
    p = unpaired_msprt_p_value(len(c), c.sum(), (c * c).sum(), len(t), t.sum(), (t * t).sum())
    assert p < 1e-3


def test_msprt_p_value_refuses_bad_inputs() -> None:
    with pytest.raises(AdbanditError, match="tau2"):
        msprt_p_value(0.1, 1.0, 0.0)
    with pytest.raises(AdbanditError, match="se2"):
        msprt_p_value(0.1, -1.0, 1.0)
