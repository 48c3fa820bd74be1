"""PolicyStore figures: durable ingest throughput and restart (replay) time.

1. Ingest: batches of 5,000 outcome events (JSON-like dicts, ISO timestamps) through
   ``PolicyStore.ingest`` with fsync on, from 1 thread and from 4 threads (group commit),
   while a thread keeps deciding (its latency shows decisions do not wait for fsyncs or
   refits). Target: >= 100,000 events/s.
2. Restart: a snapshot, then N events (default 10,000,000) written straight through the
   event-log writer as 5,000-event records each followed by an APPLIED marker (what the
   live applier leaves), then ``PolicyStore.open()`` is timed. Target: <= 30 s.
   ``--crash`` writes no markers (a crash before anything was applied).

    .venv/bin/python benchmarks/bench_store.py [--events N] [--policy NAME] [--crash]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bandit import POLICIES, PlacementConfig
from serving.dedupe import event_hashes
from serving.eventlog import EventLog
from serving.records import APPLIED, EVENTS, EventRecord, encode_applied
from serving.store import ExperimentConfig, PolicyStore

NETWORKS = ("admob", "adfit", "house")
COUNTRIES = ("KR", "US", "JP", "DE")
OSES = ("ios", "android")
BATCH = 5000


def placement() -> PlacementConfig:
    return PlacementConfig.from_dict(
        "bench",
        {"networks": [{"id": n, "floor_max_cpm": 20.0} for n in NETWORKS], "segment_by": ["country", "os"]},
    )


def make_batches(n_batches: int, seed: int = 0) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    t0 = datetime.now(UTC).timestamp() - 3600
    out = []
    for b in range(n_batches):
        floors = np.round(rng.uniform(0.0, 4.0, BATCH), 2)
        filled = rng.random(BATCH) < 0.6
        revenue = np.where(filled, floors + rng.exponential(1.5, BATCH), 0.0)
        nets = rng.integers(0, len(NETWORKS), BATCH)
        ctry = rng.integers(0, len(COUNTRIES), BATCH)
        os_ = rng.integers(0, len(OSES), BATCH)
        batch = []
        for i in range(BATCH):
            ts = datetime.fromtimestamp(t0 + b + i * 1e-4, UTC).isoformat().replace("+00:00", "Z")
            batch.append(
                {
                    "event_id": f"ev-{seed}-{b}-{i}",
                    "decision_id": f"champion.{b:08x}{i:08x}",
                    "ts": ts,
                    "placement": "bench",
                    "network": NETWORKS[nets[i]],
                    "floor_cpm": float(floors[i]),
                    "filled": bool(filled[i]),
                    "revenue_cpm": float(revenue[i]),
                    "context": {"country": COUNTRIES[ctry[i]], "os": OSES[os_[i]]},
                }
            )
        out.append(batch)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bench_ingest(policy: str, n_batches: int, workdir: Path) -> None:
    batches = make_batches(n_batches)
    for threads in (1, 4):
        state = workdir / f"ingest-{policy}-{threads}"
        store = PolicyStore(state, default_policy=policy, fsync=True)
        store.open()
        store.put_placement(placement(), ExperimentConfig.single(policy))
        decide_ms: list[float] = []
        stop = threading.Event()

        def decider(store: PolicyStore = store, out: list[float] = decide_ms, stop: threading.Event = stop) -> None:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                store.decide("bench", f"r{i}", {"country": "KR", "os": "ios"})
                out.append((time.perf_counter() - t) * 1e3)
                i += 1
                time.sleep(0.0005)

        latencies: list[float] = []
        lock = threading.Lock()

        def worker(
            mine: list[list[dict]],
            store: PolicyStore = store,
            latencies: list[float] = latencies,
            lock: threading.Lock = lock,
        ) -> None:
            for batch in mine:
                t = time.perf_counter()
                result = store.ingest(batch)
                dt = time.perf_counter() - t
                assert result.accepted == len(batch), result
                with lock:
                    latencies.append(dt * 1e3)

        d = threading.Thread(target=decider)
        d.start()
        workers = [threading.Thread(target=worker, args=(batches[k::threads],)) for k in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        drain = time.perf_counter()
        store.flush()
        drain = time.perf_counter() - drain
        stop.set()
        d.join()
        n = n_batches * BATCH
        m = store.metrics()
        print(
            f"ingest  policy={policy:<7} threads={threads}  {n:,} events in {elapsed:.2f} s = "
            f"{n / elapsed:,.0f} events/s (fsync on, batches of {BATCH:,}); "
            f"batch latency p50 {pct(latencies, 50):.1f} ms p99 {pct(latencies, 99):.1f} ms; "
            f"{m['log_fsyncs_total']} fsyncs for {n_batches} ingests; applier {drain:.2f} s behind at the end"
        )
        print(
            f"        decide while ingesting: {len(decide_ms):,} calls, p50 {pct(decide_ms, 50):.3f} ms, "
            f"p99 {pct(decide_ms, 99):.3f} ms, max {max(decide_ms, default=float('nan')):.1f} ms"
        )
        store.close()
        shutil.rmtree(state, ignore_errors=True)


def write_log(state: Path, n_events: int, *, markers: bool, seed: int = 1) -> float:
    """Append ``n_events`` accepted events to the store's log through the writer; returns seconds."""
    rng = np.random.default_rng(seed)
    segments = tuple(f"{c}|{o}" for c in COUNTRIES for o in OSES)
    log = EventLog(state / "log", fsync=False)
    for _ in log.recover(0):
        pass
    log.open()
    start = time.perf_counter()
    now = time.time()
    written = 0
    hash_base = event_hashes([f"bench-{seed}"])[0]
    while written < n_events:
        n = min(BATCH, n_events - written)
        floors = np.round(rng.uniform(0.0, 4.0, n), 2)
        filled = rng.random(n) < 0.6
        rec = EventRecord(
            ingest_time=now,
            placements=("bench",),
            variants=("champion",),
            segments=segments,
            networks=NETWORKS,
            # distinct 64-bit ids (an odd multiplier permutes uint64)
            event_hash=(np.arange(written, written + n, dtype=np.uint64) + hash_base) * np.uint64(0x9E3779B97F4A7C15),
            ts=now - 3600 + (written + np.arange(n)) * 1e-4,
            floor_cpm=floors,
            revenue_cpm=np.where(filled, floors + rng.exponential(1.5, n), 0.0),
            propensity=rng.uniform(0.05, 1.0, n),
            floor_propensity=rng.uniform(0.05, 1.0, n),
            segment=rng.integers(0, len(segments), n).astype(np.uint32),
            placement=np.zeros(n, np.uint16),
            variant=np.zeros(n, np.uint16),
            network=rng.integers(0, len(NETWORKS), n).astype(np.uint16),
            filled=filled,
        )
        lsn = log.write(EVENTS, rec.encode())
        if markers:
            log.write(APPLIED, encode_applied(lsn))
        written += n
    log.close()
    return time.perf_counter() - start


