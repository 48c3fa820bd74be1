"""Daily re-learning on Ray: a day of outcome logs → one fitted policy state.

``adbandit relearn --logs 'logs/date=2026-12-01/*.parquet' --placement p1.json`` reads the
Parquet files with Ray Data (a local Ray by default, a cluster with ``--address``), turns
every partition into additive statistics in parallel (:func:`partition_stats`), merges them
on the driver as they arrive (:class:`StatsMerger`), fits the policy's tables once
(:func:`fit_policy`) and writes a policy state that ``adbandit promote`` and the service
load like any other, tracked as an MLflow run (:func:`relearn`).

**Why the result equals learning in one process.** The statistics of
:mod:`bandit.stats` are weighted counts: an event at time ``t`` weighs
``2^((t − t_ref)/h)`` relative to the reference time ``t_ref`` (the newest event) with
half-life ``h``. A partition's aggregate is held at its own newest time ``t_p``; the merge
rescales it by ``2^(−(T − t_p)/h)`` to the newest time ``T`` of all partitions, so the
sum is ``Σ_e 2^((t_e − T)/h) x_e`` — what ``policy.update(all events)`` computes in one
batch — up to float rounding, in whatever order partitions finish. The fitted tables then
match too, because segments are refreshed in one fixed order (sorted keys). The online
learner's order-dependent extras are those of a single batch: no change alarm (nothing
to compare a first batch with) and flat hour-of-day levels. Not carried over is ts_gmm's
short-memory copy of the statistics (30-minute half-life) that its change detector
compares the next batch with: a relearned policy fed online compares its first batches
with its whole (discounted) history instead, as after a restart without recent data.

**Compact partials.** A partition's statistics keep only the (segment, network, bin)
entries that hold events, as keys ``(segment · N + network) · B + bin`` over the
partition's own segment keys, with the seven floor-binned fields ``[K_f, 7]`` and the two
price-binned fields ``[K_p, 2]`` (:data:`FLOOR_FIELDS`, :data:`PRICE_FIELDS`). Their size
follows the data (at most one row per event), not ``segments × networks × 9 × 128``.

The kernel sums the learner's own per-event terms (:func:`bandit.stats.floor_terms`, as
:func:`bandit.stats.accumulate` does: the very same numbers), with the price fields computed over the fills above
the floor only and each field summed into the occupied keys only (numbered by a count over
the key range when it is at most :data:`DENSE_RANGE` × the events, by a sort otherwise), so
its bincounts write small arrays that stay in cache.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit import InvalidConfig, InvalidOutcome, PlacementConfig, Policy, policy_from_state, save_state
from bandit.events import EventBatch
from bandit.stats import (
    ATFLOOR,
    ATFLOOR_LOGF,
    FILLS,
    N_BINS,
    N_FIELDS,
    NOFILL_LOGF,
    PRICE,
    PRICE_LOGP,
    REQUESTS,
    REVENUE,
    REVENUE_SQ,
    SufficientStats,
    floor_terms,
    is_at_floor,
    log_price,
    price_bin,
)
from experiments.config import PolicyConfig

#: Statistics fields indexed by the floor bin, and by the price bin, in the partials' column order.
FLOOR_FIELDS = (REQUESTS, FILLS, REVENUE, REVENUE_SQ, NOFILL_LOGF, ATFLOOR, ATFLOOR_LOGF)
PRICE_FIELDS = (PRICE, PRICE_LOGP)
N_ENTRY_FIELDS = len(FLOOR_FIELDS) + len(PRICE_FIELDS)
#: Sum by bincount over the whole key range while it is at most this many times the number
#: of events (one pass per field over a small array); beyond, sort the keys first.
DENSE_RANGE = 8
#: Rebase the merger's anchor time once a partial is this many half-lives newer (2^64 ≪ float max).
REBASE_HALF_LIVES = 64.0
DEFAULT_EXPERIMENT = "adbandit-relearn"


# --------------------------------------------------------------------------- the kernel
@dataclass(frozen=True)
class PartialStats:
    """Additive statistics of one partition, compact (see the module docstring).

    ``floor_keys`` [K_f] and ``price_keys`` [K_p] are ascending keys
    ``(segment · n_networks + network) · B + bin`` into ``segments``; ``floor_values``
    [K_f, 7] and ``price_values`` [K_p, 2] hold :data:`FLOOR_FIELDS` / :data:`PRICE_FIELDS`
    weighted relative to ``t_ref`` (the partition's newest event; ``-inf`` when empty).
    """

    segments: tuple[str, ...]
    n_networks: int
    t_ref: float
    events: int
    floor_keys: NDArray[np.int64]
    floor_values: NDArray[np.float64]
    price_keys: NDArray[np.int64]
    price_values: NDArray[np.float64]

    @classmethod
    def empty(cls, n_networks: int) -> PartialStats:
        keys = np.empty(0, dtype=np.int64)
        floor, price = np.empty((0, len(FLOOR_FIELDS))), np.empty((0, len(PRICE_FIELDS)))
        return cls((), n_networks, -math.inf, 0, keys, floor, keys, price)


def event_weights(ts: NDArray[np.float64], t_ref: float, half_life_seconds: float) -> NDArray[np.float64]:
    """Weight of each event [n] relative to ``t_ref``: ``2^((t − t_ref)/h)`` (1 without discounting)."""
    if math.isfinite(half_life_seconds):
        return np.exp2((ts - t_ref) / half_life_seconds)
    return np.ones(len(ts))


def sum_by_key(
    keys: NDArray[np.int64], columns: Sequence[NDArray[np.float64]]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The distinct ``keys`` [n] (ascending, [K]) and each column [n] summed per key, [K, C].

    Keys are first numbered 0..K-1 (a count over the key range and a look-up table when the
    range is at most :data:`DENSE_RANGE` × n, else a sort), then each column is one bincount
    into K slots. Events are summed in their input order within a key, as ``np.bincount``
    over the raw keys does, so the sums are those of :func:`bandit.stats.accumulate` bit for bit.
    """
    if len(keys) == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, len(columns)))
    span = int(keys.max()) + 1
    if span <= DENSE_RANGE * len(keys):
        distinct = np.flatnonzero(np.bincount(keys, minlength=span))
        number = np.zeros(span, dtype=np.intp)
        number[distinct] = np.arange(len(distinct))
        inverse = number[keys]
    else:
        distinct, inverse = np.unique(keys, return_inverse=True)
    sums = np.empty((len(distinct), len(columns)))
    for j, column in enumerate(columns):
        sums[:, j] = np.bincount(inverse, weights=column, minlength=len(distinct))
    return distinct, sums


