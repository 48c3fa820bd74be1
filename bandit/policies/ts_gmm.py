"""Thompson sampling over networks and continuous floors with a censored Gaussian-mixture
price model per (segment, network) — the main adbandit policy.

After each update, for every touched segment and network:

1. statistics are pooled with the rest of the placement, moved to the value level a model
   of the segment's context fields predicts for it, at an empirical-Bayes strength
   (:mod:`bandit.pooling`): a segment with little data borrows strength from the segments
   sharing its fields, and moves to its own estimates as data grows;
2. the mixture of bidder values is fitted by censored EM (:mod:`bandit.gmm`), warm-started
   from the previous fit, and refitted on ``BOOTSTRAP_DRAWS`` Bayesian-bootstrap copies of
   the binned data; a first-price network also gets a posterior over floor-responsive
   shading (:func:`bandit.gmm.shading_posterior`), under which its next observations are
   read (:meth:`ThompsonGmmPolicy._data_shading`);
3. the mixture curves are the prior means of a Gaussian-process correction from the binned
   revenue of the floors actually tried (:mod:`bandit.curve`); ``n_draws`` curve draws each
   give a best floor anywhere in the network's bounds and the revenue there.

Exposure weights are P(network's draw is best), Rao–Blackwellised over the draws
(:func:`bandit.curve.prob_best_draws`); when min/max shares bind, the posterior average of
the contract-constrained optimum (:func:`bandit.allocation.matched_shares`). A small share
(``explore_network``) is spread over all networks so every network keeps producing fresh
data. A decision picks a network by its weight, a floor from the draws' best floors and a
log-normal jitter around it (at most ``floor_jitter``, narrower where the revenue curve
peaks sharply), or, with a probability rising when a network
stops filling, a lower floor, so censored data can never trap a floor above all bids.
Statistics are learned in base-market units under hour-of-day value levels
(:mod:`bandit.season`), each network's served (and learned) at its own level shrunk toward
its segment's, the level's doubt multiplying its draws. Before learning a batch, a
model-free CUSUM per (segment, network) (:mod:`bandit.drift`) checks it against the cell's
recent history at the same floors; on a change most of that history is forgotten (and its
hour levels start over), so traffic and floors move within a batch or two.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import repeat

import numpy as np
from numpy.typing import NDArray

from bandit.allocation import (
    AUCTION_CODES,
    SUMMARY_FIELDS,
    SegmentTable,
    floor_bin_propensity,
    matched_shares,
    shares_bind,
)
from bandit.curve import (
    BinnedEvidence,
    affordable_jitter,
    best_on_grid,
    choose_doubt,
    curve_posterior,
    empirical_se,
    floor_grid,
    floor_histogram,
    log_bounds,
    prob_best_draws,
    se_kernel,
    sharpened,
)
from bandit.drift import MAX_ALARMS, MIN_EVENTS, ChangeAlarm, FloorHistory, batch_deviations, cusum_step
from bandit.errors import InvalidState
from bandit.events import EventBatch
from bandit.gmm import (
    RESPONSE_SHADINGS,
    GmmParams,
    Prior,
    ResponsiveCurve,
    RevenueCurve,
    censored_data,
    fit,
    fit_effects,
    initial_params,
    is_single_bidder,
    shading_posterior,
)
from bandit.modes import allowed_floors, explored_plans, pay_curves, plan_summary, plan_table
from bandit.params import check_params
from bandit.policies.common import detect_auction
from bandit.policy import Policy, as_event_batch
from bandit.pooling import SegmentPool
from bandit.season import (
    HOURS_PER_DAY,
    LEVEL_EVENTS,
    count_level_events,
    deflated_bin,
    expected_at,
    hour_of_day,
    level_at,
    level_sd,
    segment_levels,
    update_cell_levels,
)
from bandit.stats import (
    FILLS,
    LOG_CENTERS,
    REQUESTS,
    REVENUE,
    SufficientStats,
    decay_factor,
    distinct,
    log_price,
    price_bin,
)
from bandit.types import ALL_SEGMENTS, MODES, PlacementConfig

#: Multipliers of the current floor tried on the exploration path of a trapped network
#: (and by an auction's explored plans).
EXPLORE_FACTORS = (0.5, 0.75)
#: Auctions: the share of the plans' probability given to variants with one
#: network's floor lowered (:func:`bandit.modes.explored_plans`). A called network is seen
#: only at and above its floor; under a per-request value shock its mixture extrapolated the
#: fill below the floor too low (0.86 at 1 CPM where it filled always) and the draws agreed,
#: so one segment's plan kept a high floor on its strongest network (6% below the oracle).
#: 10 seeds: auction_segments' last fifth 0.988 → 0.991, auction_5 and auction_20 unchanged.
#: Not for waterfalls: a lowered tier takes requests the tiers after it pay more for
#: (waterfall_8 lost 1.7% at this share).
AUCTION_EXPLORE = 0.05
#: Relative gap between a batch and the history that a change must show (smaller gaps are
#: left to the hour-of-day levels and to discounting): a daily cycle moves revenue at fixed
#: floors up to ~12% an hour, a break far more.
CHANGE_GATE = 0.25
#: Half-life of the recent history the change detector compares each batch with.
RECENT_HALF_LIFE_HOURS = 0.5
#: Distinct candidate floors per network in a decision table.
MAX_FLOORS = 24
#: Bootstrap refits of the mixture per (segment, network) and refresh, and their EM steps
#: from the current fit.
BOOTSTRAP_DRAWS = 16
BOOTSTRAP_EM_STEPS = 6
#: EM steps of a refit warm-started from the cell's last fit (or, for a new segment, from
#: the placement level's): bounded, since later refits keep refining from there.
WARM_EM_STEPS = 8
#: Candidate misfits, as multiples of ``model_doubt``, for the marginal-likelihood choice.
DOUBT_STEPS = np.array([0.0, 0.25, 0.5, 1.0, 2.0])
#: Share of the curve's peak below which the misfit's scale does not fall (the mixture may
#: wrongly say "nothing fills" at some floors).
CURVE_FLOOR = 0.1
#: Expected share of a network's best revenue its floor jitter may cost (the jitter narrows
#: around a sharp revenue peak, and widens up to ``floor_jitter`` on a flat one, where the
#: data must show a slope), and the share of ``floor_jitter`` it keeps at least (floors on
#: both sides of the chosen one keep being tried, and logged with a density).
JITTER_LOSS = 0.0005
JITTER_MIN_SHARE = 0.15
#: A cell with this many (discounted) requests draws each floor from a sharpened posterior:
#: the best floor of the mean of ``SHARPEN_DRAWS`` curve draws (variance / ``SHARPEN_DRAWS``).
#: Matching probabilities on a flat-topped curve keeps serving floors on its flatter side
#: while the data cannot yet tell them apart; earlier, the full posterior explores.
SHARPEN_AFTER_REQUESTS = 20_000.0
SHARPEN_DRAWS = 2
#: Per-request effects of a second-price crowd (a value shock its bidders share, over-dispersed
#: bidder counts; :mod:`bandit.gmm`) are searched once a cell has ``EFFECT_FROM_REQUESTS``
#: requests of its own, and again each time they grow by ``EFFECT_SEARCH_GROWTH``: the whole
#: ``EFFECT_GRID`` when they pass one of ``EFFECT_GRID_AT``, else ``EFFECT_STEPS`` around the
#: current effects; each candidate refitted ``EFFECT_EM_STEPS`` EM steps, the most likely
#: winning by ``EFFECT_MARGIN`` log-likelihood units. Other refits keep the cell's effects.
#: From 15,000 requests rather than 20,000 most crowd markets gained a little, none lost more
#: than 0.001 of the oracle; from 10,000 the likelihood itself can favour the wrong side of
#: the (σ, d) ridge, where the cell then stays (docs/design.md, "Per-request effects").
EFFECT_FROM_REQUESTS = 15_000.0
EFFECT_SEARCH_GROWTH = 1.5
EFFECT_GRID_AT = (15_000.0, 30_000.0, 100_000.0)
EFFECT_GRID = tuple((s, d) for s in (0.0, 0.2, 0.4, 0.6) for d in (0.0, 0.4, 0.8, 1.2))
EFFECT_STEPS = ((0.1, 0.0), (-0.1, 0.0), (0.0, 0.25), (0.0, -0.25))
EFFECT_LIMITS = (0.8, 2.0)
EFFECT_EM_STEPS = 20
EFFECT_MARGIN = 2.0
#: Seed of the fixed standard normals behind the curve draws.
NORMALS_SEED = 20261202


def effect_candidates(
    shock_sd: float, dispersion: float, previous: float, requests: float
) -> list[tuple[float, float]] | None:
    """Per-request effects to try against the current (``shock_sd``, ``dispersion``) at a
    refit of a cell whose own requests went from ``previous`` (at its last fit) to
    ``requests``: None when no search is due (module constants), the whole ``EFFECT_GRID``
    at one of ``EFFECT_GRID_AT``, else ``EFFECT_STEPS`` around them within ``EFFECT_LIMITS``."""
    if requests < EFFECT_FROM_REQUESTS:
        return None
    if any(previous < m <= requests for m in EFFECT_GRID_AT):
        return [c for c in EFFECT_GRID if c != (shock_sd, dispersion)]
    step = lambda n: math.floor(math.log(n / EFFECT_FROM_REQUESTS) / math.log(EFFECT_SEARCH_GROWTH))  # noqa: E731
    if previous >= EFFECT_FROM_REQUESTS and step(requests) <= step(previous):
        return None
    steps = [(round(shock_sd + a, 3), round(dispersion + b, 3)) for a, b in EFFECT_STEPS]
    return [(a, b) for a, b in steps if 0.0 <= a <= EFFECT_LIMITS[0] and 0.0 <= b <= EFFECT_LIMITS[1]]


@dataclass(frozen=True, slots=True)
class NetworkDraws:
    """One network's posterior draws in one segment: best log floor and its revenue [M] each,
    the fitted mixture curve, the auction type used and the confidence in it."""

    log_floor: NDArray[np.float64]
    value: NDArray[np.float64]
    model: RevenueCurve | ResponsiveCurve
    second_price: bool
    auction_confidence: float
    #: sd of the log-normal jitter around the chosen floors (:func:`bandit.curve.affordable_jitter`).
    floor_log_sd: float
    #: The bootstrap refits [BOOTSTRAP_DRAWS]: their parameters, and the first-price shadings
    #: drawn for them (None for second price). Waterfall and auction plans use them.
    boot: GmmParams | None = None
    boot_shading: NDArray[np.float64] | None = None
    #: A second-price network with a single bidder (:func:`bandit.gmm.is_single_bidder`).
    single_bid: bool = False


def bid_curves(
    draws: GmmParams, second: bool, shading: NDArray[np.float64] | None, single_bid: bool = False
) -> RevenueCurve | ResponsiveCurve:
    """The curves of bootstrap draws: floor-responsive first price with ``shading`` [D]."""
    curves = RevenueCurve.of(draws, second, single_bid)
    return curves if shading is None else ResponsiveCurve(curves, shading)


@dataclass(frozen=True, slots=True)
class BatchCells:
    """A batch's C (segment, network) cells, in order of segment then network: each event's
    cell ``index`` [n] in [0, C); per cell [C] its batch ``segment`` (index into
    ``batch.segments``), ``network``, event ``count`` and ``key`` in the statistics
    (``row * n_networks + network``; -1 for a segment they have not seen yet)."""

    index: NDArray[np.int64]
    segment: NDArray[np.int64]
    network: NDArray[np.int64]
    count: NDArray[np.int64]
    key: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.key)


@dataclass(slots=True)
class BatchLevels:
    """The served hour-of-day levels of a batch's segments while the batch is learned: per
    statistics row of ``rows`` [R] (distinct, sorted; -1 for segments not seen yet, served at
    level 0) the served log levels ``served`` [R, N, 24] and the strength [R] of the segment's
    common level in them (:func:`bandit.season.segment_levels`); each batch cell's place among
    the rows ``cell_row`` [C]. Kept across the steps of one update, a row recomputed only when
    its cells' own levels or events move."""

    rows: NDArray[np.int64]
    cell_row: NDArray[np.int64]
    served: NDArray[np.float64]
    strength: NDArray[np.float64]

    def of_events(self, cells: BatchCells, hours: NDArray[np.int64]) -> NDArray[np.float64]:
        """Each event's served log level [n], at its cell and hour of day ``hours`` [n]."""
        at = (self.cell_row * self.served.shape[1] + cells.network) * HOURS_PER_DAY  # [C]
        return self.served.reshape(-1)[at[cells.index] + hours]

    def of_cells(self, cells: BatchCells, which: NDArray[np.bool_]) -> NDArray[np.float64]:
        """Served log levels [k, 24] of the batch cells ``which`` [C] (k of them)."""
        return self.served[self.cell_row[which], cells.network[which]]


