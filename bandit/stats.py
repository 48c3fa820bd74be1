"""Additive sufficient statistics per (segment, network), binned in log price.

Logically an array ``[S, N, F, B]`` — S segments, N networks, F fields (``FIELDS``),
B log-price bins over ``[PRICE_MIN, MAX_CPM]`` — stored sparsely: a (segment, network)
cell holds only the bins it has seen (a typical cell ~1 KB, a full one ~9 KB). Fields indexed by the *floor* bin of
the request: requests, fills, revenue, revenue², no-fills and their summed log floor,
at-floor fills (second-price mass at the floor) and their summed log price paid (the
floor, or up to the at-floor tolerance above it: :func:`at_floor_log_price`). Fields
indexed by the *price* bin: fills above the floor and their summed log price.

Everything is a weighted count, so aggregates from several workers merge by
addition and time discounting multiplies an aggregate by ``2^(-Δt / half_life)``.
Reads are at ``t_ref`` (the newest event time seen), so the result is the same
whatever the order in which events arrive. Discounting is lazy: values are stored in
units growing with event time (an event at ``ts`` adds ``2^((ts - t_origin) / half_life)``)
and read through one scale ``2^(-(t_ref - t_origin) / half_life)``, so a batch costs what
its events cost, whatever the size of the placement (a pass over everything only every
``RENORMALISE_HALF_LIVES`` half-lives, to stay within floating point range).

Cells live in a slab (:class:`BinSlab`): a cell's entries are contiguous, in bin order,
and a 128-bit mask per cell says which bins it holds, so an entry's place is the cell's
offset plus the number of its bins below (popcount). Learning, reading and merging are
vectorised over cells; a batch's events are first summed per (cell, bin) pair (one sort),
so the slab sees each pair once. A cell that gains a bin moves to the slab's end (its old
entries fill the new block's places that are not new bins); a full slab is compacted
instead of grown when a third of it is garbage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import repeat

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


def mean_position(weight: NDArray, log_sum: NDArray) -> NDArray:
    """Mean log price of each bin's events from their weight and weighted log sum (fields
    [..., B]); the bin centre where the bin has none."""
    return np.where(weight > 0, log_sum / np.where(weight > 0, weight, 1.0), LOG_CENTERS)


def price_bin(log_cpm: NDArray[np.float64]) -> NDArray[np.int64]:
    """Bin index in [0, B) of log prices."""
    b = ((log_cpm - LOG_PRICE_MIN) * (1.0 / BIN_WIDTH)).astype(np.int64)
    return np.clip(b, 0, N_BINS - 1)


def price_bin_one(cpm: float) -> int:
    """``price_bin(log_price(cpm))`` of one price, in scalar arithmetic (the one-request decision
    path; the same operations, so the same bin)."""
    b = int((float(np.log(min(max(cpm, PRICE_MIN), MAX_CPM))) - LOG_PRICE_MIN) * (1.0 / BIN_WIDTH))
    return min(max(b, 0), N_BINS - 1)


def is_at_floor(
    floor_cpm: NDArray, revenue_cpm: NDArray, filled: NDArray, cpm_per_unit: NDArray | float = 1.0
) -> NDArray[np.bool_]:
    """Fills whose price is at the floor within the tolerance (or, misreported, below it).
    Prices rescaled to other units (``cpm_per_unit`` CPM each) keep the tolerance in CPM."""
    atol = AT_FLOOR_ATOL / np.asarray(cpm_per_unit)
    return filled & (revenue_cpm <= floor_cpm + np.maximum(AT_FLOOR_RTOL * floor_cpm, atol) + 1e-12)


def at_floor_log_price(floor_cpm: NDArray[np.float64], revenue_cpm: NDArray[np.float64]) -> NDArray[np.float64]:
    """Log price [n] a fill at the floor is recorded at: what it paid, never below its floor.
    A network paying the floor plus a cent is read at floor + 1 cent: at the floor, the
    cent is 1–2% of a low floor's revenue, and the revenue read through the fills
    (:func:`bandit.curve.revenue_through_fills`) would otherwise give it to the fills above
    the floor, in every floor bin alike."""
    return log_price(np.maximum(revenue_cpm, floor_cpm))


def floor_terms(
    floor_cpm: NDArray[np.float64],
    filled: NDArray[np.bool_],
    revenue_cpm: NDArray[np.float64],
    weight: NDArray[np.float64],
    at_floor: NDArray[np.bool_],
) -> tuple[NDArray[np.float64], tuple[NDArray[np.float64], ...]]:
    """Each event's log floor [n] and its terms [n] of the floor-binned fields, in ``FIELDS``
    order (requests, fills, revenue, revenue², no-fill log floor, at-floor fills, their log
    price): the one arithmetic of the learner, :func:`accumulate` and the offline relearn, so
    their sums agree bit for bit."""
    logf = log_price(floor_cpm)
    w_fill = weight * filled
    w_at = weight * at_floor
    rev_w = weight * revenue_cpm
    at_logp = at_floor_log_price(floor_cpm, revenue_cpm)
    return logf, (weight, w_fill, rev_w, rev_w * revenue_cpm, (weight - w_fill) * logf, w_at, w_at * at_logp)


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
    at_floor = is_at_floor(floor_cpm, revenue_cpm, filled)
    logf, by_floor_terms = floor_terms(floor_cpm, filled, revenue_cpm, weight, at_floor)
    above = filled & ~at_floor
    logp = log_price(np.where(above, revenue_cpm, PRICE_MIN))
    by_floor = cell * N_BINS + price_bin(logf)
    by_price = cell * N_BINS + price_bin(logp)
    size = n_cells * N_BINS
    w_above = weight * above
    columns = [(by_floor, w) for w in by_floor_terms] + [(by_price, w_above), (by_price, w_above * logp)]
    out = np.empty((n_cells, N_FIELDS, N_BINS))
    for f, (index, w) in enumerate(columns):
        out[:, f, :] = np.bincount(index, weights=w, minlength=size).reshape(n_cells, N_BINS)
    return out


#: Half-lives between the stored units' origin and ``t_ref`` after which everything is
#: rescaled (2^256 stays far inside float64 range).
RENORMALISE_HALF_LIVES = 256.0
_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


def _bit_masks(bins: NDArray[np.int64]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """128-bit masks (low, high words) of single bins."""
    bit = np.left_shift(_ONE, (bins & 63).astype(np.uint64))
    upper = bins >= 64
    return np.where(upper, _ZERO, bit), np.where(upper, bit, _ZERO)


def _rank(mask: NDArray[np.uint64], bins: NDArray[np.int64]) -> NDArray[np.int64]:
    """Bins of ``mask`` ([n, 2] words) below each of ``bins`` [n]: the entry's place in its cell."""
    b = bins.astype(np.uint64) % np.uint64(64)
    below = np.left_shift(_ONE, b) - _ONE
    low = np.where(bins < 64, mask[:, 0] & below, mask[:, 0])
    high = np.where(bins < 64, np.uint64(0), mask[:, 1] & below)
    return (np.bitwise_count(low) + np.bitwise_count(high)).astype(np.int64)


