"""A/B statistics: relative revenue lift of a treatment over a control, with a 95% CI.

Two designs:

* :func:`paired_lift` — offline simulation. Every seed runs every arm on the same
  requests and bidder draws (common random numbers), so per-seed revenues are paired.
* :func:`unpaired_lift` — the live service's champion/challenger split. Each arm sees its
  own requests; only counts, sums and sums of squares of revenue per request are kept.

The lift is ``L = mean_t / mean_c - 1``. Its interval is **Fieller's**: the set of ratios
``R`` for which the t-test of ``mean_t - R·mean_c = 0`` does not reject at level α. At
``R = 1`` that is exactly the paired t-test (resp. Welch's test) that gives the p-value,
so the interval excludes 0 if and only if ``p < α``. Unlike the delta method, Fieller's
interval is asymmetric where it should be (small seeds, noisy control); it reduces to the
delta-method interval as the control mean becomes precise. When the control mean is not
itself significantly different from 0 the Fieller set is unbounded and the interval is
reported as ``(-inf, inf)``.

Pure numpy/scipy: no mlflow, no ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from bandit.errors import AdbanditError

#: Two-sided level of the reported intervals.
ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class LiftResult:
    """Relative lift of treatment over control (``0.03`` = +3%), its 95% CI and p-value.

    ``n`` is the number of paired seeds (paired design) or of requests in both arms
    (unpaired design). ``control_mean``/``treatment_mean`` are revenue per request (CPM).
    """

    lift: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    control_mean: float = math.nan
    treatment_mean: float = math.nan

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def to_dict(self) -> dict[str, float | int]:
        return {
            "lift": self.lift,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "n": self.n,
            "control_mean": self.control_mean,
            "treatment_mean": self.treatment_mean,
        }


def fieller_ratio_interval(
    mean_t: float,
    mean_c: float,
    var_t: float,
    var_c: float,
    cov_tc: float,
    t_crit: float,
) -> tuple[float, float]:
    """Fieller interval for ``mean_t / mean_c`` given the variances of the two *means*.

    Solves ``(mean_t - R·mean_c)² <= t² · (var_t - 2R·cov_tc + R²·var_c)`` for R, i.e.
    ``A R² - 2 B R + C <= 0``. Returns ``(-inf, inf)`` when ``A <= 0`` (the control mean is
    not distinguishable from 0, so the set of plausible ratios is unbounded).
    """
    t2 = t_crit * t_crit
    a = mean_c * mean_c - t2 * var_c
    b = mean_t * mean_c - t2 * cov_tc
    c = mean_t * mean_t - t2 * var_t
    if a <= 0.0:
        return -math.inf, math.inf
    disc = max(b * b - a * c, 0.0)  # >= 0 in exact arithmetic when a > 0
    root = math.sqrt(disc)
    return (b - root) / a, (b + root) / a


def _t_p_value(diff: float, se: float, df: float) -> float:
    """Two-sided p-value of ``diff / se`` under a t distribution with ``df`` degrees of freedom."""
    if se <= 0.0 or not math.isfinite(se):
        return 1.0 if diff == 0.0 else 0.0
    return float(2.0 * stats.t.sf(abs(diff) / se, df))


def paired_lift(control: ArrayLike, treatment: ArrayLike, *, alpha: float = ALPHA) -> LiftResult:
    """Relative revenue lift of ``treatment`` over ``control``, paired across seeds.

    control, treatment: revenue per request of each seed, shape [seeds], same order
    (seed i of both arms saw the same requests). p-value: paired t-test on the
    differences (n - 1 degrees of freedom). CI: Fieller's interval for the ratio of
    paired means with the same t quantile (see the module docstring).
    """
    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    if c.ndim != 1 or c.shape != t.shape:
        raise AdbanditError(f"control and treatment must be 1-d of equal length, got {c.shape} and {t.shape}")
    n = len(c)
    if n < 2:
        raise AdbanditError(f"paired lift needs at least 2 seeds, got {n}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(t))):
        raise AdbanditError("control and treatment revenues must be finite")
    mc, mt = float(c.mean()), float(t.mean())
    cov = np.cov(np.stack([t, c]), ddof=1) / n  # covariance of the two means
    var_t, var_c, cov_tc = float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])
    df = n - 1
    d = t - c
    p = _t_p_value(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(n), df)
    lift = mt / mc - 1.0 if mc != 0.0 else math.nan
    t_crit = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    lo, hi = fieller_ratio_interval(mt, mc, var_t, var_c, cov_tc, t_crit)
    return LiftResult(lift, lo - 1.0, hi - 1.0, p, n, mc, mt)


def _mean_var(n: float, total: float, total_sq: float, label: str) -> tuple[float, float]:
    """Mean and unbiased variance of per-request revenue from count, sum and sum of squares."""
    if not (n >= 2):
        raise AdbanditError(f"{label}: need at least 2 requests, got {n}")
    if not (math.isfinite(total) and math.isfinite(total_sq)) or total_sq < 0:
        raise AdbanditError(f"{label}: sums must be finite and the sum of squares >= 0")
    mean = total / n
    # Cancellation can make this slightly negative for constant revenue: clamp.
    var = max((total_sq - n * mean * mean) / (n - 1), 0.0)
    return mean, var


def unpaired_lift(
    n_c: float,
    sum_c: float,
    sumsq_c: float,
    n_t: float,
    sum_t: float,
    sumsq_t: float,
    *,
    alpha: float = ALPHA,
) -> LiftResult:
    """Relative lift in revenue per request of a challenger over a champion, from running sums.

    Each arm gives its request count ``n``, sum of revenue per request (CPM, 0 for
    no-fills) and sum of squares. p-value: Welch's t-test on the difference of means
    (Welch–Satterthwaite degrees of freedom). CI: Fieller's interval for the ratio of
    independent means with the same t quantile.
    """
    mc, vc = _mean_var(n_c, sum_c, sumsq_c, "control")
    mt, vt = _mean_var(n_t, sum_t, sumsq_t, "treatment")
    se_c2, se_t2 = vc / n_c, vt / n_t
    se2 = se_c2 + se_t2
    if se2 > 0:
        df = se2 * se2 / (se_c2 * se_c2 / (n_c - 1) + se_t2 * se_t2 / (n_t - 1))
    else:
        df = n_c + n_t - 2.0
    p = _t_p_value(mt - mc, math.sqrt(se2), df)
    lift = mt / mc - 1.0 if mc != 0.0 else math.nan
    t_crit = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    lo, hi = fieller_ratio_interval(mt, mc, se_t2, se_c2, 0.0, t_crit)
    return LiftResult(lift, lo - 1.0, hi - 1.0, p, int(n_c + n_t), mc, mt)


#: Mixing scale of :func:`msprt_p_value` relative to the control mean: effects of about ±10%.
MSPRT_RELATIVE_TAU = 0.1


def msprt_p_value(diff: float, se2: float, tau2: float) -> float:
    """Always-valid p-value of "no difference in means" by the mixture SPRT (Johari et al. 2017).

    ``diff`` is the estimated difference of means, ``se2`` its variance (``var_t/n_t +
    var_c/n_c``) and ``tau2`` the variance of the normal mixture N(0, τ²) over the true
    difference. The mixture likelihood ratio of the normal approximation is

        Λ = sqrt(se2 / (se2 + τ²)) · exp(diff² τ² / (2 se2 (se2 + τ²)))

    and ``min(1, 1/Λ)`` is a p-value at *any* stopping time (Ville's inequality: under the
    null, P(sup Λ ≥ 1/α) ≤ α), so it may be watched continuously and the experiment stopped
    the first time it falls below α without inflating the false-positive rate — unlike the
    fixed-horizon t-test p-value. It is larger than that p-value: the price of peeking.
    """
    if not (tau2 > 0.0) or not math.isfinite(tau2):
        raise AdbanditError(f"tau2 must be finite and > 0, got {tau2}")
    if not (math.isfinite(diff) and math.isfinite(se2)) or se2 < 0.0:
        raise AdbanditError("diff and se2 must be finite, se2 >= 0")
    if se2 == 0.0:
        return 1.0 if diff == 0.0 else 0.0
    log_lambda = 0.5 * math.log(se2 / (se2 + tau2)) + diff * diff * tau2 / (2.0 * se2 * (se2 + tau2))
    return 1.0 if log_lambda <= 0.0 else math.exp(-log_lambda)


def unpaired_msprt_p_value(
    n_c: float,
    sum_c: float,
    sumsq_c: float,
    n_t: float,
    sum_t: float,
    sumsq_t: float,
    *,
    relative_tau: float = MSPRT_RELATIVE_TAU,
) -> float:
    """:func:`msprt_p_value` of a challenger against a champion from their running sums (as
    :func:`unpaired_lift`); the mixture's scale is ``relative_tau`` times the champion's
    revenue per request (its standard deviation per request when that mean is 0)."""
    mc, vc = _mean_var(n_c, sum_c, sumsq_c, "control")
    mt, vt = _mean_var(n_t, sum_t, sumsq_t, "treatment")
    scale = abs(mc) if mc != 0.0 else math.sqrt(vc)
    tau = relative_tau * scale
    if not (tau > 0.0):
        return 1.0 if mt == mc else 0.0
    return msprt_p_value(mt - mc, vc / n_c + vt / n_t, tau * tau)
