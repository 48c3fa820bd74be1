"""Reads of many cells at once (values at bins, sums over bins at or below, totals) equal the
same reads of the dense statistics."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandit import EventBatch
from bandit.stats import FIELDS, N_BINS, BinSlab, SufficientStats, distinct

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_NETWORKS = 3
SEGMENTS = tuple(f"s{i}" for i in range(6))


def learned(seed: int, batches: int, half_life_hours: float) -> SufficientStats:
    """Statistics of random events (floors over the whole range, fills at, above and below
    the floor), learned in several batches over time, with a few cells forgotten."""
    rng = np.random.default_rng(seed)
    stats = SufficientStats(N_NETWORKS, half_life_hours * 3600.0)
    for k in range(batches):
        n = int(rng.integers(1, 400))
        floor = np.exp(rng.uniform(-5.0, 7.0, n)) * (rng.random(n) > 0.05)
        filled = rng.random(n) < 0.6
        revenue = np.where(filled, floor * rng.choice([1.0, 1.5, 4.0], n), 0.0)
        segs = SEGMENTS[: 2 + k % 5]  # segments appear over time
        ts = 1.8e9 + k * 3600.0 + rng.uniform(0, 3600.0, n)
        stats.add(
            EventBatch(segs, rng.integers(0, len(segs), n), rng.integers(0, N_NETWORKS, n), floor, filled, revenue, ts)
        )
        if k % 3 == 2:
            stats.scale_cell(int(rng.integers(0, len(segs))), int(rng.integers(0, N_NETWORKS)), 0.1 * (k % 2))
    return stats


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    batches=st.integers(1, 8),
    half_life_hours=st.sampled_from([math.inf, 2.0]),
)
def test_reads_at_bins_equal_the_dense_cells(seed: int, batches: int, half_life_hours: float) -> None:
    stats = learned(seed, batches, half_life_hours)
    dense = stats.to_dense().reshape(-1, len(FIELDS), N_BINS)
    rng = np.random.default_rng(seed)
    padded = np.concatenate([dense, np.zeros((2 * N_NETWORKS, len(FIELDS), N_BINS))])
    scale = max(1.0, float(np.abs(dense).max(initial=0.0)))
    for n in (2, 500):  # a few pairs (sorted out by np.unique) and many
        # Cells with data, cells of known rows without data, and cells beyond the statistics.
        cells = rng.integers(0, len(dense) + 2 * N_NETWORKS, n)
        bins = np.where(rng.random(n) < 0.2, rng.choice([0, N_BINS - 1], n), rng.integers(0, N_BINS, n))
        fields = list(rng.permutation(len(FIELDS))[: int(rng.integers(1, len(FIELDS) + 1))])
        at = padded[cells][:, fields, :]
        np.testing.assert_array_equal(stats.values_at(cells, bins, fields), at[np.arange(n), :, bins])
        below = np.cumsum(at * 0.3, axis=2)[np.arange(n), :, bins]
        np.testing.assert_array_equal(stats.cumulative_at(cells, bins, fields, 0.3), below)  # the same sums
        totals = padded.sum(axis=2)[cells]
        np.testing.assert_allclose(stats.cell_totals(cells), totals, rtol=1e-9, atol=1e-9 * scale)


def test_rows_of_unknown_segments_are_minus_one() -> None:
    stats = SufficientStats(2, segments=["a", "b"])
    assert stats.rows_of(["b", "x", "a"]).tolist() == [1, -1, 0]
    assert stats.rows_of([]).tolist() == []


def test_reads_of_empty_statistics_are_zero() -> None:
    stats = SufficientStats(2)
    cells, bins = np.array([0, 3]), np.array([5, 127])
    assert not stats.values_at(cells, bins, [0, 7]).any()
    assert not stats.cumulative_at(cells, bins, [1]).any()
    assert stats.cell_totals(cells).shape == (2, len(FIELDS)) and not stats.cell_totals(cells).any()


@PROPERTY
@given(values=st.lists(st.integers(0, 199), max_size=300))
def test_distinct_is_np_unique_with_inverse(values: list[int]) -> None:
    values = np.array(values, dtype=np.int64)
    expected = np.unique(values, return_inverse=True)
    for got in (distinct(values, 200), distinct(values, 10**6)):  # without sorting, and sorting
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 16))
def test_a_slab_holds_the_sums_of_what_was_added_through_moves_and_compactions(seed: int, rounds: int) -> None:
    """Cells gain bins round after round (each gain moves the cell's block, and the garbage of
    moved blocks is compacted away); pairs come grouped by cell in any order of cells and bins."""
    rng = np.random.default_rng(seed)
    n_cells, width = 30, 3
    slab = BinSlab(width, n_cells)
    dense = np.zeros((n_cells, N_BINS, width))
    for k in range(rounds):
        spread = 4 + 12 * k  # bins reach further out each round
        cell = rng.integers(0, n_cells, int(rng.integers(1, 200)))
        bins = np.clip(64 + rng.integers(-spread, spread + 1, len(cell)), 0, N_BINS - 1)
        keys = np.unique(cell * N_BINS + bins)
        rank = rng.permutation(n_cells)[keys // N_BINS] * 1_000 + rng.integers(0, 1_000, len(keys))
        keys = keys[np.argsort(rank)]  # grouped by cell, cells and bins in random order
        values = rng.normal(size=(len(keys), width))
        slab.add(keys // N_BINS, keys % N_BINS, values)
        dense[keys // N_BINS, keys % N_BINS] += values
        cells, held_bins, got = slab.entries(np.arange(n_cells))
        want_cells, want_bins = np.nonzero((dense != 0).any(axis=2))
        np.testing.assert_array_equal(cells, want_cells)
        np.testing.assert_array_equal(held_bins, want_bins)
        np.testing.assert_array_equal(got, dense[want_cells, want_bins])  # the same additions, in order
        assert slab.live == len(cells) <= slab.used <= len(slab.values)