def partition_stats(batch: EventBatch, n_networks: int, half_life_seconds: float) -> PartialStats:
    """Statistics of one partition's events, weighted relative to its newest event."""
    if len(batch) == 0:
        return PartialStats.empty(n_networks)
    t_ref = float(batch.ts.max())
    weight = event_weights(batch.ts, t_ref, half_life_seconds)
    cell = batch.segment_index * n_networks + batch.network
    floor, revenue, filled = batch.floor_cpm, batch.revenue_cpm, batch.filled
    at_floor = is_at_floor(floor, revenue, filled)
    logf, by_floor = floor_terms(floor, filled, revenue, weight, at_floor)
    floor_keys, floor_values = sum_by_key(cell * N_BINS + price_bin(logf), by_floor)
    # Price-binned fields: only fills above the floor carry weight there.
    above = np.flatnonzero(filled & ~at_floor)
    logp = log_price(revenue[above])
    w_above = weight[above]
    price_keys, price_values = sum_by_key(cell[above] * N_BINS + price_bin(logp), (w_above, w_above * logp))
    return PartialStats(
        batch.segments, n_networks, t_ref, len(batch), floor_keys, floor_values, price_keys, price_values
    )


def add_partial(
    entries: NDArray[np.float64], cell_rows: NDArray[np.int64], partial: PartialStats, factor: float
) -> None:
    """Add ``factor`` × a partial into ``entries`` [cells · B, 9], one row per (cell, bin) and
    the fields in the partials' column order (:data:`FLOOR_FIELDS` then :data:`PRICE_FIELDS`);
    ``cell_rows[c]`` is the cell (= segment · N + network) of the partial's cell ``c``. Keys are
    distinct, so plain indexed addition is exact; each key's fields are one contiguous row."""
    n_floor = len(FLOOR_FIELDS)
    for keys, values, columns in (
        (partial.floor_keys, partial.floor_values, slice(0, n_floor)),
        (partial.price_keys, partial.price_values, slice(n_floor, None)),
    ):
        cell, b = np.divmod(keys, N_BINS)
        entries[cell_rows[cell] * N_BINS + b, columns] += values * factor


