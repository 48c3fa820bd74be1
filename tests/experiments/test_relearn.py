"""Daily re-learning on Ray (``experiments/relearn.py``, ``adbandit relearn``): the partition
kernel against ``bandit.stats.accumulate``, the merge against one aggregate, and the whole
Ray job against ``policy.update(all events)`` in one process."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adbandit.cli import main
from bandit import ALL_SEGMENTS, PlacementConfig, load_state, policy_from_state, read_events
from bandit.events import EventBatch
from bandit.stats import N_BINS, SufficientStats, accumulate
from experiments import relearn as rl
from experiments.config import PolicyConfig

PLACEMENT_BODY = {
    "networks": [
        {"id": "alpha", "floor_min_cpm": 0.0, "floor_max_cpm": 20.0},
        {"id": "beta", "floor_min_cpm": 0.5, "floor_max_cpm": 20.0, "auction": "second"},
        {"id": "house", "floor_min_cpm": 0.0, "floor_max_cpm": 2.0, "min_share": 0.05},
    ],
    "segment_by": ["country", "os"],
}
PLACEMENT = PlacementConfig.from_dict("p1", PLACEMENT_BODY)
NETWORKS = np.array(PLACEMENT.network_ids)
#: Well before the clock of any test run (a model state may not come from the future).
T0 = 1_790_000_000.0


def _outcomes(rng: np.random.Generator, n: int, t0: float, span_s: float) -> dict[str, np.ndarray]:
    """Synthetic outcome columns: log-normal bids against cent-rounded floors, second-price
    fills (half at the floor), no-fills, times over ``span_s`` seconds."""
    floor = np.round(rng.lognormal(0.0, 0.8, n), 2)
    bid = rng.lognormal(0.3, 1.0, n)
    filled = bid >= floor
    revenue = np.where(filled, np.where(rng.random(n) < 0.5, floor, np.maximum(floor, 0.9 * bid)), 0.0)
    return {"floor_cpm": floor, "filled": filled, "revenue_cpm": revenue, "ts": t0 + rng.uniform(0.0, span_s, n)}


def _batch(rng: np.random.Generator, n: int, n_segments: int, t0: float, span_s: float = 86400.0) -> EventBatch:
    return EventBatch.from_arrays(
        PLACEMENT,
        segments=[f"s{i}|x" for i in range(n_segments)],
        segment_index=rng.integers(0, n_segments, n),
        network=rng.integers(0, len(NETWORKS), n),
        **_outcomes(rng, n, t0, span_s),
    )


def _write_day(directory: Path, rng: np.random.Generator, files: int, rows: int) -> pl.DataFrame:
    """A day of logs as Parquet files in the HTTP contract's columns (context as a struct,
    5% of the rows for another placement); returns all rows."""
    directory.mkdir(parents=True)
    frames = []
    for k in range(files):
        cols = _outcomes(rng, rows, T0 + k * 20_000.0, 20_000.0)
        frame = pl.DataFrame(
            {
                "event_id": [f"e{k}-{i}" for i in range(rows)],
                "placement": np.where(rng.random(rows) < 0.95, "p1", "p2"),
                "network": NETWORKS[rng.integers(0, len(NETWORKS), rows)],
                **cols,
                "context": pl.DataFrame(
                    {
                        "country": np.array(["KR", "US", "JP"])[rng.integers(0, 3, rows)],
                        "os": np.array(["ios", "android"])[rng.integers(0, 2, rows)],
                    }
                ).to_struct(),
            }
        )
        frame.write_parquet(directory / f"part-{k:03d}.parquet")
        frames.append(frame)
    return pl.concat(frames)


def _by_segment_key(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows ordered so that segments first appear in sorted order: one process then
    refreshes its tables (and draws from its generator) in the order relearn does."""
    ctx = pl.col("context").struct
    return frame.sort(pl.concat_str([ctx.field("country"), ctx.field("os")], separator="|"), maintain_order=True)


def assert_same_arrays(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], rtol: float = 1e-9) -> None:
    """Same keys; text equal; numbers equal up to float error (relative to each array's scale)."""
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.shape == y.shape, key
        if x.dtype.kind in "fc":
            scale = np.nanmax(np.abs(x), initial=0.0)
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale, err_msg=key)
        else:
            np.testing.assert_array_equal(x, y, err_msg=key)


