"""Live state of the service: a placement's variants, their policies and outcome counters.

* :class:`VariantSlot` — one variant of one placement: the *learner* policy the applier
  updates, the *served* copy that decides (republished after each refit), and the
  variant's outcome counters (requests, revenue and revenue² per request, in CPM).
* :class:`PlacementEntry` — a placement's config, experiment and slots; immutable as a
  whole: a config, experiment or model change builds a new entry (:func:`build_entry`,
  :func:`with_model`) that the store installs in one assignment, so a decision sees
  either the old entry or the new one. :meth:`PlacementEntry.slot` is the one lookup of a
  variant's slot. Its :class:`~serving.limits.SegmentIndex` holds the segments it has
  admitted (built from what its learners' statistics hold; it grows as ingest admits new
  ones) and pools those beyond its limits.

The functions here change no store: they build entries and policies for the store to
install (it owns the locks; :func:`build_entry` takes a replaced slot's ``learn_lock``
to read what it learned).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit import ALL_SEGMENTS, POLICIES, EventBatch, PlacementConfig, Policy, make_policy, policy_from_state
from bandit.errors import InvalidConfig, InvalidDecisionRequest, InvalidState, UnknownPlacement
from bandit.io import state_meta
from serving.history import WindowTally, request_rewards_of
from serving.limits import SegmentIndex, limits_of
from serving.placement_config import NO_LIMITS, ServicePlacement
from serving.variants import CHAMPION, Assigner, ExperimentConfig, VariantConfig, stable_seed

__all__ = [
    "SEGMENT_CACHE_SIZE",
    "PlacementEntry",
    "VariantSlot",
    "build_entry",
    "normalise_state",
    "placement_entry",
    "serving_copy",
    "state_tag",
    "variant_policy",
    "with_model",
]

#: Distinct contexts whose segment key a placement caches.
SEGMENT_CACHE_SIZE = 100_000


class VariantSlot:
    """One variant of one placement: its learner, the published copy that decides, and
    its outcome counters (requests, revenue and revenue² per request, in CPM)."""

    __slots__ = (
        "built_at",
        "counter_lock",
        "decisions",
        "learn_lock",
        "learner",
        "refit_at",
        "requests",
        "revenue",
        "revenue_sq",
        "served",
        "tag",
        "variant",
        "window",
    )

    def __init__(self, variant: VariantConfig, learner: Policy, tag: str = "") -> None:
        self.variant = variant
        self.learner = learner
        self.tag = tag
        self.learn_lock = threading.Lock()
        self.counter_lock = threading.Lock()
        self.requests = 0
        self.revenue = 0.0
        self.revenue_sq = 0.0
        self.decisions = 0
        #: Outcomes since the history's last tick (:mod:`serving.history`).
        self.window = WindowTally()
        self.served = serving_copy(learner)
        self.refit_at = time.monotonic()
        #: Wall-clock time (epoch seconds) the served model was last built (Prebid's modelTimestamp).
        self.built_at = time.time()

    def publish(self) -> None:
        self.served = serving_copy(self.learner)
        self.built_at = time.time()

    def model_version(self, policy: Policy | None = None) -> str:
        version = (policy or self.served).model_version
        return f"{version}+{self.tag}" if self.tag else version

    def add_outcomes(
        self, batch: EventBatch, request: NDArray[np.float64] | None = None, joined: NDArray[np.float64] | None = None
    ) -> None:
        """Count the requests the batch answers. ``request`` [n] (per row of the batch, from
        :func:`serving.applier.request_rewards`): the revenue of the request the row starts,
        NaN on the further rows of a waterfall or auction outcome, which is one request however
        many per-network events it has; default: every event is a request. ``joined`` [n]: what
        a later OpenRTB notice of a plan decision adds to the request its first notice started
        (NaN on other rows). Σr² adds the square of each row's part: exact while at most one
        notice of a decision pays (one winner; a billing after its win is a duplicate)."""
        starts, reward = request_rewards_of(batch, request, joined)
        self.requests += int(starts.sum())
        self.revenue += float(reward.sum())
        self.revenue_sq += float(np.dot(reward, reward))
        self.window.add(batch, request, joined)

    def take_counters(self, other: VariantSlot) -> None:
        self.requests, self.revenue, self.revenue_sq = (
            other.requests,
            other.revenue,
            other.revenue_sq,
        )
        self.decisions = other.decisions
        self.window.merge(other.window.take())

    def count_decisions(self, n: int) -> None:
        with self.counter_lock:
            self.decisions += n


@dataclass(frozen=True)
class PlacementEntry:
    """A placement's live state; replaced as a whole when its config or experiment changes."""

    config: PlacementConfig
    experiment: ExperimentConfig
    slots: dict[str, VariantSlot]
    networks: dict[str, int]
    assign: Assigner
    champion: str
    #: Segments admitted so far, and the limits that pool new ones (:mod:`serving.limits`).
    segments: SegmentIndex
    segment_cache: dict[tuple, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        config: PlacementConfig,
        experiment: ExperimentConfig,
        slots: dict[str, VariantSlot],
        previous: PlacementEntry | None = None,
    ) -> PlacementEntry:
        """The entry of ``slots``; its admitted segments are those the learners' statistics
        hold (``previous``: the entry it replaces, whose pooling counts carry over)."""
        learned = (s for slot in slots.values() for s in slot.learner.stats.segments)
        segments = SegmentIndex(config.segment_by, limits_of(config), learned)
        if previous is not None:
            segments.take_counts(previous.segments)
        return cls(
            config,
            experiment,
            slots,
            {n: i for i, n in enumerate(config.network_ids)},
            Assigner(config.id, experiment),
            experiment.champion,
            segments,
        )

    def find_slot(self, variant: str) -> VariantSlot | None:
        """The slot of ``variant``, ``None`` if the experiment has no such variant."""
        return self.slots.get(variant)

    def slot(self, variant: str, *, champion_alias: bool = False) -> VariantSlot:
        """The slot of ``variant``, else :class:`InvalidDecisionRequest` naming the variants.

        With ``champion_alias``, ``"champion"`` names the experiment's champion when no
        variant is called that.
        """
        if champion_alias and variant == CHAMPION and CHAMPION not in self.slots:
            variant = self.champion
        slot = self.find_slot(variant)
        if slot is None:
            raise InvalidDecisionRequest(
                f"placement {self.config.id!r} has no variant {variant!r}; variants: {list(self.slots)}"
            )
        return slot

    def segment_of(self, context: Mapping[str, Any]) -> str:
        """``config.segment_of(context)``, cached for contexts of string values."""
        fields = self.config.segment_by
        if not fields:
            return ALL_SEGMENTS
        key = tuple(map(context.get, fields))
        segment = self.segment_cache.get(key)
        if segment is None:
            segment = self.config.segment_of(context)
            # Only str/None keys: True == 1 == 1.0 would otherwise share an entry.
            if len(self.segment_cache) < SEGMENT_CACHE_SIZE and all(v is None or type(v) is str for v in key):
                self.segment_cache[key] = segment
        return segment

    def reports_net(self, network: str) -> bool:
        config = self.config
        return isinstance(config, ServicePlacement) and config.reports_net(network)