def _locate(mask: NDArray[np.uint64], bins: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Bins of ``mask`` ([n, 2] words) below each of ``bins`` [n] (as :func:`_rank`), and whether
    ``mask`` holds that bin."""
    shift = (bins & 63).astype(np.uint64)
    high = bins >= 64
    word = np.where(high, mask[:, 1], mask[:, 0])
    rank = np.bitwise_count(word & ((_ONE << shift) - _ONE)).astype(np.int64)
    rank[high] += np.bitwise_count(mask[high, 0])
    return rank, ((word >> shift) & _ONE).astype(bool)


def distinct(values: NDArray[np.int64], size: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Distinct ``values`` (sorted) and each value's place among them, as ``np.unique(values,
    return_inverse=True)`` for values in ``[0, size)``; many values without sorting them."""
    if len(values) * 8 < size:
        return _sorted_distinct(np.asarray(values, dtype=np.int64), size)
    seen = np.zeros(size, dtype=bool)
    seen[values] = True
    found = np.flatnonzero(seen)
    place = np.empty(size, dtype=np.int64)
    place[found] = np.arange(len(found))
    return found, place[values]


def _sorted_distinct(values: NDArray[np.int64], size: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """:func:`distinct` by one sort: each value packed with its position into one integer
    (value in the high bits), so a plain ``np.sort`` (vectorised, about half the time of the
    ``argsort`` behind ``np.unique``) gives the sorted values and where each came from."""
    n = len(values)
    shift = max((n - 1).bit_length(), 1)
    if n == 0 or size > 1 << (62 - shift):  # would not fit in 63 bits
        return np.unique(values, return_inverse=True)
    packed = np.sort((values << shift) | np.arange(n))
    ordered = packed >> shift
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(n, dtype=np.int64)
    inverse[packed & ((1 << shift) - 1)] = np.cumsum(first) - 1
    return ordered[first], inverse


def _sorted_pairs(cells: NDArray[np.int64], bins: NDArray[np.int64]) -> bool:
    """Whether (cell, bin) pairs are strictly increasing (sorted by cell then bin, unique)."""
    step = np.diff(cells)
    return bool(((step > 0) | ((step == 0) & (np.diff(bins) > 0))).all())


def _count(mask: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Bins held by each of ``mask`` [..., 2] words."""
    return np.bitwise_count(mask[..., 0]).astype(np.int64) + np.bitwise_count(mask[..., 1])


def _bins_of(mask: NDArray[np.uint64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(row, bin) of every bin set in ``mask`` [C, 2], sorted by row then bin."""
    bits = np.unpackbits(np.ascontiguousarray(mask).view(np.uint8).reshape(len(mask), 16), axis=1, bitorder="little")
    return np.nonzero(bits)


class BinSlab:
    """Sparse binned values ``[cells, width, B]``: per cell a bin mask and a block of entries.

    ``values[offset[c] + k]`` is the ``k``-th bin (in order) that cell ``c`` holds.
    """

    def __init__(self, width: int, n_cells: int = 0) -> None:
        self.width = width
        self.mask = np.zeros((n_cells, 2), dtype=np.uint64)
        self.offset = np.zeros(n_cells, dtype=np.int64)
        self.values = np.zeros((64, width))
        self.used = 0  # slab rows handed out (the rows past it are zero)
        self.live = 0  # slab rows of current blocks

    def grow_cells(self, n_cells: int) -> None:
        if n_cells > len(self.offset):
            cap = max(n_cells, 2 * len(self.offset))
            self.mask = np.concatenate([self.mask, np.zeros((cap - len(self.mask), 2), dtype=np.uint64)])
            self.offset = np.concatenate([self.offset, np.zeros(cap - len(self.offset), dtype=np.int64)])

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` more rows at the slab's end. A full slab is compacted when at least a
        third of it is garbage (blocks left by moved cells), else grown: either way one copy into
        a new array, twice what it keeps."""
        if self.used + rows <= len(self.values):
            return
        if 3 * (self.used - self.live) >= self.used:
            self.compact(spare=rows)
        if self.used + rows > len(self.values):
            grown = np.zeros((max(self.used + rows, 2 * len(self.values)), self.width))
            grown[: self.used] = self.values[: self.used]
            self.values = grown

    def add(self, cells: NDArray[np.int64], bins: NDArray[np.int64], values: NDArray[np.float64]) -> None:
        """Add ``values`` [n, width] at (cell, bin) pairs, unique and grouped by cell (each cell's
        pairs consecutive; sorted by cell then bin, for instance)."""
        if len(cells) == 0:
            return
        mask = np.take(self.mask, cells, axis=0)  # (rows gathered by np.take: several times faster than indexing)
        if not mask.any() and _sorted_pairs(cells, bins):
            self._append(cells, bins, values)  # cells holding nothing (a state loaded): blocks as given
            return
        rank, held = _locate(mask, bins)
        if not held.all():
            new_cells, new_bins = cells[~held], bins[~held]  # grouped by cell too
            first = np.flatnonzero(np.r_[True, new_cells[1:] != new_cells[:-1]])
            self._move(new_cells[first], first, new_bins)
            rank = _rank(np.take(self.mask, cells, axis=0), bins)
        # ``values[rows] += values`` for distinct rows, with the rows gathered by ``np.take``
        # (a third faster than indexing at ~10^6 rows).
        rows = self.offset[cells] + rank
        summed = np.take(self.values, rows, axis=0)
        summed += values
        self.values[rows] = summed

    def _append(self, cells: NDArray[np.int64], bins: NDArray[np.int64], values: NDArray[np.float64]) -> None:
        """New blocks at the slab's end for cells holding nothing, from their pairs sorted by cell
        then bin (so the pairs are the blocks' entries, in order)."""
        first = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
        low, high = _bit_masks(bins)
        self._reserve(len(cells))
        self.values[self.used : self.used + len(cells)] = values
        self.offset[cells[first]] = self.used + first
        self.mask[cells[first]] = np.stack([np.bitwise_or.reduceat(low, first), np.bitwise_or.reduceat(high, first)], 1)
        self.used += len(cells)
        self.live += len(cells)

    def _move(self, cells: NDArray[np.int64], first: NDArray[np.int64], bins: NDArray[np.int64]) -> None:
        """Give ``cells`` [m] new blocks at the slab's end that also hold ``bins`` (bins they do not
        hold yet, grouped by cell: cell ``i``'s from ``first[i]``), keeping their values, the new
        bins' entries zero.

        A block is its cell's entries in bin order, so the old entries fill the new block's
        places that are not new bins, in order: no bin needs to be unpacked from the masks.
        """
        low, high = _bit_masks(bins)
        old = np.take(self.mask, cells, axis=0)
        new = old | np.stack([np.bitwise_or.reduceat(low, first), np.bitwise_or.reduceat(high, first)], axis=1)
        old_sizes, sizes = _count(old), _count(new)
        rows = int(sizes.sum())
        self._reserve(rows)
        start = np.cumsum(sizes) - sizes  # of each new block, from the slab's end
        owner = np.repeat(np.arange(len(cells)), np.diff(np.r_[first, len(bins)]))
        fresh = np.zeros(rows, dtype=bool)
        fresh[start[owner] + _rank(np.take(new, owner, axis=0), bins)] = True
        kept = int(old_sizes.sum())
        src = np.repeat(self.offset[cells] - (np.cumsum(old_sizes) - old_sizes), old_sizes) + np.arange(kept)
        self.values[self.used + np.flatnonzero(~fresh)] = np.take(self.values, src, axis=0)  # rows past ``used`` are 0
        self.offset[cells] = self.used + start
        self.mask[cells] = new
        self.used += rows
        self.live += rows - kept

    def compact(self, spare: int = 0) -> None:
        """Move every block to the front, in cell order (drops the garbage of moved blocks), into
        an array with room for twice the blocks and ``spare`` rows."""
        sizes = _count(self.mask)
        cells = np.flatnonzero(sizes)
        sizes = sizes[cells]
        start = np.cumsum(sizes) - sizes
        src = np.repeat(self.offset[cells] - start, sizes) + np.arange(int(sizes.sum()))
        values = np.zeros((max(64, 2 * (len(src) + spare)), self.width))
        np.take(self.values, src, axis=0, out=values[: len(src)])  # rows gathered straight into place
        self.values = values
        self.offset[cells] = start
        self.used = self.live = len(src)

    def replace(
        self, cells: NDArray[np.int64], entry_cells: NDArray[np.int64], bins: NDArray[np.int64], values: NDArray
    ) -> None:
        """Make ``cells`` (unique) hold exactly the given entries ([n] cells among ``cells`` and bins,
        sorted by cell then bin, values [n, width]); a cell of ``cells`` without entries holds nothing."""
        if len(cells) == 0:
            return
        self.live -= int(_count(self.mask[cells]).sum())
        self.mask[cells] = 0
        self.add(entry_cells, bins, values)

    def block(self, cell: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Bins [k] and values [k, width] of one cell (a view into the slab)."""
        _, b = _bins_of(self.mask[cell : cell + 1])
        lo = int(self.offset[cell])
        return b, self.values[lo : lo + len(b)]

    def entries(self, cells: NDArray[np.int64] | None = None) -> tuple[NDArray, NDArray, NDArray]:
        """(cell, bin, values) of every entry of ``cells`` (default all), sorted by cell then bin."""
        if cells is None:
            cells = np.flatnonzero(self.mask.any(axis=1))
        row, b = _bins_of(self.mask[cells])
        first = np.searchsorted(row, np.arange(len(cells)))
        src = self.offset[cells][row] + (np.arange(len(row)) - first[row])
        return cells[row], b.astype(np.uint8), self.values[src]

    def at(
        self, cells: NDArray[np.int64], bins: NDArray[np.int64], columns: Sequence[int], *factors: float
    ) -> NDArray[np.float64]:
        """Values of ``columns`` times ``factors`` (in turn) [n, k] at (cell, bin) pairs ([n] each); 0
        where the cell lacks the bin."""
        rank, held = _locate(np.take(self.mask, cells, axis=0), bins)
        place = np.where(held, self.offset[cells] + rank, 0)
        out = self._take(place, columns)
        for factor in factors:
            out *= factor
        out[~held] = 0.0
        return out

    def _take(self, rows: NDArray[np.int64], columns: Sequence[int]) -> NDArray[np.float64]:
        """``values[rows][:, columns]`` [n, k] (a new array), gathering only those columns."""
        flat = (rows * self.width)[:, None] + np.asarray(columns)
        return np.take(self.values.reshape(-1), flat)

    def cumulative(
        self, cells: NDArray[np.int64], bins: NDArray[np.int64], columns: Sequence[int], *factors: float
    ) -> NDArray[np.float64]:
        """Sums of ``columns`` times ``factors`` (each entry multiplied in turn, then summed) [n, k]
        over each cell's entries at bins <= the pair's bin.

        Each cell's entries are summed in bin order from zero, as ``np.cumsum`` over its dense
        bins would (the same floating-point sums, so thresholds on them agree), for all the
        cells asked about at once: the cells with the same number of entries ``c`` are
        gathered as one ``[cells, c, k]`` array and summed along their entries by one
        ``np.cumsum`` (sequential), one step per distinct count (at most 128), and work for
        the entries of those cells only.
        """
        touched, inverse = distinct(cells, len(self.offset))
        counts = _count(np.take(self.mask, touched, axis=0))
        order = np.argsort(counts.astype(np.uint8), kind="stable")  # counts <= 128: a radix sort
        ordered = counts[order]
        # Each touched cell's running sums are a block of ``run``, blocks grouped by count.
        block = np.empty(len(touched), dtype=np.int64)
        block[order] = np.cumsum(ordered) - ordered + 1
        run = np.empty((1 + int(counts.sum()), len(columns)))
        run[0] = 0.0  # the sums over no entries
        edges = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
        flat = self.values.reshape(-1)
        for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
            c = int(ordered[lo])
            if c == 0:
                continue
            rows = self.offset[touched[order[lo:hi]]][:, None] + np.arange(c)  # [cells, c]
            part = np.take(flat, (rows * self.width)[:, :, None] + np.asarray(columns))  # [cells, c, k]
            for factor in factors:
                part *= factor
            at = int(block[order[lo]])
            np.cumsum(part, axis=1, out=run[at : at + (hi - lo) * c].reshape(hi - lo, c, len(columns)))
        rank, held = _locate(np.take(self.mask, cells, axis=0), bins)
        below = rank + held  # entries at or below each pair's bin
        return np.take(run, np.where(below > 0, block[inverse] + below - 1, 0), axis=0)

    def scale(self, factor: float) -> None:
        self.values[: self.used] *= factor

    def nbytes_per_cell(self) -> NDArray[np.float64]:
        """Bytes each cell's entries take (values plus its mask and offset)."""
        return _count(self.mask) * self.width * self.values.itemsize + 24.0


class SufficientStats:
    """Discounted statistics of one placement at reference time ``t_ref``, stored per cell.

    ``segments[s]`` names row ``s``; cell ``row * n_networks + network``. Reads
    (:meth:`cell`, :meth:`segment_data`, :meth:`totals`, :meth:`placement_level`) return
    dense arrays at ``t_ref``; :meth:`values_at`, :meth:`cumulative_at` and :meth:`cell_totals`
    read many cells at once, at given bins (a batch's events), without making them dense.
    Merging and adding are exact sums after both sides are discounted to the same time.
    """

    def __init__(
        self,
        n_networks: int,
        half_life_seconds: float = math.inf,
        segments: Sequence[str] = (),
        *,
        floor_only: bool = False,
    ) -> None:
        self.n_networks = int(n_networks)
        self.half_life_seconds = float(half_life_seconds)
        #: Learn only the floor-indexed fields (fills above the floor are not binned by price):
        #: enough for a change detector's history, which compares at the floors, at half the cost.
        self.floor_only = floor_only
        self.t_ref = -math.inf
        self.t_origin = -math.inf  # time at which stored units equal values
        self.segments: list[str] = []
        self._index: dict[str, int] = {}
        self._floor = BinSlab(FLOOR_FIELDS)
        self._price = BinSlab(N_FIELDS - FLOOR_FIELDS)
        self._totals = np.zeros((0, N_FIELDS))  # per cell, summed over bins
        self._pooled = np.zeros((self.n_networks, N_FIELDS, N_BINS))
        self._changed = np.zeros(0, dtype=bool)
        self._rows_for(list(segments))

    # ------------------------------------------------------------------ reading
    def segment_row(self, segment: str) -> int | None:
        return self._index.get(segment)

    @property
    def _scale(self) -> float:
        """Stored units → values at ``t_ref``."""
        return decay_factor(self.t_ref - self.t_origin, self.half_life_seconds) if math.isfinite(self.t_ref) else 1.0

    def cell(self, row: int, network: int) -> NDArray[np.float64]:
        """Statistics ``[F, B]`` of one (segment, network) cell at ``t_ref`` (a new array)."""
        key = row * self.n_networks + network
        out = np.zeros((N_FIELDS, N_BINS))
        if key < len(self._totals):
            fb, fv = self._floor.block(key)
            pb, pv = self._price.block(key)
            scale = self._scale
            out[:FLOOR_FIELDS, fb] = fv.T * scale
            out[FLOOR_FIELDS:, pb] = pv.T * scale
        return out

    def rows_of(self, segments: Sequence[str]) -> NDArray[np.int64]:
        """Row of each of ``segments`` [k]; -1 for a segment not seen."""
        return np.fromiter(map(self._index.get, segments, repeat(-1)), np.int64, len(segments))

    def values_at(
        self, cells: NDArray[np.int64], bins: NDArray[np.int64], fields: Sequence[int], factor: float = 1.0
    ) -> NDArray[np.float64]:
        """Values ``[n, len(fields)]`` at t_ref of ``fields`` at (cell, bin) pairs ([n] each; cell
        ``row * n_networks + network``), times ``factor``; 0 where the cell does not hold the bin:
        ``(cell(row, network) * factor)[fields, bin]`` for many pairs at once.

        A field indexed by the floor bin is read at the pair's bin as a floor bin, one indexed by
        the price bin as a price bin (as in :meth:`cell`)."""
        return self._read(BinSlab.at, cells, bins, fields, factor)

    def cumulative_at(
        self, cells: NDArray[np.int64], bins: NDArray[np.int64], fields: Sequence[int], factor: float = 1.0
    ) -> NDArray[np.float64]:
        """Sums ``[n, len(fields)]`` at t_ref of ``fields`` times ``factor`` over each pair's cell's
        bins ``<= bin``: ``np.cumsum(cell(row, network)[fields] * factor, axis=1)[:, bin]`` for many
        (cell, bin) pairs at once, with the same floating-point sums (``bin = N_BINS - 1`` gives
        the cell's sum over all its bins)."""
        return self._read(BinSlab.cumulative, cells, bins, fields, factor)

    def _read(
        self, read, cells: NDArray[np.int64], bins: NDArray[np.int64], fields: Sequence[int], factor: float
    ) -> NDArray[np.float64]:
        """``read`` (a :class:`BinSlab` method) of ``fields`` from the slab holding each, at t_ref."""
        cells = np.asarray(cells, dtype=np.int64)
        bins = np.asarray(bins, dtype=np.int64)
        fields = list(fields)
        inside = cells < len(self._totals)  # cells beyond the capacity hold nothing
        if not inside.all():
            cells, bins = cells[inside], bins[inside]
        values = np.zeros((len(cells), len(fields)))
        if len(cells):
            scale = self._scale
            for slab, lo, hi in ((self._floor, 0, FLOOR_FIELDS), (self._price, FLOOR_FIELDS, N_FIELDS)):
                at = [k for k, f in enumerate(fields) if lo <= f < hi]
                if at:
                    # stored values * scale * factor, in that order: as the dense cell times factor
                    values[:, at] = read(slab, cells, bins, [fields[k] - lo for k in at], scale, factor)
        if len(cells) == len(inside):
            return values
        out = np.zeros((len(inside), len(fields)))
        out[inside] = values
        return out

    def cell_totals(self, cells: NDArray[np.int64]) -> NDArray[np.float64]:
        """Fields summed over bins ``[n, F]`` at t_ref of cells ``cells`` [n] (as :meth:`totals`)."""
        cells = np.asarray(cells, dtype=np.int64)
        out = np.zeros((len(cells), N_FIELDS))
        inside = cells < len(self._totals)
        out[inside] = self._totals[cells[inside]] * self._scale
        return out

    def segment_data(self, row: int) -> NDArray[np.float64]:
        """Statistics ``[N, F, B]`` of one segment at ``t_ref`` (a new array)."""
        return np.stack([self.cell(row, j) for j in range(self.n_networks)])

    def totals(self) -> NDArray[np.float64]:
        """Every cell's fields summed over bins, ``[S, N, F]``, at ``t_ref``."""
        n = len(self.segments) * self.n_networks
        return (self._totals[:n] * self._scale).reshape(len(self.segments), self.n_networks, N_FIELDS)

    def placement_level(self) -> NDArray[np.float64]:
        """Statistics of the whole placement, ``[N, F, B]`` (sum over segments)."""
        return self._pooled * self._scale

    def to_dense(self) -> NDArray[np.float64]:
        """All statistics as one dense array ``[S, N, F, B]`` at ``t_ref`` (small placements, tests)."""
        out = np.zeros((len(self.segments) * self.n_networks, N_FIELDS, N_BINS))
        for slab, fields in ((self._floor, slice(0, FLOOR_FIELDS)), (self._price, slice(FLOOR_FIELDS, N_FIELDS))):
            cells, bins, values = slab.entries()
            out[cells, fields, bins] = values * self._scale
        return out.reshape(len(self.segments), self.n_networks, N_FIELDS, N_BINS)

    def decayed_to(self, t: float) -> NDArray[np.float64]:
        """All statistics as they would look at time ``t`` (no change to this object)."""
        return self.to_dense() * decay_factor(t - self.t_ref, self.half_life_seconds)

    @property
    def n_cells(self) -> int:
        """Cells holding data."""
        return int((self._floor.mask[: len(self._totals)] != 0).any(axis=1).sum())

    def cell_nbytes(self) -> NDArray[np.float64]:
        """Bytes of each cell holding data: its entries, masks, offsets and totals."""
        held = (self._floor.mask[: len(self._totals)] != 0).any(axis=1)
        per = self._floor.nbytes_per_cell()[: len(held)] + self._price.nbytes_per_cell()[: len(held)]
        return per[held] + N_FIELDS * 8.0 + 1.0

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
        n = len(self.segments) * self.n_networks
        if n > len(self._totals):
            cap = max(n, 2 * len(self._totals))
            self._totals = np.concatenate([self._totals, np.zeros((cap - len(self._totals), N_FIELDS))])
            self._changed = np.concatenate([self._changed, np.zeros(cap - len(self._changed), dtype=bool)])
            self._floor.grow_cells(cap)
            self._price.grow_cells(cap)
        return rows

    def _advance(self, t: float) -> None:
        """Move the reference time forward to ``t`` (nothing is rescaled, except every
        ``RENORMALISE_HALF_LIVES`` half-lives)."""
        if t <= self.t_ref:
            return
        self.t_ref = t
        if not math.isfinite(self.t_origin):
            self.t_origin = t
        elif (t - self.t_origin) > RENORMALISE_HALF_LIVES * self.half_life_seconds:
            scale = self._scale
            for slab in (self._floor, self._price):
                slab.scale(scale)
            self._totals *= scale
            self._pooled *= scale
            self.t_origin = t
            self._changed[: len(self.segments) * self.n_networks] = True  # every stored value moved

    def _units(self, ts: NDArray[np.float64]) -> NDArray[np.float64]:
        """Stored weight of events at times ``ts``."""
        if not math.isfinite(self.half_life_seconds):
            return np.ones(len(ts))
        return np.exp2((ts - self.t_origin) / self.half_life_seconds)

    def _add_entries(self, cell: NDArray[np.int64], floor_cpm, filled, revenue_cpm, weight, cpm_per_unit=1.0) -> None:
        """Add events: cell keys, floors, fills, revenues and weights (stored units), each [n]
        (``cpm_per_unit``: see :func:`is_at_floor`)."""
        at_floor = is_at_floor(floor_cpm, revenue_cpm, filled, cpm_per_unit)
        logf, by_floor = floor_terms(floor_cpm, filled, revenue_cpm, weight, at_floor)
        fbin = price_bin(logf)
        above = filled & ~at_floor
        if self.floor_only:
            above = np.zeros(len(cell), dtype=bool)
        logp = log_price(revenue_cpm[above])
        pbin = price_bin(logp)
        w_above = weight[above]
        by_price = (w_above, w_above * logp)
        # Each (cell, bin) pair's sums, then the cells' totals and the placement level from those
        # sums (a large batch has fewer pairs than events).
        size = self.n_networks * N_BINS
        for fields, (keys, summed) in (
            (slice(0, FLOOR_FIELDS), self._add_binned(self._floor, cell, fbin, by_floor)),
            (slice(FLOOR_FIELDS, N_FIELDS), self._add_binned(self._price, cell[above], pbin, by_price)),
        ):
            if len(keys) == 0:
                continue
            cells = keys // N_BINS
            first = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
            self._totals[cells[first], fields] += np.add.reduceat(summed, first, axis=0)
            pooled = (cells % self.n_networks) * N_BINS + keys % N_BINS
            for f, column in enumerate(summed.T):
                self._pooled[:, fields.start + f] += np.bincount(pooled, column, size).reshape(-1, N_BINS)
            self._changed[cells[first]] = True

    @staticmethod
    def _add_binned(
        slab: BinSlab, cell: NDArray[np.int64], bins: NDArray[np.int64], columns: Sequence
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Sum ``columns`` (each [n]) by (cell, bin) and add them to ``slab``; returns the pairs'
        keys ``cell * N_BINS + bin`` [P] (sorted) and their sums [P, len(columns)]."""
        if len(cell) == 0:
            return np.empty(0, dtype=np.int64), np.empty((0, len(columns)))
        keys, inverse = distinct(cell * N_BINS + bins, len(slab.offset) * N_BINS)  # few cells: no sort
        summed = np.stack([np.bincount(inverse, c, len(keys)) for c in columns], axis=1)
        slab.add(keys // N_BINS, keys % N_BINS, summed)
        return keys, summed

    def add(self, batch: EventBatch) -> NDArray[np.int64]:
        """Add a batch; returns the rows (segments) it touched."""
        if len(batch) == 0:
            return np.empty(0, dtype=np.int64)
        rows = self._rows_for(batch.segments)
        self._advance(float(batch.ts.max()))
        cell = rows[batch.segment_index] * self.n_networks + batch.network
        unit = 1.0 if batch.cpm_per_unit is None else batch.cpm_per_unit
        self._add_entries(cell, batch.floor_cpm, batch.filled, batch.revenue_cpm, self._units(batch.ts), unit)
        return distinct(rows[batch.segment_index], len(self.segments))[0]

    def scale_cell(self, row: int, network: int, factor: float) -> None:
        """Keep ``factor`` of one cell's history (forgetting after a detected change)."""
        key = row * self.n_networks + network
        if key >= len(self._totals):
            return
        for slab, fields in ((self._floor, slice(0, FLOOR_FIELDS)), (self._price, slice(FLOOR_FIELDS, N_FIELDS))):
            bins, values = slab.block(key)
            self._pooled[network, fields, bins] -= (1.0 - factor) * values  # [k, fields]
            values *= factor
        self._totals[key] *= factor
        self._changed[key] = True

    def _add_dense_values(self, keys: NDArray[np.int64], dense: NDArray[np.float64]) -> None:
        """Add dense values ``[C, F, B]`` (stored units) to cells ``keys`` (sorted, unique)."""
        for slab, fields, nz in (
            (self._floor, slice(0, FLOOR_FIELDS), dense[:, REQUESTS] != 0),
            (self._price, slice(FLOOR_FIELDS, N_FIELDS), dense[:, PRICE] != 0),
        ):
            c, b = np.nonzero(nz)
            slab.add(keys[c], b, dense[c, fields, b])
        self._totals[keys] += dense.sum(axis=2)
        np.add.at(self._pooled, keys % self.n_networks, dense)
        self._changed[keys] = True

    def merge(self, other: SufficientStats) -> None:
        """Add another aggregate of the same placement (computed elsewhere) into this one."""
        if other.n_networks != self.n_networks:
            raise ValueError("cannot merge statistics of placements with different networks")
        if not math.isfinite(other.t_ref):
            return
        self._advance(other.t_ref)
        # other's stored units → values at other.t_ref → values at self.t_ref → self's units
        factor = other._scale * decay_factor(self.t_ref - other.t_ref, self.half_life_seconds) / self._scale
        rows = self._rows_for(other.segments)
        for slab, mine in ((other._floor, self._floor), (other._price, self._price)):
            cells, bins, values = slab.entries()
            keys = rows[cells // other.n_networks] * self.n_networks + cells % other.n_networks
            order = np.lexsort((bins, keys))
            mine.add(keys[order], bins[order].astype(np.int64), values[order] * factor)
        n_other = len(other.segments) * other.n_networks
        their = np.flatnonzero(other._totals[:n_other].any(axis=1))
        keys = rows[their // other.n_networks] * self.n_networks + their % other.n_networks
        self._totals[keys] += other._totals[their] * factor
        self._pooled += other._pooled * factor
        self._changed[keys] = True

    def take_changes(self) -> NDArray[np.int64]:
        """Cells (``row * n_networks + network``) changed since the last call, and forget them."""
        changed = np.flatnonzero(self._changed)
        self._changed[:] = False
        return changed

    # -------------------------------------------------------------------- state
    def entries(self, cells: NDArray[np.int64] | None = None) -> dict[str, np.ndarray]:
        """Sparse entries (stored units) of ``cells`` (default all): cell and bin of each entry and
        its floor- or price-indexed values, sorted by cell then bin."""
        out: dict[str, np.ndarray] = {}
        for kind, slab in (("floor", self._floor), ("price", self._price)):
            if cells is None:
                held = np.flatnonzero(slab.mask[: len(self._totals)].any(axis=1))
            else:
                held = np.asarray(cells, np.int64)
            c, b, v = slab.entries(held)
            out[f"stats_{kind}_cells"], out[f"stats_{kind}_bins"], out[f"stats_{kind}_values"] = c, b, v
        return out

    def state(self) -> dict[str, np.ndarray]:
        n = len(self.segments) * self.n_networks
        return {
            **self.entries(),
            "stats_segments": np.array(self.segments, dtype=np.str_),
            "stats_n_networks": np.array(self.n_networks),
            "stats_t_ref": np.array(self.t_ref),
            "stats_t_origin": np.array(self.t_origin),
            "stats_half_life": np.array(self.half_life_seconds),
            "stats_totals": self._totals[:n].reshape(len(self.segments), self.n_networks, N_FIELDS).copy(),
            "stats_pooled": self._pooled.copy(),
        }

    def changed_state(self, cells: NDArray[np.int64], since_segments: int) -> dict[str, np.ndarray]:
        """What changed since an earlier state of this object that held ``since_segments``
        segments, given the cells changed since (:meth:`take_changes`, sorted): the segments
        added, the times, the placement level, and the totals and entries of ``cells``.
        :meth:`apply_changed_state` makes that earlier state equal to this one; its size is
        that of the changed cells (plus ``[N, F, B]`` for the placement level)."""
        cells = np.asarray(cells, dtype=np.int64)
        return {
            **self.entries(cells),
            "stats_cells": cells,
            "stats_cell_totals": self._totals[cells].copy(),
            "stats_segments_from": np.array(since_segments, dtype=np.int64),
            "stats_new_segments": np.array(self.segments[since_segments:], dtype=np.str_),
            "stats_n_networks": np.array(self.n_networks),
            "stats_t_ref": np.array(self.t_ref),
            "stats_t_origin": np.array(self.t_origin),
            "stats_half_life": np.array(self.half_life_seconds),
            "stats_pooled": self._pooled.copy(),
        }

    def apply_changed_state(self, delta: Mapping[str, np.ndarray]) -> None:
        """Bring this object forward by a :meth:`changed_state` taken from a later version of it
        (raises ``ValueError``, changing nothing, when the delta does not follow this state)."""
        since = int(delta["stats_segments_from"])
        if since != len(self.segments):
            raise ValueError(f"statistics changes follow {since} segments, these statistics hold {len(self.segments)}")
        same_kind = int(delta["stats_n_networks"]) == self.n_networks
        if not same_kind or float(delta["stats_half_life"]) != self.half_life_seconds:
            raise ValueError("statistics changes are of statistics with other networks or another half-life")
        cells = np.asarray(delta["stats_cells"], dtype=np.int64)
        n_cells = (since + len(delta["stats_new_segments"])) * self.n_networks
        if len(cells) and (cells.min() < 0 or cells.max() >= n_cells):
            raise ValueError("statistics changes name cells beyond their segments")
        self._rows_for([str(s) for s in delta["stats_new_segments"]])
        self.t_ref = float(delta["stats_t_ref"])
        self.t_origin = float(delta["stats_t_origin"])
        for kind, slab in (("floor", self._floor), ("price", self._price)):
            slab.replace(
                cells,
                np.asarray(delta[f"stats_{kind}_cells"], np.int64),
                np.asarray(delta[f"stats_{kind}_bins"], np.int64),
                np.asarray(delta[f"stats_{kind}_values"], np.float64).reshape(-1, slab.width),
            )
        self._totals[cells] = np.asarray(delta["stats_cell_totals"], np.float64).reshape(len(cells), N_FIELDS)
        self._pooled = np.array(delta["stats_pooled"], dtype=np.float64)
        self._changed[cells] = False

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> SufficientStats:
        segments = [str(s) for s in state["stats_segments"]]
        half_life = float(state["stats_half_life"])
        t_ref = float(state["stats_t_ref"])
        if "stats_data" in state:  # dense layout of earlier versions
            return cls.from_dense(segments, state["stats_data"], t_ref, half_life)
        stats = cls(int(state["stats_n_networks"]), half_life, segments)
        stats.t_ref = t_ref
        stats.t_origin = float(state["stats_t_origin"])
        for kind, slab in (("floor", stats._floor), ("price", stats._price)):
            slab.add(
                np.asarray(state[f"stats_{kind}_cells"], np.int64),
                np.asarray(state[f"stats_{kind}_bins"], np.int64),
                np.asarray(state[f"stats_{kind}_values"], np.float64).reshape(-1, slab.width),
            )
        n = len(segments) * stats.n_networks
        stats._totals[:n] = np.asarray(state["stats_totals"], np.float64).reshape(n, N_FIELDS)
        stats._pooled = np.array(state["stats_pooled"], dtype=np.float64)
        stats._changed[:] = False
        return stats

    @classmethod
    def from_dense(
        cls, segments: Sequence[str], data: NDArray[np.float64], t_ref: float, half_life_seconds: float = math.inf
    ) -> SufficientStats:
        """Statistics from a dense array ``[S, N, F, B]`` held at reference time ``t_ref``."""
        data = np.asarray(data, dtype=np.float64)
        stats = cls(data.shape[1], half_life_seconds, segments)
        stats.t_ref = stats.t_origin = t_ref
        flat = data.reshape(-1, N_FIELDS, N_BINS)
        keys = np.flatnonzero((flat[:, REQUESTS] != 0).any(axis=1) | (flat[:, PRICE] != 0).any(axis=1))
        stats._add_dense_values(keys, flat[keys])
        stats._changed[:] = False
        return stats