def assert_same_policy(relearned, reference, rtol: float = 1e-6) -> None:
    """Same statistics and mixture fits (up to float error), and the same tables up to the
    posterior's Monte Carlo: statistics merged from workers differ from one process's in the
    last bits, and a few steps of the curve posterior amplify that (a best floor on a curve
    that is flat within float noise, a draw's rejection sampling), so weights may move by a
    few draws in 128 and floors by a grid step; the mixture fits must agree exactly."""
    assert relearned.model_version == reference.model_version
    assert relearned.segments == reference.segments
    assert_same_arrays(
        SufficientStats.from_state(relearned.state()).state(), SufficientStats.from_state(reference.state()).state()
    )
    mine, theirs = relearned.state(), reference.state()
    assert_same_arrays({"gmm_params": mine["gmm_params"]}, {"gmm_params": theirs["gmm_params"]}, rtol)
    for segment in (ALL_SEGMENTS, *reference.segments):
        a, b = relearned.allocation(segment).to_dict(), reference.allocation(segment).to_dict()
        assert a["effective_events"] == pytest.approx(b["effective_events"], rel=1e-12)
        for x, y in zip(a["networks"], b["networks"], strict=True):
            assert x.keys() == y.keys()
            assert x["auction"] == y["auction"], segment
            assert x["weight"] == pytest.approx(y["weight"], abs=0.06), (segment, x["network"])
            for key in ("floor_cpm", "expected_revenue_cpm", "fill_rate"):
                assert x[key] == pytest.approx(y[key], rel=0.1, abs=1e-9), (segment, x["network"], key)


# ------------------------------------------------------------------ the kernel
@pytest.mark.parametrize("half_life_hours", [48.0, 0.5, math.inf])
@pytest.mark.parametrize("dense_range", [rl.DENSE_RANGE, 0])  # bincounts over the key range / sorted keys
def test_partition_kernel_sums_what_accumulate_sums(monkeypatch, half_life_hours, dense_range):
    monkeypatch.setattr(rl, "DENSE_RANGE", dense_range)
    rng = np.random.default_rng(0)
    batch = _batch(rng, 20_000, 9, T0)
    h = half_life_hours * 3600.0
    partial = rl.partition_stats(batch, len(NETWORKS), h)
    weight = np.exp2((batch.ts - batch.ts.max()) / h) if math.isfinite(h) else np.ones(len(batch))
    cell = batch.segment_index * len(NETWORKS) + batch.network
    expected = accumulate(cell, 9 * len(NETWORKS), batch.floor_cpm, batch.filled, batch.revenue_cpm, weight)
    # The same per-event terms summed in the same order: equal bit for bit.
    np.testing.assert_array_equal(rl.to_dense(partial), expected.reshape(9, len(NETWORKS), -1, N_BINS))
    assert partial.events == len(batch) and partial.t_ref == batch.ts.max()
    assert len(partial.floor_keys) < 9 * len(NETWORKS) * N_BINS  # only the occupied entries
    assert np.all(np.diff(partial.floor_keys) > 0) and np.all(np.diff(partial.price_keys) > 0)
    decoded = rl.decode_partial(rl.encode_partial(partial))
    assert (decoded.segments, decoded.n_networks, decoded.t_ref, decoded.events) == (
        partial.segments, partial.n_networks, partial.t_ref, partial.events)  # fmt: skip
    for name in ("floor_keys", "floor_values", "price_keys", "price_values"):
        np.testing.assert_array_equal(getattr(decoded, name), getattr(partial, name))


def test_an_empty_partition_adds_nothing():
    merger = rl.StatsMerger(len(NETWORKS), 3600.0)
    empty = rl.partition_stats(_batch(np.random.default_rng(0), 0, 1, T0), len(NETWORKS), 3600.0)
    merger.add(rl.decode_partial(rl.encode_partial(empty)))
    assert (merger.events, merger.partials, merger.segments) == (0, 1, [])


# ------------------------------------------------------------------ the merge
def _sorted_segments(batch: EventBatch) -> EventBatch:
    """The same events with the batch's segment keys in sorted order (rows of new segments
    are appended in key order, so the statistics' rows come out sorted)."""
    keys = sorted(batch.segments)
    remap = np.array([keys.index(s) for s in batch.segments])
    return EventBatch(tuple(keys), remap[batch.segment_index], batch.network, batch.floor_cpm, batch.filled,
                      batch.revenue_cpm, batch.ts)  # fmt: skip