def placement_entry(entries: Mapping[str, PlacementEntry], placement_id: str) -> PlacementEntry:
    """``entries[placement_id]``, else :class:`UnknownPlacement`."""
    entry = entries.get(placement_id)
    if entry is None:
        raise UnknownPlacement(f"placement {placement_id!r} does not exist")
    return entry


def serving_copy(policy: Policy) -> Policy:
    """A copy of ``policy`` for deciding while the original keeps learning
    (:meth:`bandit.policy.Policy.decision_copy`: publishing costs a dict of table references)."""
    return policy.decision_copy()


def variant_policy(config: PlacementConfig, variant: VariantConfig) -> Policy:
    """A fresh policy of ``variant`` on ``config``, seeded by the placement and variant names.

    A waterfall or auction placement needs a policy that plans (``Policy.modes``): any other
    is refused here, so a ``PUT`` of the placement or its experiment is a 422 naming it.
    """
    cls = POLICIES.get(variant.policy)
    if cls is not None and config.mode not in cls.modes:
        able = sorted(name for name, c in POLICIES.items() if config.mode in c.modes)
        raise InvalidConfig(
            f"variant {variant.name!r}: policy {variant.policy!r} cannot serve {config.mode} placements "
            f"(placement {config.id!r}); use one of {able}"
        )
    params = {"seed": stable_seed(config.id, variant.name), **variant.params}
    return make_policy(variant.policy, config, **params)