def entries_to_dense(entries: NDArray[np.float64], n_segments: int, n_networks: int) -> NDArray[np.float64]:
    """Entries [S · N · B, 9] (partial column order) → statistics ``[S, N, F, B]``."""
    out = np.empty((n_segments, n_networks, N_FIELDS, N_BINS))
    out[:, :, list(FLOOR_FIELDS + PRICE_FIELDS), :] = entries.reshape(
        n_segments, n_networks, N_BINS, N_ENTRY_FIELDS
    ).transpose(0, 1, 3, 2)
    return out


def to_dense(partial: PartialStats) -> NDArray[np.float64]:
    """The partial as a dense array ``[S, N, F, B]`` over its own segments (at its ``t_ref``)."""
    n_cells = len(partial.segments) * partial.n_networks
    entries = np.zeros((n_cells * N_BINS, N_ENTRY_FIELDS))
    add_partial(entries, np.arange(n_cells), partial, 1.0)
    return entries_to_dense(entries, len(partial.segments), partial.n_networks)


def encode_partial(partial: PartialStats) -> bytes:
    """A partial as ``.npz`` bytes (no pickle), to travel as one Arrow binary value."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        segments=np.array(partial.segments, dtype=np.str_),
        header=np.array([partial.n_networks, partial.events], dtype=np.int64),
        t_ref=np.array(partial.t_ref),
        floor_keys=partial.floor_keys,
        floor_values=partial.floor_values,
        price_keys=partial.price_keys,
        price_values=partial.price_values,
    )
    return buffer.getvalue()


def decode_partial(blob: bytes) -> PartialStats:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        n_networks, events = (int(x) for x in npz["header"])
        return PartialStats(
            tuple(str(s) for s in npz["segments"]),
            n_networks,
            float(npz["t_ref"]),
            events,
            npz["floor_keys"],
            npz["floor_values"],
            npz["price_keys"],
            npz["price_values"],
        )


# --------------------------------------------------------------------------- the merge
def shift_factor(t_from: float, t_to: float, half_life_seconds: float) -> float:
    """Multiplier moving statistics held at reference time ``t_from`` to ``t_to``:
    ``2^(−(t_to − t_from)/h)`` (above 1 when ``t_to`` is earlier; 1 without discounting)."""
    if not math.isfinite(half_life_seconds):
        return 1.0
    return 2.0 ** (-(t_to - t_from) / half_life_seconds)


class StatsMerger:
    """Sum of partials arriving in any order, held at an anchor time: each partial is added
    once at ``2^((t_p − anchor)/h)`` (nothing is rescaled per arrival) and the sum is moved to
    the newest time when read (:meth:`dense`). Storage: one row per (segment, network, bin)
    with its 9 fields side by side, so adding a partial touches one contiguous row per key."""

    def __init__(self, n_networks: int, half_life_seconds: float) -> None:
        self.n_networks = n_networks
        self.half_life_seconds = float(half_life_seconds)
        self.events = 0
        self.partials = 0
        self.t_ref = -math.inf
        self._anchor = -math.inf
        self._rows: dict[str, int] = {}
        self._entries = np.zeros((0, N_ENTRY_FIELDS))  # [capacity · N · B, 9]

    @property
    def segments(self) -> list[str]:
        return list(self._rows)

    def add(self, partial: PartialStats) -> None:
        if partial.n_networks != self.n_networks:
            raise InvalidConfig(f"partial has {partial.n_networks} networks, expected {self.n_networks}")
        self.partials += 1
        if partial.events == 0:
            return
        self.events += partial.events
        rows = self._rows_for(partial.segments)
        h = self.half_life_seconds
        if not math.isfinite(self._anchor):
            self._anchor = partial.t_ref
        elif partial.t_ref - self._anchor > REBASE_HALF_LIVES * h:
            self._entries *= shift_factor(self._anchor, partial.t_ref, h)
            self._anchor = partial.t_ref
        self.t_ref = max(self.t_ref, partial.t_ref)
        cell_rows = (rows[:, None] * self.n_networks + np.arange(self.n_networks)).ravel()
        add_partial(self._entries, cell_rows, partial, shift_factor(partial.t_ref, self._anchor, h))

    def _rows_for(self, segments: Sequence[str]) -> NDArray[np.int64]:
        rows = np.array([self._rows.setdefault(s, len(self._rows)) for s in segments], dtype=np.int64)
        per_segment = self.n_networks * N_BINS
        capacity = len(self._entries) // per_segment
        if len(self._rows) > capacity:
            grown = np.zeros((max(len(self._rows), 2 * capacity) * per_segment, N_ENTRY_FIELDS))
            grown[: len(self._entries)] = self._entries
            self._entries = grown
        return rows

    def _sorted_entries(self) -> tuple[list[str], NDArray[np.float64]]:
        """Sorted segment keys and their entries [S · N · B, 9] at :attr:`t_ref`."""
        keys = sorted(self._rows)
        per_segment = self.n_networks * N_BINS
        by_segment = self._entries.reshape(-1, per_segment, N_ENTRY_FIELDS)
        entries = by_segment[[self._rows[k] for k in keys]].reshape(-1, N_ENTRY_FIELDS)
        if math.isfinite(self.t_ref):
            entries *= shift_factor(self._anchor, self.t_ref, self.half_life_seconds)
        return keys, entries

    def dense(self) -> tuple[list[str], NDArray[np.float64]]:
        """Sorted segment keys and their statistics ``[S, N, F, B]`` at :attr:`t_ref`."""
        keys, entries = self._sorted_entries()
        return keys, entries_to_dense(entries, len(keys), self.n_networks)

    def partial(self) -> PartialStats:
        """The sum so far as one compact partial at :attr:`t_ref` (segments in arrival order):
        what a task sends on after learning several partitions (a tree merge). An entry is
        kept when its weighted count is positive (its other fields are sums of the same
        weights times something, so zero when it is)."""
        if not self._rows:
            return PartialStats.empty(self.n_networks)
        n_floor = len(FLOOR_FIELDS)
        entries = self._entries[: len(self._rows) * self.n_networks * N_BINS]
        factor = shift_factor(self._anchor, self.t_ref, self.half_life_seconds)
        floor_keys = np.flatnonzero(entries[:, 0])  # requests
        price_keys = np.flatnonzero(entries[:, n_floor])  # fills above the floor
        return PartialStats(
            tuple(self._rows), self.n_networks, self.t_ref, self.events,
            floor_keys, entries[floor_keys, :n_floor] * factor,
            price_keys, entries[price_keys, n_floor:] * factor,
        )  # fmt: skip

    def stats(self) -> SufficientStats:
        """The merged statistics (segments in sorted order)."""
        keys, data = self.dense()
        return SufficientStats.from_dense(keys, data, self.t_ref, self.half_life_seconds)


# --------------------------------------------------------------------------- the Ray job
def expand_logs(patterns: str | Sequence[str]) -> list[str]:
    """Local glob patterns → sorted file paths; directories and URIs (``s3://…``) pass as
    they are (Ray Data lists them). Raises :class:`InvalidOutcome` when a pattern matches
    nothing."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    paths: list[str] = []
    for pattern in map(str, patterns):
        if "://" in pattern or not glob.has_magic(pattern):
            if "://" not in pattern and not os.path.exists(pattern):
                raise InvalidOutcome(f"log path {pattern!r} does not exist")
            paths.append(pattern)
            continue
        found = sorted(glob.glob(pattern, recursive=True))
        if not found:
            raise InvalidOutcome(f"no log files match {pattern!r}")
        paths.extend(found)
    if not paths:
        raise InvalidOutcome("no log files given")
    return paths


#: Columns :func:`bandit.io.batch_from_frame` may read (besides the placement's segment fields).
LOG_COLUMNS = ("placement", "network", "floor_cpm", "filled", "revenue_cpm", "ts", "segment", "context")


def local_files(paths: Sequence[str]) -> list[str] | None:
    """The Parquet files behind local paths (directories searched recursively); None when
    a path is remote (Ray Data lists it)."""
    if any("://" in p for p in paths):
        return None
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)))
        else:
            files.append(path)
    return files