@pytest.mark.parametrize("half_life_hours", [6.0, math.inf])
def test_partials_merged_in_any_order_equal_one_aggregate_of_all_events(half_life_hours):
    """Partitions of different segments and times (one 200 half-lives after the others, so the
    merger rebases its anchor) merge to what one ``SufficientStats.add`` of all events holds."""
    h = half_life_hours * 3600.0
    rng = np.random.default_rng(1)
    starts = [T0, T0 + 30_000.0, T0 - 50_000.0, T0 + 10_000.0]
    if math.isfinite(h):
        starts.append(T0 + 200 * h)
    parts = [_batch(rng, 3000, 2 + k, t0, span_s=20_000.0) for k, t0 in enumerate(starts)]
    reference = SufficientStats(len(NETWORKS), h)
    reference.add(_sorted_segments(EventBatch.concat(parts)))
    partials = [rl.decode_partial(rl.encode_partial(rl.partition_stats(p, len(NETWORKS), h))) for p in parts]
    for order in itertools.islice(itertools.permutations(range(len(parts))), 0, None, 7):
        merger = rl.StatsMerger(len(NETWORKS), h)
        for k in order:
            merger.add(partials[k])
        assert merger.events == sum(len(p) for p in parts)
        assert_same_arrays(merger.stats().state(), reference.state(), rtol=1e-12)
    # Partials combined first (a tree merge: a task's partitions travel on as one partial).
    tree = rl.StatsMerger(len(NETWORKS), h)
    for group in (partials[:2], [*partials[2:], rl.PartialStats.empty(len(NETWORKS))]):
        task = rl.StatsMerger(len(NETWORKS), h)
        for partial in group:
            task.add(partial)
        tree.add(rl.decode_partial(rl.encode_partial(task.partial())))
    assert tree.events == merger.events
    assert_same_arrays(tree.stats().state(), reference.state(), rtol=1e-12)


# ------------------------------------------------------------------ the Ray job
def test_relearn_on_ray_equals_learning_the_same_events_in_one_process(tmp_path, ray_cluster):
    """Four Parquet files (12 partials of at most 1,000 rows), six segments, three networks, rows
    of another placement: the relearned ts_gmm has the statistics and the tables of one
    ts_gmm that learned all the events in one ``update``."""
    rng = np.random.default_rng(2)
    frame = _write_day(tmp_path / "date=2026-11-30", rng, files=4, rows=3000)
    config = PolicyConfig("ts_gmm")
    result = rl.relearn(
        str(tmp_path / "date=2026-11-30" / "*.parquet"),
        PLACEMENT,
        config,
        out=tmp_path / "relearned.npz",
        workers=2,
        seed=5,
        partial_rows=1000,
        track=False,
    )
    events = frame.filter(pl.col("placement") == "p1").height
    assert result.metrics["events"] == events and result.metrics["rows"] == frame.height
    assert result.metrics["partials"] >= 12 and result.metrics["segments"] == 6
    reference = config.build(PLACEMENT, seed=5)
    reference.update(_by_segment_key(frame))
    assert_same_policy(result.policy, reference)
    assert_same_policy(policy_from_state(load_state(result.state_path)), reference)


def test_relearn_reads_the_service_archive(tmp_path, ray_cluster):
    """The service's own archive (``state/outcomes/*.parquet``: segment keys, event hashes,
    datetimes, several variants' events) is valid input, learned like the events it holds."""
    from tests.serving.test_store import events, open_store, placement

    store = open_store(tmp_path / "state")
    store.put_placement(placement())
    rng = np.random.default_rng(3)
    for k in range(3):
        store.ingest(events(rng, 400, 400 * k))
    store.snapshot()
    store.close()
    archive = sorted(str(p) for p in (tmp_path / "state" / "outcomes").glob("*.parquet"))
    config = PolicyConfig("ts_gmm", {"n_draws": 32})
    result = rl.relearn(
        str(tmp_path / "state" / "outcomes" / "*.parquet"),
        placement(),
        config,
        out=tmp_path / "relearned.npz",
        seed=1,
        track=False,
    )
    assert result.metrics["events"] == 1200
    reference = config.build(placement(), seed=1)
    reference.update(read_events(archive).sort("segment", maintain_order=True))
    assert_same_policy(result.policy, reference)


