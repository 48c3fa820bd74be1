"""Off-policy evaluation: a candidate policy's revenue per request from logged decisions.

Each logged request carries the action taken — network ``n_i`` and floor ``f_i`` — with the
logging policy's P(network) ``propensity``, the probability of the floor's statistics bin
``floor_propensity`` and, when the logger drew floors continuously (a jittered table, see
:class:`bandit.allocation.SegmentTable`), the density of the log floor ``floor_density``
(NaN for discrete floors). The candidate is read from its decision tables
(:meth:`bandit.Policy.table`, once: it must be fixed while it is evaluated).

Weights (``r_i`` the reward, ``x_i = log f_i``, means over the n logged requests):

* bin weights ``w_i = π(n_i, bin_i) / (propensity_i · floor_propensity_i)``: floors in the
  same statistics bin (:func:`bandit.stats.price_bin`) count as the same action, and
  ``π(n, bin)`` is the candidate's P(network) times its floor's probability of the bin
  (jitter included).
* kernel weights (Kallus & Zhou 2018, continuous treatments) on rows with a logged
  density: ``w_i = π(n_i) · g_h(x_i | n_i) / (propensity_i · floor_density_i)`` with
  ``g_h`` the candidate's log-floor distribution smoothed by a Gaussian kernel of
  bandwidth ``h`` — ``Σ_m p_m φ_h(x - log f_m)`` for fixed candidate floors
  (:meth:`SegmentTable.log_floor_density` with ``extra_sd``). A candidate that jitters
  its own floors with sd ``s`` is smoothed by ``√(max(h² - s², 0))`` only (its own jitter
  already smooths; with ``s >= h`` the weight is the exact density ratio). Each smoothed
  candidate floor's kernel is renormalised to the network's logged range of log floors
  (boundary correction: a candidate floor at a floor bound, where the logger's jitter is
  truncated, would otherwise lose the half of its kernel beyond the bound). Rows without a
  logged density keep their bin weight. Rounded floors (a placement's ``floor_precision_cpm``):
  a served floor stands for the cell of draws that round to it, the logged density is that
  cell's probability over the cell's span (:meth:`SegmentTable.logged_floor_density`) and
  ``g_h`` is averaged over the same span, so the weight is the ratio of the two policies'
  probabilities of the served floor (the candidate's smoothed by ``h``). The estimand is the value of the candidate with
  floors blurred by ``h``: bias ``O(h²)`` (``O(h)`` at a bound) against variance ``O(1 / (n h))``.

Estimators (small classes overriding one method, as OBP's ``BaseOffPolicyEstimator`` →
``InverseProbabilityWeighting`` → ``SelfNormalizedInverseProbabilityWeighting``):

* ``ips`` / ``kernel_ips``     — ``mean(w r)``.
* ``snips`` / ``kernel_snips`` — ``Σ w r / Σ w``: self-normalised, lower variance, slightly biased.
* ``dr`` / ``kernel_dr``       — ``mean(DM_i + w_i (r_i - q̂(s_i, n_i, x_i)))`` with the
  direct method ``DM_i = Σ_n π(n) ∫ q̂(s_i, n, x) π(x | n) dx`` over the candidate's
  (unsmoothed) floor distribution, 2-fold cross-fitted (each row is scored by the model of
  the other fold). ``dr`` uses cell means of (segment, network, floor bin) shrunk towards
  (network, bin) and network means (:func:`reward_model`); ``kernel_dr`` the same means
  smoothed over log floor by the Gaussian kernel of bandwidth ``h``
  (:func:`kernel_reward_model`), interpolated linearly between bin centres, so the
  direct-method integral sees a smooth revenue curve.

The integral over the candidate's floors uses :func:`candidate_points`: its fixed floors as
point masses, and ``QUAD_POINTS`` quantile midpoints per jittered candidate floor.

Bandwidth (per network, :func:`silverman_bandwidth`): Silverman's rule on the logged log
floors of that network's rows with a density, ``h = 0.9 · min(sd, IQR / 1.349) · n^(-1/5)``,
at least ``MIN_BANDWIDTH``; a single ``bandwidth`` may be given instead. Each kernel
estimate reports it (mean over networks weighted by logged rows).

Every estimate is a value with a 95% normal interval from the per-request influence terms
(delta method for the self-normalised ones) and diagnostics:

* ``ess`` — effective sample size of its weights, ``(Σw)² / Σw²``, and ``ess_share`` = ess / n;
* ``max_weight`` and ``max_weight_share`` (largest weight / Σ w);
* ``unsupported`` — fraction of the candidate's probability mass (segments weighted by
  their logged requests) where the logs have no support (:func:`unsupported_mass`): a
  network never logged in the segment; for logged continuous floors, a floor where the
  kernel density estimate of the logged (network, log floor) is below
  ``SUPPORT_RATIO`` × the candidate's smoothed density there (an importance weight above
  1 / ``SUPPORT_RATIO``); for discrete logged floors, a floor bin never logged.
* ``logged_value`` — the logging policy's own value (mean reward), for comparison.

:func:`evaluate` warns (:class:`MissingSupportWarning`) when more than ``SUPPORT_WARN`` of
the candidate's mass is unsupported — no reweighting recovers revenue there, so every
estimator is biased — and (:class:`LowEffectiveSampleWarning`) when an ESS is below
``ESS_MIN`` or ``ESS_MIN_SHARE`` of n. The messages are kept in ``OPEEstimate.warnings``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri

from bandit.allocation import SegmentTable
from bandit.errors import InvalidOutcome
from bandit.events import reindex_segments
from bandit.policy import Policy
from bandit.stats import BIN_WIDTH, LOG_CENTERS, LOG_PRICE_MAX, LOG_PRICE_MIN, N_BINS, log_price, price_bin
from bandit.types import ALL_SEGMENTS, PlacementConfig

Z_95 = 1.959963984540054
#: Pseudo-count of the reward model's shrinkage towards the coarser cell mean.
SHRINKAGE = 10.0
#: Quantile points per jittered candidate floor in integrals over the candidate's floors.
QUAD_POINTS = 32
#: Smallest bandwidth (log CPM) the rule returns.
MIN_BANDWIDTH = 0.01
#: A candidate (network, floor) is unsupported where the logged density there is below this
#: fraction of the candidate's smoothed density (an importance weight above 1 / SUPPORT_RATIO).
SUPPORT_RATIO = 1e-3
#: Warn when more than this fraction of the candidate's mass is unsupported.
SUPPORT_WARN = 0.03
#: Warn when an estimator's ESS is below ESS_MIN requests or ESS_MIN_SHARE of n.
ESS_MIN = 100.0
ESS_MIN_SHARE = 0.01
ESTIMATORS = ("ips", "snips", "dr", "kernel_ips", "kernel_snips", "kernel_dr")
_PROPENSITIES = ("propensity", "floor_propensity")
#: Per row, the revenue of the request it starts (NaN: it starts none; null or absent: the row
#: is a request of its own), as the service's outcome archive writes it.
REQUEST_COLUMN = "request_revenue_cpm"


@dataclass(frozen=True, slots=True)
class LoggedDecisions:
    """Logged requests of one placement, arrays of shape [n].

    ``segment_index`` indexes ``segments``; ``network`` indexes the placement's networks;
    ``propensity`` is P(network) and ``floor_propensity`` P(floor bin | network) under the
    logging policy; ``reward`` is revenue per request (CPM, 0 when not filled);
    ``floor_density`` is the logger's density of log floor given the network (per unit log
    CPM) for continuously drawn floors, NaN for discrete ones (default: all NaN).
    """

    segments: tuple[str, ...]
    segment_index: NDArray[np.int64]
    network: NDArray[np.int64]
    floor_cpm: NDArray[np.float64]
    propensity: NDArray[np.float64]
    floor_propensity: NDArray[np.float64]
    reward: NDArray[np.float64]
    floor_density: NDArray[np.float64] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.network)
        if self.floor_density is None:
            object.__setattr__(self, "floor_density", np.full(n, np.nan))
        else:
            object.__setattr__(self, "floor_density", np.asarray(self.floor_density, dtype=np.float64))
        for name in ("segment_index", "floor_cpm", "propensity", "floor_propensity", "reward", "floor_density"):
            if len(getattr(self, name)) != n:
                raise InvalidOutcome(f"column {name} has {len(getattr(self, name))} rows, expected {n}")
        mu = self.propensity * self.floor_propensity
        bad = ~np.isfinite(mu) | (mu <= 0) | (self.propensity > 1 + 1e-9) | (self.floor_propensity > 1 + 1e-9)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InvalidOutcome(
                f"row {row}: propensity and floor_propensity must lie in (0, 1] ({int(bad.sum())} bad rows)"
            )
        if (~np.isfinite(self.reward) | (self.reward < 0)).any():
            raise InvalidOutcome("reward must be finite and >= 0 CPM")
        dens = self.floor_density
        bad = (np.isinf(dens) | (dens <= 0)) | (np.isfinite(dens) & (self.floor_cpm <= 0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InvalidOutcome(
                f"row {row}: floor_density must be > 0 and finite for a floor > 0, or NaN ({int(bad.sum())} bad rows)"
            )

    def __len__(self) -> int:
        return len(self.network)

    @property
    def logging_probability(self) -> NDArray[np.float64]:
        """μ [n]: probability the logger gave the logged (network, floor bin)."""
        return self.propensity * self.floor_propensity

    @property
    def floor_bin(self) -> NDArray[np.int64]:
        return price_bin(log_price(self.floor_cpm))

    @property
    def log_floor(self) -> NDArray[np.float64]:
        """log floor_cpm [n], clamped to the binned price range."""
        return log_price(self.floor_cpm)

    @property
    def continuous(self) -> NDArray[np.bool_]:
        """Rows whose floor was drawn continuously (they have a logged density) [n]."""
        return np.isfinite(self.floor_density)

    @classmethod
    def concat(cls, parts: Sequence[LoggedDecisions]) -> LoggedDecisions:
        keys, index = reindex_segments([(p.segments, p.segment_index) for p in parts])
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return cls(
            keys,
            index,
            cat("network"),
            cat("floor_cpm"),
            cat("propensity"),
            cat("floor_propensity"),
            cat("reward"),
            cat("floor_density"),
        )

    @classmethod
    def from_frame(cls, placement: PlacementConfig, frame: Any) -> LoggedDecisions:
        """From a polars frame of logged events.

        Columns: ``network`` (id, or index into the placement's networks), ``floor_cpm``,
        ``propensity``, ``floor_propensity``, optionally ``floor_density`` (continuous
        floors; null/NaN for discrete ones), the reward as ``reward`` or as
        ``revenue_cpm`` (+ ``filled``), and the segment as ``segment`` or derived from
        ``context`` by the placement's ``segment_by`` (then ``filled`` and ``ts`` are needed
        too, as for any outcome log). Rows of other placements, and rows without
        propensities, are skipped. The service's outcome archive (``state/outcomes/*.parquet``)
        has exactly these columns.

        A logged row is a request unless ``request_revenue_cpm`` says otherwise (the archive's
        column, :mod:`serving.archive`): a row with a value there is one request earning it (a
        waterfall or auction outcome: what the publisher was paid, not the sum of its bids);
        a row with NaN starts no request (the further responses of that outcome, a later
        OpenRTB notice of the same decision) and is dropped; null (a part written before the
        column) is a request of its own, as before. The price a later notice added to its
        decision's request (``joined_revenue_cpm``) cannot be joined back without a decision
        id, which the archive does not keep: such a request earns what its first notice paid.
        """
        import polars as pl

        from bandit.io import batch_from_frame

        if isinstance(frame, pl.LazyFrame):
            frame = frame.collect()
        if "placement" in frame.columns:
            frame = frame.filter(pl.col("placement") == placement.id)
        if REQUEST_COLUMN in frame.columns:
            request = pl.col(REQUEST_COLUMN).cast(pl.Float64)
            frame = frame.filter(request.is_null() | request.is_not_nan())  # NaN: starts no request
        missing = [c for c in ("network", "floor_cpm", *_PROPENSITIES) if c not in frame.columns]
        if "reward" not in frame.columns and "revenue_cpm" not in frame.columns:
            missing.append("reward (or revenue_cpm)")
        if missing:
            raise InvalidOutcome(f"logged decisions lack columns {missing}")
        # Events whose decision's propensities are unknown (NaN/null in the service's outcome
        # archive: decided before a restart or by another system) cannot be weighted: skip them.
        known = pl.all_horizontal(pl.col(c).is_not_null() & pl.col(c).is_not_nan() for c in _PROPENSITIES)
        frame = frame.with_columns(pl.col(c).cast(pl.Float64) for c in _PROPENSITIES).filter(known)
        if frame["floor_cpm"].null_count():
            raise InvalidOutcome(f"column floor_cpm has {frame['floor_cpm'].null_count()} missing values")
        if "segment" in frame.columns:
            segment = frame["segment"].cast(pl.String).fill_null(ALL_SEGMENTS)
            keys = segment.unique(maintain_order=True)
            seg_index = segment.replace_strict(keys, pl.int_range(len(keys), eager=True), return_dtype=pl.Int64)
            segments, seg_index = tuple(keys.to_list()), seg_index.to_numpy()
            network = _network_codes(placement, frame["network"])
        else:
            batch = batch_from_frame(placement, frame)
            segments, seg_index, network = batch.segments, batch.segment_index, batch.network
        if "reward" in frame.columns:
            reward = frame["reward"].cast(pl.Float64).fill_null(0.0).to_numpy()
        else:
            reward = frame["revenue_cpm"].cast(pl.Float64).fill_null(0.0).to_numpy()
            if "filled" in frame.columns:
                reward = np.where(frame["filled"].fill_null(False).to_numpy(), reward, 0.0)
        if REQUEST_COLUMN in frame.columns:
            request = frame[REQUEST_COLUMN].cast(pl.Float64).fill_null(math.nan).to_numpy()
            reward = np.where(np.isnan(request), reward, request)
        density = None
        if "floor_density" in frame.columns:
            density = frame["floor_density"].cast(pl.Float64).fill_null(math.nan).to_numpy()
        return cls(
            segments,
            np.asarray(seg_index, dtype=np.int64),
            np.asarray(network, dtype=np.int64),
            frame["floor_cpm"].cast(pl.Float64).to_numpy(),
            frame["propensity"].cast(pl.Float64).to_numpy(),
            frame["floor_propensity"].cast(pl.Float64).to_numpy(),
            reward,
            density,
        )


def _network_codes(placement: PlacementConfig, column: Any) -> NDArray[np.int64]:
    """Network indexes from a column of network ids (strings) or indexes (integers)."""
    import polars as pl

    n = len(placement.networks)
    if column.dtype.is_integer():
        codes = column.cast(pl.Int64).fill_null(-1).to_numpy()
        if ((codes < 0) | (codes >= n)).any():
            raise InvalidOutcome(f"network index must be in [0, {n})")
        return codes
    codes = column.cast(pl.String).replace_strict(
        {nid: i for i, nid in enumerate(placement.network_ids)}, default=-1, return_dtype=pl.Int64
    )
    if (codes < 0).any():
        placement.network_index(str(column.filter(codes < 0)[0]))  # raises UnknownNetwork
    return codes.to_numpy()


class OPEWarning(UserWarning):
    """An off-policy estimate should not be trusted as it stands."""


class MissingSupportWarning(OPEWarning):
    """Part of the candidate's actions were (almost) never logged: every estimator is biased there."""