def log_columns(paths: Sequence[str], placement: PlacementConfig) -> list[str] | None:
    """The columns of the first local log file that learning reads (others, such as event
    ids, are not decoded at all); None when the logs are remote (read everything)."""
    import pyarrow.parquet as pq

    files = local_files(paths)
    if not files:
        return None
    wanted = {*LOG_COLUMNS, *placement.segment_by}
    return [name for name in pq.read_schema(files[0]).names if name in wanted]


def partial_table(table: Any, placement: Mapping[str, Any], half_life_seconds: float) -> Any:
    """Ray Data UDF: one Arrow batch of log rows → a one-row Arrow table holding its partial
    (``.npz`` bytes), the rows read and the error, if the rows are not valid outcome events."""
    import pyarrow as pa

    from bandit.errors import AdbanditError
    from bandit.io import batch_from_frame

    config = PlacementConfig.from_dict(placement["id"], placement["body"])
    try:
        batch = batch_from_frame(config, table)
        blob, error = encode_partial(partition_stats(batch, len(config.networks), half_life_seconds)), None
    except AdbanditError as exc:
        blob, error = b"", str(exc)
    return pa.table(
        {
            "partial": pa.array([blob], pa.large_binary()),
            "rows": pa.array([table.num_rows], pa.int64()),
            "error": pa.array([error], pa.string()),
        }
    )


