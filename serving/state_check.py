"""Complete validation of a policy state before it may serve a placement.

:func:`check_model_state` is a pure function over the state's arrays (as written by
``Policy.state()`` / ``bandit.save_state``) and the placement it is meant for. It
raises :class:`bandit.errors.InvalidState` (HTTP 422) with a message saying what to fix,
so a malformed state is refused before anything changes, instead of answering decisions
with 500s, NaN propensities or floors outside the contract. It checks, in this order
(cheap checks first; nothing is built from a state whose parameters could exhaust memory):

1. meta: readable, schema version, known policy, parameters inside their ranges
   (:data:`bandit.params.POLICY_PARAMS`), half-life;
2. the placement: same networks (ids, floor bounds, shares, auction) and segment fields;
3. shapes: T tables ``table_*`` [T, N, ...] including the placement-level table ``*``,
   statistics (sparse cell entries ``stats_{floor,price}_{cells,bins,values}``, totals
   [S, N, F], placement level [N, F, B]; or the dense ``stats_data`` [S, N, F, B] of
   earlier versions), segment keys with one value per segment field;
4. numbers: all finite (except the documented sentinels: infinite floor bounds, a
   ``-inf`` statistics or refit time before any event, an infinite pending count of a
   cell due at once, NaN for missing mixture fits); weights and
   floor probabilities are probability vectors; propensities in (0, 1] where a floor can
   be drawn; floors inside each network's bounds; counts non-negative; the statistics'
   time not after the server's clock (plus skew);
5. a trial: the policy is rebuilt and every table draws decisions, whose networks,
   floors and propensities must be valid.

It needs nothing of the service; ``experiments`` can call it on a model before
registering it (it could move to ``bandit/io.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np

from bandit import ALL_SEGMENTS, PlacementConfig, policy_from_state
from bandit.allocation import SUMMARY_FIELDS
from bandit.errors import AdbanditError, InvalidConfig, InvalidState
from bandit.io import state_meta
from bandit.params import POLICY_PARAMS, check_params
from bandit.policy import STATE_SCHEMA_VERSION
from bandit.stats import (
    ATFLOOR,
    FILLS,
    FLOOR_FIELDS,
    N_BINS,
    N_FIELDS,
    PRICE,
    RENORMALISE_HALF_LIVES,
    REQUESTS,
    REVENUE,
    REVENUE_SQ,
)

#: A probability vector may miss 1 by this much (float sums).
SUM_TOLERANCE = 1e-6
#: Floors may leave their bounds by this relative amount (float noise).
FLOOR_RTOL = 1e-9
#: Statistics fields that are weighted counts or sums of non-negative values.
NON_NEGATIVE_FIELDS = (REQUESTS, FILLS, REVENUE, REVENUE_SQ, ATFLOOR, PRICE)
#: Arrays allowed to hold NaN (mixture fits not made yet) — never ±inf.
NAN_ALLOWED = frozenset({"gmm_params"})
#: Decisions drawn per table in the trial.
TRIAL_DECISIONS = 256
MAX_FLOOR_LOG_SD = 5.0


def _fail(message: str) -> InvalidState:
    return InvalidState(f"model state rejected: {message}")


def check_model_state(
    state: Mapping[str, np.ndarray],
    config: PlacementConfig,
    *,
    now: float | None = None,
    max_skew_s: float = 300.0,
    max_segments: int | None = None,
) -> None:
    """Raise :class:`InvalidState` unless ``state`` can serve placement ``config`` (module
    docstring), with statistics of at most ``max_segments`` segments when given."""
    if not isinstance(state, Mapping):
        raise _fail("not a mapping of arrays")
    meta = state_meta(state)
    _check_meta(meta)
    _check_placement(meta, config)
    arrays = {k: np.asarray(v) for k, v in state.items()}
    n = len(config.networks)
    tables = _check_shapes(arrays, config)
    if max_segments is not None:
        n_segments = sum(1 for s in arrays["stats_segments"].tolist() if s != ALL_SEGMENTS)
        if n_segments > max_segments:
            raise _fail(
                f"its statistics hold {n_segments} segments; placement {config.id!r} allows at most {max_segments} "
                "(max_segments: ADBANDIT_MAX_SEGMENTS, or the placement's limits.max_segments)"
            )
    _check_numbers(arrays, config, tables, n)
    t_ref = float(arrays["stats_t_ref"])
    now = time.time() if now is None else now
    if t_ref > now + max_skew_s:
        raise _fail(
            f"its statistics are dated up to {t_ref:.0f} (epoch s), after the server's clock ({now:.0f}); "
            "events dated in the future would outweigh every live event: train it on event times up to now"
        )
    _trial(state, config)


def _check_meta(meta: dict) -> None:
    if meta.get("schema_version") != STATE_SCHEMA_VERSION:
        raise _fail(f"schema version {meta.get('schema_version')!r}; this service reads {STATE_SCHEMA_VERSION}")
    policy = meta.get("policy")
    if policy not in POLICY_PARAMS:
        raise _fail(f"unknown policy {policy!r}; known: {sorted(POLICY_PARAMS)}")
    params = meta.get("params")
    if not isinstance(params, Mapping):
        raise _fail("meta.params must be an object")
    try:
        check_params(policy, params)
    except InvalidConfig as exc:
        raise _fail(str(exc)) from None
    half_life = meta.get("half_life_hours")
    if half_life != "inf":
        try:
            check_params(policy, {"half_life_hours": half_life})
        except InvalidConfig as exc:
            raise _fail(f"meta.half_life_hours: {exc}") from None
    for key in ("placement_id", "placement", "updates", "rng"):
        if key not in meta:
            raise _fail(f"meta lacks {key!r}")
    if isinstance(meta["updates"], bool) or not isinstance(meta["updates"], int) or meta["updates"] < 0:
        raise _fail("meta.updates must be a non-negative integer")


def _check_placement(meta: dict, config: PlacementConfig) -> None:
    try:
        theirs = PlacementConfig.from_dict(str(meta["placement_id"]), meta["placement"])
    except (AdbanditError, TypeError, ValueError) as exc:
        raise _fail(f"its placement is invalid: {exc}") from None
    if theirs.networks != config.networks or theirs.segment_by != config.segment_by:
        raise _fail(
            f"it is for networks {list(theirs.network_ids)} segmented by {list(theirs.segment_by)}; placement "
            f"{config.id!r} has networks {list(config.network_ids)} segmented by {list(config.segment_by)} "
            "(floor bounds, shares and auction types must match too)"
        )


def _need(arrays: dict[str, np.ndarray], name: str, ndim: int) -> np.ndarray:
    if name not in arrays:
        raise _fail(f"array {name!r} is missing")
    arr = arrays[name]
    if arr.ndim != ndim:
        raise _fail(f"{name} must have {ndim} dimensions, has shape {list(arr.shape)}")
    return arr


def _check_segment_keys(name: str, keys: np.ndarray, config: PlacementConfig) -> list[str]:
    if keys.dtype.kind != "U":
        raise _fail(f"{name} must be strings")
    out = [str(k) for k in keys]
    if len(set(out)) != len(out):
        raise _fail(f"{name} repeats segment keys")
    parts = len(config.segment_by)
    for key in out:
        if key == ALL_SEGMENTS:
            continue
        if not config.segment_by or len(key.split("|")) != parts:
            raise _fail(
                f"{name} holds segment {key!r}, which is not a key of segment_by {list(config.segment_by)} "
                f"({parts} values joined by '|', or '*')"
            )
    return out


def _check_shapes(arrays: dict[str, np.ndarray], config: PlacementConfig) -> list[str]:
    n = len(config.networks)
    segments = _check_segment_keys("table_segments", _need(arrays, "table_segments", 1), config)
    if ALL_SEGMENTS not in segments:
        raise _fail("table_segments lacks the placement-level table '*'")
    t = len(segments)
    weights = _need(arrays, "table_weights", 2)
    floors = _need(arrays, "table_floors", 3)
    expected = {
        "table_weights": (t, n),
        "table_floors": (t, n, floors.shape[2]),
        "table_floor_probs": (t, n, floors.shape[2]),
        "table_floor_propensity": (t, n, floors.shape[2]),
        "table_summary": (t, n, len(SUMMARY_FIELDS)),
        "table_floor_log_sd": (t, n),
        "table_floor_bounds": (t, n, 2),
    }
    del weights
    for name, shape in expected.items():
        if name in ("table_floor_log_sd", "table_floor_bounds") and name not in arrays:
            continue  # optional (states written before continuous floors)
        arr = _need(arrays, name, len(shape))
        if arr.shape != shape:
            raise _fail(
                f"{name} has shape {list(arr.shape)}, expected {list(shape)} "
                f"({t} tables × {n} networks of placement {config.id!r})"
            )
    if floors.shape[2] < 1:
        raise _fail("table_floors has no floor candidates")
    _check_stats_shapes(arrays, config, n)
    for name in ("stats_t_ref", "stats_half_life"):
        if _need(arrays, name, 0).dtype.kind != "f":
            raise _fail(f"{name} must be a number")
    return segments


def _check_stats_shapes(arrays: dict[str, np.ndarray], config: PlacementConfig, n: int) -> None:
    stats_segments = _check_segment_keys("stats_segments", _need(arrays, "stats_segments", 1), config)
    n_seg = len(stats_segments)
    if "stats_data" in arrays:  # dense layout of earlier versions
        data = _need(arrays, "stats_data", 4)
        shape = (n_seg, n, N_FIELDS, N_BINS)
        if data.shape != shape:
            raise _fail(
                f"stats_data has shape {list(data.shape)}, expected {list(shape)} (segments × networks × fields × bins)"
            )
        return
    if int(_need(arrays, "stats_n_networks", 0)) != n:
        raise _fail(f"stats_n_networks is {int(arrays['stats_n_networks'])}, the placement has {n} networks")
    for kind, width in (("floor", FLOOR_FIELDS), ("price", N_FIELDS - FLOOR_FIELDS)):
        cells = _need(arrays, f"stats_{kind}_cells", 1)
        bins = _need(arrays, f"stats_{kind}_bins", 1)
        values = _need(arrays, f"stats_{kind}_values", 2)
        if cells.dtype.kind not in "iu" or bins.dtype.kind not in "iu":
            raise _fail(f"stats_{kind}_cells and stats_{kind}_bins must be integers")
        if not (len(cells) == len(bins) == values.shape[0]) or values.shape[1] != width:
            raise _fail(
                f"stats_{kind}_cells {list(cells.shape)}, stats_{kind}_bins {list(bins.shape)} and "
                f"stats_{kind}_values {list(values.shape)} must describe the same entries, with {width} values each"
            )
        if len(cells) and (cells.min() < 0 or cells.max() >= n_seg * n or bins.min() < 0 or bins.max() >= N_BINS):
            raise _fail(
                f"stats_{kind}_cells or stats_{kind}_bins point outside {n_seg} segments × {n} networks × {N_BINS} bins"
            )
        order = cells.astype(np.int64) * N_BINS + bins.astype(np.int64)
        if (np.diff(order) <= 0).any():
            raise _fail(f"stats_{kind} entries must be sorted by cell and bin without repeats")
    for name, shape in (("stats_totals", (n_seg, n, N_FIELDS)), ("stats_pooled", (n, N_FIELDS, N_BINS))):
        if _need(arrays, name, len(shape)).shape != shape:
            raise _fail(f"{name} has shape {list(arrays[name].shape)}, expected {list(shape)}")


def _negative_stats(arrays: dict[str, np.ndarray]) -> int:
    """How many counts or sums that must be >= 0 are negative (beyond float noise)."""
    if "stats_data" in arrays:
        return int((arrays["stats_data"][:, :, list(NON_NEGATIVE_FIELDS), :] < 0).sum())
    floor_cols = [f for f in NON_NEGATIVE_FIELDS if f < FLOOR_FIELDS]
    price_cols = [f - FLOOR_FIELDS for f in NON_NEGATIVE_FIELDS if f >= FLOOR_FIELDS]
    pooled = arrays["stats_pooled"][:, list(NON_NEGATIVE_FIELDS), :]
    noise = 1e-9 * max(1.0, float(np.abs(pooled).max(initial=0.0)))
    return int(
        (arrays["stats_floor_values"][:, floor_cols] < 0).sum()
        + (arrays["stats_price_values"][:, price_cols] < 0).sum()
        + (arrays["stats_totals"][:, :, list(NON_NEGATIVE_FIELDS)] < -noise).sum()
        + (pooled < -noise).sum()
    )


def _check_numbers(arrays: dict[str, np.ndarray], config: PlacementConfig, segments: list[str], n: int) -> None:
    for name, arr in arrays.items():
        if arr.dtype.kind not in "fc":
            continue
        # also recent_stats_*; refit times are -inf before any event, a pending count +inf
        # marks a cell due at once
        infinite_ok = (
            "table_floor_bounds",
            "stats_t_ref",
            "stats_t_origin",
            "stats_half_life",
            "refit_fitted",
            "refit_pending",
        )
        if name.endswith(infinite_ok):
            if np.isnan(arr).any():
                raise _fail(f"{name} holds NaN")
            continue
        bad = np.isinf(arr) if name in NAN_ALLOWED else ~np.isfinite(arr)
        if bad.any():
            raise _fail(f"{name} holds {int(bad.sum())} non-finite numbers (NaN or infinity)")
    if arrays["stats_t_ref"] == np.inf:
        raise _fail("stats_t_ref is +inf")
    if not arrays["stats_half_life"] > 0:
        raise _fail("stats_half_life must be > 0 seconds (inf for no discounting)")
    if "stats_t_origin" in arrays and np.isfinite(arrays["stats_t_ref"]):
        t_ref, origin, half_life = (float(arrays[k]) for k in ("stats_t_ref", "stats_t_origin", "stats_half_life"))
        if not (math.isfinite(origin) and 0 <= t_ref - origin <= RENORMALISE_HALF_LIVES * half_life):
            raise _fail(
                f"stats_t_origin must lie at most {RENORMALISE_HALF_LIVES:g} half-lives before stats_t_ref "
                f"(it is {origin!r}, stats_t_ref {t_ref!r})"
            )
    weights = arrays["table_weights"]
    if (weights < 0).any() or (np.abs(weights.sum(axis=1) - 1.0) > SUM_TOLERANCE).any():
        row = int(np.argmax((weights < 0).any(axis=1) | (np.abs(weights.sum(axis=1) - 1.0) > SUM_TOLERANCE)))
        raise _fail(
            f"table_weights of segment {segments[row]!r} is not a probability vector "
            f"(weights {np.round(weights[row], 6).tolist()} sum to {weights[row].sum():.9g}; "
            "they must be >= 0 and sum to 1)"
        )
    lo = np.array([c.min_share for c in config.networks])
    hi = np.array([c.max_share for c in config.networks])
    shares, what = weights, "weight"
    if config.mode == "auction":  # an auction's contract is on calls: its plans' call shares
        tiers, probs = arrays.get("table_plan_tiers"), arrays.get("table_plan_probs")
        if tiers is None or probs is None or tiers.ndim != 3 or probs.shape != tiers.shape[:2]:
            shares = None
        else:
            shares = ((tiers >= 0) * probs[:, :, None]).sum(axis=1) / np.maximum(probs.sum(axis=1), 1e-300)[:, None]
            what = "call share"
    outside = (
        np.zeros((0, 0), dtype=bool)
        if shares is None
        else (shares < lo - SUM_TOLERANCE) | (shares > hi + SUM_TOLERANCE)
    )
    if outside.any():
        row, j = map(int, np.argwhere(outside)[0])
        raise _fail(
            f"table_weights of segment {segments[row]!r} gives network {config.network_ids[j]!r} {what} "
            f"{shares[row, j]:.6g}, outside its share contract [{lo[j]:g}, {hi[j]:g}]"
        )
    probs = arrays["table_floor_probs"]
    sums = probs.sum(axis=2)
    if (probs < 0).any() or (np.abs(sums - 1.0) > SUM_TOLERANCE).any():
        row, j = map(int, np.argwhere((probs < 0).any(axis=2) | (np.abs(sums - 1.0) > SUM_TOLERANCE))[0])
        raise _fail(
            f"table_floor_probs of segment {segments[row]!r}, network {config.network_ids[j]!r} is not a "
            f"probability vector (sums to {sums[row, j]:.9g})"
        )
    fprop = arrays["table_floor_propensity"]
    drawn = (probs > 0) & (weights[:, :, None] > 0)
    if ((fprop > 1.0 + SUM_TOLERANCE) | (fprop < 0)).any() or (drawn & (fprop <= 0)).any():
        raise _fail("table_floor_propensity must lie in (0, 1] for every floor that can be drawn")
    floors = arrays["table_floors"]
    fmin = np.array([c.floor_min_cpm for c in config.networks])[None, :, None]
    fmax = np.array([c.floor_max_cpm for c in config.networks])[None, :, None]
    out = (floors < fmin * (1 - FLOOR_RTOL) - 1e-12) | (floors > fmax * (1 + FLOOR_RTOL) + 1e-12)
    if out.any():
        row, j, m = map(int, np.argwhere(out)[0])
        raise _fail(
            f"table_floors of segment {segments[row]!r} gives network {config.network_ids[j]!r} floor "
            f"{floors[row, j, m]:.6g} CPM, outside its bounds [{config.networks[j].floor_min_cpm:g}, "
            f"{config.networks[j].floor_max_cpm:g}]"
        )
    if "table_floor_log_sd" in arrays:
        sd = arrays["table_floor_log_sd"]
        if ((sd < 0) | (sd > MAX_FLOOR_LOG_SD)).any():
            raise _fail(f"table_floor_log_sd must lie in [0, {MAX_FLOOR_LOG_SD:g}]")
    if "table_floor_bounds" in arrays:
        fb = arrays["table_floor_bounds"]
        with np.errstate(divide="ignore"):
            log_min = np.log(fmin[0, :, 0])
            log_max = np.log(fmax[0, :, 0])
        jittered = arrays.get("table_floor_log_sd", np.zeros(fb.shape[:2])) > 0
        bad = jittered & ((fb[:, :, 0] > fb[:, :, 1]) | (fb[:, :, 0] < log_min - 1e-9) | (fb[:, :, 1] > log_max + 1e-9))
        if bad.any():
            row, j = map(int, np.argwhere(bad)[0])
            raise _fail(
                f"table_floor_bounds of segment {segments[row]!r}, network {config.network_ids[j]!r} lets "
                "jittered floors leave the network's floor bounds"
            )
    negative = _negative_stats(arrays)
    if negative:
        raise _fail(f"the statistics hold {negative} negative counts or sums")


def _trial(state: Mapping[str, np.ndarray], config: PlacementConfig) -> None:
    """Rebuild the policy and draw decisions from every table."""
    try:
        policy = policy_from_state(state)
    except AdbanditError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # anything a corrupt state makes the policy raise
        raise _fail(f"the policy cannot be rebuilt from it: {type(exc).__name__}: {exc}") from None
    rng = np.random.default_rng(0)
    segments = [ALL_SEGMENTS, *policy.segments]
    try:
        batch = policy.decide_indexed(segments, np.repeat(np.arange(len(segments)), TRIAL_DECISIONS), rng=rng)
        allocation = policy.allocation(ALL_SEGMENTS)
    except Exception as exc:
        raise _fail(f"it cannot make decisions: {type(exc).__name__}: {exc}") from None
    fmin = np.array([c.floor_min_cpm for c in config.networks])[batch.network]
    fmax = np.array([c.floor_max_cpm for c in config.networks])[batch.network]
    if not (
        np.all((batch.network >= 0) & (batch.network < len(config.networks)))
        and np.all(np.isfinite(batch.floor_cpm))
        and np.all(batch.floor_cpm >= fmin * (1 - FLOOR_RTOL) - 1e-12)
        and np.all(batch.floor_cpm <= fmax * (1 + FLOOR_RTOL) + 1e-12)
        and np.all((batch.propensity > 0) & (batch.propensity <= 1 + SUM_TOLERANCE))
        and np.all((batch.floor_propensity > 0) & (batch.floor_propensity <= 1 + SUM_TOLERANCE))
    ):
        raise _fail("its trial decisions have floors outside the bounds or propensities outside (0, 1]")
    numbers = [x for n in allocation.networks for x in (n.weight, n.floor_cpm, n.expected_revenue_cpm)]
    if not all(math.isfinite(x) for x in numbers):
        raise _fail("its allocation holds non-finite numbers")
