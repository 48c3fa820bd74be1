"""Production scale: 10,000 segments × 20 networks per placement (issue targets).

Part 1, statistics at full scale (every one of the 200,000 cells with data): learning
throughput, memory per typical and per full cell, the O(segments × networks) passes a
refresh makes (totals, the segment pooling model), the size of the state and of the entries of the cells
a 2,000-event batch changes (what an incremental snapshot would write).

Part 2, the ``ts_gmm`` learner on a fitted placement (``--fitted-segments`` × 20
networks, default 1,000; fitting a cell costs ~10–30 ms, so all 10,000 segments take half
an hour, once: the fitted state is cached in ``benchmarks/.cache``): a 2,000-event batch spread over
up to 1,800 segments learned and its tables live (``update`` + ``refresh`` of the touched
segments, which refits only the cells that are due), the refit backlog that batch leaves,
replay throughput in 2,000-event groups (restart), process RSS and bytes per segment.

Part 3, snapshots and restart at 10,000 segments × 20 networks (``--only snapshots``):
the fitted placement plus statistics for every one of the 200,000 cells (``--segments``),
as a live store holds it. A base (whole) snapshot of that policy; the incremental snapshot
after one 2,000-event batch and after ``--interval-batches`` of them (capture = the part
under the store's locks, then the file written and fsynced); and a real ``PolicyStore``
restarted with that base plus ``--restart-events`` events behind it in the log (2,000-event
records, each its own live group, as a loaded applier leaves them): ready time with the
live groups merged into replay groups (the default) and, measured on ``--exact-events``
and extrapolated, group by group.

Part 4, the live service's memory (``--only service``): ``adbandit serve`` in its own
process over a state dir holding the fitted placement (``--fitted-segments``; 10,000 for the
issue's target, fitted once into the cache by ``scale_fixture.py --segments 10000``), its
resident memory after start-up, after a decision from every segment (a table computes its
jitter terms on first use) and after outcome events for every segment were learned.

Usage: ``python benchmarks/bench_scale.py [--fitted-segments 1000] [--only statistics|learner|snapshots|service]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bandit import Table, machine_facts
from scale_fixture import N_NETWORKS, T0, fixture, market_batch, placement, segment_keys

from bandit import EventBatch, save_state
from bandit.pooling import SegmentPool
from bandit.stats import N_BINS, SufficientStats
from serving.eventlog import EventLog
from serving.process import HOST, free_port, start_server, stop_server
from serving.records import APPLIED, EVENTS, EventRecord, encode_applied
from serving.store import REPLAY_GROUP_EVENTS, PolicyStore


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's resident memory (or another ``/proc/<pid>/status`` figure) [MB]."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def peak_rss(interval_s: float = 0.01) -> Iterator[list[float]]:
    """The process RSS [MB] before the block and its peak during it (polled every
    ``interval_s``), as ``[before, peak]``: what a phase adds transiently, which ``ru_maxrss``
    (the peak of the whole process so far) cannot show once an earlier phase peaked higher."""
    figures = [rss_mb()] * 2
    done = threading.Event()

    def poll() -> None:
        while not done.wait(interval_s):
            figures[1] = max(figures[1], rss_mb())

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield figures
    finally:
        done.set()
        thread.join()
        figures[1] = max(figures[1], rss_mb())


def full_cell_bytes() -> float:
    """A cell holding every bin (fills at every floor and price)."""
    stats = SufficientStats(1)
    floors = np.exp(np.linspace(np.log(0.011), np.log(900.0), 4 * N_BINS))
    zeros = np.zeros(len(floors), np.int64)
    revenue = np.sort(floors)[::-1] * 1.5  # fills above the floor at every price bin
    stats.add(EventBatch(("s",), zeros, zeros, floors, np.ones(len(floors), bool), revenue, np.full(len(floors), T0)))
    return float(stats.cell_nbytes()[0])


def part_statistics(table: Table, n_segments: int, events_per_cell: int) -> None:
    rng = np.random.default_rng(1)
    keys = segment_keys(n_segments)
    stats = SufficientStats(N_NETWORKS, 48 * 3600.0)
    total = n_segments * N_NETWORKS * events_per_cell
    before = rss_mb()
    t = time.perf_counter()
    chunk = 1_000_000
    for lo in range(0, total, chunk):
        stats.add(market_batch(rng, keys, min(chunk, total - lo), T0 + lo / total * 86_400.0, 86_400.0 * chunk / total))
    dt = time.perf_counter() - t
    label = f"{n_segments:,} segments × {N_NETWORKS} networks, {events_per_cell} events per cell"
    table.add(f"statistics learned, {total:,} events ({label}) [events/s]", f"{total / dt:,.0f}")
    sizes = stats.cell_nbytes()
    table.add("cells with data", f"{stats.n_cells:,}")
    typical = float(np.median(sizes))
    table.add(
        "bytes per cell: typical (median) / 90th percentile",
        f"{typical:,.0f} / {np.quantile(sizes, 0.9):,.0f}",
        "<= 2,048",
        typical <= 2048,
    )
    table.add("bytes per cell: full (every bin of every field)", f"{full_cell_bytes():,.0f}")
    table.add("statistics of the placement, RSS growth [MB]", f"{rss_mb() - before:,.0f}")
    t = time.perf_counter()
    pool = SegmentPool.fit_stats(stats, 3)  # reads stats.totals()
    table.add(
        f"per-refresh pass over all cells (totals + pooling model; last sweep {pool.fit.last_change:.0e}) [ms]",
        f"{(time.perf_counter() - t) * 1e3:.1f}",
    )
    batch = market_batch(rng, keys[:1800], 2000, T0 + 86_400.0, 60.0)
    stats.take_changes()
    t = time.perf_counter()
    stats.add(batch)
    table.add("2,000-event batch over 1,800 segments, statistics only [ms]", f"{(time.perf_counter() - t) * 1e3:.1f}")
    changed = stats.take_changes()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        save_state(Path(tmp) / "delta.npz", stats.entries(changed))
        dt = time.perf_counter() - t
        table.add(f"entries of the {len(changed):,} changed cells written [ms]", f"{dt * 1e3:.1f}", "(<= 2 s)", dt <= 2)
        t = time.perf_counter()
        save_state(Path(tmp) / "full.npz", stats.state())
        size = (Path(tmp) / "full.npz").stat().st_size
        table.add("whole statistics written [s] / size [MB]", f"{time.perf_counter() - t:.2f} / {size / 1e6:,.0f}")


def part_learner(table: Table, n_fitted: int, events_per_cell: int) -> None:
    before = rss_mb()
    t = time.perf_counter()
    policy, _, made = fixture(n_fitted, events_per_cell)
    load_s = time.perf_counter() - t
    if made:
        table.add(
            f"fitted fixture built: events learned / every cell fitted [s] ({n_fitted:,} segments)",
            f"{made[0]:.0f} / {made[1]:.0f}",
        )
        table.add("  fit cost per (segment, network) cell [ms]", f"{made[1] / (n_fitted * N_NETWORKS) * 1e3:.1f}")
    else:
        table.add(f"fitted fixture loaded from its state file [s] ({n_fitted:,} segments)", f"{load_s:.1f}")
    held = rss_mb() - before
    table.add(f"learner RSS growth, {n_fitted:,} segments × {N_NETWORKS} networks [MB]", f"{held:,.0f}")
    table.add("  per segment [KB]", f"{held * 1024 / n_fitted:,.0f}")
    at_target = held / n_fitted * 10_000
    label = "  (10,000 segments: the target)" if n_fitted == 10_000 else "  → 10,000 segments, extrapolated"
    table.add(f"{label} [MB]", f"{at_target:,.0f}", "<= 1,536", at_target <= 1536)
    keys = segment_keys(n_fitted)
    rng = np.random.default_rng(2)
    touched_keys = keys[: min(1800, n_fitted)]
    t_next = policy.stats.t_ref + 60.0
    for k in range(3):
        batch = market_batch(rng, touched_keys, 2000, t_next + 60.0 * k, 60.0)
        t = time.perf_counter()
        touched = policy.update(batch, refresh=False)
        learned = time.perf_counter() - t
        policy.refresh(touched)
        live = time.perf_counter() - t
        table.add(
            f"2,000-event batch #{k + 1} over {len(touched):,} segments: learned / tables live [ms]",
            f"{learned * 1e3:,.0f} / {live * 1e3:,.0f}",
            "<= 1,000",
            live <= 1.0,
        )
    table.add("  segments left pending (refit when due)", f"{len(policy.pending_segments()):,}")
    groups = 20
    t = time.perf_counter()
    for k in range(groups):
        policy.update(market_batch(rng, keys, 2000, t_next + 600.0 + 10.0 * k, 10.0), refresh=False)
    rate = groups * 2000 / (time.perf_counter() - t)
    table.add("replay in 2,000-event groups (restart) [events/s]", f"{rate:,.0f}")
    restart = 10_000_000 / rate
    table.add("  → 10M events behind a snapshot replayed in [s]", f"{restart:,.0f}", "<= 30", restart <= 30)
    t = time.perf_counter()
    state = policy.state()
    with tempfile.TemporaryDirectory() as tmp:
        save_state(Path(tmp) / "policy.npz", state)
        size = (Path(tmp) / "policy.npz").stat().st_size
    table.add("whole policy state written [s] / size [MB]", f"{time.perf_counter() - t:.2f} / {size / 1e6:,.0f}")


def scale_policy(n_fitted: int, n_segments: int, events_per_cell: int):
    """The fitted fixture, then statistics for every cell of the other segments up to
    ``n_segments`` × 20 (learned, not fitted: fitting them is a relearn's job)."""
    policy, _, _ = fixture(n_fitted, events_per_cell)
    keys = segment_keys(n_segments)
    rng = np.random.default_rng(3)
    others = keys[n_fitted:]
    total = len(others) * N_NETWORKS * events_per_cell
    t0 = policy.stats.t_ref + 1.0
    chunk = 1_000_000
    for lo in range(0, total, chunk):
        n = min(chunk, total - lo)
        policy.update(market_batch(rng, others, n, t0 + lo / total * 60.0, 60.0 * n / total), refresh=False)
    return policy, keys, rng


def part_service(table: Table, args: argparse.Namespace) -> None:
    policy, _, _ = fixture(args.fitted_segments, args.events_per_cell)
    keys = segment_keys(args.fitted_segments)
    state = policy.state()
    del policy
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    try:
        store = PolicyStore(work / "state", default_policy="ts_gmm")
        store.open()
        store.put_placement(placement())
        store.swap_model("scale", "champion", state)
        store.close()  # its final snapshot holds the model
        del state, store
        port = free_port()
        t = time.perf_counter()
        server = start_server(work / "state", port, timeout_s=900.0, stderr_path=work / "server.log")
        started = time.perf_counter() - t
        url = f"http://{HOST}:{port}"
        try:
            table.add(
                f"service started over the state ({args.fitted_segments:,} fitted segments × {N_NETWORKS}) [s]",
                f"{started:.1f}",
            )
            table.add("  service RSS when ready [MB]", f"{rss_mb(server.pid):,.0f}")
            contexts = [dict(zip(("country", "os", "app"), key.split("|"), strict=True)) for key in keys]
            rng = np.random.default_rng(4)
            for round_ in range(1, args.service_rounds + 1):
                decisions = decide_every_segment(url, contexts)
                if round_ == 1:
                    rss = rss_mb(server.pid)
                    table.add(f"  … after a decision from each of the {len(contexts):,} segments [MB]", f"{rss:,.0f}")
                learn_outcomes(url, decisions, contexts, rng, prefix=f"r{round_}-")
                # Sampled for 5 s: the least is the steady level; the most, a snapshot in flight
                # (a base copies the whole policy while it is written).
                samples = []
                for _ in range(10):
                    samples.append(rss_mb(server.pid))
                    time.sleep(0.5)
                table.add(
                    f"  … after round {round_}: {len(contexts):,} decisions + outcomes learned, least / most [MB]",
                    f"{min(samples):,.0f} / {max(samples):,.0f}",
                    "<= 1,536",
                    min(samples) <= 1536,
                )
            table.add("  peak RSS of the service process (VmHWM) [MB]", f"{rss_mb(server.pid, 'VmHWM'):,.0f}")
        finally:
            stop_server(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def decide_every_segment(url: str, contexts: list[dict]) -> list[dict]:
    """One decision for each context, by ``POST /v1/decide/batch`` in calls of 1,000."""
    decisions = []
    for lo in range(0, len(contexts), 1000):
        requests = [{"request_id": f"m{lo + i}", "context": c} for i, c in enumerate(contexts[lo : lo + 1000])]
        answer = httpx.post(f"{url}/v1/decide/batch", json={"placement": "scale", "requests": requests}, timeout=120)
        answer.raise_for_status()
        decisions.extend(answer.json()["decisions"])
    return decisions


def learn_outcomes(
    url: str, decisions: list[dict], contexts: list[dict], rng: np.random.Generator, prefix: str
) -> None:
    """An outcome for each decision (60% filled) in 2,000-event calls; returns once the
    service's log lag is 0 and its applier had 10 s to refit what they touched."""
    events = []
    for i, (d, c) in enumerate(zip(decisions, contexts, strict=True)):
        filled = bool(rng.random() < 0.6)
        revenue = d["floor_cpm"] * float(rng.uniform(1.0, 2.0)) if filled else 0.0
        events.append({"event_id": f"{prefix}{i}", "decision_id": d["decision_id"], "placement": "scale",
                       "network": d["network"], "floor_cpm": d["floor_cpm"], "filled": filled,
                       "revenue_cpm": revenue, "context": c, "ts": time.time()})  # fmt: skip
    for lo in range(0, len(events), 2000):
        httpx.post(f"{url}/v1/outcomes", json=events[lo : lo + 2000], timeout=120).raise_for_status()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and store_figure(url, "log_lag_events") > 0:
        time.sleep(1.0)
    time.sleep(10.0)


def store_figure(url: str, name: str) -> float:
    """One ``adbandit_store_<name>`` figure from the service's ``/metrics``."""
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        if line.startswith(f"adbandit_store_{name} "):
            return float(line.split()[1])
    raise KeyError(name)


def file_size(path: Path) -> float:
    return path.stat().st_size / 1e6


def part_snapshots(table: Table, args: argparse.Namespace) -> None:
    t = time.perf_counter()
    policy, keys, rng = scale_policy(args.fitted_segments, args.segments, args.events_per_cell)
    table.add(
        f"policy built: {args.fitted_segments:,} fitted segments + statistics of {args.segments:,} × {N_NETWORKS} [s]",
        f"{time.perf_counter() - t:.0f}",
    )
    table.add("  cells with data", f"{policy.stats.n_cells:,}")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        t = time.perf_counter()
        state = policy.state()
        policy.checkpoint()
        capture = time.perf_counter() - t
        t = time.perf_counter()
        save_state(work / "base.npz", state)
        table.add(
            "base (whole) snapshot of the policy: capture / write + fsync [s] / size [MB]",
            f"{capture:.2f} / {time.perf_counter() - t:.2f} / {file_size(work / 'base.npz'):,.0f}",
        )
        del state
        fitted = keys[: args.fitted_segments]
        t_next = policy.stats.t_ref + 60.0
        intervals = (("one 2,000-event batch", 1), (f"{args.interval_batches} batches", args.interval_batches))
        for label, n_batches in intervals:
            for _ in range(n_batches):
                touched = policy.update(market_batch(rng, fitted, 2000, t_next, 1.0), refresh=False)
                policy.refresh(touched)
                t_next += 1.0
            t = time.perf_counter()
            changes = policy.take_changes()
            capture = time.perf_counter() - t
            t = time.perf_counter()
            save_state(work / "delta.npz", changes)
            write = time.perf_counter() - t
            total = capture + write
            table.add(
                f"incremental snapshot after {label}: capture / write + fsync [s] / size [MB]",
                f"{capture:.3f} / {write:.3f} / {file_size(work / 'delta.npz'):,.1f}",
                "<= 2 s",
                total <= 2.0,
            )
            table.add("  cells / tables in it", f"{len(changes['stats_cells']):,} / {len(changes['table_segments']):,}")
        state = policy.state()
        del policy, changes
        part_restart(table, args, state, keys, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def part_restart(table: Table, args: argparse.Namespace, state: dict, keys: tuple[str, ...], work: Path) -> None:
    """A store with ``state`` in a base snapshot and events written behind it, restarted."""
    base_dir = work / "base"
    options = {"default_policy": "ts_gmm", "snapshot_every_s": 1e10, "snapshot_every_events": 10**12}
    store = PolicyStore(base_dir, **options)
    store.open()
    store.put_placement(placement())
    t = time.perf_counter()
    store.swap_model("scale", "champion", state)
    swap = time.perf_counter() - t
    t = time.perf_counter()
    store.snapshot(full=True)
    table.add("store: model installed / base snapshot written [s]", f"{swap:.1f} / {time.perf_counter() - t:.1f}")
    store.close()
    state.clear()

    def with_log(name: str, n_events: int, seed: int) -> tuple[Path, float, float]:
        """A copy of the base state dir with ``n_events`` more in its log, in 2,000-event
        records each marked as its own live group."""
        state_dir = work / name
        shutil.copytree(base_dir, state_dir)
        before = sum(p.stat().st_size for p in (state_dir / "log").iterdir())
        log = EventLog(state_dir / "log", fsync=False)
        for _ in log.recover(0):
            pass
        log.open()
        gen = np.random.default_rng(seed)
        start = time.perf_counter()
        t_start = time.time() - 3600.0
        hashes = np.uint64(seed) << np.uint64(40)
        networks = tuple(f"net{j:02d}" for j in range(N_NETWORKS))
        for lo in range(0, n_events, 2000):
            batch = market_batch(gen, keys, 2000, t_start + lo * 1e-4, 0.2)
            codes, seg = np.unique(batch.segment_index, return_inverse=True)
            rec = EventRecord(
                ingest_time=time.time(),
                placements=("scale",),
                variants=("champion",),
                segments=tuple(keys[c] for c in codes.tolist()),
                networks=networks,
                event_hash=(np.arange(lo, lo + 2000, dtype=np.uint64) + hashes) * np.uint64(0x9E3779B97F4A7C15),
                ts=batch.ts,
                floor_cpm=batch.floor_cpm,
                revenue_cpm=batch.revenue_cpm,
                propensity=np.full(2000, 0.05),
                floor_propensity=np.full(2000, 0.1),
                segment=seg.astype(np.uint32),
                placement=np.zeros(2000, np.uint16),
                variant=np.zeros(2000, np.uint16),
                network=batch.network.astype(np.uint16),
                filled=batch.filled,
            )
            lsn = log.write(EVENTS, rec.encode())
            log.write(APPLIED, encode_applied(lsn))
        log.close()
        size = (sum(p.stat().st_size for p in (state_dir / "log").iterdir()) - before) / 2**20
        return state_dir, time.perf_counter() - start, size

    def restart(state_dir: Path, n_events: int, **kw) -> tuple[float, int, float]:
        """Seconds to open a copy of ``state_dir`` (wall clock; the CPU seconds are printed too:
        on a shared machine they are the work done), segments left stale, seconds to close it."""
        copy = work / "run"
        shutil.copytree(state_dir, copy)
        store = PolicyStore(copy, **options, **kw)
        before = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        with peak_rss() as rss:
            store.open()
        ready = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_SELF)
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        print(
            f"    (open: {ready:.1f} s wall clock, {user + system:.1f} s CPU (user {user:.1f}, system {system:.1f}), "
            f"{after.ru_minflt - before.ru_minflt:,} page faults, 1-minute load {os.getloadavg()[0]:.1f}; "
            f"RSS {rss[0]:,.0f} MB before, peak {rss[1]:,.0f} MB during it, {rss_mb():,.0f} MB after)"
        )
        assert store.metrics()["events_replayed_total"] == n_events
        # Segments whose tables still lag their statistics (the applier refits them).
        stale = len(store._applier.stale_segments(store._entry("scale").slot("champion")))
        t = time.perf_counter()
        store.close()  # its final snapshot: the first delta after the restart
        closing = time.perf_counter() - t
        shutil.rmtree(copy, ignore_errors=True)
        return ready, stale, closing

    loading, _, _ = restart(base_dir, 0)
    table.add("restart with nothing behind the base (load the snapshot, build the policies) [s]", f"{loading:.1f}")
    exact_n = args.exact_events
    if exact_n:
        state_dir, _, _ = with_log("exact", exact_n, 1)
        ready, _, _ = restart(state_dir, exact_n, replay_group_events=0, open_refit_budget_s=0.0)
        rate = exact_n / max(ready - loading, 1e-9)
        shutil.rmtree(state_dir)
        table.add(
            f"restart, {exact_n:,} events behind the base, group by group: ready [s] / replayed [events/s]",
            f"{ready:.1f} / {rate:,.0f}",
        )
        extrapolated = loading + args.restart_events / rate
        table.add(f"  → {args.restart_events:,} events, extrapolated [s]", f"{extrapolated:,.0f}")
    state_dir, gen_s, size = with_log("merged", args.restart_events, 2)
    table.add(f"log of {args.restart_events:,} events written [s] / size [MiB]", f"{gen_s:.0f} / {size:,.0f}")
    ready, stale, closing = restart(state_dir, args.restart_events, open_refit_budget_s=0.0)
    table.add(
        f"restart, {args.restart_events:,} events behind the base, replay groups of {REPLAY_GROUP_EVENTS:,}: "
        "ready [s] / [events/s]",
        f"{ready:.1f} / {args.restart_events / max(ready - loading, 1e-9):,.0f}",
        "<= 30",
        ready <= 30,
    )
    table.add("  first snapshot after it (at close: a delta of the replayed cells and ids) [s]", f"{closing:.1f}")
    ready, stale, _ = restart(state_dir, args.restart_events)
    table.add(
        "  ready incl. refits for open_refit_budget_s (default) [s] / segments left to the applier",
        f"{ready:.1f} / {stale:,}",
        "<= 30",
        ready <= 30,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--events-per-cell", type=int, default=100)
    parser.add_argument("--fitted-segments", type=int, default=1_000)
    parser.add_argument("--interval-batches", type=int, default=30, help="batches between two snapshots")
    parser.add_argument("--restart-events", type=int, default=10_000_000)
    parser.add_argument("--exact-events", type=int, default=1_000_000)
    parser.add_argument("--service-rounds", type=int, default=3, help="service part: rounds of decisions + outcomes")
    parser.add_argument("--only", choices=("statistics", "learner", "snapshots", "service"), action="append")
    args = parser.parse_args()
    parts = args.only or ["statistics", "learner", "snapshots", "service"]
    table = Table()
    print("\n".join(machine_facts()))
    if "statistics" in parts:
        part_statistics(table, args.segments, args.events_per_cell)
    if "learner" in parts:
        part_learner(table, args.fitted_segments, args.events_per_cell)
    if "snapshots" in parts:
        part_snapshots(table, args)
    if "service" in parts:
        part_service(table, args)


if __name__ == "__main__":
    main()