class CellArrays:
    """Per-cell learned values ``[cells, *shape]`` indexed by the statistics' cell key
    (``row * n_networks + network``): zero until set, growing by doubling as cells appear."""

    def __init__(self, *shape: int) -> None:
        self.values = np.zeros((0, *shape))

    def get(self, keys: NDArray[np.int64]) -> NDArray[np.float64]:
        """Values ``[k, *shape]`` of ``keys`` [k] (a copy; zeros for keys never set or < 0)."""
        inside = (keys >= 0) & (keys < len(self.values))
        if inside.all():
            return np.take(self.values, keys, axis=0)  # one gather (the common case)
        out = np.zeros((len(keys), *self.values.shape[1:]))
        out[inside] = np.take(self.values, keys[inside], axis=0)
        return out

    def at(self, keys: NDArray[np.int64], column: NDArray[np.int64]) -> NDArray[np.float64]:
        """``values[keys[i], column[i]]`` [n] (0 for keys never set or < 0)."""
        inside = (keys >= 0) & (keys < len(self.values))
        if inside.all():
            return self.values[keys, column]
        out = np.zeros(len(keys))
        out[inside] = self.values[keys[inside], column[inside]]
        return out

    def set(self, keys: NDArray[np.int64], values: NDArray[np.float64]) -> None:
        if len(keys) == 0:
            return
        need = int(keys.max()) + 1
        if need > len(self.values):
            grown = np.zeros((max(need, 2 * len(self.values)), *self.values.shape[1:]))
            grown[: len(self.values)] = self.values
            self.values = grown
        self.values[keys] = values

    def state(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Keys [k] of the cells holding a value other than zero, and their values ``[k, *shape]``."""
        held = np.flatnonzero((self.values != 0).any(axis=tuple(range(1, self.values.ndim))))
        return held, self.values[held].copy()


#: Exploration probability of a network that (almost) never fills at its floors.
TRAPPED_EXPLORE = 0.3


def exploration_probability(base: float, stats: NDArray[np.float64], trapped_fill: float = 0.1) -> float:
    """Probability of a lower exploration floor for one network given its statistics [F, B].

    ``base`` normally; rising to ``TRAPPED_EXPLORE`` as the (discounted) fill rate falls
    below ``trapped_fill``: a network that almost never fills earns almost nothing at its
    current floors, so trying lower ones costs nothing and is the way out of the trap.
    """
    requests = stats[REQUESTS].sum()
    if requests < 1.0:
        return base
    fill = stats[FILLS].sum() / requests
    return base + (TRAPPED_EXPLORE - base) * max(0.0, 1.0 - fill / trapped_fill)


class ThompsonGmmPolicy(Policy):
    """TS + censored GMM. Hyperparameters (all plain numbers, kept as given):

    - ``n_components``: mixture components per network (K);
    - ``n_draws``: posterior draws of each network's revenue curve (M);
    - ``prior_strength``: pseudo-requests of the mixture's weak prior;
    - ``model_doubt``: typical relative misfit of the mixture's revenue curve; the misfit's
      prior sd is chosen per cell by marginal likelihood among 0.1–2 × this value
      (how far the binned evidence may pull the curve away from the mixture);
    - ``curve_length``: correlation length of that correction in log floor;
    - ``floor_jitter``: largest sd of the log-normal jitter around each chosen floor
      (exploration in both directions, and a floor density for off-policy evaluation); a
      network whose revenue peaks sharply gets less, so the jitter costs at most
      ``JITTER_LOSS`` of its best revenue;
    - ``explore_floor``: base probability of a lower floor (rises when a network stops filling);
    - ``explore_network``: share of traffic spread evenly over all networks;
    - ``typical_cpm``: prior centre of bid values (default: geometric middle of the bounds);
    - ``half_life_hours``: time discounting of all statistics (event time);
    - ``change_threshold``: CUSUM threshold of the change detector (0 turns it off; with it
      off, the state does not depend on batch order at all);
    - ``change_forget``: share of a cell's history kept when a change is detected;
    - ``level_events``: events of an hour of day that move its value level half-way
      (:mod:`bandit.season`; 0 turns hour-of-day levels off);
    - ``refit_share`` / ``refit_max_age_s``: a (segment, network) cell's table row is refit
      once its new events reach this share of its weight, or this many seconds of event time
      after its last fit (a change detected refits it at once); until then it serves the
      row of its last fit. 0 refits every touched cell at each refresh;
    - ``pool_fields``: 1 predicts each segment's prior from its context fields across
      segments (:mod:`bandit.pooling`), 0 pools every segment toward the flat placement level.
    """

    name = "ts_gmm"
    modes = MODES

    def __init__(
        self,
        placement: PlacementConfig,
        *,
        n_components: int = 3,
        n_draws: int = 128,
        prior_strength: float = 2.0,
        model_doubt: float = 0.2,
        curve_length: float = 0.4,
        floor_jitter: float = 0.15,
        explore_floor: float = 0.0,
        explore_network: float = 0.003,
        typical_cpm: float | None = None,
        half_life_hours: float = 48.0,
        change_threshold: float = 12.0,
        change_forget: float = 0.05,
        level_events: float = LEVEL_EVENTS,
        refit_share: float = 0.05,
        refit_max_age_s: float = 900.0,
        pool_fields: int = 1,
        seed: int | None = None,
    ) -> None:
        checked = check_params(
            self.name,
            dict(
                n_components=n_components,
                n_draws=n_draws,
                prior_strength=prior_strength,
                model_doubt=model_doubt,
                curve_length=curve_length,
                floor_jitter=floor_jitter,
                explore_floor=explore_floor,
                explore_network=explore_network,
                typical_cpm=typical_cpm,
                change_threshold=change_threshold,
                change_forget=change_forget,
                level_events=level_events,
                refit_share=refit_share,
                refit_max_age_s=refit_max_age_s,
                pool_fields=pool_fields,
            ),
        )
        self.n_components = checked["n_components"]
        self.n_draws = checked["n_draws"]
        self.prior_strength = checked["prior_strength"]
        self.model_doubt = checked["model_doubt"]
        self.curve_length = checked["curve_length"]
        self.floor_jitter = checked["floor_jitter"]
        self.explore_floor = checked["explore_floor"]
        self.explore_network = checked["explore_network"]
        self.typical_cpm = checked["typical_cpm"]
        self.change_threshold = checked["change_threshold"]
        self.change_forget = checked["change_forget"]
        self.level_events = checked["level_events"]
        self.refit_share = checked["refit_share"]
        self.refit_max_age_s = checked["refit_max_age_s"]
        self.pool_fields = checked["pool_fields"]
        self.changes_detected = 0
        self._alarms: deque[ChangeAlarm] = deque(maxlen=MAX_ALARMS)  # not part of the state: taken by the service
        self._pending: dict[tuple[str, int], float] = {}  # events learned since the cell's last fit
        self._fitted: dict[tuple[str, int], tuple[float, float]] = {}  # (t_ref, requests) at the last fit
        self._values: dict[str, NDArray[np.float32]] = {}  # best-revenue draws [M, N] per table
        # Each cell's last fit, packed (GmmParams.pack: one small array, not four, ~450 B
        # less per cell); read with :meth:`_fit_of`.
        self._fits: dict[tuple[str, int], NDArray[np.float64]] = {}
        #: Waterfall/auction placements: each cell's bootstrap draws as last refit (params, second
        #: price, shadings, single bidder), so a refresh refits only the cells due and plans over
        #: all networks.
        #: Derived, not persisted: a cell missing here is refit at the next refresh.
        self._boots: dict[tuple[str, int], tuple[GmmParams, bool, NDArray[np.float64] | None, bool]] = {}
        self._cusum = CellArrays(2)  # (upper, lower) CUSUM per statistics cell
        self._recent = SufficientStats(len(placement.networks), RECENT_HALF_LIFE_HOURS * 3600.0, floor_only=True)
        self._levels = CellArrays(HOURS_PER_DAY)  # log hour-of-day levels per statistics cell
        self._level_events = CellArrays(HOURS_PER_DAY)  # events compared per cell and hour
        self._batch_span = 0.0  # seconds of event time the last batch covered
        self._saved_recent_segments = 0  # segments of the recent history at the last checkpoint
        # Each cell's refits draw from their own generator (see _cell_rng), so a cell's draws do
        # not depend on which cells were refit before it, or in what order.
        self._fit_base = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self._z: dict[tuple[int, int], NDArray[np.float64]] = {}
        self._doubts = self.model_doubt * DOUBT_STEPS
        self._grids = [floor_grid(n.floor_min_cpm, n.floor_max_cpm) for n in placement.networks]
        self._log_bounds = np.array([log_bounds(n.floor_min_cpm, n.floor_max_cpm) for n in placement.networks])
        super().__init__(
            placement,
            half_life_hours=half_life_hours,
            seed=seed,
            n_components=self.n_components,
            n_draws=self.n_draws,
            prior_strength=self.prior_strength,
            model_doubt=self.model_doubt,
            curve_length=self.curve_length,
            floor_jitter=self.floor_jitter,
            explore_floor=self.explore_floor,
            explore_network=self.explore_network,
            typical_cpm=typical_cpm,
            change_threshold=self.change_threshold,
            change_forget=self.change_forget,
            level_events=self.level_events,
            refit_share=self.refit_share,
            refit_max_age_s=self.refit_max_age_s,
            pool_fields=self.pool_fields,
        )

    # ----------------------------------------------------------------- modelling
    def _prior(self, network: int, n_draws: int = 1, rng: np.random.Generator | None = None) -> Prior:
        cfg = self.placement.networks[network]
        typical = self.typical_cpm or math.sqrt(max(cfg.floor_min_cpm, 0.1) * max(cfg.floor_max_cpm, 0.2))
        k = self.n_components
        center = math.log(typical) + np.linspace(-1.0, 1.0, k) * (1.0 if k > 1 else 0.0)
        center = np.broadcast_to(center, (n_draws, k)).copy()
        if rng is not None:
            # Randomised prior: each draw's prior centre moves, so draws differ even without data.
            center += rng.normal(0.0, 0.75, size=(n_draws, 1))
        return Prior(lam0=2.0, center=center, spread=1.0, strength=self.prior_strength)

    def update(self, events, *, refresh: bool = True) -> list[str]:
        """Learn from outcome events; first check each (segment, network) for a change.

        Every step works on all the batch's cells at once (numpy over its events and cells)."""
        batch = as_event_batch(self.placement, events)
        if len(batch) == 0:
            return super().update(batch, refresh=refresh)
        cells = self._cells(batch)
        hours = hour_of_day(batch.ts)
        # The batch's segments' served hour-of-day levels, and each event's level before this
        # batch is learned (1 without levels).
        levels = self._batch_levels(cells) if self.level_events > 0 else None
        scale = None if levels is None else np.exp(levels.of_events(cells, hours))
        alarmed = np.zeros(len(cells), dtype=bool)
        # The statistics' (requests, revenue) [n, 2] at each event's floor bin in base-market
        # units: read by the change detector where it compares with them (NaN elsewhere), and
        # by the hour levels for the rest of the events they learn from.
        base = None if levels is None else np.full((len(batch), 2), np.nan)
        if self.change_threshold > 0:
            alarmed = self._detect_changes(batch, cells, scale, base)
            self._recent.add(batch)
        if levels is not None:
            self._relevel(levels, alarmed)  # the levels of cells where a change was detected start over
            batch = self._deflate(batch, cells, hours, levels, scale, base, alarmed)
            self._batch_span = float(batch.ts.max() - batch.ts.min())
        self._mark_pending(batch, cells, alarmed)
        return super().update(batch, refresh=refresh)

    def _mark_pending(self, batch: EventBatch, cells: BatchCells, alarmed: NDArray[np.bool_]) -> None:
        """Count the batch's events per cell (and per network at the placement level) as not yet
        reflected in the tables; a cell where a change was detected (``alarmed`` [C]) is due at once."""
        pending = self._pending
        names = batch.segments
        # One pass per step over the batch's cells (C loops: a large batch has ~10^5 cells).
        keys = list(zip(map(names.__getitem__, cells.segment.tolist()), cells.network.tolist(), strict=True))
        before = np.fromiter(map(pending.get, keys, repeat(0.0)), np.float64, len(keys))
        pending.update(zip(keys, (before + cells.count).tolist(), strict=True))
        for j, n in enumerate(np.bincount(batch.network, minlength=len(self.placement.networks)).tolist()):
            if n:
                pending[(ALL_SEGMENTS, j)] = pending.get((ALL_SEGMENTS, j), 0.0) + n
        for s, j in zip(cells.segment[alarmed].tolist(), cells.network[alarmed].tolist(), strict=True):
            pending[(names[s], j)] = math.inf

    def _cells(self, batch: EventBatch) -> BatchCells:
        """The (segment, network) cells of a batch and their keys in the statistics."""
        n_net = len(self.placement.networks)
        ids, index = distinct(batch.segment_index * n_net + batch.network, len(batch.segments) * n_net)
        count = np.bincount(index, minlength=len(ids))
        segment, network = np.divmod(ids, n_net)
        rows = self.stats.rows_of(batch.segments)[segment]
        return BatchCells(index, segment, network, count, np.where(rows >= 0, rows * n_net + network, -1))

    def _deflate(
        self,
        batch: EventBatch,
        cells: BatchCells,
        hours: NDArray[np.int64],
        levels: BatchLevels,
        before: NDArray[np.float64],
        base: NDArray[np.float64],
        alarmed: NDArray[np.bool_],
    ) -> EventBatch:
        """Learn each cell's hour-of-day value levels from the batch (``levels``: the served
        levels of its segments, brought forward; ``before`` [n]: each event's level so far;
        ``base`` [n, 2]: the statistics' requests and revenue at the event's floor bin in
        base-market units, NaN where not read yet), and return the batch in base-market units
        (floors and revenues divided by their hour's new level; see :mod:`bandit.season`).
        Cells in ``alarmed`` [C] (a change was just detected) keep their levels: the break is
        the base market's to learn."""
        learn = (cells.key >= 0) & ~alarmed  # [C]; a segment not seen yet has nothing to compare with
        events = learn[cells.index]
        if events.any():
            unread = events & np.isnan(base[:, 0])
            if unread.any():
                base[unread] = self.stats.values_at(
                    cells.key[cells.index[unread]],
                    deflated_bin(batch.floor_cpm[unread], before[unread]),
                    (REQUESTS, REVENUE),
                )
            cell = cells.index[events]
            before_e = before[events]
            base_e = base[events]
            expected = expected_at(base_e[:, 0], base_e[:, 1], before_e)
            # Only cells with an event the statistics have an expectation for learn (the others
            # keep their levels and counts as they are): read and written are those cells alone.
            known = np.isfinite(expected)
            compared = np.zeros(len(cells), dtype=bool)
            compared[cell[known]] = True
            if compared.any():
                keys = cells.key[compared]
                local = (np.cumsum(compared) - 1)[cell[known]]  # each known event's place among them
                known_hours = hours[events][known]
                learned = update_cell_levels(
                    self._levels.get(keys),
                    local,
                    known_hours,
                    batch.revenue_cpm[events][known],
                    expected[known],
                    self.level_events,
                    served=levels.of_cells(cells, compared),
                    # A plan scales every tier's floor by its level: levels there move at the memory
                    # rate from the start (running means of a first day's events, learned against a
                    # base still moving, cost waterfall_8 1.5% of the oracle).
                    seen=None if self.placement.mode != "single" else self._level_events.get(keys),
                )
                self._levels.set(keys, learned)
                self._level_events.set(keys, count_level_events(self._level_events.get(keys), local, known_hours))
                self._relevel(levels, compared)
        scale = np.exp(levels.of_events(cells, hours))
        return replace(
            batch, floor_cpm=batch.floor_cpm / scale, revenue_cpm=batch.revenue_cpm / scale, cpm_per_unit=scale
        )

    def _served_log_levels(self, row: int | None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The log value levels [N] of a statistics row's networks for the decisions its table
        will serve (zeros without levels; see :meth:`_cell_levels`), and their posterior sds [N]
        (:func:`bandit.season.level_sd`).

        A table serves from the newest event learned until the next update, so levels are
        read half a batch span after that event, interpolated between hour centres.
        """
        n_net = len(self.placement.networks)
        if row is None or not math.isfinite(self.stats.t_ref) or self.level_events <= 0:
            return np.zeros(n_net), np.zeros(n_net)
        keys = row * n_net + np.arange(n_net)
        at = self.stats.t_ref + 0.5 * self._batch_span
        levels, strength = self._cell_levels(keys)
        events = np.array([level_at(x, at) for x in self._level_events.get(keys)])
        return np.array([level_at(x, at) for x in levels]), level_sd(events, strength)

    def _cell_levels(self, keys: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The log levels [k, 24] cells ``keys`` [k] are served and learned at: each network's
        own level shrunk toward its segment's common one (:func:`bandit.season.shrunk_levels`)
        with the segment's strength [k] (:func:`bandit.season.deviation_strength`); zeros for
        keys < 0."""
        n_net = len(self.placement.networks)
        rows, inverse = np.unique(np.where(keys >= 0, keys // n_net, -1), return_inverse=True)
        served, strength = self._row_levels(rows)
        inverse = inverse.reshape(-1)
        return served[inverse, np.maximum(keys, 0) % n_net], strength[inverse]

    def _row_levels(self, rows: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Served log levels [R, N, 24] of the networks of statistics rows ``rows`` [R] (zeros for
        rows < 0) and their segments' strengths [R] (:func:`bandit.season.segment_levels`)."""
        n_net = len(self.placement.networks)
        keys = (rows[:, None] * n_net + np.arange(n_net)).reshape(-1)
        keys[np.repeat(rows < 0, n_net)] = -1
        shape = (len(rows), n_net, HOURS_PER_DAY)
        return segment_levels(self._levels.get(keys).reshape(shape), self._level_events.get(keys).reshape(shape))

    def _batch_levels(self, cells: BatchCells) -> BatchLevels:
        """The served levels of the segments of a batch's cells (:class:`BatchLevels`)."""
        n_net = len(self.placement.networks)
        shifted, cell_row = distinct(np.where(cells.key >= 0, cells.key // n_net + 1, 0), len(self.stats.segments) + 1)
        rows = shifted - 1
        return BatchLevels(rows, cell_row, *self._row_levels(rows))

    def _relevel(self, levels: BatchLevels, moved: NDArray[np.bool_]) -> None:
        """Recompute ``levels`` of the segments of the batch cells ``moved`` [C] (their own levels
        or events changed; a segment's served levels depend on all its networks')."""
        stale = np.flatnonzero(np.bincount(levels.cell_row[moved], minlength=len(levels.rows)))
        if len(stale):
            levels.served[stale], levels.strength[stale] = self._row_levels(levels.rows[stale])

    def _detect_changes(
        self,
        batch: EventBatch,
        cells: BatchCells,
        scale: NDArray[np.float64] | None,
        base: NDArray[np.float64] | None = None,
    ) -> NDArray[np.bool_]:
        """Compare each cell's batch with its own history at the same floor bins (model-free,
        so a model still learning about new floors is never mistaken for a change); returns
        the cells [C] where a change was detected.

        The history compared with is the cell's *recent* history (``RECENT_HALF_LIFE_HOURS``):
        like with like under a daily cycle, which moves prices a few percent an hour, while a
        break moves them at once. A cell without enough recent data at those floors falls
        back to its whole (discounted) history, compared in base-market units (the batch
        divided by its hour-of-day levels ``scale`` [n], as the statistics hold it); the
        requests and revenue read there are written into the rows of those events of ``base``
        [n, 2] (when given), for the hour levels.
        """
        n_net, n_cells = len(self.placement.networks), len(cells)
        alarmed = np.zeros(n_cells, dtype=bool)
        # A segment the statistics have not seen has no history, and every comparison needs
        # MIN_EVENTS of the cell's events (most cells of a small batch over many have one).
        compared = (cells.key >= 0) & (cells.count >= MIN_EVENTS)
        if not compared.any():
            return alarmed
        recent_rows = self._recent.rows_of(batch.segments)[cells.segment]
        recent_key = np.where(compared & (recent_rows >= 0), recent_rows * n_net + cells.network, -1)
        bins = price_bin(log_price(batch.floor_cpm))
        z = np.full(n_cells, np.nan)
        rel = np.full(n_cells, np.nan)
        if (recent_key >= 0).any():
            events = (recent_key >= 0)[cells.index]
            decay = decay_factor(float(batch.ts.min()) - self._recent.t_ref, self._recent.half_life_seconds)
            history = FloorHistory.of_stats(self._recent, recent_key, cells.index[events], bins[events], decay)
            z, rel = batch_deviations(
                cells.index[events], n_cells, history, batch.filled[events], batch.revenue_cpm[events]
            )
        fallback = compared & np.isnan(z)
        if fallback.any():
            events = fallback[cells.index]
            floor, revenue = batch.floor_cpm[events], batch.revenue_cpm[events]
            if scale is not None:
                floor, revenue = floor / scale[events], revenue / scale[events]
            history = FloorHistory.of_stats(self.stats, cells.key, cells.index[events], price_bin(log_price(floor)))
            if base is not None:
                base[events] = np.stack([history.requests, history.revenue], axis=1)
            z_all, rel_all = batch_deviations(cells.index[events], n_cells, history, batch.filled[events], revenue)
            z[fallback], rel[fallback] = z_all[fallback], rel_all[fallback]
        seen = np.flatnonzero(~np.isnan(z))
        keys = cells.key[seen]
        state = cusum_step(self._cusum.get(keys), z[seen], slack=3.0)
        alarm = (state.max(axis=1) > self.change_threshold) & (np.abs(rel[seen]) > CHANGE_GATE)
        if alarm.any():
            hit = seen[alarm]
            # Keep at most ``change_forget`` of the history, and never more than the batch that
            # showed the change: the new market must outweigh the old at once.
            history_requests = self.stats.cell_totals(cells.key[hit])[:, REQUESTS]
            keep = np.minimum(self.change_forget, cells.count[hit] / np.maximum(history_requests, 1.0))
            forgets = zip(cells.key[hit].tolist(), recent_key[hit].tolist(), keep.tolist(), strict=True)
            for key, recent, factor in forgets:
                self.stats.scale_cell(*divmod(key, n_net), factor)
                if recent >= 0:
                    self._recent.scale_cell(*divmod(recent, n_net), 0.0)
            # The hour-of-day levels start over (from the segment's common ones) and do not learn
            # from this batch: the batches before the break was detected taught them part of it
            # as if it were the hour's, and it belongs to the base market, which has just
            # forgotten its history.
            zeros = np.zeros((len(hit), HOURS_PER_DAY))
            self._levels.set(cells.key[hit], zeros)
            self._level_events.set(cells.key[hit], zeros)
            alarmed[hit] = True
            self.changes_detected += len(hit)
            t_batch, names = float(batch.ts.max()), self.placement.network_ids
            for c in hit.tolist():
                segment, network = batch.segments[cells.segment[c]], names[cells.network[c]]
                self._alarms.append(ChangeAlarm(t_batch, segment, network, float(rel[c])))
            state[alarm] = 0.0
        self._cusum.set(keys, state)
        return alarmed

    def take_alarms(self) -> list[ChangeAlarm]:
        alarms = list(self._alarms)
        self._alarms.clear()
        return alarms

    def refresh(self, segments=()) -> None:
        """Refit the due networks of ``segments`` and of the placement level (see :meth:`_due`);
        cells not due yet stay pending (:meth:`pending_segments`)."""
        self._pool = SegmentPool.fit_stats(self.stats, len(self.placement.segment_by), fields=self.pool_fields == 1)
        pooled = self.stats.placement_level()
        for seg in dict.fromkeys([ALL_SEGMENTS, *segments]):
            row = None if seg == ALL_SEGMENTS else self.stats.segment_row(seg)
            if seg != ALL_SEGMENTS and row is None:
                continue
            due = self._due(seg)
            if due or seg not in self._tables:
                own = pooled if row is None else self.stats.segment_data(row)
                self._tables[seg] = self._finish(self._build_table(seg, own, pooled, due))
                for j in due:
                    self._pending.pop((seg, j), None)
                    self._fitted[(seg, j)] = (self.stats.t_ref, float(own[j, REQUESTS].sum()))

    def _due(self, segment: str) -> list[int]:
        """Networks of ``segment`` whose table rows must be refit now: new events of at least
        ``refit_share`` of the cell's weight at its last fit, or ``refit_max_age_s`` of event
        time since that fit (also: cells never fit, and cells where a change was detected)."""
        due = []
        for j in range(len(self.placement.networks)):
            pending = self._pending.get((segment, j), 0.0)
            fitted = self._fitted.get((segment, j))
            if fitted is None or (segment not in self._tables):
                due.append(j)
            elif pending > 0 and (
                pending >= self.refit_share * fitted[1] or self.stats.t_ref - fitted[0] >= self.refit_max_age_s
            ):
                due.append(j)
        return due

    def pending_segments(self) -> list[str]:
        """Segments with learned events their tables do not reflect yet (refit when due)."""
        return sorted({seg for seg, _ in self._pending if seg != ALL_SEGMENTS})

    def merge(self, other) -> None:
        for seg in other.stats.segments:
            for j in range(len(self.placement.networks)):
                self._pending[(seg, j)] = math.inf
        for j in range(len(self.placement.networks)):
            self._pending[(ALL_SEGMENTS, j)] = math.inf
        super().merge(other)

    def _network_draws(
        self, segment: str, network: int, stats: NDArray[np.float64], own_requests: float
    ) -> NetworkDraws:
        """Posterior draws of one network's revenue curve and their best floors, from its
        statistics ``stats`` [F, B] (a segment's with the pooled prior) and the cell's own
        requests."""
        cfg = self.placement.networks[network]
        auction, confidence = detect_auction(stats, cfg.auction)
        second = auction == "second"
        single = second and is_single_bidder(stats)
        data = censored_data(stats, second, single, self._data_shading(segment, network, stats, second))
        prior = self._prior(network)
        # Warm start: this cell's last fit, else the placement level's (a segment is a
        # perturbation of it), else the prior. Later updates keep refining from here.
        start = self._fit_of(segment, network)
        if start is None:
            start = self._fit_of(ALL_SEGMENTS, network)
        crowd = second and not single
        if start is not None:
            if not crowd:  # the effects describe a second-price crowd only
                start = start.with_effects(0.0, 0.0)
            mle = fit(data, start, prior, max_iter=WARM_EM_STEPS, tol=1e-5)
        else:
            mle = fit(data, initial_params(prior), prior, max_iter=200, tol=1e-5)
        if crowd:
            fitted = self._fitted.get((segment, network))
            previous = 0.0 if fitted is None else fitted[1]
            candidates = effect_candidates(mle.shock_sd, mle.dispersion, previous, own_requests)
            if candidates is not None:
                mle = fit_effects(data, mle, prior, candidates, em_steps=EFFECT_EM_STEPS, margin=EFFECT_MARGIN)
        self._fits[(segment, network)] = mle.pack()[0]
        # Parametric uncertainty: Bayesian-bootstrap refits of the mixture (a randomised prior
        # keeps them apart while data are few).
        rng = self._cell_rng(segment, network)
        boot = data.reweighted(rng, BOOTSTRAP_DRAWS)
        boot_prior = self._prior(network, BOOTSTRAP_DRAWS, rng)
        draws = fit(boot, mle.repeat(BOOTSTRAP_DRAWS), boot_prior, max_iter=BOOTSTRAP_EM_STEPS)
        # Misfit: the mixture curves are the prior means of a GP correction from binned revenue.
        grid = self._grids[network]
        lo, hi = log_bounds(cfg.floor_min_cpm, cfg.floor_max_cpm)
        model = RevenueCurve.of(mle, second, single)
        # The misfit is judged on the revenue as observed; the correction follows the revenue
        # read through the fills where that is exact (second price, a crowd of bidders).
        observed_evidence = BinnedEvidence.of(stats, lo, hi)
        evidence = observed_evidence
        if second and not single:
            evidence = BinnedEvidence.of(stats, lo, hi, price_above=model.price_above(LOG_CENTERS[None, :])[0])
        boot_shading = None
        if not second:
            # First price: bidders may respond to the floor (bid at least it when their value
            # clears it); each bootstrap draw takes a shading from its posterior.
            response = shading_posterior(stats, model)
            model = ResponsiveCurve(model, RESPONSE_SHADINGS[[int(np.argmax(response))]])
            boot_shading = rng.choice(RESPONSE_SHADINGS, BOOTSTRAP_DRAWS, p=response)
        boot_curves = bid_curves(draws, second, boot_shading, single)
        prior_grid = model.revenue(grid[None, :])[0]
        prior_at = model.revenue(evidence.log_floor[None, :])[0]
        requests = float(stats[REQUESTS].sum())
        observed = float(stats[REVENUE].sum()) / requests if requests > 0 else 0.0
        # The misfit is relative to the curve, with a floor where the curve says ~0.
        base = CURVE_FLOOR * max(float(prior_grid.max()), observed, 1e-3)
        scale_grid, scale_at = prior_grid + base, prior_at + base
        corr = se_kernel(evidence.log_floor, evidence.log_floor, self.curve_length) * np.outer(scale_at, scale_at)
        doubt = choose_doubt(observed_evidence.mean - prior_at, corr, observed_evidence.variance, self._doubts)
        posterior = curve_posterior(grid, evidence, scale_grid, scale_at, doubt, self.curve_length)
        m = self.n_draws
        pick = np.arange(m) % BOOTSTRAP_DRAWS
        boot_grid = boot_curves.revenue(np.broadcast_to(grid, (BOOTSTRAP_DRAWS, len(grid))))
        boot_at = boot_curves.revenue(np.broadcast_to(evidence.log_floor, (BOOTSTRAP_DRAWS, len(evidence.log_floor))))
        means = posterior.mean(boot_grid, boot_at)  # [BOOTSTRAP_DRAWS, G]
        curves = means[pick] + self._normals(network, len(grid)) @ posterior.chol.T
        best_x, best_value = best_on_grid(grid, curves)
        if requests >= SHARPEN_AFTER_REQUESTS:
            best_x = best_on_grid(grid, sharpened(curves, SHARPEN_DRAWS))[0]
        jitter = affordable_jitter(grid, means.mean(axis=0), self.floor_jitter, JITTER_LOSS)
        jitter = max(jitter, JITTER_MIN_SHARE * self.floor_jitter)
        # Never surer of the best revenue than the revenue observed around the best floor
        # allows (a model that fits its data can still be wrong there): widen the draws to
        # that standard error, keeping their mean.
        se = empirical_se(stats, float(np.median(best_x)), self.curve_length / 2)
        spread = float(best_value.std())
        if se > spread:
            z = self._normals(network, len(grid))[:, 0]
            best_value = best_value + math.sqrt(se**2 - spread**2) * (z - z.mean()) / max(z.std(), 1e-12)
        return NetworkDraws(best_x, best_value, model, second, confidence, jitter, draws, boot_shading, single)

    def _data_shading(self, segment: str, network: int, stats: NDArray[np.float64], second: bool) -> float:
        """The floor response a first-price network's observations are read under
        (:func:`bandit.gmm.censored_data`): the most probable shading under the cell's last
        fit (1 before it has one). Read as plain bids, a responsive network's at-floor fills
        and no-fills put its bids too high: on ``waterfall_responsive`` its revenue at 3 CPM
        came out twice the truth, so it was tiered too early and floored too high (10 seeds:
        0.984 → 0.991 over the run, last fifth 0.990 → 0.998); on ``ood_responsive`` its
        revenue 30% above the truth wherever the binned evidence did not reach, so floors
        were drawn into the gaps between the floors tried (10 seeds, the at-floor fills read
        spread over [s·f, f): 0.989 → 0.990 over the run, the first tenth's floor regret
        3.9% → 2.4%)."""
        start = self._fit_of(segment, network)
        if second or start is None:
            return 1.0
        response = shading_posterior(stats, RevenueCurve.of(start, False, False))
        return float(RESPONSE_SHADINGS[int(np.argmax(response))])

    def _fit_of(self, segment: str, network: int) -> GmmParams | None:
        """A cell's last mixture fit, or None."""
        packed = self._fits.get((segment, network))
        return None if packed is None else GmmParams.unpack(packed)

    def _cell_rng(self, segment: str, network: int) -> np.random.Generator:
        """The generator of one cell's bootstrap refit: seeded by the policy seed, the segment,
        the network and the newest event time learned — fresh numbers at each refit, and
        independent of the order in which cells are refit, so a policy that learned events in
        one process and one that merged them from workers refit every cell alike."""
        t = int(self.stats.t_ref) if math.isfinite(self.stats.t_ref) else 0
        return np.random.default_rng([self._fit_base, zlib.crc32(segment.encode()), network, t])

    def _level_normals(self) -> NDArray[np.float64]:
        """Fixed standard normals [M, N]: each draw's deviation of the networks' levels."""
        n_net = len(self.placement.networks)
        return self._normals(n_net, n_net)  # keyed past the last network

    def _normals(self, network: int, size: int) -> NDArray[np.float64]:
        """Fixed standard normals [M, G] of one network (common random numbers across refreshes)."""
        key = (network, size)
        if key not in self._z:
            self._z[key] = np.random.default_rng([NORMALS_SEED, network]).standard_normal((self.n_draws, size))
        return self._z[key]

    def _build_table(
        self,
        segment: str,
        stats: NDArray[np.float64],
        pooled: NDArray[np.float64],
        networks: list[int] | None = None,
    ) -> SegmentTable:
        """The segment's table with ``networks`` (default all) refit; the other networks keep
        their rows of the current table and their cached best-revenue draws."""
        n_net = len(self.placement.networks)
        old = self._tables.get(segment)
        multi = self.placement.mode != "single"
        if networks is None or old is None or segment not in self._values:
            networks = list(range(n_net))
        if multi:  # a plan is optimised over all networks at once: refit those without draws
            networks = sorted(set(networks) | {j for j in range(n_net) if (segment, j) not in self._boots})
        own_requests = stats[:, REQUESTS].sum(axis=1)
        if segment != ALL_SEGMENTS:
            stats = stats + self._pool.prior(segment, stats, pooled)
        # Statistics hold the base market; the table serves the current hour's value level,
        # known as well as the network's own events at this hour show it.
        log_level, level_doubt = self._served_log_levels(self.stats.segment_row(segment))
        level = np.exp(log_level)
        values = self._values.get(segment)
        if values is None:
            values = self._values[segment] = np.zeros((self.n_draws, n_net), dtype=np.float32)
        width = MAX_FLOORS + len(EXPLORE_FACTORS)  # fixed: tables of all segments stack
        if old is not None and len(networks) < n_net:
            floors, probs, summary = old.floors.copy(), old.floor_probs.copy(), old.summary.copy()
            jitter = old.floor_log_sd.copy()
        else:
            floors, probs = np.zeros((n_net, width)), np.zeros((n_net, width))
            summary = np.zeros((n_net, len(SUMMARY_FIELDS)))
            jitter = np.full(n_net, self.floor_jitter)
        for j in networks:
            cfg, d = self.placement.networks[j], self._network_draws(segment, j, stats[j], float(own_requests[j]))
            if multi:
                self._boots[(segment, j)] = (d.boot, d.second_price, d.boot_shading, d.single_bid)
            values[:, j] = d.value
            jitter[j] = d.floor_log_sd
            best_j = d.value * level[j]
            log_floor = d.log_floor + math.log(level[j])
            grid_floors, grid_probs = floor_histogram(
                self._grids[j] + math.log(level[j]), log_floor, cfg.floor_min_cpm, cfg.floor_max_cpm, MAX_FLOORS
            )
            draw_floors = np.clip(np.exp(log_floor), cfg.floor_min_cpm, cfg.floor_max_cpm)
            f_mid = float(np.median(draw_floors))
            explore_p = exploration_probability(self.explore_floor, stats[j])
            explore = [cfg.clip_floor(f_mid * factor) for factor in EXPLORE_FACTORS]
            row_floors = np.concatenate([grid_floors, explore])
            row_probs = np.concatenate([(1 - explore_p) * grid_probs, np.full(len(explore), explore_p / len(explore))])
            floors[j] = np.pad(row_floors, (0, width - len(row_floors)), mode="edge")
            probs[j] = np.pad(row_probs, (0, width - len(row_probs))) / row_probs.sum()
            at = np.array([[math.log(max(f_mid, 1e-9))]])
            summary[j] = (
                f_mid,
                float(np.quantile(draw_floors, 0.1)),
                float(np.quantile(draw_floors, 0.9)),
                float(best_j.mean()),
                float(best_j.std()),
                float(d.model.fill_rate(at - math.log(level[j]))[0, 0]),
                AUCTION_CODES.index("second" if d.second_price else "first"),
                d.auction_confidence,
            )
        best = values.astype(np.float64) * level * np.exp(level_doubt * self._level_normals())  # [M, N]
        if shares_bind(self._lo, self._hi):
            weights = matched_shares(best, self._lo, self._hi)
        else:
            weights = prob_best_draws(best)
        if self.explore_network > 0:
            # Every network keeps a trickle of traffic: fresh data for the change detector,
            # so a network whose demand arrives (or returns) is noticed.
            weights = self._constrain((1 - self.explore_network) * weights + self.explore_network / n_net)
        plans = {}
        if multi:
            boots = [bid_curves(*self._boots[(segment, j)]) for j in range(n_net)]
            plan_tiers, plan_floors, plan_probs = self._plans(boots, level)
            plans = {"plan_tiers": plan_tiers, "plan_floors": plan_floors, "plan_probs": plan_probs}
            weights, summary = plan_summary(plan_tiers, plan_floors, plan_probs, summary)
        bins = price_bin(log_price(floors))
        return SegmentTable(
            weights,
            floors,
            probs,
            floor_bin_propensity(floors, probs, bins),
            summary,
            floor_log_sd=jitter,
            floor_bounds=self._log_bounds,
            **plans,
        )

    def _plans(self, boots: list, level: NDArray[np.float64]) -> tuple[NDArray, NDArray, NDArray]:
        """Waterfall or auction plans of a segment from its networks' bootstrap draws."""
        cfgs = self.placement.networks
        lo = np.array([c.floor_min_cpm for c in cfgs])
        hi = np.array([c.floor_max_cpm for c in cfgs])
        curves = pay_curves(boots, np.log(level).tolist(), allowed_floors(lo, hi), BOOTSTRAP_DRAWS)
        shares = (self._lo, self._hi) if shares_bind(self._lo, self._hi) else None
        mode = self.placement.mode
        tiers, floors, probs = plan_table(curves, mode, self.placement.depth, lo, hi, first_shares=shares)
        if mode == "auction":
            return explored_plans(tiers, floors, probs, AUCTION_EXPLORE, EXPLORE_FACTORS, lo, hi, self.placement.depth)
        return tiers, floors, probs

    # -------------------------------------------------------------------- state
    def _extra_state(self) -> dict[str, np.ndarray]:
        """Fits, refit bookkeeping, change detector and hour levels; per-segment entries in
        sorted order, so equal policies give equal states whatever the order they learned in."""
        segments = sorted({seg for seg, _ in self._fits})
        return {
            **self._derived(segments, sorted(self._pending), sorted(self._fitted), sorted(self._values)),
            **dict(zip(("drift_cells", "drift_cusum"), self._cusum.state(), strict=True)),
            **{f"recent_{k}": v for k, v in self._recent.state().items()},
            **dict(zip(("level_cells", "level_log"), self._levels.state(), strict=True)),
            **dict(zip(("level_event_cells", "level_events"), self._level_events.state(), strict=True)),
        }

    def _derived(
        self,
        fit_segments: list[str],
        pending: list[tuple[str, int]],
        fitted: list[tuple[str, int]],
        value_segments: list[str],
    ) -> dict[str, np.ndarray]:
        """The mixture fits of ``fit_segments`` (NaN rows for networks not fitted), the pending
        and fitted bookkeeping of the ``pending`` and ``fitted`` cells, the cached best-revenue
        draws of ``value_segments``, and the scalars."""
        n_net, m = len(self.placement.networks), self.n_draws
        packed = np.full((len(fit_segments), n_net, 3 + 3 * self.n_components), np.nan)
        for i, seg in enumerate(fit_segments):
            for j in range(n_net):
                p = self._fits.get((seg, j))
                if p is not None:
                    packed[i, j] = p
        return {
            "refit_pending_keys": np.array([s for s, _ in pending], dtype=np.str_),
            "refit_pending_networks": np.array([j for _, j in pending], dtype=np.int64),
            "refit_pending": np.array([self._pending[k] for k in pending], dtype=np.float64),
            "refit_fitted_keys": np.array([s for s, _ in fitted], dtype=np.str_),
            "refit_fitted_networks": np.array([j for _, j in fitted], dtype=np.int64),
            "refit_fitted": np.array([self._fitted[k] for k in fitted], dtype=np.float64).reshape(-1, 2),
            "refit_value_segments": np.array(value_segments, dtype=np.str_),
            "refit_values": np.array([self._values[s] for s in value_segments], dtype=np.float32).reshape(-1, m, n_net),
            "gmm_segments": np.array(fit_segments, dtype=np.str_),
            "gmm_params": packed,
            "gmm_fit_base": np.array(self._fit_base, dtype=np.uint64),
            "drift_meta": np.array(json.dumps({"changes_detected": self.changes_detected})),
            "level_batch_span": np.array(self._batch_span),
        }

    def _checkpoint_extra(self) -> None:
        self._recent.take_changes()
        self._saved_recent_segments = len(self._recent.segments)

    def _extra_changes(
        self, segments: list[str], rebuilt: list[str], cells: NDArray[np.int64]
    ) -> dict[str, np.ndarray]:
        """The pending events of ``segments`` (they change where statistics changed or a table
        was rebuilt); the fits, fitted bookkeeping and cached draws of the ``rebuilt`` ones
        (they change only when a table is built); the change detector and hour levels of the
        changed ``cells``; and the recent history's changes."""
        n_net = len(self.placement.networks)
        rebuilt = sorted(rebuilt)
        keys = [(seg, j) for seg in segments for j in range(n_net)]
        fitted = [(seg, j) for seg in rebuilt for j in range(n_net)]
        recent = self._recent.changed_state(self._recent.take_changes(), self._saved_recent_segments)
        self._saved_recent_segments = len(self._recent.segments)
        return {
            **self._derived(
                rebuilt,
                [k for k in keys if k in self._pending],
                [k for k in fitted if k in self._fitted],
                [seg for seg in rebuilt if seg in self._values],
            ),
            "pending_segments": np.array(segments, dtype=np.str_),
            "drift_cells": cells,
            "drift_cusum": self._cusum.get(cells),
            "level_cells": cells,
            "level_log": self._levels.get(cells),
            "level_events": self._level_events.get(cells),
            **{f"recent_{k}": v for k, v in recent.items()},
        }

    def _apply_extra_changes(self, changes: Mapping[str, np.ndarray]) -> None:
        n_net = len(self.placement.networks)
        try:
            self._recent.apply_changed_state({k[7:]: v for k, v in changes.items() if k.startswith("recent_")})
        except (KeyError, ValueError) as exc:
            raise InvalidState(f"recent history changes do not apply: {exc}") from None
        for seg in map(str, changes["pending_segments"]):
            for j in range(n_net):
                self._pending.pop((seg, j), None)
        for seg in map(str, changes["gmm_segments"]):
            for j in range(n_net):
                self._fitted.pop((seg, j), None)
                self._fits.pop((seg, j), None)
                self._boots.pop((seg, j), None)
        keys = zip(changes["refit_pending_keys"].tolist(), changes["refit_pending_networks"].tolist(), strict=True)
        self._pending.update(zip(keys, changes["refit_pending"].tolist(), strict=True))
        keys = zip(changes["refit_fitted_keys"].tolist(), changes["refit_fitted_networks"].tolist(), strict=True)
        self._fitted.update(zip(keys, map(tuple, changes["refit_fitted"].tolist()), strict=True))
        for seg, values in zip(changes["refit_value_segments"], changes["refit_values"], strict=True):
            self._values[str(seg)] = np.array(values, dtype=np.float32)
        params = changes["gmm_params"]
        for i, seg in enumerate(changes["gmm_segments"]):
            for j in range(params.shape[1]):
                if not np.isnan(params[i, j, 0]):
                    self._fits[(str(seg), j)] = params[i, j].copy()
        cells = np.asarray(changes["drift_cells"], dtype=np.int64)
        self._cusum.set(cells, np.asarray(changes["drift_cusum"], dtype=np.float64))
        self._levels.set(cells, np.asarray(changes["level_log"], dtype=np.float64))
        self._level_events.set(cells, np.asarray(changes["level_events"], dtype=np.float64))
        self.changes_detected = int(json.loads(str(changes["drift_meta"]))["changes_detected"])
        self._batch_span = float(changes["level_batch_span"])
        self._fit_base = int(changes["gmm_fit_base"])

    def _checked_fits(self, params: NDArray[np.float64]) -> NDArray[np.float64]:
        """Stored mixture fits [S, N, 3 + 3K] whose effects lie within ``EFFECT_LIMITS``; fits
        of 1 + 3K columns (written before the per-request effects) get effects 0."""
        k = self.n_components
        if params.ndim != 3 or params.shape[2] not in (1 + 3 * k, 3 + 3 * k):
            raise InvalidState(f"gmm_params must be [segments, networks, {3 + 3 * k}], not {list(params.shape)}")
        if params.shape[2] == 1 + 3 * k:
            return np.concatenate([params, np.zeros((*params.shape[:2], 2))], axis=2)
        effects = params[~np.isnan(params[:, :, 0])][:, 1 + 3 * k :]
        if not (np.isfinite(effects).all() and (effects >= 0).all() and (effects <= EFFECT_LIMITS).all()):
            raise InvalidState(
                f"gmm_params: the per-request effects (last two columns) must lie in [0, {EFFECT_LIMITS[0]}] "
                f"(shock sd) and [0, {EFFECT_LIMITS[1]}] (count dispersion)"
            )
        return params

    def _load_extra_state(self, state: Mapping[str, np.ndarray]) -> None:
        if "refit_values" in state:
            keys = zip(state["refit_pending_keys"], state["refit_pending_networks"], strict=True)
            self._pending = {(str(s), int(j)): float(v) for (s, j), v in zip(keys, state["refit_pending"], strict=True)}
            keys = zip(state["refit_fitted_keys"], state["refit_fitted_networks"], strict=True)
            fitted = zip(keys, state["refit_fitted"].tolist(), strict=True)
            self._fitted = {(str(s), int(j)): (t, w) for (s, j), (t, w) in fitted}
            self._values = {
                str(seg): np.array(v, dtype=np.float32)
                for seg, v in zip(state["refit_value_segments"], state["refit_values"], strict=True)
            }
        params = self._checked_fits(np.asarray(state["gmm_params"], dtype=np.float64))
        self._fits = {
            (str(seg), j): params[i, j].copy()
            for i, seg in enumerate(state["gmm_segments"])
            for j in range(params.shape[1])
            if not np.isnan(params[i, j, 0])
        }
        self._cusum = CellArrays(2)
        self._levels = CellArrays(HOURS_PER_DAY)
        self._level_events = CellArrays(HOURS_PER_DAY)
        for array, values, names in (
            (self._level_events, "level_events", ("level_event_cells",)),
            (self._cusum, "drift_cusum", ("drift_cells", "drift_keys", "drift_networks")),
            (self._levels, "level_log", ("level_cells", "level_segments", "level_networks")),
        ):
            if values not in state:
                continue
            n_net = len(self.placement.networks)
            if names[0] in state:
                keys = np.asarray(state[names[0]], dtype=np.int64)
                if ((keys < 0) | (keys >= len(self.stats.segments) * n_net)).any():
                    raise InvalidState(f"{names[0]} names cells the statistics do not have")
            elif len(names) == 1:
                raise InvalidState(f"{values} needs {names[0]}")
            else:  # earlier versions: keyed by (segment, network); cells of no statistics row are dropped
                rows = self.stats.rows_of([str(seg) for seg in state[names[1]]])
                networks = np.asarray(state[names[2]], dtype=np.int64)
                keys = np.where((rows >= 0) & (networks >= 0) & (networks < n_net), rows * n_net + networks, -1)
            known = keys >= 0
            array.set(keys[known], np.asarray(state[values], dtype=np.float64)[known])
        self.changes_detected = int(json.loads(str(state["drift_meta"]))["changes_detected"])
        if "level_batch_span" in state:
            self._batch_span = float(state["level_batch_span"])
        if "recent_stats_segments" in state:
            self._recent = SufficientStats.from_state({k[7:]: v for k, v in state.items() if k.startswith("recent_")})
            self._recent.floor_only = True  # read at the floors only (states of earlier versions hold prices too)
        if "gmm_fit_base" in state:
            self._fit_base = int(state["gmm_fit_base"])
