"""Additive sufficient statistics per (segment, network), binned in log price.

Layout: an array ``[S, N, F, B]`` — S segments, N networks, F fields (``FIELDS``),
B log-price bins over ``[PRICE_MIN, MAX_CPM]``. Fields indexed by the *floor* bin of
the request: requests, fills, revenue, revenue², no-fills and their summed log floor,
at-floor fills (second-price mass at the floor) and their summed log floor. Fields
indexed by the *price* bin: fills above the floor and their summed log price.

Everything is a weighted count, so aggregates from several workers merge by
addition and time discounting multiplies an aggregate by ``2^(-Δt / half_life)``.
Weights are kept relative to ``t_ref`` (the newest event time seen), so the result is
the same whatever the order in which events arrive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bandit.events import EventBatch
from bandit.types import MAX_CPM

PRICE_MIN = 0.01
N_BINS = 128
LOG_PRICE_MIN = math.log(PRICE_MIN)
LOG_PRICE_MAX = math.log(MAX_CPM)
BIN_WIDTH = (LOG_PRICE_MAX - LOG_PRICE_MIN) / N_BINS
#: Bin edges in log CPM, shape [B + 1].
LOG_EDGES = LOG_PRICE_MIN + BIN_WIDTH * np.arange(N_BINS + 1)
LOG_CENTERS = 0.5 * (LOG_EDGES[:-1] + LOG_EDGES[1:])

FIELDS = (
    "requests",
    "fills",
    "revenue",
    "revenue_sq",
    "nofill_logf",
    "atfloor",
    "atfloor_logf",
    "price",
    "price_logp",
)
REQUESTS, FILLS, REVENUE, REVENUE_SQ, NOFILL_LOGF, ATFLOOR, ATFLOOR_LOGF, PRICE, PRICE_LOGP = range(len(FIELDS))
N_FIELDS = len(FIELDS)
#: A fill is "at the floor" when its price is within max(``AT_FLOOR_ATOL`` CPM,
#: ``AT_FLOOR_RTOL`` × floor) of the floor: second-price networks often pay the floor plus a
#: cent, or round prices to cents.
AT_FLOOR_RTOL = 0.005
AT_FLOOR_ATOL = 0.01


def log_price(cpm: NDArray[np.float64]) -> NDArray[np.float64]:
    """log CPM clamped to the binned range (a floor of 0 counts as ``PRICE_MIN``)."""
    return np.log(np.clip(cpm, PRICE_MIN, MAX_CPM))


def price_bin(log_cpm: NDArray[np.float64]) -> NDArray[np.int64]:
    """Bin index in [0, B) of log prices."""
    b = ((log_cpm - LOG_PRICE_MIN) * (1.0 / BIN_WIDTH)).astype(np.int64)
    return np.clip(b, 0, N_BINS - 1)


def is_at_floor(floor_cpm: NDArray, revenue_cpm: NDArray, filled: NDArray) -> NDArray[np.bool_]:
    """Fills whose price is at the floor within the tolerance (or, misreported, below it)."""
    return filled & (revenue_cpm <= floor_cpm + np.maximum(AT_FLOOR_RTOL * floor_cpm, AT_FLOOR_ATOL) + 1e-12)


def decay_factor(dt_seconds: float, half_life_seconds: float) -> float:
    """Weight of an aggregate ``dt`` seconds old: ``2^(-dt / half_life)`` (1 when no discounting)."""
    if not math.isfinite(half_life_seconds) or dt_seconds <= 0:
        return 1.0
    return 2.0 ** (-dt_seconds / half_life_seconds)


def accumulate(
    cell: NDArray[np.int64],
    n_cells: int,
    floor_cpm: NDArray[np.float64],
    filled: NDArray[np.bool_],
    revenue_cpm: NDArray[np.float64],
    weight: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Weighted statistics ``[n_cells, F, B]`` of events falling in cells ``cell`` ([n])."""
    logf = log_price(floor_cpm)
    fbin = price_bin(logf)
    at_floor = is_at_floor(floor_cpm, revenue_cpm, filled)
    above = filled & ~at_floor
    logp = log_price(np.where(above, revenue_cpm, PRICE_MIN))
    pbin = price_bin(logp)
    by_floor = cell * N_BINS + fbin
    by_price = cell * N_BINS + pbin
    size = n_cells * N_BINS
    w_fill = weight * filled
    w_nofill = weight - w_fill
    w_at = weight * at_floor
    w_above = weight * above
    rev_w = weight * revenue_cpm
    columns = (
        (by_floor, weight),
        (by_floor, w_fill),
        (by_floor, rev_w),
        (by_floor, rev_w * revenue_cpm),
        (by_floor, w_nofill * logf),
        (by_floor, w_at),
        (by_floor, w_at * logf),
        (by_price, w_above),
        (by_price, w_above * logp),
    )
    out = np.empty((n_cells, N_FIELDS, N_BINS))
    for f, (index, w) in enumerate(columns):
        out[:, f, :] = np.bincount(index, weights=w, minlength=size).reshape(n_cells, N_BINS)
    return out


