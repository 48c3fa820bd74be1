"""The policy interface shared by the simulator and the live service.

A policy owns the sufficient statistics of one placement and, per segment, a
:class:`SegmentTable` rebuilt after each ``update``. Decisions are draws from the table,
so one decision costs a table look-up and one uniform, and a batch is vectorised.

Subclasses implement :meth:`Policy._build_table` (statistics → table) and may keep
learned state through :meth:`Policy._extra_state` / :meth:`Policy._load_extra_state`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from bandit.allocation import AUCTION_CODES, SUMMARY_FIELDS, SegmentTable, project_shares, round_table
from bandit.drift import ChangeAlarm
from bandit.errors import InvalidDecisionRequest, InvalidState
from bandit.events import EventBatch
from bandit.stats import REQUESTS, SufficientStats, log_price
from bandit.types import ALL_SEGMENTS, Allocation, Decision, NetworkAllocation, OutcomeEvent, PlacementConfig

STATE_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class DecisionBatch:
    """Decisions for a batch of requests, arrays of shape [n] in request order."""

    network: NDArray[np.int64]
    floor_cpm: NDArray[np.float64]
    propensity: NDArray[np.float64]
    floor_propensity: NDArray[np.float64]
    segments: tuple[str, ...]
    segment_index: NDArray[np.int64]
    model_version: str
    #: Density of log floor given the network [n] (per unit log CPM; for floors rounded to the
    #: placement's precision, the floor's cell probability per unit log CPM); NaN for discrete floors.
    floor_density: NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.network)

    def decision(self, i: int, network_ids: Sequence[str]) -> Decision:
        return Decision(
            network=network_ids[int(self.network[i])],
            floor_cpm=float(self.floor_cpm[i]),
            propensity=float(self.propensity[i]),
            floor_propensity=float(self.floor_propensity[i]),
            segment=self.segments[int(self.segment_index[i])],
            model_version=self.model_version,
            floor_density=math.nan if self.floor_density is None else float(self.floor_density[i]),
        )


@dataclass(frozen=True, slots=True)
class PlanBatch:
    """Waterfall or auction decisions for a batch of requests, in request order: per request
    and network the tier (0, 1, … in calling order; −1 not called; an auction calls its
    tier-0 networks at once) ``tiers`` [n, N] and floor ``floor_cpm`` [n, N]; ``propensity``
    [n] is the probability of the whole plan (order or subset, and floors)."""

    tiers: NDArray[np.int64]
    floor_cpm: NDArray[np.float64]
    propensity: NDArray[np.float64]
    segments: tuple[str, ...]
    segment_index: NDArray[np.int64]
    model_version: str

    def __len__(self) -> int:
        return len(self.tiers)

    def offers(self, i: int, network_ids: Sequence[str]) -> list[tuple[str, float]]:
        """(network, floor_cpm) of request ``i`` in calling order."""
        return plan_offers(self.tiers[i], self.floor_cpm[i], network_ids)


def plan_offers(
    tiers: NDArray[np.int64], floor_cpm: NDArray[np.float64], network_ids: Sequence[str]
) -> list[tuple[str, float]]:
    """(network, floor_cpm) of one plan (tiers and floors [N]) in calling order (an auction's,
    all at tier 0, in network order)."""
    called = np.flatnonzero(tiers >= 0)
    called = called[np.argsort(tiers[called], kind="stable")]
    return [(network_ids[j], float(floor_cpm[j])) for j in called]


class Policy:
    """Base class: statistics, tables, decisions, state. See the module docstring."""

    name: ClassVar[str] = "policy"
    #: Placement modes this policy can decide (:data:`bandit.types.MODES`): only a policy that
    #: builds plan tables (waterfall tiers, auction bidders) serves the multi-network modes.
    modes: ClassVar[tuple[str, ...]] = ("single",)

    def __init__(
        self,
        placement: PlacementConfig,
        *,
        half_life_hours: float = math.inf,
        seed: int | None = None,
        **params: Any,
    ) -> None:
        if not (half_life_hours > 0):
            raise InvalidState(f"half_life_hours must be > 0 (inf for no discounting), got {half_life_hours}")
        self.placement = placement
        self.half_life_hours = float(half_life_hours)
        self.seed = seed
        self.params = dict(params)
        self.stats = SufficientStats(len(placement.networks), self.half_life_hours * 3600.0)
        self.updates = 0
        self._rng = np.random.default_rng(seed)
        self._tables: dict[str, SegmentTable] = {}
        self._lo = np.array([n.min_share for n in placement.networks])
        self._hi = np.array([n.max_share for n in placement.networks])
        #: Each network's floor bounds in log CPM [N, 2] (what rounded floors stay within).
        self._floor_log_bounds = np.array(
            [log_price(np.array([n.floor_min_cpm, n.floor_max_cpm])) for n in placement.networks]
        )
        self._floor_log_bounds[:, 0] = np.where(
            [n.floor_min_cpm <= 0 for n in placement.networks], -np.inf, self._floor_log_bounds[:, 0]
        )
        #: Tables and segment count at the last :meth:`checkpoint` (``None``: none taken).
        self._saved_tables: dict[str, SegmentTable] | None = None
        self._saved_segments = 0
        self.refresh()

    # ------------------------------------------------------------------ learning
    def update(self, events: EventBatch | Sequence[OutcomeEvent] | Any, *, refresh: bool = True) -> list[str]:
        """Learn from outcome events: an :class:`EventBatch`, a list of events, or a polars frame.

        Returns the segments the events touched. ``refresh=False`` only accumulates the
        statistics (e.g. while replaying a log); call :meth:`refresh` with the touched
        segments afterwards to rebuild their decision tables once.
        """
        batch = as_event_batch(self.placement, events)
        if len(batch) == 0:
            return []
        rows = self.stats.add(batch)
        self.updates += 1
        touched = [self.stats.segments[r] for r in rows]
        if refresh:
            self.refresh(touched)
        return touched

    def merge(self, other: Policy) -> None:
        """Add statistics learned elsewhere (another worker) and refresh the tables."""
        self.stats.merge(other.stats)
        self.updates += 1
        self.refresh(list(other.stats.segments))

    def refresh(self, segments: Sequence[str] = ()) -> None:
        """Rebuild the decision tables of ``segments`` and of the whole placement."""
        pooled = self.stats.placement_level()
        self._tables[ALL_SEGMENTS] = self._finish(self._build_table(ALL_SEGMENTS, pooled, pooled))
        for seg in segments:
            if seg != ALL_SEGMENTS:
                row = self.stats.segment_row(seg)
                self._tables[seg] = self._finish(self._build_table(seg, self.stats.segment_data(row), pooled))

    def _finish(self, table: SegmentTable) -> SegmentTable:
        """A built (or loaded) table as it serves: floors rounded to the placement's
        ``floor_precision_cpm`` (:func:`bandit.allocation.round_table`; idempotent)."""
        return round_table(table, self.placement.floor_precision_cpm, self._floor_log_bounds)

    def decision_copy(self) -> Policy:
        """A copy for deciding while this policy keeps learning: decisions read only the
        tables, the placement and the model version, and learning replaces a segment's table
        rather than changing it, so the copy shares everything but the table dict and the
        random generator (its cost does not grow with the model)."""
        served = copy.copy(self)
        served._tables = dict(self._tables)
        served._rng = copy.deepcopy(self._rng)
        return served

    def take_alarms(self) -> list[ChangeAlarm]:
        """The change alarms (:class:`bandit.drift.ChangeAlarm`) raised since the last call, oldest
        first (at most :data:`bandit.drift.MAX_ALARMS`); a policy without change detection has none."""
        return []

    def pending_segments(self) -> list[str]:
        """Segments whose tables do not reflect all their learned events yet (a policy that
        refits lazily lists them here; they are refit by a later :meth:`refresh`)."""
        return []

    def _build_table(self, segment: str, stats: NDArray[np.float64], pooled: NDArray[np.float64]) -> SegmentTable:
        """Segment statistics [N, F, B] (and the placement's) → decision table."""
        raise NotImplementedError

    def _constrain(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        """Project P(network) onto the placement's min/max share contract."""
        return project_shares(p, self._lo, self._hi)

    # ----------------------------------------------------------------- deciding
    @property
    def model_version(self) -> str:
        return f"{self.name}.{self.updates}"

    def table(self, segment: str) -> SegmentTable:
        """The table serving ``segment``; an unseen segment uses the placement's."""
        return self._tables.get(segment) or self._tables[ALL_SEGMENTS]

    def decide(
        self,
        context: Mapping[str, object] | None = None,
        *,
        segment: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> Decision:
        """One decision for a request with this context (or this segment key)."""
        seg = segment if segment is not None else self.placement.segment_of(context)
        table = self.table(seg)
        uniforms = (rng or self._rng).random(2 if table.jittered else 1).tolist()  # the jitter's too
        net, floor, prop, fprop, density = table.decide_one(*uniforms)
        return Decision(self.placement.networks[net].id, floor, prop, fprop, seg, self.model_version, density)

    def decide_batch(
        self,
        segments: Sequence[str] | None = None,
        *,
        n: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> DecisionBatch:
        """Decisions for many requests, given their segment keys (or ``n`` whole-placement requests)."""
        if segments is None:
            if n is None or n < 0:
                raise InvalidDecisionRequest("give the requests' segments or a count n >= 0")
            keys, index = (ALL_SEGMENTS,), np.zeros(n, dtype=np.int64)
        else:
            lookup: dict[str, int] = {}
            index = np.fromiter((lookup.setdefault(s, len(lookup)) for s in segments), np.int64, len(segments))
            keys = tuple(lookup)
        return self.decide_indexed(keys, index, rng=rng)

    def decide_indexed(
        self,
        segments: Sequence[str],
        segment_index: NDArray[np.int64],
        *,
        rng: np.random.Generator | None = None,
    ) -> DecisionBatch:
        """Decisions for requests given as indexes into distinct segment keys (fastest form)."""
        rng = rng or self._rng
        k = len(segment_index)
        u = rng.random(k)
        net = np.empty(k, dtype=np.int64)
        floor = np.empty(k)
        prop = np.empty(k)
        fprop = np.empty(k)
        density = np.full(k, np.nan)
        tables = [self.table(s) for s in segments]
        v = rng.random(k) if any(t.jittered for t in tables) else None
        if len(segments) == 1:
            groups: list[tuple[int, Any]] = [(0, slice(None))]
        else:
            groups = [(s, np.flatnonzero(segment_index == s)) for s in range(len(segments))]
        for s, rows in groups:
            table = tables[s]
            out = table.sample(u[rows], None if v is None else v[rows])
            net[rows], floor[rows], prop[rows], fprop[rows] = out
            if table.jittered:
                density[rows] = table.logged_floor_density(net[rows], floor[rows])
        return DecisionBatch(
            net, floor, prop, fprop, tuple(segments), np.asarray(segment_index), self.model_version, density
        )

    def decide_plans(
        self,
        segments: Sequence[str],
        segment_index: NDArray[np.int64],
        *,
        rng: np.random.Generator | None = None,
    ) -> PlanBatch:
        """Waterfall or auction decisions for requests given as indexes into segment keys."""
        if self.placement.mode == "single":
            raise InvalidDecisionRequest(f"placement {self.placement.id!r} is single-network: use decide")
        if self.placement.mode not in self.modes:
            raise InvalidDecisionRequest(
                f"policy {self.name!r} cannot decide {self.placement.mode} placements (it builds no plans); "
                f"placement {self.placement.id!r} needs a policy that does, e.g. 'ts_gmm'"
            )
        rng = rng or self._rng
        k, n_net = len(segment_index), len(self.placement.networks)
        u = rng.random(k)
        tiers = np.empty((k, n_net), dtype=np.int64)
        floors = np.empty((k, n_net))
        prop = np.empty(k)
        for s, seg in enumerate(segments):
            rows = np.flatnonzero(segment_index == s)
            if not len(rows):
                continue
            table = self.table(seg)
            plan = table.sample_plans(u[rows])
            tiers[rows], floors[rows] = table.plan_tiers[plan], table.plan_floors[plan]
            prop[rows] = table.plan_probs[plan] / table.plan_probs.sum()
        return PlanBatch(tiers, floors, prop, tuple(segments), np.asarray(segment_index), self.model_version)

    def allocation(self, segment: str = ALL_SEGMENTS) -> Allocation:
        """Current weights and floors (with uncertainty) of a segment."""
        table = self.table(segment)
        row = self.stats.segment_row(segment)
        if segment == ALL_SEGMENTS:
            effective = float(self.stats.placement_level()[:, REQUESTS].sum())
        else:
            effective = float(self.stats.totals()[row, :, REQUESTS].sum()) if row is not None else 0.0
        cols = {name: i for i, name in enumerate(SUMMARY_FIELDS)}
        networks = tuple(
            NetworkAllocation(
                network=cfg.id,
                weight=float(table.weights[i]),
                floor_cpm=float(table.summary[i, cols["floor_cpm"]]),
                floor_p10_cpm=float(table.summary[i, cols["floor_p10_cpm"]]),
                floor_p90_cpm=float(table.summary[i, cols["floor_p90_cpm"]]),
                expected_revenue_cpm=float(table.summary[i, cols["expected_revenue_cpm"]]),
                revenue_sd_cpm=float(table.summary[i, cols["revenue_sd_cpm"]]),
                fill_rate=float(table.summary[i, cols["fill_rate"]]),
                auction=AUCTION_CODES[int(table.summary[i, cols["auction"]])],
                auction_confidence=(
                    float(table.summary[i, cols["auction_confidence"]])
                    if table.summary.shape[1] > cols["auction_confidence"]
                    else math.nan
                ),
            )
            for i, cfg in enumerate(self.placement.networks)
        )
        return Allocation(self.placement.id, segment, networks, self.model_version, effective)

    @property
    def segments(self) -> list[str]:
        """Segments that have their own table (have been seen in outcome events)."""
        return [s for s in self._tables if s != ALL_SEGMENTS]

    # -------------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays (no pickle) from which :func:`bandit.registry.policy_from_state` rebuilds
        this policy exactly, including its random generator and decision tables."""
        segs = list(self._tables)
        state = {
            "meta": self._meta(),
            **_table_arrays(segs, [self._tables[s] for s in segs]),
            **self.stats.state(),
        }
        state.update(self._extra_state())
        return state

    def _meta(self) -> np.ndarray:
        """The state's ``meta`` entry: JSON of the policy, placement, parameters, update count and generator."""
        meta = {
            "schema_version": STATE_SCHEMA_VERSION,
            "policy": self.name,
            "placement_id": self.placement.id,
            "placement": self.placement.to_dict(),
            "half_life_hours": self.half_life_hours if math.isfinite(self.half_life_hours) else "inf",
            "seed": self.seed,
            "params": self.params,
            "updates": self.updates,
            "rng": self._rng.bit_generator.state,
        }
        return np.array(json.dumps(meta))

    def _extra_state(self) -> dict[str, np.ndarray]:
        return {}

    # ------------------------------------------------------------ incremental state
    def checkpoint(self) -> None:
        """Start recording changes: :meth:`take_changes` returns what changed from here on.

        The statistics record their changed cells as they learn; a table is replaced, never
        changed in place, when it is rebuilt, so a changed table is one that is not the
        object held at the checkpoint."""
        self.stats.take_changes()
        self._saved_tables = dict(self._tables)
        self._saved_segments = len(self.stats.segments)
        self._checkpoint_extra()

    def take_changes(self) -> dict[str, np.ndarray] | None:
        """What changed since the last :meth:`checkpoint` as plain arrays, then checkpoint again;
        ``None`` when no checkpoint was taken (the caller stores :meth:`state` instead).

        :meth:`apply_changes` on this policy as it was at the checkpoint (e.g. rebuilt from
        the state saved then) makes its :meth:`state` equal to this one's. Holds the meta,
        the rebuilt tables, the statistics of the changed cells and what the policy derived
        for the segments those belong to (:meth:`_extra_changes`)."""
        if self._saved_tables is None:
            return None
        cells = self.stats.take_changes()
        saved = self._saved_tables
        rebuilt = [seg for seg, table in self._tables.items() if saved.get(seg) is not table]
        stats = self.stats.changed_state(cells, self._saved_segments)
        dirty = {self.stats.segments[r] for r in np.unique(cells // self.stats.n_networks).tolist()}
        dirty.update(rebuilt)
        dirty.add(ALL_SEGMENTS)
        changes = {
            "meta": self._meta(),
            **_table_arrays(rebuilt, [self._tables[s] for s in rebuilt]),
            "table_removed": np.array([s for s in saved if s not in self._tables], dtype=np.str_),
            **stats,
            **self._extra_changes(sorted(dirty), rebuilt, cells),
        }
        self._saved_tables = dict(self._tables)
        self._saved_segments = len(self.stats.segments)
        return changes

    def apply_changes(self, changes: Mapping[str, np.ndarray]) -> None:
        """Bring this policy forward by :meth:`take_changes` of a later version of it (see
        there), and checkpoint. Raises :class:`InvalidState` when they are of another policy
        or do not follow this state (checked before anything changes)."""
        meta = json.loads(str(changes["meta"]))
        if meta.get("policy") != self.name or not _same_placement(meta.get("placement"), self.placement):
            raise InvalidState(f"changes of policy {meta.get('policy')!r} on another placement do not apply here")
        try:
            self.stats.apply_changed_state(changes)
        except (KeyError, ValueError) as exc:
            raise InvalidState(f"policy changes do not apply: {exc}") from None
        self.updates = int(meta["updates"])
        self._rng.bit_generator.state = meta["rng"]
        for seg in changes["table_removed"]:
            self._tables.pop(str(seg), None)
        self._tables.update((seg, self._finish(t)) for seg, t in _tables_of(changes).items())
        self._apply_extra_changes(changes)
        self.checkpoint()

    def _checkpoint_extra(self) -> None:
        """Subclasses with changes of their own start recording them here."""

    def _extra_changes(
        self, segments: list[str], rebuilt: list[str], cells: NDArray[np.int64]
    ) -> dict[str, np.ndarray]:
        """What a subclass derived that changed since the checkpoint, given the segments whose
        statistics or tables changed (sorted; with the placement level), those whose tables
        were rebuilt, and the changed statistics cells. The default stores all of
        :meth:`_extra_state`."""
        return self._extra_state()

    def _apply_extra_changes(self, changes: Mapping[str, np.ndarray]) -> None:
        self._load_extra_state(changes)

    def _load_extra_state(self, state: Mapping[str, np.ndarray]) -> None:
        return None

    @classmethod
    def _from_state(cls, state: Mapping[str, np.ndarray], meta: dict) -> Policy:
        placement = PlacementConfig.from_dict(meta["placement_id"], meta["placement"])
        half_life = math.inf if meta["half_life_hours"] == "inf" else float(meta["half_life_hours"])
        policy = cls(placement, half_life_hours=half_life, seed=meta["seed"], **meta["params"])
        policy.stats = SufficientStats.from_state(dict(state))
        policy.updates = int(meta["updates"])
        policy._rng.bit_generator.state = meta["rng"]
        policy._load_extra_state(state)
        policy._tables = {seg: policy._finish(t) for seg, t in _tables_of(state).items()}
        return policy


def _same_placement(body: Any, placement: PlacementConfig) -> bool:
    """Whether a state's placement dict is ``placement`` as policies see it: only the core
    :class:`PlacementConfig` counts (a service's placement adds settings of its own, e.g.
    bidder codes, which its policies' states carry but a policy rebuilt from them drops)."""
    try:
        return PlacementConfig.from_dict(placement.id, body).to_dict() == PlacementConfig.to_dict(placement)
    except (TypeError, ValueError):  # InvalidConfig is a ValueError
        return False


def _table_arrays(segments: Sequence[str], tables: Sequence[SegmentTable]) -> dict[str, np.ndarray]:
    """Tables of ``segments`` as stacked arrays ``[T, ...]`` (empty arrays for no tables)."""

    def stack(values: list[NDArray]) -> NDArray:
        return np.stack(values) if values else np.zeros((0, 0))

    def padded(plans: list[NDArray], fill: float) -> list[NDArray]:
        # Plan tables of one placement can differ in length across versions (a state written
        # before auctions explored floors): pad with plans of probability 0.
        rows = max(len(p) for p in plans)
        return [np.pad(p, [(0, rows - len(p))] + [(0, 0)] * (p.ndim - 1), constant_values=fill) for p in plans]

    return {
        "table_segments": np.array(list(segments), dtype=np.str_),
        "table_weights": stack([t.weights for t in tables]),
        "table_floors": stack([t.floors for t in tables]),
        "table_floor_probs": stack([t.floor_probs for t in tables]),
        "table_floor_propensity": stack([t.floor_propensity for t in tables]),
        "table_summary": stack([t.summary for t in tables]),
        "table_floor_log_sd": stack([t.floor_log_sd for t in tables]),
        "table_floor_bounds": stack([t.floor_bounds for t in tables]),
        **(
            {
                "table_plan_tiers": stack(padded([t.plan_tiers for t in tables], -1)),
                "table_plan_floors": stack(padded([t.plan_floors for t in tables], 0.0)),
                "table_plan_probs": stack(padded([t.plan_probs for t in tables], 0.0)),
            }
            if tables and tables[0].plan_probs is not None
            else {}
        ),
    }


def _tables_of(state: Mapping[str, np.ndarray]) -> dict[str, SegmentTable]:
    """The tables stored by :func:`_table_arrays`, by segment, in stored order."""
    return {
        str(seg): SegmentTable(
            weights=np.array(state["table_weights"][i]),
            floors=np.array(state["table_floors"][i]),
            floor_probs=np.array(state["table_floor_probs"][i]),
            floor_propensity=np.array(state["table_floor_propensity"][i]),
            summary=np.array(state["table_summary"][i]),
            floor_log_sd=np.array(state["table_floor_log_sd"][i]) if "table_floor_log_sd" in state else None,
            floor_bounds=np.array(state["table_floor_bounds"][i]) if "table_floor_bounds" in state else None,
            **(
                {
                    "plan_tiers": np.array(state["table_plan_tiers"][i]),
                    "plan_floors": np.array(state["table_plan_floors"][i]),
                    "plan_probs": np.array(state["table_plan_probs"][i]),
                }
                if "table_plan_probs" in state
                else {}
            ),
        )
        for i, seg in enumerate(state["table_segments"])
    }


def as_event_batch(placement: PlacementConfig, events: Any) -> EventBatch:
    """Accept an EventBatch, a sequence of OutcomeEvent, or a polars/Arrow frame."""
    if isinstance(events, EventBatch):
        return events
    if isinstance(events, Sequence) and (len(events) == 0 or isinstance(events[0], OutcomeEvent)):
        return EventBatch.from_events(placement, list(events))
    from bandit.io import batch_from_frame  # polars is only needed for frames

    return batch_from_frame(placement, events)
