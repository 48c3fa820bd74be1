"""Event records turned into what the learner and the archive read: each event keeps its own
segment (records carry their own code tables, in any order, sharing most names), and a
batch numbers its segments in order of first appearance, as the live applier and the
replay must alike."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from serving.applier import batch_from_parts
from serving.archive import OutcomeArchive
from serving.records import EventRecord

NETWORKS = ("alpha", "beta", "house")


def record(rng: np.random.Generator, n: int, segments: tuple[str, ...], networks=NETWORKS) -> EventRecord:
    """``n`` events over ``segments`` (some names of the table may go unused)."""
    return EventRecord(
        ingest_time=1.8e9,
        placements=("p1",),
        variants=("champion",),
        segments=segments,
        networks=networks,
        event_hash=rng.integers(0, 2**63, n).astype(np.uint64),
        ts=1.8e9 + rng.uniform(0, 60, n),
        floor_cpm=rng.uniform(0, 4, n),
        revenue_cpm=rng.uniform(0, 4, n),
        propensity=np.full(n, 0.5),
        floor_propensity=np.full(n, 0.5),
        segment=rng.integers(0, max(len(segments) - 1, 1), n).astype(np.uint32),  # the last name unused
        placement=np.zeros(n, np.uint16),
        variant=np.zeros(n, np.uint16),
        network=rng.integers(0, len(networks), n).astype(np.uint16),
        filled=rng.random(n) < 0.5,
    )


def records(seed: int) -> list[EventRecord]:
    """Records whose code tables overlap, in shuffled orders, with names unused."""
    rng = np.random.default_rng(seed)
    names = [f"C{i}|ios" for i in range(12)]
    out = []
    for _ in range(int(rng.integers(2, 6))):
        table = tuple(rng.permutation(names)[: int(rng.integers(2, len(names) + 1))].tolist())
        out.append(record(rng, int(rng.integers(1, 40)), table, tuple(rng.permutation(NETWORKS).tolist())))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_of_records_keeps_each_events_segment_and_numbers_segments_by_first_appearance(seed):
    rng = np.random.default_rng(seed)
    recs = records(seed)
    # Some parts take selected rows of their record (a record of several placements or variants).
    parts = [(r, None if rng.random() < 0.5 else np.sort(rng.choice(len(r), max(len(r) // 2, 1), replace=False)))
             for r in recs]  # fmt: skip
    entry = SimpleNamespace(networks={n: j for j, n in enumerate(NETWORKS)}, config=SimpleNamespace(id="p1"))
    batch = batch_from_parts(entry, parts)

    want_segments, want_networks, order = [], [], {}
    for rec, rows in parts:
        picked = np.arange(len(rec)) if rows is None else rows
        for code in sorted(set(rec.segment[picked].tolist())):  # first appearance, in code order
            order.setdefault(rec.segments[code], len(order))
        want_segments += [rec.segments[c] for c in rec.segment[picked].tolist()]
        want_networks += [NETWORKS.index(rec.networks[c]) for c in rec.network[picked].tolist()]
    assert batch.segments == tuple(order)
    assert [batch.segments[i] for i in batch.segment_index.tolist()] == want_segments
    assert batch.network.tolist() == want_networks


@pytest.mark.parametrize("seed", range(4))
def test_an_archive_part_names_each_events_segment_and_network(tmp_path, seed):
    recs = records(100 + seed)
    archive = OutcomeArchive(tmp_path, part_events=10**9)
    for lsn, rec in enumerate(recs, start=1):
        archive.add(lsn, rec)
    frame = pl.read_parquet(archive.flush())
    assert frame["segment"].to_list() == [r.segments[c] for r in recs for c in r.segment.tolist()]
    assert frame["network"].to_list() == [r.networks[c] for r in recs for c in r.network.tolist()]
    assert frame["segment"].dtype == pl.String
