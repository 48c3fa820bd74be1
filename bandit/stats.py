"""Additive sufficient statistics per (segment, network), binned in log price.

Logically an array ``[S, N, F, B]`` — S segments, N networks, F fields (``FIELDS``),
B log-price bins over ``[PRICE_MIN, MAX_CPM]`` — stored sparsely: a (segment, network)
cell holds only the bins it has seen (a typical cell ~1 KB, a full one ~9 KB). Fields indexed by the *floor* bin of
the request: requests, fills, revenue, revenue², no-fills and their summed log floor,
at-floor fills (second-price mass at the floor) and their summed log floor. Fields
indexed by the *price* bin: fills above the floor and their summed log price.

Everything is a weighted count, so aggregates from several workers merge by
addition and time discounting multiplies an aggregate by ``2^(-Δt / half_life)``.
Weights are relative to ``t_ref`` (the newest event time seen), so the result is the
same whatever the order in which events arrive. Discounting is lazy: each cell keeps
the time its values refer to and is brought forward only when it is touched or read,
so a batch costs what its events and cells cost, whatever the size of the placement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
#: Fields indexed by the floor bin (``[:FLOOR_FIELDS]``) and by the price bin (the rest).
FLOOR_FIELDS = PRICE
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


class _Cell:
    """One (segment, network) cell: the bins it has seen and their values, at time ``t``.

    ``floor_bins`` [k] (sorted) / ``floor_values`` [FLOOR_FIELDS, k] and ``price_bins`` [m] /
    ``price_values`` [F - FLOOR_FIELDS, m].
    """

    __slots__ = ("floor_bins", "floor_values", "price_bins", "price_values")

    def __init__(self) -> None:
        self.floor_bins = np.empty(0, dtype=np.uint8)
        self.floor_values = np.empty((FLOOR_FIELDS, 0))
        self.price_bins = np.empty(0, dtype=np.uint8)
        self.price_values = np.empty((N_FIELDS - FLOOR_FIELDS, 0))

    def scale(self, factor: float) -> None:
        if factor != 1.0:
            self.floor_values *= factor
            self.price_values *= factor

    def add(self, floor_bins, floor_values, price_bins, price_values) -> None:
        self.floor_bins, self.floor_values = _add_sparse(self.floor_bins, self.floor_values, floor_bins, floor_values)
        self.price_bins, self.price_values = _add_sparse(self.price_bins, self.price_values, price_bins, price_values)

    def dense(self, factor: float = 1.0) -> NDArray[np.float64]:
        out = np.zeros((N_FIELDS, N_BINS))
        out[:FLOOR_FIELDS, self.floor_bins] = self.floor_values
        out[FLOOR_FIELDS:, self.price_bins] = self.price_values
        if factor != 1.0:
            out *= factor
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.floor_bins, self.floor_values, self.price_bins, self.price_values))


def _add_sparse(
    bins: NDArray[np.uint8], values: NDArray[np.float64], new_bins: NDArray, new_values: NDArray[np.float64]
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """Sparse rows ``values`` [f, k] at sorted ``bins`` plus ``new_values`` at sorted ``new_bins``."""
    if len(new_bins) == 0:
        return bins, values
    if len(bins):
        at = np.minimum(np.searchsorted(bins, new_bins), len(bins) - 1)
        if np.array_equal(bins[at], new_bins):  # no new bin: add in place
            values[:, at] += new_values
            return bins, values
    merged = np.union1d(bins, new_bins).astype(np.uint8)
    out = np.zeros((values.shape[0], len(merged)))
    out[:, np.searchsorted(merged, bins)] = values
    out[:, np.searchsorted(merged, new_bins)] += new_values
    return merged, out


def _split_nonzero(mask: NDArray[np.bool_]) -> list[NDArray[np.int64]]:
    """The nonzero bins of each row of ``mask`` [C, B]."""
    rows, bins = np.nonzero(mask)
    return np.split(bins, np.cumsum(np.bincount(rows, minlength=mask.shape[0]))[:-1])


#: Touched cells accumulated densely at once when adding (bounds the temporary array).
ADD_CHUNK_CELLS = 4096


class SufficientStats:
    """Discounted statistics of one placement at reference time ``t_ref``, stored per cell.

    ``segments[s]`` names row ``s``. Reads (:meth:`cell`, :meth:`segment_data`,
    :meth:`totals`, :meth:`placement_level`) return dense arrays discounted to ``t_ref``.
    Merging and adding are exact sums after both sides are discounted to the same time.
    """

    def __init__(self, n_networks: int, half_life_seconds: float = math.inf, segments: Sequence[str] = ()) -> None:
        self.n_networks = int(n_networks)
        self.half_life_seconds = float(half_life_seconds)
        self.t_ref = -math.inf
        self.segments: list[str] = []
        self._index: dict[str, int] = {}
        self._cells: dict[int, _Cell] = {}  # key: row * n_networks + network
        cap = 16
        self._time = np.full((cap, self.n_networks), -math.inf)  # time each cell's values refer to
        self._totals = np.zeros((cap, self.n_networks, N_FIELDS))  # per cell, summed over bins, at _time
        self._pooled = np.zeros((self.n_networks, N_FIELDS, N_BINS))  # whole placement, at t_ref
        self._changed: set[int] = set()
        self._rows_for(list(segments))

    # ------------------------------------------------------------------ reading
    def segment_row(self, segment: str) -> int | None:
        return self._index.get(segment)

    def _factor(self, row: int, network: int) -> float:
        return decay_factor(self.t_ref - float(self._time[row, network]), self.half_life_seconds)

    def cell(self, row: int, network: int) -> NDArray[np.float64]:
        """Statistics ``[F, B]`` of one (segment, network) cell at ``t_ref`` (a new array)."""
        c = self._cells.get(row * self.n_networks + network)
        if c is None:
            return np.zeros((N_FIELDS, N_BINS))
        return c.dense(self._factor(row, network))

    def segment_data(self, row: int) -> NDArray[np.float64]:
        """Statistics ``[N, F, B]`` of one segment at ``t_ref`` (a new array)."""
        return np.stack([self.cell(row, j) for j in range(self.n_networks)])

    def totals(self) -> NDArray[np.float64]:
        """Every cell's fields summed over bins, ``[S, N, F]``, at ``t_ref``."""
        s = len(self.segments)
        if not math.isfinite(self.t_ref):
            return np.zeros((s, self.n_networks, N_FIELDS))
        age = self.t_ref - self._time[:s]
        if math.isfinite(self.half_life_seconds):
            factor = np.where(np.isfinite(age), np.exp2(-np.maximum(age, 0.0) / self.half_life_seconds), 0.0)
        else:
            factor = np.isfinite(age).astype(np.float64)
        return self._totals[:s] * factor[:, :, None]

    def placement_level(self) -> NDArray[np.float64]:
        """Statistics of the whole placement, ``[N, F, B]`` (sum over segments)."""
        return self._pooled.copy()

    def to_dense(self) -> NDArray[np.float64]:
        """All statistics as one dense array ``[S, N, F, B]`` at ``t_ref`` (small placements, tests)."""
        return np.stack([self.segment_data(r) for r in range(len(self.segments))]).reshape(
            len(self.segments), self.n_networks, N_FIELDS, N_BINS
        )

    def decayed_to(self, t: float) -> NDArray[np.float64]:
        """All statistics as they would look at time ``t`` (no change to this object)."""
        return self.to_dense() * decay_factor(t - self.t_ref, self.half_life_seconds)

    @property
    def n_cells(self) -> int:
        """Cells holding data."""
        return len(self._cells)

    def nbytes(self) -> int:
        """Bytes of the binned cell arrays and the per-cell bookkeeping (excluding Python objects)."""
        binned = sum(c.nbytes for c in self._cells.values())
        return binned + self._time.nbytes + self._totals.nbytes + self._pooled.nbytes

    # ----------------------------------------------------------------- learning
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
        if len(self.segments) > self._time.shape[0]:
            cap = max(2 * self._time.shape[0], len(self.segments))
            time = np.full((cap, self.n_networks), -math.inf)
            time[: self._time.shape[0]] = self._time
            totals = np.zeros((cap, self.n_networks, N_FIELDS))
            totals[: self._totals.shape[0]] = self._totals
            self._time, self._totals = time, totals
        return rows

    def _advance(self, t: float) -> None:
        """Move the reference time forward to ``t`` (only the placement level is rescaled now;
        cells are brought forward when touched or read)."""
        if t > self.t_ref:
            if math.isfinite(self.t_ref):
                self._pooled *= decay_factor(t - self.t_ref, self.half_life_seconds)
            self.t_ref = t

    def _bring_forward(self, keys: NDArray[np.int64]) -> None:
        """Discount cells ``keys`` to ``t_ref`` and mark them as referring to it."""
        rows, nets = np.divmod(keys, self.n_networks)
        age = self.t_ref - self._time[rows, nets]
        for key, a, r, j in zip(keys.tolist(), age.tolist(), rows.tolist(), nets.tolist(), strict=True):
            if a > 0 and math.isfinite(a):
                f = decay_factor(a, self.half_life_seconds)
                cell = self._cells.get(key)
                if cell is not None:
                    cell.scale(f)
                self._totals[r, j] *= f
        self._time[rows, nets] = self.t_ref

    def _add_dense(self, keys: NDArray[np.int64], dense: NDArray[np.float64]) -> None:
        """Add dense statistics ``dense`` [C, F, B] (at ``t_ref``) to cells ``keys`` [C] (unique)."""
        self._bring_forward(keys)
        rows, nets = np.divmod(keys, self.n_networks)
        self._totals[rows, nets] += dense.sum(axis=2)
        np.add.at(self._pooled, nets, dense)
        f_bins = _split_nonzero(dense[:, REQUESTS, :] > 0)
        p_bins = _split_nonzero(dense[:, PRICE, :] > 0)
        for i, key in enumerate(keys.tolist()):
            cell = self._cells.get(key)
            if cell is None:
                cell = self._cells[key] = _Cell()
            fb, pb = f_bins[i], p_bins[i]
            cell.add(fb, dense[i, :FLOOR_FIELDS][:, fb], pb, dense[i, FLOOR_FIELDS:][:, pb])
        self._changed.update(keys.tolist())

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
        key = rows[batch.segment_index] * self.n_networks + batch.network
        keys, compact = np.unique(key, return_inverse=True)
        for lo in range(0, len(keys), ADD_CHUNK_CELLS):
            part = keys[lo : lo + ADD_CHUNK_CELLS]
            sel = (compact >= lo) & (compact < lo + len(part)) if len(keys) > ADD_CHUNK_CELLS else slice(None)
            floor, filled, revenue = batch.floor_cpm[sel], batch.filled[sel], batch.revenue_cpm[sel]
            self._add_dense(part, accumulate(compact[sel] - lo, len(part), floor, filled, revenue, weight[sel]))
        return np.unique(keys // self.n_networks)

    def scale_cell(self, row: int, network: int, factor: float) -> None:
        """Keep ``factor`` of one cell's history (forgetting after a detected change)."""
        key = row * self.n_networks + network
        cell = self._cells.get(key)
        if cell is None:
            return
        self._bring_forward(np.array([key]))
        self._pooled[network] -= (1.0 - factor) * cell.dense()
        cell.scale(factor)
        self._totals[row, network] *= factor
        self._changed.add(key)

    def merge(self, other: SufficientStats) -> None:
        """Add another aggregate of the same placement (computed elsewhere) into this one."""
        if other.n_networks != self.n_networks:
            raise ValueError("cannot merge statistics of placements with different networks")
        if not math.isfinite(other.t_ref) or not other._cells:
            return
        self._advance(other.t_ref)
        factor = decay_factor(self.t_ref - other.t_ref, self.half_life_seconds)
        rows = self._rows_for(other.segments)
        their = np.fromiter(other._cells, np.int64, len(other._cells))
        their_rows, nets = np.divmod(their, other.n_networks)
        keys = rows[their_rows] * self.n_networks + nets
        order = np.argsort(keys)
        for lo in range(0, len(order), ADD_CHUNK_CELLS):
            part = order[lo : lo + ADD_CHUNK_CELLS]
            dense = np.stack([other.cell(int(r), int(j)) for r, j in zip(their_rows[part], nets[part], strict=True)])
            self._add_dense(keys[part], dense * factor)

    def take_changes(self) -> list[tuple[str, int]]:
        """(segment, network) cells changed since the last call, and forget them."""
        changed = sorted(self._changed)
        self._changed = set()
        return [(self.segments[k // self.n_networks], k % self.n_networks) for k in changed]

    # -------------------------------------------------------------------- state
    def entries(self, keys: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Sparse entries of cells ``keys`` (default all) at ``t_ref``: cell key and bin of each
        entry, and its floor- or price-indexed values."""
        keys = sorted(self._cells) if keys is None else sorted(k for k in keys if k in self._cells)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in ("fk", "fb", "fv", "pk", "pb", "pv")}
        for key in keys:
            c = self._cells[key]
            f = self._factor(*divmod(key, self.n_networks))
            parts["fk"].append(np.full(len(c.floor_bins), key, dtype=np.int64))
            parts["fb"].append(c.floor_bins)
            parts["fv"].append(c.floor_values.T * f)
            parts["pk"].append(np.full(len(c.price_bins), key, dtype=np.int64))
            parts["pb"].append(c.price_bins)
            parts["pv"].append(c.price_values.T * f)
        width = {"fv": FLOOR_FIELDS, "pv": N_FIELDS - FLOOR_FIELDS}
        out = {}
        for name, arrays in parts.items():
            if arrays:
                out[name] = np.concatenate(arrays)
            elif name in width:
                out[name] = np.empty((0, width[name]))
            else:
                out[name] = np.empty(0, dtype=np.uint8 if name.endswith("b") else np.int64)
        return {
            "stats_floor_cells": out["fk"],
            "stats_floor_bins": out["fb"].astype(np.uint8),
            "stats_floor_values": out["fv"],
            "stats_price_cells": out["pk"],
            "stats_price_bins": out["pb"].astype(np.uint8),
            "stats_price_values": out["pv"],
        }

    def state(self) -> dict[str, np.ndarray]:
        return {
            **self.entries(),
            "stats_segments": np.array(self.segments, dtype=np.str_),
            "stats_n_networks": np.array(self.n_networks),
            "stats_t_ref": np.array(self.t_ref),
            "stats_half_life": np.array(self.half_life_seconds),
            "stats_totals": self.totals(),
            "stats_pooled": self._pooled.copy(),
        }

    def _cells_from_entries(self, state: dict[str, np.ndarray]) -> dict[int, _Cell]:
        """Cells (values at ``t_ref``) of sparse entries as written by :meth:`entries`."""
        cells: dict[int, _Cell] = {}
        for kind, width in (("floor", FLOOR_FIELDS), ("price", N_FIELDS - FLOOR_FIELDS)):
            keys = np.asarray(state[f"stats_{kind}_cells"], np.int64)
            bins = np.asarray(state[f"stats_{kind}_bins"], np.uint8)
            values = np.asarray(state[f"stats_{kind}_values"], np.float64).reshape(-1, width)
            if len(keys) == 0:
                continue
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), len(keys)], strict=True):
                cell = cells.get(int(keys[lo])) or cells.setdefault(int(keys[lo]), _Cell())
                setattr(cell, f"{kind}_bins", bins[lo:hi].copy())
                setattr(cell, f"{kind}_values", np.ascontiguousarray(values[lo:hi].T))
        return cells

    def load_entries(self, state: dict[str, np.ndarray]) -> None:
        """Replace the cells named in ``state``'s entries (see :meth:`entries`; values at
        ``t_ref``) and update the placement level and totals; other cells stay as they are."""
        for key, cell in self._cells_from_entries(state).items():
            r, j = divmod(key, self.n_networks)
            old = self._cells.get(key)
            if old is not None:
                self._pooled[j] -= old.dense(self._factor(r, j))
            dense = cell.dense()
            self._pooled[j] += dense
            self._totals[r, j] = dense.sum(axis=1)
            self._time[r, j] = self.t_ref
            self._cells[key] = cell
            self._changed.add(key)

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> SufficientStats:
        segments = [str(s) for s in state["stats_segments"]]
        half_life = float(state["stats_half_life"])
        t_ref = float(state["stats_t_ref"])
        if "stats_data" in state:  # dense layout of earlier versions
            return cls.from_dense(segments, state["stats_data"], t_ref, half_life)
        stats = cls(int(state["stats_n_networks"]), half_life, segments)
        stats.t_ref = t_ref
        stats._cells = stats._cells_from_entries(state)
        rows, nets = np.divmod(np.fromiter(stats._cells, np.int64, len(stats._cells)), stats.n_networks)
        stats._time[rows, nets] = t_ref
        stats._totals[: len(segments)] = state["stats_totals"]
        stats._pooled = np.array(state["stats_pooled"], dtype=np.float64)
        return stats

    @classmethod
    def from_dense(
        cls, segments: Sequence[str], data: NDArray[np.float64], t_ref: float, half_life_seconds: float = math.inf
    ) -> SufficientStats:
        """Statistics from a dense array ``[S, N, F, B]`` held at reference time ``t_ref``."""
        data = np.asarray(data, dtype=np.float64)
        stats = cls(data.shape[1], half_life_seconds, segments)
        stats.t_ref = t_ref
        flat = data.reshape(-1, N_FIELDS, N_BINS)
        keys = np.flatnonzero((flat[:, REQUESTS] > 0).any(axis=1) | (flat[:, PRICE] > 0).any(axis=1))
        for lo in range(0, len(keys), ADD_CHUNK_CELLS):
            part = keys[lo : lo + ADD_CHUNK_CELLS]
            stats._add_dense(part, flat[part])
        stats._changed = set()
        return stats
