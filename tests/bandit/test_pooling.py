"""Segment pooling: the log-price shift is what moving every bid does, the additive model
recovers field effects and the between-segment variance on long-tailed segment sizes, and a
new segment starts from what the segments sharing its fields show."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandit import EventBatch, NetworkConfig, PlacementConfig
from bandit.pooling import (
    MIN_FIT_REQUESTS,
    TOL,
    SegmentPool,
    field_codes,
    fit_additive,
    segment_levels,
    shift_log_price,
)
from bandit.stats import (
    BIN_WIDTH,
    NOFILL_LOGF,
    PRICE,
    PRICE_LOGP,
    REQUESTS,
    REVENUE,
    SufficientStats,
    accumulate,
)
from tests.bandit.auctions import sample_auctions


def _events(rng: np.random.Generator, n: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(floors, filled, revenue) of second-price auctions whose bids and floors are all × ``scale``.

    Fills at the floor pay exactly the floor and fills above it at least 10% more, so the
    at-floor classification does not depend on the scale."""
    floors = np.exp(rng.uniform(math.log(0.2), math.log(5.0), n))
    filled, paid = sample_auctions(rng, floors, lam=2.5, pi=[1.0], mu=[0.3], sd=[0.6], second_price=True)
    paid = np.where(filled & (paid < 1.1 * floors), floors, paid)
    return floors * scale, filled, paid * scale


def _stats(floors, filled, revenue) -> np.ndarray:
    return accumulate(np.zeros(len(floors), np.int64), 1, floors, filled, revenue, np.ones(len(floors)))