def test_relearn_command_logs_a_run_that_promote_registers_and_the_service_loads(
    tmp_path, ray_cluster, mlflow_project, capsys
):
    from experiments import tracking
    from experiments.model_registry import load_model_state
    from tests.serving.test_store import open_store

    _write_day(tmp_path / "logs", np.random.default_rng(4), files=2, rows=2000)
    placement_file = tmp_path / "p1.json"
    placement_file.write_text(json.dumps(PLACEMENT_BODY))
    policy_config = tmp_path / "grid.json"
    policy_config.write_text(json.dumps({"policy": "grid_ts", "params": {"half_life_hours": 24}}))
    out = tmp_path / "p1.npz"
    argv = ["relearn", "--logs", str(tmp_path / "logs" / "*.parquet"), "--placement", str(placement_file)]
    code = main([*argv, "--config", str(policy_config), "--workers", "2", "--seed", "0", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "relearn: 2/2 partials done, " in captured.err  # one partial per file, counted in log lines
    run_id = printed.split("MLflow run ")[1].split()[0]
    import mlflow

    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.params["placement"] == "p1" and run.data.params["policy"] == "grid_ts"
    assert run.data.params["workers"] == "2" and run.data.params["logs"].endswith("*.parquet")
    assert run.data.metrics["rows"] == 4000 and 3000 < run.data.metrics["events"] < 4000
    assert run.data.metrics["events_per_s"] > 0 and run.data.metrics["segments"] == 6
    assert {"policy_state/state.npz", "plots/allocation.png", "placement/p1.json"} <= set(
        tracking.run_artifacts(run_id)
    )
    assert main(["promote", run_id, "--name", "relearn-test"]) == 0
    state = load_model_state("champion", "relearn-test")
    assert_same_arrays(state, load_state(out))
    store = open_store(tmp_path / "state")
    store.put_placement(PLACEMENT)
    version = store.swap_model("p1", "champion", state)
    assert version.startswith("grid_ts.1")
    for segment in ("KR|ios", "JP|android"):
        served, relearned = store.allocation("p1", segment), policy_from_state(state).allocation(segment)
        assert served.networks == relearned.networks and served.effective_events == relearned.effective_events
    store.close()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"floor_cpm": -1.0}, "floor_cpm must be >= 0"),
        ({"network": "zzz"}, "network 'zzz' is not configured"),
        ({"placement": "p2"}, "no events of placement 'p1'"),
    ],
)
def test_relearn_names_what_is_wrong_with_the_logs(tmp_path, ray_cluster, capsys, rows, message):
    columns = {"placement": "p1", "network": "alpha", "floor_cpm": 1.0, "filled": False, "revenue_cpm": 0.0}
    frame = pl.DataFrame({"ts": T0 + np.arange(10.0), "segment": "KR|ios"}).with_columns(
        **{k: pl.lit(v) for k, v in {**columns, **rows}.items()}
    )
    frame.write_parquet(tmp_path / "bad.parquet")
    (tmp_path / "p1.json").write_text(json.dumps(PLACEMENT_BODY))
    argv = ["relearn", "--logs", str(tmp_path / "bad.parquet"), "--placement", str(tmp_path / "p1.json")]
    assert main([*argv, "--no-track", "--out", str(tmp_path / "x.npz")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_log_patterns_that_match_nothing_are_refused(tmp_path):
    with pytest.raises(rl.InvalidOutcome, match="no log files match"):
        rl.expand_logs(str(tmp_path / "date=*" / "*.parquet"))
    with pytest.raises(rl.InvalidOutcome, match="does not exist"):
        rl.expand_logs(str(tmp_path / "missing.parquet"))
    assert rl.expand_logs("s3://bucket/logs/") == ["s3://bucket/logs/"]


def test_only_the_columns_learning_needs_are_read(tmp_path):
    _write_day(tmp_path / "day", np.random.default_rng(6), files=1, rows=10)
    columns = rl.log_columns([str(tmp_path / "day")], PLACEMENT)
    assert columns == ["placement", "network", "floor_cpm", "filled", "revenue_cpm", "ts", "context"]
    by_field = PlacementConfig.from_dict("p1", {**PLACEMENT_BODY, "segment_by": ["event_id"]})
    assert "event_id" in rl.log_columns([str(tmp_path / "day" / "part-000.parquet")], by_field)
    assert rl.log_columns(["s3://bucket/logs/"], PLACEMENT) is None


def test_a_hundred_thousand_events_relearn_within_seconds(tmp_path, ray_cluster):
    """Not a benchmark (benchmarks/bench_relearn.py is): a guard that the Ray path stays far
    from per-event Python work."""
    _write_day(tmp_path / "logs", np.random.default_rng(5), files=2, rows=50_000)
    start = time.perf_counter()
    run = rl.learn_statistics(str(tmp_path / "logs"), PLACEMENT, 48 * 3600.0, workers=2)
    assert run.events > 90_000 and time.perf_counter() - start < 30
