"""Columnar outcome events: the one input format every policy update takes.

An :class:`EventBatch` holds validated arrays of shape ``[n]``; it is built from Python
event lists (:meth:`EventBatch.from_events`) or from polars frames / Parquet / NDJSON
files (:mod:`bandit.io`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bandit.errors import InvalidOutcome
from bandit.types import MAX_CPM, OutcomeEvent, PlacementConfig


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Validated outcome events of one placement, as arrays of shape ``[n]``.

    ``segment_index`` indexes ``segments`` (the distinct segment keys of the batch);
    ``network`` indexes the placement's networks.
    """

    segments: tuple[str, ...]
    segment_index: NDArray[np.int64]
    network: NDArray[np.int64]
    floor_cpm: NDArray[np.float64]
    filled: NDArray[np.bool_]
    revenue_cpm: NDArray[np.float64]
    ts: NDArray[np.float64]
    #: The CPM one unit of each event's floor and revenue stands for, when they were rescaled
    #: (the hour-of-day levels learn in base-market units): a fill "at the floor" is judged
    #: on the CPM it paid, whose tolerance is in cents. ``None``: the prices are CPM.
    cpm_per_unit: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        n = len(self.network)
        for name in ("segment_index", "floor_cpm", "filled", "revenue_cpm", "ts", "cpm_per_unit"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise InvalidOutcome(f"column {name} has {len(getattr(self, name))} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.network)

    @classmethod
    def from_arrays(
        cls,
        placement: PlacementConfig,
        *,
        segments: Sequence[str],
        segment_index: NDArray,
        network: NDArray,
        floor_cpm: NDArray,
        filled: NDArray,
        revenue_cpm: NDArray,
        ts: NDArray,
    ) -> EventBatch:
        """Validate columns (all rows or none) and build a batch."""
        batch = cls(
            segments=tuple(segments),
            segment_index=np.asarray(segment_index, dtype=np.int64),
            network=np.asarray(network, dtype=np.int64),
            floor_cpm=np.asarray(floor_cpm, dtype=np.float64),
            filled=np.asarray(filled, dtype=np.bool_),
            revenue_cpm=np.asarray(revenue_cpm, dtype=np.float64),
            ts=np.asarray(ts, dtype=np.float64),
        )
        validate_batch(batch, placement)
        return batch

    @classmethod
    def from_events(cls, placement: PlacementConfig, events: Sequence[OutcomeEvent]) -> EventBatch:
        """Columns from validated :class:`OutcomeEvent` objects of this placement."""
        seg_keys: dict[str, int] = {}
        seg_idx = np.empty(len(events), dtype=np.int64)
        net_idx = np.empty(len(events), dtype=np.int64)
        nets = {nid: i for i, nid in enumerate(placement.network_ids)}
        for i, e in enumerate(events):
            if e.placement != placement.id:
                raise InvalidOutcome(f"event {e.event_id!r} is for placement {e.placement!r}, not {placement.id!r}")
            if e.network not in nets:
                placement.network_index(e.network)  # raises UnknownNetwork with the known list
            net_idx[i] = nets[e.network]
            seg_idx[i] = seg_keys.setdefault(placement.segment_of(e.context), len(seg_keys))
        return cls.from_arrays(
            placement,
            segments=tuple(seg_keys),
            segment_index=seg_idx,
            network=net_idx,
            floor_cpm=np.fromiter((e.floor_cpm for e in events), np.float64, len(events)),
            filled=np.fromiter((e.filled for e in events), np.bool_, len(events)),
            revenue_cpm=np.fromiter((e.revenue_cpm for e in events), np.float64, len(events)),
            ts=np.fromiter((e.ts for e in events), np.float64, len(events)),
        )

    @classmethod
    def concat(cls, batches: Sequence[EventBatch]) -> EventBatch:
        """One batch holding the rows of all ``batches`` (segment keys re-indexed)."""
        keys, index = reindex_segments([(b.segments, b.segment_index) for b in batches])
        cat = lambda name: np.concatenate([getattr(b, name) for b in batches])  # noqa: E731
        return cls(
            segments=keys,
            segment_index=index,
            network=cat("network"),
            floor_cpm=cat("floor_cpm"),
            filled=cat("filled"),
            revenue_cpm=cat("revenue_cpm"),
            ts=cat("ts"),
            cpm_per_unit=None
            if all(b.cpm_per_unit is None for b in batches)
            else np.concatenate([np.ones(len(b)) if b.cpm_per_unit is None else b.cpm_per_unit for b in batches]),
        )

    def take(self, rows: NDArray) -> EventBatch:
        """The rows selected by an index or boolean array, in that order."""
        return EventBatch(
            self.segments,
            self.segment_index[rows],
            self.network[rows],
            self.floor_cpm[rows],
            self.filled[rows],
            self.revenue_cpm[rows],
            self.ts[rows],
            None if self.cpm_per_unit is None else self.cpm_per_unit[rows],
        )


def reindex_segments(parts: Sequence[tuple[Sequence[str], NDArray]]) -> tuple[tuple[str, ...], NDArray[np.int64]]:
    """One tuple of distinct segment keys for several (keys, segment_index [n_i]) parts, and
    the parts' indexes into it, concatenated ([Σ n_i])."""
    keys: dict[str, int] = {}
    index = []
    for segments, segment_index in parts:
        remap = np.array([keys.setdefault(s, len(keys)) for s in segments], dtype=np.int64)
        index.append(remap[segment_index] if len(remap) else np.asarray(segment_index, dtype=np.int64))
    return tuple(keys), (np.concatenate(index) if index else np.empty(0, np.int64))


def validate_batch(batch: EventBatch, placement: PlacementConfig) -> None:
    """Raise :class:`InvalidOutcome` naming the first bad row; a batch is used whole or not at all."""

    def fail(mask: NDArray[np.bool_], what: str) -> None:
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            raise InvalidOutcome(f"row {row}: {what} ({int(mask.sum())} bad rows in the batch)")

    n_net = len(placement.networks)
    fail((batch.network < 0) | (batch.network >= n_net), f"network index must be in [0, {n_net})")
    fail((batch.segment_index < 0) | (batch.segment_index >= max(len(batch.segments), 1)), "bad segment index")
    if len(batch.segments) == 0 and len(batch):
        raise InvalidOutcome("a non-empty batch needs segment keys")
    for name in ("floor_cpm", "revenue_cpm"):
        col = getattr(batch, name)
        fail(~np.isfinite(col), f"{name} must be a finite number")
        fail(col < 0, f"{name} must be >= 0 CPM")
        fail(col > MAX_CPM, f"{name} must be <= {MAX_CPM:g} CPM")
    fail(~batch.filled & (batch.revenue_cpm != 0), "revenue_cpm must be 0 when filled is false")
    fail(~np.isfinite(batch.ts) | (batch.ts < 0) | (batch.ts > 4.1e9), "ts must be a time between 1970 and 2100")