@dataclass
class StatisticsRun:
    """What the Ray job read and merged."""

    stats: SufficientStats
    events: int
    rows: int
    partials: int
    seconds: float


def learn_statistics(
    logs: str | Sequence[str],
    placement: PlacementConfig,
    half_life_seconds: float,
    *,
    address: str | None = None,
    workers: int | None = None,
    partial_rows: int | None = None,
    progress: bool | str = False,
) -> StatisticsRun:
    """Read the logs with Ray Data, compute each partition's partial in parallel (at most
    ``workers`` tasks at a time) and merge them on the driver as they arrive. A partition is
    one file (of local logs; remote ones are split as Ray Data sees fit), or ``partial_rows``
    rows of one. Rows of other placements are skipped (as by
    :func:`bandit.io.batch_from_frame`); an invalid row fails the job with
    :class:`InvalidOutcome`. ``progress`` counts the partials merged
    (:class:`simulator.progress.Progress`; a string labels its lines), out of the files when
    each is one partial; Ray Data's own bars stay off."""
    import ray

    from simulator.parallel import ensure_ray
    from simulator.progress import Progress

    paths = expand_logs(logs)
    ensure_ray(address, workers)
    quiet_ray_data()
    start = time.perf_counter()
    # One read task per local file (Ray Data's file-based reader): on 2 CPUs it ran a day of
    # logs twice as fast as the row-group bin packing reader, whose listing task holds a CPU.
    # The same cap on reading and on the partials keeps them one fused task per file.
    ray.data.DataContext.get_current().use_datasource_v2 = False
    files = local_files(paths)
    dataset = ray.data.read_parquet(
        paths,
        columns=log_columns(paths, placement),
        override_num_blocks=len(files) if files else None,
        concurrency=workers,
    )
    dataset = dataset.map_batches(
        partial_table,
        batch_format="pyarrow",
        batch_size=partial_rows,
        compute=ray.data.TaskPoolStrategy(size=workers) if workers else None,
        fn_kwargs={
            "placement": {"id": placement.id, "body": placement.to_dict()},
            "half_life_seconds": half_life_seconds,
        },
    )
    # Partials merged in the order of the files and their blocks, not of arrival: the same
    # logs then give bit-for-bit the same statistics (float sums depend on their order).
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    merger = StatsMerger(len(placement.networks), half_life_seconds)
    rows = 0
    label = progress if isinstance(progress, str) else "relearn"
    total = len(files) if files and partial_rows is None else None
    with Progress(label, total, unit="partials", enabled=bool(progress)) as shown:
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for blob, n_rows, error in zip(
                *(block.column(c).to_pylist() for c in ("partial", "rows", "error")), strict=True
            ):
                if error is not None:
                    raise InvalidOutcome(f"logs of placement {placement.id!r}: {error}")
                merger.add(decode_partial(blob))
                rows += n_rows
                shown.update()
    return StatisticsRun(merger.stats(), merger.events, rows, merger.partials, time.perf_counter() - start)


def quiet_ray_data() -> None:
    """Ray Data's progress bars and start-up chatter off (the command counts its partials itself)."""
    import logging

    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- the fit
def stats_state_keys(n_networks: int) -> frozenset[str]:
    """The keys a policy state gives its statistics (whatever their storage)."""
    return frozenset(SufficientStats(n_networks, math.inf).state())


