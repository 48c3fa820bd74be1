"""Kernel off-policy evaluation of continuous floors against the simulator's exact truth,
its diagnostics (ESS, largest weight, unsupported mass) and warnings."""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import cache

import numpy as np
import polars as pl
import pytest
from scipy.special import ndtr

from bandit import PlacementConfig, make_policy
from bandit.policy import Policy
from experiments.jitter import JitteredPolicy
from experiments.ope import (
    ESTIMATORS,
    LogCollector,
    LoggedDecisions,
    LowEffectiveSampleWarning,
    MissingSupportWarning,
    OPEWarning,
    evaluate,
    simulate_logs,
    true_value,
)
from simulator.market import Market
from simulator.runner import run

#: Logging floors and weights of core_stationary's networks (admob, adfit, pangle, inmobi).
FLOORS = {"admob": 2.0, "adfit": 1.0, "pangle": 1.5, "inmobi": 0.8}
LOG_WEIGHTS = {"admob": 0.4, "adfit": 0.2, "pangle": 0.25, "inmobi": 0.15}
CAND_WEIGHTS = {"admob": 0.3, "adfit": 0.3, "pangle": 0.2, "inmobi": 0.2}
LOG_SD = 0.3
SHIFTS = (0.7, 0.85, 1.15, 1.3)
N_SEEDS = 48
N_LOGGED = 2500


@cache
def market() -> Market:
    return Market("core_stationary")


def logger(weights: dict[str, float] = LOG_WEIGHTS) -> JitteredPolicy:
    """A fixed logging policy: static weights and floors, floors jittered log-normally."""
    placement = market().placement
    return JitteredPolicy(make_policy("static", placement, weights=weights, floors=FLOORS), LOG_SD)


def candidate(shift: float, jitter: float = 0.0) -> Policy:
    placement = market().placement
    policy = make_policy("static", placement, weights=CAND_WEIGHTS, floors={k: v * shift for k, v in FLOORS.items()})
    return JitteredPolicy(policy, jitter) if jitter > 0 else policy


@cache
def logged(seed: int) -> LoggedDecisions:
    return simulate_logs(logger(), market(), N_LOGGED, seed=seed)


def coverage(policy: Policy, estimators: list[str], **kwargs) -> tuple[dict[str, float], dict[str, float]]:
    """(share of seeds whose 95% interval covers the truth, mean interval width) per estimator."""
    truth = true_value(policy, market(), 20_000, seed=12345)
    covered = dict.fromkeys(estimators, 0)
    width = dict.fromkeys(estimators, 0.0)
    for seed in range(N_SEEDS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OPEWarning)
            est = evaluate(logged(seed), policy, seed=seed, estimators=estimators, **kwargs)
        for k, e in est.items():
            covered[k] += e.ci_low <= truth <= e.ci_high
            width[k] += (e.ci_high - e.ci_low) / N_SEEDS
    return {k: c / N_SEEDS for k, c in covered.items()}, width


@pytest.mark.parametrize(("shift", "jitter"), [*((s, 0.0) for s in SHIFTS), (1.15, 0.15)])
def test_kernel_intervals_cover_the_truth_for_shifted_floors(shift: float, jitter: float) -> None:
    """Candidates with floors 30% and 15% below or above the logger's (and one that jitters
    its own floors): the kernel estimators' 95% intervals cover the exact truth, and for
    fixed floors are narrower than the bin estimators' (a bin holds fewer logged floors
    than a kernel window; a jittered candidate's weights are exact density ratios anyway)."""
    cov, width = coverage(candidate(shift, jitter), ["ips", "kernel_ips", "kernel_snips", "kernel_dr"])
    for k in ("kernel_ips", "kernel_snips", "kernel_dr"):
        assert cov[k] >= 0.85, (shift, k, cov)
    if jitter == 0:
        assert width["kernel_ips"] < 0.8 * width["ips"], width