class LowEffectiveSampleWarning(OPEWarning):
    """Few logged requests carry the weight of the estimate (tiny effective sample size)."""


@dataclass(frozen=True, slots=True)
class OPEEstimate:
    """One estimator's revenue per request (CPM) with its 95% interval and diagnostics.

    ``ess`` is the effective sample size of the importance weights, ``(Σw)² / Σw²``
    (``ess_share`` = ess / n): far below ``n`` means few logged requests look like the
    candidate's, so trust it less. ``max_weight_share`` is the largest weight's share of
    Σw; ``unsupported`` the fraction of the candidate's mass without logged support;
    ``logged_value`` the logging policy's own mean reward; ``bandwidth`` the kernel
    bandwidth in log CPM (NaN for the bin estimators); ``warnings`` why not to trust it.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    se: float
    n: int
    ess: float
    ess_share: float = math.nan
    max_weight: float = math.nan
    max_weight_share: float = math.nan
    unsupported: float = math.nan
    logged_value: float = math.nan
    bandwidth: float = math.nan
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "se": self.se,
            "n": self.n,
            "ess": self.ess,
            "ess_share": self.ess_share,
            "max_weight": self.max_weight,
            "max_weight_share": self.max_weight_share,
            "unsupported": self.unsupported,
            "logged_value": self.logged_value,
            "bandwidth": self.bandwidth,
            "warnings": "; ".join(self.warnings),
        }


# ------------------------------------------------------------------ the candidate's actions
def candidate_points(
    table: SegmentTable, n_points: int = QUAD_POINTS
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """The candidate's (network, floor) distribution as weighted points (network [Q],
    floor_cpm [Q], mass [Q], masses sum to 1): fixed floors as point masses; a jittered
    candidate floor as ``n_points`` quantile midpoints of its truncated log-normal (rounded
    as the table serves them), so
    ``Σ mass · f(network, floor)`` integrates ``f`` over the candidate's floors."""
    joint = table.weights[:, None] * table.floor_probs  # [N, M]
    nets, cands = np.nonzero(joint > 0)
    mass = joint[nets, cands]
    floors = table.floors[nets, cands]
    sd = table.floor_log_sd[nets]
    jit = (sd > 0) & (floors > 0)
    out_net, out_floor, out_mass = [nets[~jit]], [floors[~jit]], [mass[~jit]]
    if jit.any():
        jn = nets[jit]
        s = sd[jit][:, None]
        mu = np.log(np.maximum(floors[jit], 1e-300))[:, None]
        lo, hi = table.floor_bounds[jn, :1], table.floor_bounds[jn, 1:]
        z_lo, z_hi = ndtr((lo - mu) / s), ndtr((hi - mu) / s)
        u = (np.arange(n_points) + 0.5) / n_points
        z = ndtri(np.clip(z_lo + u[None, :] * (z_hi - z_lo), 1e-300, 1.0 - 1e-16))
        out_net.append(np.repeat(jn, n_points))
        out_floor.append(table.round_floors(np.repeat(jn, n_points), np.exp(np.clip(mu + s * z, lo, hi)).ravel()))
        out_mass.append(np.repeat(mass[jit] / n_points, n_points))
    return np.concatenate(out_net), np.concatenate(out_floor), np.concatenate(out_mass)


