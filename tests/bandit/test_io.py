"""Outcome logs from Parquet and NDJSON files give the same statistics as event objects."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from bandit import InvalidOutcome, NetworkConfig, OutcomeEvent, PlacementConfig, make_policy, read_events

PLACEMENT = PlacementConfig("p1", (NetworkConfig("alpha"), NetworkConfig("beta")), ("country", "os"))


def _events(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        filled = bool(rng.random() < 0.6)
        floor = round(float(rng.uniform(0.1, 3.0)), 3)
        rows.append(
            {
                "event_id": f"e{i}",
                "decision_id": f"d{i}",
                "ts": f"2026-11-21T{10 + i // 3600:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z",
                "placement": "p1" if i % 7 else "other",
                "network": ["alpha", "beta"][i % 2],
                "floor_cpm": floor,
                "filled": filled,
                "revenue_cpm": round(floor * float(rng.uniform(1.0, 2.0)), 4) if filled else 0.0,
                "context": {"country": ["KR", "US"][i % 3 == 0], "os": ["ios", "android"][i % 5 == 0]},
            }
        )
    return rows


def _reference_stats(rows: list[dict]) -> np.ndarray:
    policy = make_policy("static", PLACEMENT, half_life_hours=2.0)
    policy.update([OutcomeEvent.from_dict(r) for r in rows if r["placement"] == "p1"])
    return policy.stats


@pytest.mark.parametrize("fmt", ["parquet", "ndjson"])
def test_log_files_update_like_event_objects(tmp_path, fmt):
    rows = _events(500)
    path = tmp_path / f"log.{fmt}"
    if fmt == "parquet":
        pl.DataFrame(rows).write_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows))
    policy = make_policy("static", PLACEMENT, half_life_hours=2.0)
    policy.update(read_events([path]))
    reference = _reference_stats(rows)
    order = [reference.segments.index(s) for s in policy.stats.segments]
    assert sorted(policy.stats.segments) == sorted(reference.segments)
    np.testing.assert_allclose(policy.stats.to_dense(), reference.to_dense()[order], rtol=1e-9, atol=1e-12)
    assert policy.stats.t_ref == pytest.approx(reference.t_ref)


def test_several_files_are_concatenated(tmp_path):
    rows = _events(300, seed=1)
    pl.DataFrame(rows[:150]).write_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.ndjson").write_text("\n".join(json.dumps(r) for r in rows[150:]))
    policy = make_policy("static", PLACEMENT)
    policy.update(read_events([tmp_path / "a.parquet", tmp_path / "b.ndjson"]))
    assert policy.stats.to_dense()[:, :, 0].sum() == pytest.approx(sum(r["placement"] == "p1" for r in rows))


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.parquet", "does not exist"), ("log.csv", "use .parquet or .ndjson")],
)
def test_bad_log_files_are_named(tmp_path, name, message):
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("a,b\n")
    with pytest.raises(InvalidOutcome, match=message):
        read_events([path])


def test_iso_and_epoch_times_in_different_files_mix(tmp_path):
    rows = _events(40, seed=2)
    pl.DataFrame(rows[:20]).write_parquet(tmp_path / "iso.parquet")
    epoch = [{**r, "ts": OutcomeEvent.from_dict(r).ts} for r in rows[20:]]
    (tmp_path / "epoch.ndjson").write_text("\n".join(json.dumps(r) for r in epoch))
    frame = read_events([tmp_path / "iso.parquet", tmp_path / "epoch.ndjson"])
    assert frame["ts"].dtype == pl.Float64
    expected = [OutcomeEvent.from_dict(r).ts for r in rows]
    np.testing.assert_allclose(frame["ts"].to_numpy(), expected)