def test_kernel_is_corrected_at_the_edge_of_the_logged_floors() -> None:
    """Floors at floor_min (0.05) are jittered only upwards (the bound truncates the jitter):
    a candidate floor on the bound would lose half its kernel below it, and kernel IPS a third
    of the value here, without the kernel's renormalisation to the logged range of floors."""
    placement = market().placement
    edge_logger = JitteredPolicy(make_policy("static", placement, floors={"admob": 2.0}), 0.2)
    policy = make_policy("static", placement, floors={"admob": 2.2})  # the others at 0.05
    truth = true_value(policy, market(), 20_000, seed=12345)
    covered = 0
    for seed in range(N_SEEDS):
        logs = simulate_logs(edge_logger, market(), N_LOGGED, seed=seed)
        e = evaluate(logs, policy, estimators=["kernel_ips"], warn=False)["kernel_ips"]
        covered += e.ci_low <= truth <= e.ci_high
    assert covered / N_SEEDS >= 0.85, covered


def test_coverage_fails_when_the_logged_density_is_ignored() -> None:
    """Control for the coverage test: with the logged floor density replaced by its average
    (weights that ignore where the logger put its floors) the intervals miss the truth."""
    for shift in (0.7, 0.85, 1.15):
        policy = candidate(shift)
        truth = true_value(policy, market(), 20_000, seed=12345)
        covered = 0
        for seed in range(N_SEEDS):
            logs = logged(seed)
            flat = dataclasses.replace(logs, floor_density=np.full(len(logs), float(logs.floor_density.mean())))
            e = evaluate(flat, policy, estimators=["kernel_ips"], warn=False)["kernel_ips"]
            covered += e.ci_low <= truth <= e.ci_high
        assert covered / N_SEEDS <= 0.3, (shift, covered)


def test_logs_carry_the_logged_floor_density() -> None:
    logs = logged(0)
    assert np.all(logs.continuous) and np.all(logs.floor_density > 0)
    table = logger().table("*")
    # Served floors are in cents, and the density logged is their cent cell's (its probability
    # over its width in log floor), not the unrounded draw's density at the rounded floor.
    np.testing.assert_array_equal(logs.floor_cpm, np.round(logs.floor_cpm, 2))
    np.testing.assert_allclose(logs.floor_density, table.logged_floor_density(logs.network, logs.floor_cpm))
    lower, upper = table.floor_cell_span(logs.network, logs.floor_cpm)
    np.testing.assert_allclose(
        logs.floor_density * (upper - lower), table.floor_cell_probability(logs.network, logs.floor_cpm)
    )
    collector = LogCollector()
    run(logger(), market(), 1000, seed=3, batch_size=500, on_batch=collector)
    assert np.all(collector.logs().continuous)
    ids = np.array(market().placement.network_ids)
    frame = pl.DataFrame(
        {
            "network": ids[logs.network],
            "floor_cpm": logs.floor_cpm,
            "propensity": logs.propensity,
            "floor_propensity": logs.floor_propensity,
            "floor_density": logs.floor_density,
            "reward": logs.reward,
            "segment": "*",
        }
    )
    read = LoggedDecisions.from_frame(market().placement, frame)
    np.testing.assert_array_equal(read.floor_density, logs.floor_density)