def fit_policy(
    config: PolicyConfig, placement: PlacementConfig, stats: SufficientStats, seed: int | None = None
) -> Policy:
    """A fresh policy that has learned ``stats``, with every segment's table fitted once.

    The statistics join the policy the way another worker's would (``Policy.merge`` of a
    policy holding them), so the result is that of ``policy.update(all events)`` with the
    segments refreshed in ``stats.segments`` order.
    """
    policy = config.build(placement, seed=seed)
    own = stats_state_keys(len(placement.networks))
    carrier_state = {k: v for k, v in config.build(placement, seed=seed).state().items() if k not in own}
    carrier = policy_from_state({**carrier_state, **stats.state()})
    policy.merge(carrier)
    return policy


def half_life_seconds_of(config: PolicyConfig, placement: PlacementConfig) -> float:
    """The half-life (seconds) a policy built from ``config`` discounts its statistics with."""
    return config.build(placement).half_life_hours * 3600.0


# --------------------------------------------------------------------------- the command
@dataclass
class RelearnResult:
    policy: Policy
    state_path: Path
    metrics: dict[str, float]
    run_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def relearn(
    logs: str | Sequence[str],
    placement: PlacementConfig,
    config: PolicyConfig,
    *,
    out: str | os.PathLike,
    address: str | None = None,
    workers: int | None = None,
    seed: int | None = None,
    partial_rows: int | None = None,
    track: bool = True,
    experiment: str = DEFAULT_EXPERIMENT,
    progress: bool | str = False,
) -> RelearnResult:
    """Learn ``config``'s policy for ``placement`` from the logs on Ray, write its state to
    ``out`` (``bandit.save_state``) and, with ``track``, log an MLflow run holding it (what
    ``adbandit promote`` registers)."""
    patterns = [logs] if isinstance(logs, (str, os.PathLike)) else list(logs)
    run = learn_statistics(
        patterns,
        placement,
        half_life_seconds_of(config, placement),
        address=address,
        workers=workers,
        partial_rows=partial_rows,
        progress=progress,
    )
    if run.events == 0:
        raise InvalidOutcome(f"the logs hold no events of placement {placement.id!r} ({run.rows:,} rows read)")
    start = time.perf_counter()
    policy = fit_policy(config, placement, run.stats, seed)
    fit_seconds = time.perf_counter() - start
    out = Path(out)
    save_state(out, policy.state())
    metrics = {
        "events": float(run.events),
        "rows": float(run.rows),
        "partials": float(run.partials),
        "segments": float(len(run.stats.segments)),
        "seconds_statistics": run.seconds,
        "seconds_fit": fit_seconds,
        "seconds": run.seconds + fit_seconds,
        "events_per_s": run.events / run.seconds,
    }
    params = {
        "logs": ",".join(map(str, patterns)),
        "placement": placement.id,
        "policy": config.policy,
        "params": config.to_dict()["params"],
        "workers": workers if workers else "all",
        "address": address or "local",
        "seed": seed,
        "half_life_hours": policy.half_life_hours,
    }
    run_id = _track(policy, placement, params, metrics, experiment) if track else None
    return RelearnResult(policy, out, metrics, run_id, params)


def _track(
    policy: Policy,
    placement: PlacementConfig,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    experiment: str,
) -> str:
    from experiments import plots, tracking

    name = f"relearn {params['policy']} for {placement.id}"
    with tracking.start_run(name, kind="relearn", experiment=experiment) as run:
        tracking.log_params(params)
        tracking.log_metrics(metrics)
        tracking.log_text(json.dumps(placement.to_dict(), indent=2), f"placement/{placement.id}.json")
        tracking.log_figure(plots.allocation_by_segment(policy), "plots/allocation.png")
        tracking.log_policy_state(policy)
    return run.info.run_id


def summary_lines(result: RelearnResult) -> Iterable[str]:
    m = result.metrics
    partials = int(m["partials"])
    yield (
        f"{result.params['policy']} for {result.params['placement']}: {int(m['events']):,} events "
        f"({int(m['rows']):,} rows, {partials} partial{'s' * (partials != 1)}) in {int(m['segments'])} segments; "
        f"statistics {m['seconds_statistics']:.1f} s ({m['events_per_s']:,.0f} events/s), fit {m['seconds_fit']:.1f} s"
    )
    yield f"state written to {result.state_path}"
    if result.run_id:
        yield f"MLflow run {result.run_id}  (promote with: adbandit promote {result.run_id})"