def action_probabilities(policy: Policy, segments: Sequence[str]) -> NDArray[np.float64]:
    """Candidate's P(network, floor bin) per segment, shape [S, N, B] (each [N, B] sums to 1);
    a jittered network's floor spreads over bins by its exact bin probabilities."""
    n_net = len(policy.placement.networks)
    out = np.zeros((len(segments), n_net, N_BINS))
    centres = np.exp(LOG_CENTERS)
    for s, seg in enumerate(segments):
        table = policy.table(seg)
        bins = price_bin(log_price(table.floors))  # [N, M]
        joint = table.weights[:, None] * table.floor_probs  # [N, M]
        rows = np.broadcast_to(np.arange(n_net)[:, None], bins.shape)
        fixed = ~(table.floor_log_sd > 0)
        np.add.at(out[s], (rows[fixed], bins[fixed]), joint[fixed])
        for n in np.flatnonzero(~fixed):
            out[s, n] = table.weights[n] * table.floor_bin_probability(np.full(N_BINS, n), centres)
    return out


def _target_terms(
    table: SegmentTable, net: NDArray[np.int64], floor_cpm: NDArray[np.float64], extra: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The candidate's smoothed density terms ``p_m · g_m`` [k, M] at logged floors: at the
    floor itself, or, for rounded floors (the table's ``floor_precision`` > 0), averaged over
    the floor's cell span (:meth:`SegmentTable.floor_cell_span`, Gauss–Legendre) — the same
    span whose width turned the logger's cell probability into its logged density, so the
    weight is the ratio of the two policies' probabilities of the served floor."""
    if not table.floor_precision > 0:
        return table.log_floor_density(net, floor_cpm, extra_sd=extra, per_candidate=True)
    a, b = table.floor_cell_span(net, floor_cpm)
    ok = np.isfinite(a) & np.isfinite(b) & (b > a)
    x0 = np.log(np.maximum(floor_cpm, 1e-300))
    a, b = np.where(ok, a, x0), np.where(ok, b, x0)
    width = np.where(ok, b - a, 1.0)[:, None]
    jit = table.floor_log_sd[net] > 0
    # Exact where the smoothed distribution is simple: a jittered network not smoothed further
    # (its own cell probabilities) and fixed floors smoothed by a normal kernel.
    out = table.cell_probability_terms(net, a, b) / width
    fixed = ~jit & (extra > 0)
    if fixed.any():
        e = extra[fixed][:, None]
        mu = np.log(np.maximum(table.floors[net[fixed]], 1e-300))
        mass = ndtr((b[fixed, None] - mu) / e) - ndtr((a[fixed, None] - mu) / e)
        out[fixed] = table.floor_probs[net[fixed]] * np.where(table.floors[net[fixed]] > 0, mass, 0.0) / width[fixed]
    smoothed = jit & (extra > 0)
    if smoothed.any():  # a jittered network smoothed further: Gauss–Legendre over the span
        rows = np.flatnonzero(smoothed)
        avg = 0.0
        for node, weight in zip(_GL_NODES, _GL_WEIGHTS, strict=True):
            x = a[rows] + (b - a)[rows] * 0.5 * (node + 1.0)
            avg = avg + 0.5 * weight * table.log_floor_density(
                net[rows], np.exp(x), extra_sd=extra[rows], per_candidate=True
            )
        out[rows] = avg
    return np.where(ok[:, None], out, np.nan)


#: Gauss–Legendre nodes and weights on [-1, 1] for averages over a floor's cell.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(5)


def _kernel_mass(
    table: SegmentTable, extra: NDArray[np.float64], within: NDArray[np.float64], n_points: int = QUAD_POINTS
) -> NDArray[np.float64]:
    """[N, M]: for each candidate floor of the table, the probability that its (jittered) log
    floor plus ``extra[n]`` · ε (ε standard normal) lies in ``within[n]`` (log CPM, [N, 2]); 1
    where ``extra`` is 0 or ``within`` unknown. Jittered floors by ``n_points`` quantile points."""
    sd = table.floor_log_sd[:, None]
    jit = (sd > 0) & (table.floors > 0)
    safe = np.where(jit, sd, 1.0)
    mu = np.log(np.maximum(table.floors, 1e-300))  # [N, M]
    lo, hi = table.floor_bounds[:, :1], table.floor_bounds[:, 1:]
    z_lo, z_hi = ndtr((lo - mu) / safe), ndtr((hi - mu) / safe)
    u = (np.arange(n_points) + 0.5) / n_points
    z = ndtri(np.clip(z_lo[..., None] + u * (z_hi - z_lo)[..., None], 1e-300, 1.0 - 1e-16))
    y = np.where(
        jit[..., None], np.clip(mu[..., None] + safe[..., None] * z, lo[..., None], hi[..., None]), mu[..., None]
    )
    e = np.where(extra > 0, extra, 1.0)[:, None, None]
    a, b = within[:, :1, None], within[:, 1:, None]
    mass = (ndtr((b - y) / e) - ndtr((a - y) / e)).mean(axis=2)
    return np.where((extra > 0)[:, None] & np.isfinite(within).all(axis=1)[:, None], mass, 1.0)


def _tables(policy: Policy, segments: Sequence[str]) -> list[SegmentTable]:
    return [policy.table(seg) for seg in segments]


# ------------------------------------------------------------------ bandwidth
def silverman_bandwidth(logs: LoggedDecisions, n_networks: int) -> NDArray[np.float64]:
    """Per network [N]: ``0.9 · min(sd, IQR / 1.349) · k^(-1/5)`` over the log floors of its
    k logged rows with a density (at least ``MIN_BANDWIDTH``); NaN without such rows."""
    out = np.full(n_networks, np.nan)
    x = logs.log_floor
    for n in range(n_networks):
        rows = logs.continuous & (logs.network == n)
        k = int(rows.sum())
        if k < 2:
            continue
        sd = float(x[rows].std(ddof=1))
        q75, q25 = np.percentile(x[rows], [75, 25])
        scale = min(sd, (q75 - q25) / 1.349) or sd
        out[n] = max(0.9 * scale * k ** (-0.2), MIN_BANDWIDTH)
    return out


# ------------------------------------------------------------------ reward models
def reward_model(
    logs: LoggedDecisions, rows: NDArray[np.int64], n_networks: int, shrinkage: float = SHRINKAGE
) -> NDArray[np.float64]:
    """Reward estimate q̂ [S, N, B] from the logged ``rows``: cell means of (segment, network,
    floor bin), shrunk with ``shrinkage`` pseudo-requests towards the (network, floor bin)
    mean, itself shrunk towards the network mean, itself towards the overall mean."""
    return kernel_reward_model(logs, rows, n_networks, np.full(n_networks, np.nan), shrinkage)


def kernel_reward_model(
    logs: LoggedDecisions,
    rows: NDArray[np.int64],
    n_networks: int,
    bandwidth: NDArray[np.float64],
    shrinkage: float = SHRINKAGE,
) -> NDArray[np.float64]:
    """:func:`reward_model` with counts and revenue sums smoothed over log floor by a Gaussian
    kernel (peak 1) of ``bandwidth`` [N] per network (NaN: no smoothing): a Nadaraya–Watson
    regression at the bin centres, shrunk as there, [S, N, B]."""
    n_seg = len(logs.segments)
    cell = (logs.segment_index[rows] * n_networks + logs.network[rows]) * N_BINS + logs.floor_bin[rows]
    size = n_seg * n_networks * N_BINS
    r = logs.reward[rows]
    count = np.bincount(cell, minlength=size).reshape(n_seg, n_networks, N_BINS).astype(float)
    total = np.bincount(cell, weights=r, minlength=size).reshape(n_seg, n_networks, N_BINS)
    overall = float(r.mean()) if len(r) else 0.0
    q_net = _shrunk_mean(total.sum(axis=(0, 2)), count.sum(axis=(0, 2)), overall, shrinkage)  # [N]
    if np.isfinite(bandwidth).any():
        d = (LOG_CENTERS[:, None] - LOG_CENTERS[None, :])[None]  # [1, B, B]
        h = np.asarray(bandwidth, dtype=float)[:, None, None]
        kernel = np.where(np.isfinite(h), np.exp(-0.5 * (d / np.where(np.isfinite(h), h, 1.0)) ** 2), np.eye(N_BINS))
        count = np.einsum("snb,nbc->snc", count, kernel)
        total = np.einsum("snb,nbc->snc", total, kernel)
    q_nb = _shrunk_mean(total.sum(axis=0), count.sum(axis=0), q_net[:, None], shrinkage)  # [N, B]
    return _shrunk_mean(total, count, q_nb[None], shrinkage)  # [S, N, B]


def _shrunk_mean(total: NDArray, count: NDArray, prior: NDArray | float, shrinkage: float) -> NDArray:
    """``(total + k·prior) / (count + k)``; the prior itself where there is nothing at all."""
    prior = np.broadcast_to(prior, total.shape)
    den = count + shrinkage
    return np.divide(total + shrinkage * prior, den, out=np.array(prior, dtype=float), where=den > 0)


def _interpolate(q: NDArray[np.float64], log_floor: NDArray[np.float64]) -> NDArray[np.float64]:
    """Values [k] of per-bin curves ``q`` [k, B] at ``log_floor`` [k], linear between bin centres."""
    pos = np.clip((log_floor - LOG_CENTERS[0]) / BIN_WIDTH, 0.0, N_BINS - 1.0)
    b0 = np.minimum(pos.astype(np.int64), N_BINS - 2)
    frac = pos - b0
    rows = np.arange(len(q))
    return (1.0 - frac) * q[rows, b0] + frac * q[rows, b0 + 1]


# ------------------------------------------------------------------ support
#: Log-floor grid of the logged-density estimate used by :func:`unsupported_mass`.
_KDE_GRID = np.linspace(LOG_PRICE_MIN, LOG_PRICE_MAX, 2049)


def unsupported_mass(
    logs: LoggedDecisions,
    tables: Sequence[SegmentTable],
    bandwidth: NDArray[np.float64],
    *,
    ratio: float = SUPPORT_RATIO,
) -> float:
    """Fraction of the candidate's probability mass (segments weighted by their logged
    requests) without logged support; see the module docstring. ``tables`` [S] are the
    candidate's tables of ``logs.segments``; ``bandwidth`` [N] the kernel bandwidths.

    The logged density of (network, log floor) in a segment is a kernel estimate (bandwidth
    ``h``) from a fine histogram of the segment's logged log floors, compared at each point of
    :func:`candidate_points` with the candidate's density smoothed by the same kernel."""
    n = len(logs)
    x = logs.log_floor
    step = _KDE_GRID[1] - _KDE_GRID[0]
    centres = _KDE_GRID[:-1] + 0.5 * step
    total = 0.0
    for s, table in enumerate(tables):
        in_seg = logs.segment_index == s
        n_s = int(in_seg.sum())
        if n_s == 0:
            continue
        nets, floors, mass = candidate_points(table)
        bad = np.zeros(len(nets), dtype=bool)
        xq = log_price(floors)
        for net in np.unique(nets):
            at = nets == net
            rows = in_seg & (logs.network == net)
            cont = rows & logs.continuous
            h = bandwidth[net] if net < len(bandwidth) else math.nan
            supported = np.zeros(int(at.sum()), dtype=bool)
            if cont.any() and np.isfinite(h):
                hist = np.histogram(x[cont], bins=_KDE_GRID)[0] / n_s  # [G]: share of the segment's rows
                kernel = np.exp(-0.5 * ((xq[at][:, None] - centres[None, :]) / h) ** 2) / (h * math.sqrt(2 * math.pi))
                dens = kernel @ hist  # logged density of (network, log floor) at the candidate's points
                own = float(table.floor_log_sd[net])
                extra = math.sqrt(max(h * h - own * own, 0.0)) if own > 0 else h
                target = table.weights[net] * table.log_floor_density(
                    np.full(int(at.sum()), net), floors[at], extra_sd=extra
                )
                supported |= dens >= ratio * np.nan_to_num(target, nan=0.0)
            discrete = rows & ~logs.continuous
            if discrete.any():
                supported |= np.isin(price_bin(xq[at]), logs.floor_bin[discrete])
            bad[at] = ~supported
        total += n_s * float(mass[bad].sum())
    return total / n


# ------------------------------------------------------------------ the data the estimators share
class OPEData:
    """Logs and a fixed candidate prepared for the estimators: weights, reward models.

    ``bandwidth`` (log CPM) overrides the per-network rule (:func:`silverman_bandwidth`);
    ``folds`` > 1 cross-fits the DR reward models (rows split at random with ``seed``),
    ``folds = 1`` fits them on all rows.
    """

    def __init__(
        self,
        logs: LoggedDecisions,
        policy: Policy,
        *,
        bandwidth: float | None = None,
        folds: int = 2,
        seed: int = 0,
    ) -> None:
        if len(logs) < 2:
            raise InvalidOutcome(f"off-policy evaluation needs at least 2 logged requests, got {len(logs)}")
        n_net = len(policy.placement.networks)
        if n_net <= int(logs.network.max()):
            raise InvalidOutcome("logged network index beyond the candidate policy's networks")
        if bandwidth is not None and not (bandwidth > 0 and math.isfinite(bandwidth)):
            raise InvalidOutcome(f"bandwidth must be > 0 (log CPM), got {bandwidth}")
        self.logs = logs
        self.policy = policy
        self.n_networks = n_net
        self.folds = max(int(folds), 1)
        self.seed = seed
        self.tables = _tables(policy, logs.segments)
        rule = silverman_bandwidth(logs, n_net)
        self.bandwidth = np.where(np.isfinite(rule), bandwidth, np.nan) if bandwidth is not None else rule
        self.reward = logs.reward

    @cached_property
    def probs(self) -> NDArray[np.float64]:
        """Candidate's P(network, floor bin) [S, N, B]."""
        return action_probabilities(self.policy, self.logs.segments)

    @cached_property
    def bin_weights(self) -> NDArray[np.float64]:
        """``π(n_i, bin_i) / μ_i`` [n]."""
        logs = self.logs
        pi = self.probs[logs.segment_index, logs.network, logs.floor_bin]
        return pi / logs.logging_probability

    @cached_property
    def kernel_weights(self) -> NDArray[np.float64]:
        """Kernel weights on rows with a logged density, bin weights on the others [n]."""
        logs = self.logs
        w = self.bin_weights.copy()
        for s, table in enumerate(self.tables):
            rows = np.flatnonzero((logs.segment_index == s) & logs.continuous)
            if not len(rows):
                continue
            net = logs.network[rows]
            own = table.floor_log_sd
            extra = np.nan_to_num(
                np.where(own > 0, np.sqrt(np.maximum(self.bandwidth**2 - own**2, 0.0)), self.bandwidth)
            )
            terms = _target_terms(table, net, logs.floor_cpm[rows], extra[net])
            # Boundary correction: each smoothed candidate floor's kernel is renormalised to the
            # logged range of floors (the rows lie inside it by construction; rounded floors
            # stand for their cells).
            mass = _kernel_mass(table, extra, self.supported_range)[net]  # [k, M]
            target = np.where(mass > 1e-9, np.nan_to_num(terms) / np.maximum(mass, 1e-9), 0.0).sum(axis=1)
            ok = np.isfinite(self.bandwidth[net])
            w[rows[ok]] = (table.weights[net] * target)[ok] / (logs.propensity[rows[ok]] * logs.floor_density[rows[ok]])
        return w

    @cached_property
    def logged_range(self) -> NDArray[np.float64]:
        """[N, 2]: lowest and highest logged log floor of each network's rows with a density."""
        out = np.full((self.n_networks, 2), np.nan)
        x, cont = self.logs.log_floor, self.logs.continuous
        for n in range(self.n_networks):
            rows = cont & (self.logs.network == n)
            if rows.any():
                out[n] = x[rows].min(), x[rows].max()
        return out

    @cached_property
    def supported_range(self) -> NDArray[np.float64]:
        """[N, 2]: the log floors the logger covered, per network: :attr:`logged_range`, or for
        floors rounded by the candidate's placement, from the lowest logged floor's cell to the
        highest's (:meth:`SegmentTable.floor_cell_span`: a served floor stands for its cell)."""
        out = self.logged_range.copy()
        table = self.tables[0] if self.tables else None
        if table is None or not table.floor_precision > 0:
            return out
        cont = self.logs.continuous
        lower, upper = table.floor_cell_span(self.logs.network[cont], self.logs.floor_cpm[cont])
        for n in range(self.n_networks):
            rows = self.logs.network[cont] == n
            if rows.any():
                out[n] = lower[rows].min(), upper[rows].max()
        return out

    def weights(self, kernel: bool) -> NDArray[np.float64]:
        return self.kernel_weights if kernel else self.bin_weights

    def reported_bandwidth(self) -> float:
        """Bandwidth (log CPM) averaged over networks weighted by their logged rows with a density."""
        counts = np.bincount(self.logs.network[self.logs.continuous], minlength=self.n_networks)
        ok = np.isfinite(self.bandwidth) & (counts > 0)
        return float(np.average(self.bandwidth[ok], weights=counts[ok])) if ok.any() else math.nan

    @cached_property
    def fold(self) -> NDArray[np.int64]:
        if self.folds == 1:
            return np.zeros(len(self.logs), np.int64)
        return np.random.default_rng(self.seed).integers(0, self.folds, len(self.logs))

    @cached_property
    def _points(self) -> list[tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]]:
        return [candidate_points(t) for t in self.tables]

    def cross_fitted(self, kernel: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(q̂ at the logged action [n], direct-method value of the candidate [n]) with each row
        scored by the reward model fitted on the other folds."""
        return self._kernel_fit if kernel else self._bin_fit

    @cached_property
    def _bin_fit(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        logs, q_logged, direct = self.logs, np.empty(len(self.logs)), np.empty(len(self.logs))
        for scored, train in self._splits():
            q = reward_model(logs, train, self.n_networks)  # [S, N, B]
            seg = logs.segment_index[scored]
            q_logged[scored] = q[seg, logs.network[scored], logs.floor_bin[scored]]
            direct[scored] = np.einsum("snb,snb->s", self.probs, q)[seg]
        return q_logged, direct

    @cached_property
    def _kernel_fit(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        logs, q_logged, direct = self.logs, np.empty(len(self.logs)), np.empty(len(self.logs))
        for scored, train in self._splits():
            q = kernel_reward_model(logs, train, self.n_networks, self.bandwidth)  # [S, N, B]
            seg, net = logs.segment_index[scored], logs.network[scored]
            q_logged[scored] = _interpolate(q[seg, net], logs.log_floor[scored])
            value = np.array(
                [
                    float(np.dot(mass, _interpolate(q[s, nets], log_price(floors))))
                    for s, (nets, floors, mass) in enumerate(self._points)
                ]
            )
            direct[scored] = value[seg]
        return q_logged, direct

    def _splits(self) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
        if self.folds == 1:
            rows = np.arange(len(self.logs))
            return [(rows, rows)]
        return [(np.flatnonzero(self.fold == k), np.flatnonzero(self.fold != k)) for k in range(self.folds)]

    @cached_property
    def unsupported(self) -> float:
        return unsupported_mass(self.logs, self.tables, np.nan_to_num(self.bandwidth, nan=BIN_WIDTH))

    @cached_property
    def logged_value(self) -> float:
        return float(self.reward.mean())


# ------------------------------------------------------------------ estimators
class OffPolicyEstimator:
    """Base: :meth:`estimate` turns an estimator's per-request influence terms into a value,
    an interval and diagnostics; subclasses override :meth:`_influence` only. ``kernel``
    selects the kernel weights (continuous floors) instead of the bin weights."""

    name: ClassVar[str] = "base"
    kernel: ClassVar[bool] = False
    #: Whether the estimate is undefined when no logged request has weight (pure reweighting).
    needs_weight: ClassVar[bool] = True

    def _influence(self, data: OPEData, w: NDArray[np.float64]) -> tuple[NDArray[np.float64], float | None]:
        """(influence terms [n], the value when it is not their mean)."""
        raise NotImplementedError

    def estimate(self, data: OPEData) -> OPEEstimate:
        w = data.weights(self.kernel)
        n = len(w)
        total = float(w.sum())
        if not total > 0 and self.needs_weight:
            return _estimate_without_weight(self.name, data, self.kernel)
        terms, value = self._influence(data, w)
        v = float(terms.mean()) if value is None else value
        se = float(terms.std(ddof=1) / math.sqrt(n))
        ess = total**2 / float(np.sum(w * w)) if total > 0 else 0.0
        w_max = float(w.max())
        notes = _warnings(self.kernel, ess, n, data.unsupported)
        return OPEEstimate(
            self.name,
            v,
            v - Z_95 * se,
            v + Z_95 * se,
            se,
            n,
            ess,
            ess / n,
            w_max,
            w_max / total if total > 0 else math.nan,
            data.unsupported,
            data.logged_value,
            data.reported_bandwidth() if self.kernel else math.nan,
            notes,
        )


class InverseProbabilityWeighting(OffPolicyEstimator):
    """``mean(w r)``: unbiased when the logger covers the candidate's actions."""

    name = "ips"

    def _influence(self, data: OPEData, w: NDArray[np.float64]) -> tuple[NDArray[np.float64], float | None]:
        return w * data.reward, None


class SelfNormalizedInverseProbabilityWeighting(InverseProbabilityWeighting):
    """``Σ w r / Σ w``; delta-method influence ``w (r - V) / mean(w)``."""

    name = "snips"

    def _influence(self, data: OPEData, w: NDArray[np.float64]) -> tuple[NDArray[np.float64], float | None]:
        r = data.reward
        value = float(np.sum(w * r) / w.sum())
        return w * (r - value) / w.mean(), value


class DoublyRobust(InverseProbabilityWeighting):
    """``mean(DM_i + w_i (r_i - q̂_i))`` with a cross-fitted reward model."""

    name = "dr"
    needs_weight = False

    def _influence(self, data: OPEData, w: NDArray[np.float64]) -> tuple[NDArray[np.float64], float | None]:
        q_logged, direct = data.cross_fitted(self.kernel)
        return direct + w * (data.reward - q_logged), None


class KernelInverseProbabilityWeighting(InverseProbabilityWeighting):
    """IPS with kernel weights: continuous floors."""

    name = "kernel_ips"
    kernel = True


class KernelSelfNormalizedInverseProbabilityWeighting(SelfNormalizedInverseProbabilityWeighting):
    """SNIPS with kernel weights."""

    name = "kernel_snips"
    kernel = True


class KernelDoublyRobust(DoublyRobust):
    """DR with kernel weights and the kernel-smoothed reward model."""

    name = "kernel_dr"
    kernel = True


#: The estimators by name, in :data:`ESTIMATORS` order.
ESTIMATOR_CLASSES: dict[str, type[OffPolicyEstimator]] = {
    cls.name: cls
    for cls in (
        InverseProbabilityWeighting,
        SelfNormalizedInverseProbabilityWeighting,
        DoublyRobust,
        KernelInverseProbabilityWeighting,
        KernelSelfNormalizedInverseProbabilityWeighting,
        KernelDoublyRobust,
    )
}


def _estimate_without_weight(name: str, data: OPEData, kernel: bool) -> OPEEstimate:
    """No logged request has weight: nothing to estimate (IPS-type estimates would be 0)."""
    n = len(data.logs)
    notes = _warnings(kernel, 0.0, n, data.unsupported)
    nan = math.nan
    bw = data.reported_bandwidth() if kernel else nan
    return OPEEstimate(name, nan, nan, nan, nan, n, 0.0, 0.0, 0.0, nan, data.unsupported, data.logged_value, bw, notes)


def _warnings(kernel: bool, ess: float, n: int, unsupported: float) -> tuple[str, ...]:
    """Why not to trust an estimate; the same text for every estimator sharing the weights."""
    notes = []
    if unsupported > SUPPORT_WARN:
        notes.append(
            f"{unsupported:.1%} of the candidate's probability mass has no logged support "
            f"(> {SUPPORT_WARN:.0%}): every estimate is biased there"
        )
    if ess < ESS_MIN or ess < ESS_MIN_SHARE * n:
        kind = "kernel" if kernel else "bin"
        notes.append(
            f"{kind} weights: effective sample size {ess:.0f} of {n:,} requests ({ess / n:.2%}) is tiny "
            f"(< {ESS_MIN:.0f} or < {ESS_MIN_SHARE:.0%} of n)"
        )
    return tuple(notes)


def evaluate(
    logs: LoggedDecisions,
    policy: Policy,
    *,
    folds: int = 2,
    seed: int = 0,
    bandwidth: float | None = None,
    estimators: Sequence[str] = ESTIMATORS,
    warn: bool = True,
) -> dict[str, OPEEstimate]:
    """Estimates of ``policy``'s revenue per request on ``logs`` by ``estimators`` (names of
    :data:`ESTIMATOR_CLASSES`), each with its diagnostics; see the module docstring.

    ``folds`` > 1 cross-fits the DR reward models (rows are split at random with ``seed``);
    ``folds = 1`` fits them on all rows. ``bandwidth`` (log CPM) overrides the kernel
    bandwidth rule. With ``warn``, a :class:`MissingSupportWarning` or
    :class:`LowEffectiveSampleWarning` is issued for each distinct problem.
    """
    unknown = [e for e in estimators if e not in ESTIMATOR_CLASSES]
    if unknown:
        raise InvalidOutcome(f"unknown estimators {unknown}; known: {list(ESTIMATOR_CLASSES)}")
    placement = policy.placement
    if placement.mode != "single":
        # A waterfall or auction request is a plan (networks, order, floors) with one propensity,
        # and its log keeps only the tiers called up to the one that filled.
        raise InvalidOutcome(
            f"placement {placement.id!r} is a {placement.mode} placement: off-policy evaluation here weighs "
            "one network and floor per request, not a plan of several; compare its plans on live traffic "
            "with an experiment (PUT /v1/placements/{p}/experiment), or in the simulator with `adbandit ab`"
        )
    data = OPEData(logs, policy, bandwidth=bandwidth, folds=folds, seed=seed)
    out = {name: ESTIMATOR_CLASSES[name]().estimate(data) for name in estimators}
    if warn:
        seen: set[str] = set()
        for e in out.values():
            for note in e.warnings:
                if note not in seen:
                    seen.add(note)
                    category = MissingSupportWarning if "no logged support" in note else LowEffectiveSampleWarning
                    warnings.warn(note, category, stacklevel=2)
    return out


def estimates_frame(estimates: dict[str, OPEEstimate]) -> Any:
    """Estimates as a polars frame, one row per estimator (diagnostics as columns)."""
    import polars as pl

    return pl.DataFrame([e.to_dict() for e in estimates.values()])


class LogCollector:
    """Collects logged decisions from :func:`simulator.runner.run` (pass it as ``on_batch``).

    The runner's policy may be learning: each decision carries the propensities of the
    table it was drawn from, which is all IPS needs (adaptive logging stays unbiased).
    """

    def __init__(self) -> None:
        self._parts: list[LoggedDecisions] = []

    def __call__(self, record: Any) -> None:
        req, db = record.requests, record.decisions
        self._parts.append(
            LoggedDecisions(
                tuple(req.segments),
                np.asarray(req.segment_index, dtype=np.int64),
                np.asarray(db.network, dtype=np.int64),
                np.asarray(db.floor_cpm, dtype=np.float64),
                np.asarray(db.propensity, dtype=np.float64),
                np.asarray(db.floor_propensity, dtype=np.float64),
                np.asarray(record.outcome.revenue, dtype=np.float64),
                None if db.floor_density is None else np.asarray(db.floor_density, dtype=np.float64),
            )
        )

    def logs(self) -> LoggedDecisions:
        if not self._parts:
            raise InvalidOutcome("no batches were collected")
        return LoggedDecisions.concat(self._parts)


def simulate_logs(
    logging_policy: Policy,
    market: Any,
    n_requests: int,
    *,
    seed: int | np.random.SeedSequence,
    start_ts: float | None = None,
) -> LoggedDecisions:
    """Log ``n_requests`` decisions of a *fixed* ``logging_policy`` in a simulated ``market``
    (a :class:`simulator.market.Market`): requests, decisions with their propensities,
    and the market's outcomes. The policy does not learn while logging."""
    rng = np.random.default_rng(seed)
    req = market.requests(n_requests, rng, start_ts=start_ts)
    db = logging_policy.decide_indexed(req.segments, req.segment_index, rng=rng)
    _, revenue = market.outcomes(req, db.network, db.floor_cpm)
    return LoggedDecisions(
        tuple(req.segments),
        np.asarray(req.segment_index, dtype=np.int64),
        db.network,
        db.floor_cpm,
        db.propensity,
        db.floor_propensity,
        np.asarray(revenue, dtype=np.float64),
        db.floor_density,
    )


def true_value(policy: Policy, market: Any, n_requests: int, *, seed: int, start_ts: float | None = None) -> float:
    """Ground truth of a fixed ``policy``'s revenue per request in a simulated market:
    Σ over networks and floors of P(network, floor) · ``market.expected``, averaged over
    ``n_requests`` fresh requests. The market is piecewise constant in (regime, segment),
    so each such cell is evaluated once at one representative time and weighted by its count.
    Jittered floors are integrated over by :func:`candidate_points` (256 quantile points each)."""
    rng = np.random.default_rng(seed)
    req = market.requests(n_requests, rng, start_ts=start_ts)
    cell = market.regime_of(req.ts) * len(req.segments) + req.segment_index
    _, first, counts = np.unique(cell, return_index=True, return_counts=True)
    total = 0.0
    for row, count in zip(first, counts, strict=True):
        s = int(req.segment_index[row])
        nets, floors, mass = candidate_points(policy.table(req.segments[s]), n_points=256)
        rev, _ = market.expected(np.full(len(nets), req.ts[row]), s, nets, floors)
        total += count * float(np.dot(mass, rev))
    return total / len(req)