def _support_warnings(logs: LoggedDecisions, policy: Policy) -> tuple[float, list[type[Warning]]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = evaluate(logs, policy)
    unsupported = {e.unsupported for e in est.values()}
    assert len(unsupported) == 1
    return unsupported.pop(), [w.category for w in caught]


def test_support_warning_fires_outside_the_logged_range_only() -> None:
    logs = logged(0)
    placement = market().placement
    for shift in SHIFTS:
        unsupported, caught = _support_warnings(logs, candidate(shift))
        assert unsupported < 0.01 and MissingSupportWarning not in caught, shift
    top = {k: 3.0 * float(logs.floor_cpm[logs.network == i].max()) for i, k in enumerate(placement.network_ids)}
    above = make_policy("static", placement, weights=CAND_WEIGHTS, floors=top)
    unsupported, caught = _support_warnings(logs, above)
    assert unsupported > 0.99 and MissingSupportWarning in caught
    # A network the logger never used: the candidate's weight on it (0.2) has no support.
    never = simulate_logs(logger({**LOG_WEIGHTS, "inmobi": 0.0}), market(), N_LOGGED, seed=0)
    unsupported, caught = _support_warnings(never, candidate(1.15))
    assert unsupported == pytest.approx(0.2, abs=1e-9) and MissingSupportWarning in caught


PLACEMENT = PlacementConfig.from_dict("p1", {"networks": [{"id": "a"}, {"id": "b"}]})


def hand_logs(density: bool) -> LoggedDecisions:
    """Five hand-made logged requests on networks a/b."""
    return LoggedDecisions(
        ("*",),
        np.zeros(5, dtype=np.int64),
        np.array([0, 0, 1, 1, 0]),
        np.array([1.0, 1.1, 2.0, 3.0, 0.9]),
        np.array([0.5, 0.5, 0.5, 0.5, 0.5]),
        np.array([0.5, 0.25, 1.0, 0.5, 0.5]),
        np.array([1.2, 0.0, 2.5, 0.0, 0.8]),
        np.array([0.8, 1.0, 0.5, 0.25, 1.2]) if density else None,
    )


def test_diagnostics_on_a_hand_computed_example() -> None:
    """Static candidate: network a (weight 0.75) at floor 1.0, b (0.25) at floor 2.0."""
    policy = make_policy("static", PLACEMENT, weights={"a": 3.0, "b": 1.0}, floors={"a": 1.0, "b": 2.0})
    logs = hand_logs(density=False)
    # Bin weights: rows 0 and 2 hold the candidate's floors (their bins), the others do not.
    w = np.array([0.75 / 0.25, 0.0, 0.25 / 0.5, 0.0, 0.0])
    with pytest.warns(LowEffectiveSampleWarning, match="effective sample size"):
        est = evaluate(logs, policy, folds=1)
    ips = est["ips"]
    assert ips.value == pytest.approx(np.mean(w * logs.reward), rel=1e-12)
    assert ips.ess == pytest.approx(3.5**2 / (9 + 0.25), rel=1e-12)
    assert ips.ess_share == pytest.approx(ips.ess / 5, rel=1e-12)
    assert ips.max_weight == pytest.approx(3.0) and ips.max_weight_share == pytest.approx(3.0 / 3.5)
    assert ips.logged_value == pytest.approx(0.9) and math.isnan(ips.bandwidth)
    assert any("effective sample size" in note for note in ips.warnings)
    assert est["ips"].to_dict()["ess_share"] == ips.ess_share

    # Kernel weights with a given bandwidth h: π(n) φ_h(log f - log f_n) / (propensity · density),
    # the kernel renormalised to the network's logged range of log floors [lo_n, hi_n] and, the
    # floors being served in cents, averaged over the floor's cent cell [f - ½ cent, f + ½ cent)
    # in log floor (what the logged density is the cell's probability per unit of).
    logs = hand_logs(density=True)
    h = 0.2
    with pytest.warns(LowEffectiveSampleWarning):
        est = evaluate(logs, policy, bandwidth=h, folds=1)
    x = np.log(logs.floor_cpm)
    cand = np.log([1.0, 2.0])
    lo = np.array([np.log(0.895), np.log(1.995)])  # the logged range, from cell edge to cell edge
    hi = np.array([np.log(1.105), np.log(3.005)])
    inside = ndtr((hi - cand) / h) - ndtr((lo - cand) / h)
    net = logs.network
    a, b = np.log(logs.floor_cpm - 0.005), np.log(logs.floor_cpm + 0.005)
    phi = (ndtr((b - cand[net]) / h) - ndtr((a - cand[net]) / h)) / (b - a) / inside[net]
    point = np.exp(-0.5 * ((x - cand[net]) / h) ** 2) / (h * math.sqrt(2 * math.pi)) / inside[net]
    assert np.abs(phi / point - 1).max() > 1e-5  # the cell average is not the value at the floor
    wk = np.array([0.75, 0.25])[net] * phi / (logs.propensity * logs.floor_density)
    k = est["kernel_ips"]
    assert k.value == pytest.approx(np.mean(wk * logs.reward), rel=1e-9)
    assert k.ess == pytest.approx(wk.sum() ** 2 / (wk**2).sum(), rel=1e-9)
    assert k.max_weight_share == pytest.approx(wk.max() / wk.sum(), rel=1e-9)
    assert k.bandwidth == pytest.approx(h)
    assert est["kernel_snips"].value == pytest.approx(np.sum(wk * logs.reward) / wk.sum(), rel=1e-9)


def test_a_jittered_candidate_wider_than_the_bandwidth_gets_exact_density_ratios() -> None:
    """A candidate whose own jitter (sd 0.4) exceeds the bandwidth is not smoothed further:
    its weights are π(n) g(log f | n) / (μ(n) p(log f | n)) (for floors in cents, the two
    policies' probabilities of the cent cell over its width), and kernel IPS is unbiased."""
    logs = logged(1)
    cand = candidate(1.15, jitter=0.4)
    est = evaluate(logs, cand, bandwidth=0.1, estimators=["kernel_ips"], warn=False)["kernel_ips"]
    table = cand.table("*")
    g = table.weights[logs.network] * table.logged_floor_density(logs.network, logs.floor_cpm)
    w = g / (logs.propensity * logs.floor_density)
    assert est.value == pytest.approx(np.mean(w * logs.reward), rel=1e-9)


def test_estimates_frame_and_dict_hold_the_diagnostics() -> None:
    from experiments.ope import estimates_frame

    est = evaluate(logged(0), candidate(0.85), warn=False)
    frame = estimates_frame(est)
    assert frame["estimator"].to_list() == list(ESTIMATORS)
    for col in ("ess", "ess_share", "max_weight", "max_weight_share", "unsupported", "logged_value", "bandwidth"):
        assert col in frame.columns
    assert frame.filter(pl.col("estimator") == "kernel_ips")["bandwidth"][0] > 0
    assert frame["logged_value"].n_unique() == 1


def coarse(policy_placement: PlacementConfig, precision: float) -> PlacementConfig:
    return dataclasses.replace(policy_placement, floor_precision_cpm=precision)


@pytest.mark.parametrize("shift", [0.7, 1.3])
def test_kernel_intervals_cover_the_truth_with_coarse_floor_steps(shift: float) -> None:
    """Floors served in steps of 0.5 CPM (cells as wide as the logger's jitter): the logged
    density is the cell's probability over its width, the candidate's density is averaged
    over the same cell, and the kernel intervals still cover the exact truth. Control: with the
    unrounded jitter's density at the served floor (what was logged before floors were rounded)
    they miss it where the candidate's floors lie in the grid's first cell (0.5 CPM takes every
    draw below 0.75: shift 0.7); inside the grid the two densities are close."""
    placement = coarse(market().placement, 0.5)
    log_policy = JitteredPolicy(make_policy("static", placement, weights=LOG_WEIGHTS, floors=FLOORS), LOG_SD)
    policy = make_policy("static", placement, weights=CAND_WEIGHTS, floors={k: v * shift for k, v in FLOORS.items()})
    truth = true_value(policy, market(), 20_000, seed=12345)
    table = log_policy.table("*")
    covered = covered_point = 0
    for seed in range(N_SEEDS):
        logs = simulate_logs(log_policy, market(), N_LOGGED, seed=seed)
        assert np.all(np.floor(logs.floor_cpm * 2 + 0.5) / 2 == logs.floor_cpm)
        e = evaluate(logs, policy, estimators=["kernel_ips"], warn=False)["kernel_ips"]
        covered += e.ci_low <= truth <= e.ci_high
        point = dataclasses.replace(logs, floor_density=table.log_floor_density(logs.network, logs.floor_cpm))
        e = evaluate(point, policy, estimators=["kernel_ips"], warn=False)["kernel_ips"]
        covered_point += e.ci_low <= truth <= e.ci_high
    assert covered / N_SEEDS >= 0.85, covered
    if shift < 1:
        assert covered_point / N_SEEDS <= 0.5, covered_point