def build_entry(config: PlacementConfig, experiment: ExperimentConfig, old: PlacementEntry | None) -> PlacementEntry:
    """Slots for ``experiment`` on ``config``, carrying over what ``old`` learned.

    Same config (but for the placement's own segment limits, which only the service reads)
    and same policy + params: the slot is kept as is. Same network ids and
    segment fields: a new policy starts from the old one's statistics (``merge``).
    Outcome counters carry over while the policy and its parameters are unchanged.
    """
    keep_learned = (
        old is not None and old.config.network_ids == config.network_ids and old.config.segment_by == config.segment_by
    )
    slots: dict[str, VariantSlot] = {}
    for variant in experiment.variants:
        prev = old.find_slot(variant.name) if old is not None else None
        if prev is not None and same_learning(old.config, config) and prev.variant.same_learner(variant):
            prev.variant = variant  # traffic share only
            slots[variant.name] = prev
            continue
        policy = variant_policy(config, variant)
        if prev is not None and keep_learned:
            with prev.learn_lock:
                policy.merge(prev.learner)
        slot = VariantSlot(variant, policy)
        if prev is not None and prev.variant.same_learner(variant):
            slot.take_counters(prev)
        slots[variant.name] = slot
    return PlacementEntry.create(config, experiment, slots, old)


def same_learning(a: PlacementConfig, b: PlacementConfig) -> bool:
    """Whether policies of ``a`` and ``b`` learn alike: equal configs but for their own
    segment limits (changing a limit must not rebuild every segment's table)."""
    return a == b or ServicePlacement.of(a, limits=NO_LIMITS) == ServicePlacement.of(b, limits=NO_LIMITS)


# ------------------------------------------------------------------ model swaps
def state_tag(state: Mapping[str, np.ndarray]) -> str:
    """8 hex digits identifying a policy state (names its swapped-in model version)."""
    h = hashlib.blake2b(digest_size=4)
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def normalise_state(state: Mapping[str, np.ndarray], config: PlacementConfig) -> dict[str, np.ndarray]:
    """``state`` with its placement set to ``config``, after checking the networks match."""
    policy = policy_from_state(state)  # checks schema and policy name
    theirs = policy.placement
    if theirs.networks != config.networks or theirs.segment_by != config.segment_by:
        raise InvalidState(
            f"model state is for networks {list(theirs.network_ids)} "
            f"segmented by {list(theirs.segment_by)}; "
            f"placement {config.id!r} has networks {list(config.network_ids)} segmented by "
            f"{list(config.segment_by)} (bounds and shares must match too)"
        )
    meta = state_meta(state)
    meta["placement_id"] = config.id
    meta["placement"] = config.to_dict()
    return {**{k: np.asarray(v) for k, v in state.items()}, "meta": np.array(json.dumps(meta))}


def with_model(entry: PlacementEntry, variant: str, state: Mapping[str, np.ndarray]) -> tuple[PlacementEntry, str]:
    """``entry`` with ``variant``'s policy replaced by ``policy_from_state(state)`` (a
    normalised state) and its outcome counters kept; also the new model version."""
    old = entry.slot(variant)
    policy = policy_from_state(state)
    meta = state_meta(state)
    params = dict(meta.get("params") or {})
    if meta.get("half_life_hours") not in (None, "inf"):
        params["half_life_hours"] = meta["half_life_hours"]
    config = VariantConfig(variant, old.variant.traffic, meta["policy"], params)
    slot = VariantSlot(config, policy, tag=state_tag(state))
    slot.take_counters(old)
    experiment = ExperimentConfig(tuple(config if v.name == variant else v for v in entry.experiment.variants))
    new = PlacementEntry.create(entry.config, experiment, {**entry.slots, variant: slot}, entry)
    return new, slot.model_version(policy)