@dataclass
class SufficientStats:
    """Discounted statistics of one placement: ``data[S, N, F, B]`` at reference time ``t_ref``.

    ``segments[s]`` names row ``s``. Merging and adding are exact sums after both sides
    are discounted to the same reference time.
    """

    n_networks: int
    half_life_seconds: float = math.inf
    segments: list[str] | None = None
    data: NDArray[np.float64] | None = None
    t_ref: float = -math.inf

    def __post_init__(self) -> None:
        self.segments = list(self.segments or [])
        if self.data is None:
            self.data = np.zeros((len(self.segments), self.n_networks, N_FIELDS, N_BINS))
        self._index = {s: i for i, s in enumerate(self.segments)}

    def segment_row(self, segment: str) -> int | None:
        return self._index.get(segment)

    def _rows_for(self, keys: Sequence[str]) -> NDArray[np.int64]:
        """Row of each key, appending new segments (capacity grows by doubling)."""
        rows = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            row = self._index.get(key)
            if row is None:
                row = len(self.segments)
                self._index[key] = row
                self.segments.append(key)
            rows[i] = row
        if len(self.segments) > self.data.shape[0]:
            grown = np.zeros((len(self.segments), *self.data.shape[1:]))
            grown[: self.data.shape[0]] = self.data
            self.data = grown
        return rows

    def _advance(self, t: float) -> None:
        """Move the reference time forward to ``t``, discounting what is already held."""
        if t > self.t_ref:
            if math.isfinite(self.t_ref):
                self.data *= decay_factor(t - self.t_ref, self.half_life_seconds)
            self.t_ref = t

    def add(self, batch: EventBatch) -> NDArray[np.int64]:
        """Add a batch; returns the rows (segments) it touched."""
        if len(batch) == 0:
            return np.empty(0, dtype=np.int64)
        rows = self._rows_for(batch.segments)
        self._advance(float(batch.ts.max()))
        if math.isfinite(self.half_life_seconds):
            weight = np.exp2((batch.ts - self.t_ref) / self.half_life_seconds)
        else:
            weight = np.ones(len(batch))
        cell = rows[batch.segment_index] * self.n_networks + batch.network
        n_cells = len(self.segments) * self.n_networks
        self.data += accumulate(cell, n_cells, batch.floor_cpm, batch.filled, batch.revenue_cpm, weight).reshape(
            self.data.shape
        )
        return np.flatnonzero(np.bincount(rows[batch.segment_index], minlength=len(self.segments)))

    def merge(self, other: SufficientStats) -> None:
        """Add another aggregate of the same placement (computed elsewhere) into this one."""
        if other.n_networks != self.n_networks:
            raise ValueError("cannot merge statistics of placements with different networks")
        if not math.isfinite(other.t_ref):
            return
        rows = self._rows_for(other.segments)
        self._advance(other.t_ref)
        factor = decay_factor(self.t_ref - other.t_ref, self.half_life_seconds)
        np.add.at(self.data, rows, other.data * factor)

    @classmethod
    def from_dense(
        cls, segments: Sequence[str], data: NDArray[np.float64], t_ref: float, half_life_seconds: float = math.inf
    ) -> SufficientStats:
        """Statistics from a dense array ``[S, N, F, B]`` held at reference time ``t_ref``."""
        data = np.asarray(data, dtype=np.float64)
        return cls(data.shape[1], half_life_seconds, list(segments), data.copy(), t_ref)

    def segment_data(self, row: int) -> NDArray[np.float64]:
        """Statistics ``[N, F, B]`` of one segment (a copy) at ``t_ref``."""
        return self.data[row].copy()

    def cell(self, row: int, network: int) -> NDArray[np.float64]:
        """Statistics ``[F, B]`` of one (segment, network) cell (a copy) at ``t_ref``."""
        return self.data[row, network].copy()

    def totals(self) -> NDArray[np.float64]:
        """Every cell's fields summed over bins, ``[S, N, F]``, at ``t_ref``."""
        return self.data.sum(axis=3)

    def placement_level(self) -> NDArray[np.float64]:
        """Statistics of the whole placement, ``[N, F, B]`` (sum over segments)."""
        return self.data.sum(axis=0)

    def decayed_to(self, t: float) -> NDArray[np.float64]:
        """``data`` as it would look at time ``t`` (no change to this object)."""
        return self.data * decay_factor(t - self.t_ref, self.half_life_seconds)

    def state(self) -> dict[str, np.ndarray]:
        return {
            "stats_data": self.data.copy(),
            "stats_segments": np.array(self.segments, dtype=np.str_),
            "stats_t_ref": np.array(self.t_ref),
            "stats_half_life": np.array(self.half_life_seconds),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> SufficientStats:
        data = np.array(state["stats_data"], dtype=np.float64)
        return cls(
            n_networks=data.shape[1],
            half_life_seconds=float(state["stats_half_life"]),
            segments=[str(s) for s in state["stats_segments"]],
            data=data,
            t_ref=float(state["stats_t_ref"]),
        )