def bench_restart(policy: str, n_events: int, markers: bool, workdir: Path) -> None:
    state = workdir / f"restart-{policy}"
    store = PolicyStore(state, default_policy=policy)
    store.open()
    store.put_placement(placement(), ExperimentConfig.single(policy))
    store.snapshot()
    store.close()
    gen = write_log(state, n_events, markers=markers)
    size = sum(p.stat().st_size for p in (state / "log").iterdir())
    store = PolicyStore(state, default_policy=policy)
    start = time.perf_counter()
    store.open()
    ready = time.perf_counter() - start
    m = store.metrics()
    assert m["events_replayed_total"] == n_events, m["events_replayed_total"]
    assert m["placements"]["bench"]["requests"] == n_events
    t = time.perf_counter()
    store.close()
    closing = time.perf_counter() - t
    kind = "an APPLIED marker per record" if markers else "no markers (crash before any apply)"
    print(
        f"restart policy={policy:<7} {n_events:,} events behind the newest snapshot "
        f"({size / 2**20:,.0f} MiB of log, {kind}): ready in {ready:.2f} s "
        f"({n_events / ready:,.0f} events/s replayed); log written in {gen:.1f} s; "
        f"close (final snapshot incl. de-dup window of {m['dedupe_entries']:,} ids) {closing:.2f} s"
    )
    shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="events behind the snapshot")
    parser.add_argument("--ingest-batches", type=int, default=40, help="5,000-event batches to ingest")
    parser.add_argument("--policy", action="append", help="policy (repeatable); default ts_gmm and static")
    parser.add_argument("--crash", action="store_true", help="write the replayed log without APPLIED markers")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-restart", action="store_true")
    args = parser.parse_args()
    policies = args.policy or [p for p in ("ts_gmm", "static") if p in POLICIES]
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        for policy in policies:
            if not args.skip_ingest:
                bench_ingest(policy, args.ingest_batches, workdir)
        for policy in policies:
            if not args.skip_restart:
                bench_restart(policy, args.events, not args.crash, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