@pytest.mark.parametrize("bins", [-7, 3, 11])
def test_a_whole_bin_shift_equals_the_statistics_of_bids_moved_by_that_much(bins):
    floors, filled, revenue = _events(np.random.default_rng(1), 4000)
    delta = bins * BIN_WIDTH
    moved = _stats(*_events(np.random.default_rng(1), 4000, math.exp(delta)))
    shifted = shift_log_price(_stats(floors, filled, revenue), np.array([delta]))
    np.testing.assert_allclose(shifted, moved, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("bins", [4.37, -3.6])
def test_a_fractional_shift_moves_mean_log_prices_by_exactly_delta_and_keeps_counts(bins):
    stats = _stats(*_events(np.random.default_rng(2), 4000))
    delta = bins * BIN_WIDTH
    shifted = shift_log_price(stats, np.array([delta]))[0]
    stats = stats[0]
    assert shifted[REQUESTS].sum() == pytest.approx(stats[REQUESTS].sum())
    assert shifted[PRICE].sum() == pytest.approx(stats[PRICE].sum())
    mean_logp = lambda s: s[PRICE_LOGP].sum() / s[PRICE].sum()  # noqa: E731
    assert mean_logp(shifted) == pytest.approx(mean_logp(stats) + delta, abs=1e-9)
    nofills = (stats[REQUESTS] - stats[1]).sum()
    assert shifted[NOFILL_LOGF].sum() == pytest.approx(stats[NOFILL_LOGF].sum() + delta * nofills, rel=1e-9)
    # Revenue scales by e^δ up to the split between two whole shifts (< w²/8).
    ratio = shifted[REVENUE].sum() / stats[REVENUE].sum()
    assert ratio == pytest.approx(math.exp(delta), rel=BIN_WIDTH**2 / 8)
    # The bin-weighted mean position moves by δ too.
    pos = lambda s: (s[PRICE] * np.arange(s.shape[1])).sum() / s[PRICE].sum()  # noqa: E731
    assert pos(shifted) - pos(stats) == pytest.approx(bins, abs=1e-9)


def _long_tail(rng, s=1500, n_net=2, sizes=(20, 3, 12), sds=(0.4, 0.2, 0.1), tau=0.15, total=3e5, rel_var=1.5):
    """Segment levels from an additive truth, Zipf sizes in random order, sampling noise c²/n."""
    codes = np.stack([rng.integers(0, k, s) for k in sizes], axis=1)
    truth = sum(rng.normal(0, sd, (k, n_net))[codes[:, f]] for f, (k, sd) in enumerate(zip(sizes, sds, strict=True)))
    truth = truth + rng.normal(0, tau, (s, n_net))
    n = np.floor(total * (1.0 + rng.permutation(s)) ** -1.1 / 7.0)[:, None] * np.ones((1, n_net))
    v = rel_var / (n + 0.5)
    y = truth + rng.normal(0, 1, (s, n_net)) * np.sqrt(v)
    return codes, truth, n, v, y


@pytest.mark.parametrize("seed", range(3))
def test_the_model_recovers_field_effects_and_tau_on_long_tailed_sizes(seed):
    rng = np.random.default_rng(seed)
    codes, truth, n, v, y = _long_tail(rng)
    fit = fit_additive(y, v, n >= MIN_FIT_REQUESTS, codes, (20, 3, 12), np.zeros(2))
    assert fit.last_change < TOL
    assert np.all(np.abs(np.sqrt(fit.tau2) - 0.15) < 0.04), np.sqrt(fit.tau2)
    assert np.all(np.abs(np.sqrt(fit.field_var[0]) - 0.4) < 0.2), fit.field_var
    # Leave-one-out predictions come with honest variances, big segments and small alike.
    z = (y - fit.mean) / np.sqrt(v + fit.variance + fit.tau2)
    fitted = n >= MIN_FIT_REQUESTS
    assert 0.8 < z[fitted].var() < 1.25 and 0.8 < z[~fitted].var() < 1.25
    # A small segment is predicted from its fields: far closer to its truth than the flat mean.
    flat = fit_additive(y, v, fitted, codes[:, :0], (), np.zeros(2))
    err = np.abs(fit.mean - truth)[~fitted].mean()
    assert err < 0.2 and err < 0.5 * np.abs(flat.mean - truth)[~fitted].mean()
    # The flat model puts all of the spread between segments into tau.
    assert np.all(np.sqrt(flat.tau2) > 0.35)


def test_leaving_a_segment_out_is_what_a_refit_without_it_predicts():
    rng = np.random.default_rng(5)
    codes, _, n, v, y = _long_tail(rng, s=300, total=3e4)
    fitted = n >= MIN_FIT_REQUESTS
    fit = fit_additive(y, v, fitted, codes, (20, 3, 12), np.zeros(2))
    big = int(np.argmax(n[:, 0]))
    keep = fitted.copy()
    keep[big] = False
    refit = fit_additive(y, v, keep, codes, (20, 3, 12), np.zeros(2))
    # The refit also re-estimates tau and the effects' variances: close, not equal.
    assert fit.mean[big] == pytest.approx(refit.mean[big], abs=0.05)


def test_a_field_whose_values_each_mark_one_segment_is_left_to_tau():
    rng = np.random.default_rng(3)
    y = rng.normal(0, 0.3, (40, 1))
    codes, sizes = field_codes([f"c{i}" for i in range(40)], 1)
    fit = fit_additive(y, np.full((40, 1), 1e-4), np.ones((40, 1), bool), codes, sizes, np.zeros(1))
    assert fit.fields == ()
    assert math.sqrt(fit.tau2[0]) == pytest.approx(0.3, rel=0.3)


def test_field_codes_read_segment_keys():
    codes, sizes = field_codes(["KR|ios", "JP|ios", "KR|android", "odd"], 2)
    assert sizes == (3, 3)
    assert codes[0, 0] == codes[2, 0] and codes[0, 1] == codes[1, 1] and codes[3, 0] not in codes[:3, 0]


# --------------------------------------------------------------------------- end to end
PLACEMENT = PlacementConfig("p", (NetworkConfig("a", 0.05, 50.0), NetworkConfig("b", 0.05, 50.0)), ("country", "os"))
COUNTRY = {"KR": 0.0, "US": 0.6, "JP": -0.5, "DE": 0.3}
OS = {"ios": 0.3, "android": -0.2}


def _market_stats(rng, requests: dict[str, int]) -> SufficientStats:
    """Events of segments whose bids (and floors) scale by e^(country + os effect)."""
    stats = SufficientStats(2)
    keys = list(requests)
    for i, key in enumerate(keys):
        country, os_ = key.split("|")
        scale = math.exp(COUNTRY[country] + OS[os_])
        m = requests[key]
        floors, filled, revenue = _events(rng, m, scale)
        stats.add(
            EventBatch.from_arrays(
                PLACEMENT,
                segments=keys,
                segment_index=np.full(m, i),
                network=rng.integers(0, 2, m),
                floor_cpm=floors,
                filled=filled,
                revenue_cpm=revenue,
                ts=np.full(m, 1.8e9),
            )
        )
    return stats


def test_a_new_segment_starts_from_what_its_country_and_os_show():
    rng = np.random.default_rng(7)
    sizes = {f"{c}|{o}": 3000 for c in COUNTRY for o in OS if (c, o) != ("JP", "android")}
    sizes["JP|android"] = 6
    stats = _market_stats(rng, sizes)
    pool = SegmentPool.fit_stats(stats, 2)
    flat = SegmentPool.fit_stats(stats, 2, fields=False)
    row = stats.segment_row("JP|android")
    ref = stats.segment_row("KR|ios")
    truth = COUNTRY["JP"] + OS["android"] - COUNTRY["KR"] - OS["ios"]
    predicted = pool.level[row] - segment_levels(stats.totals()).level[ref]
    assert np.all(np.abs(predicted - truth) < 0.15), (predicted, truth)
    assert np.all(np.abs(flat.level[row] - pool.level[row]) > 0.3)
    # Its prior: the rest of the placement moved to that level, worth κ requests.
    own = stats.segment_data(row)
    prior = pool.prior("JP|android", own, stats.placement_level())
    assert prior[:, REQUESTS].sum(axis=1) == pytest.approx(pool.strength[row], rel=1e-6)
    mean_logp = prior[:, PRICE_LOGP].sum(axis=1) / prior[:, PRICE].sum(axis=1)
    ref_logp = stats.cell(ref, 0)[PRICE_LOGP].sum() / stats.cell(ref, 0)[PRICE].sum()
    assert np.all(np.abs(mean_logp - ref_logp - truth) < 0.15), (mean_logp - ref_logp, truth)
    # The segments agree with their fields, so the new segment's prior is strong.
    assert np.all(pool.strength[row] > 50) and np.all(pool.strength[row] > 5 * flat.strength[row])


def test_prior_strength_follows_the_between_segment_variance_not_the_smallest_segments():
    """Zipf sizes (2 to 270,000 requests), segments that truly differ by tau = 0.2 in log
    level: kappa ≈ c²/tau² ≈ 21, so the largest segment's own requests outweigh its prior by
    far. (The moment estimate this replaces, between-segment variance minus the *mean*
    sampling variance, which the tiny segments dominate, gave 9,081 here.)"""
    rng = np.random.default_rng(11)
    s = 1000
    n = np.floor(2e6 * (1.0 + rng.permutation(s)) ** -1.5 / 7.5) + 2
    level = rng.normal(0, 0.2, s)
    keys = [f"c{i}|o0" for i in range(s)]
    data = np.zeros((s, 1, 9, 128))
    # Revenue per request: fill with probability 0.7, price log-normal(level, 0.5).
    for i in range(s):
        m = int(n[i])
        paid = rng.lognormal(level[i], 0.5, m) * (rng.random(m) < 0.7)
        data[i, 0, REQUESTS, 60] = m
        data[i, 0, REVENUE, 60] = paid.sum()
        data[i, 0, 3, 60] = (paid**2).sum()
    stats = SufficientStats.from_dense(keys, data, 1.8e9)
    pool = SegmentPool.fit_stats(stats, 2, fields=False)
    rel_var = (math.exp(0.25) / 0.7) - 1.0  # E[R²]/E[R]² − 1
    assert pool.rel_var[0] == pytest.approx(rel_var, rel=0.1)
    assert math.sqrt(pool.tau2[0]) == pytest.approx(0.2, rel=0.2)
    kappa = pool.strength[:, 0]
    assert kappa.max() < 2.0 * rel_var / 0.04 and kappa.min() > 0.5 * rel_var / 0.04 / 2
    assert kappa[np.argmax(n)] < 0.01 * n.max()
