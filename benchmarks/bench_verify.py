"""``adbandit store verify`` on a big state dir: how long the scan of every snapshot and
log segment takes.

Writes a state dir straight through the log and record API (no HTTP): N outcome events
(default 10,000,000) as ingest-sized records (batch sizes drawn log-normally around 200
events, 1..5,000, as ad servers post them), an ``APPLIED`` marker after every 20 records
(as the live applier leaves them), 64 MiB segments, and one snapshot holding the
de-duplication window of all N events (what a store that saw them within 7 days keeps).
Then times ``recovery.verify`` in process and the ``adbandit store verify`` command (with
interpreter start-up), with a warm page cache.

    .venv/bin/python benchmarks/bench_verify.py [--events N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from serving import snapshots
from serving.dedupe import DAY_SECONDS, DedupeWindow
from serving.eventlog import EventLog
from serving.records import APPLIED, EVENTS, EventRecord, encode_applied
from serving.recovery import verify

NETWORKS = ("admob", "adfit", "house")
SEGMENTS = tuple(f"{c}|{o}" for c in ("KR", "US", "JP", "DE") for o in ("ios", "android"))


def batch_sizes(n_events: int, rng: np.random.Generator) -> list[int]:
    sizes = np.clip(np.round(rng.lognormal(np.log(200), 1.0, n_events // 50 + 10)), 1, 5000).astype(int)
    cut = int(np.searchsorted(np.cumsum(sizes), n_events))
    out = sizes[:cut].tolist()
    out.append(n_events - sum(out))
    return [s for s in out if s > 0]


def write_state(state_dir: Path, n_events: int, seed: int = 0) -> tuple[int, int]:
    """Fill ``state_dir``; returns (log records, log bytes)."""
    rng = np.random.default_rng(seed)
    log = EventLog(state_dir / "log", fsync=False)
    log.open()
    dedupe = DedupeWindow(7 * DAY_SECONDS, n_buckets=7)
    t0 = time.time() - 3600
    next_hash = 1
    for k, n in enumerate(batch_sizes(n_events, rng)):
        hashes = (np.arange(next_hash, next_hash + n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).astype(
            np.uint64
        )
        next_hash += n
        floor = np.round(rng.uniform(0.0, 4.0, n), 2)
        filled = rng.random(n) < 0.6
        record = EventRecord(
            t0 + k * 0.05,
            ("bench",),
            ("champion",),
            SEGMENTS,
            NETWORKS,
            event_hash=hashes,
            ts=t0 + k * 0.05 + rng.random(n),
            floor_cpm=floor,
            revenue_cpm=np.where(filled, floor + rng.exponential(1.5, n), 0.0),
            propensity=rng.uniform(0.1, 0.9, n),
            floor_propensity=np.full(n, np.nan),
            segment=rng.integers(0, len(SEGMENTS), n).astype(np.uint32),
            placement=np.zeros(n, np.uint16),
            variant=np.zeros(n, np.uint16),
            network=rng.integers(0, len(NETWORKS), n).astype(np.uint16),
            filled=filled,
        )
        lsn = log.write(EVENTS, record.encode())
        dedupe.add(hashes, record.ingest_time)
        if k % 20 == 19:
            log.write(APPLIED, encode_applied(lsn))
    records = log.last_lsn
    log.close()
    snapshots.write_snapshot(state_dir / "snapshots", records, {"placements": []}, dedupe.state(), fsync=False)
    size = sum(p.stat().st_size for _, p in log.segments())
    return records, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the state dir here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-verify-"))
    state_dir = root / "state"
    try:
        started = time.perf_counter()
        records, size = write_state(state_dir, args.events)
        print(f"wrote {args.events:,} events in {records:,} log records, {size / 2**20:,.0f} MiB "
              f"({time.perf_counter() - started:.1f} s)")  # fmt: skip
        verify(state_dir)  # warm the page cache once
        started = time.perf_counter()
        report = verify(state_dir)
        seconds = time.perf_counter() - started
        counted = sum(s.events for s in report.segments)
        assert not report.damaged and counted == args.events, (report.damaged, counted)
        print(f"verify (in process): {seconds:.2f} s for {counted:,} events, {len(report.segments)} segments, "
              f"{size / 2**20 / seconds:,.0f} MiB/s, {counted / seconds / 1e6:.1f} M events/s")  # fmt: skip
        cmd = [sys.executable, "-m", "adbandit", "store", "verify", "--state-dir", str(state_dir)]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        print(f"adbandit store verify (command, with start-up): {time.perf_counter() - started:.2f} s, "
              f"exit {done.returncode}: {done.stdout.strip().splitlines()[-1]}")  # fmt: skip
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
