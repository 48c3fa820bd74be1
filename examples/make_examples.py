"""Regenerate the example outcome logs of placement p1 (``examples/p1.json``).

    PYTHONPATH=. python examples/make_examples.py

* ``outcomes.ndjson`` — 400 outcome events in the HTTP contract's shape (no decision ids):
  random networks and floors, answered by the simulator's demo market (networks ``admob``,
  ``adfit``, ``house`` on ``KR|android``, ``KR|ios``, ``US|ios``).
* ``outcomes.parquet`` — 3,000 events in the service's archive format (``state/outcomes/``):
  decided by a live ``ts_gmm`` policy over three rounds, with the propensities of each
  decision, so ``adbandit ope`` and ``adbandit relearn`` can read them.

Event times are fixed (ending 2026-11-21T12:00:00Z) and the market is seeded; the live policy
draws its own random numbers, so the Parquet decisions differ from run to run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from bandit import PlacementConfig
from serving.store import PolicyStore
from simulator.demo import demo_events

HERE = Path(__file__).resolve().parent
END_TS = 1_795_262_400.0  # 2026-11-21T12:00:00Z


def p1() -> PlacementConfig:
    return PlacementConfig.from_dict("p1", json.loads((HERE / "p1.json").read_text()))


def as_p1(events: list[dict], prefix: str) -> list[dict]:
    return [{**e, "placement": "p1", "event_id": f"{prefix}-{e['event_id']}"} for e in events]


def write_ndjson(path: Path, n: int = 400) -> None:
    events = as_p1(demo_events(n, seed=11, ts=END_TS - 7200.0), "log")
    for e in events:
        e["ts"] = _iso(e["ts"])
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))


def write_parquet(path: Path, rounds: int = 3, per_round: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = PolicyStore(Path(tmp) / "state", fsync=False, max_event_skew_s=10**9)
        store.open()
        try:
            store.put_placement(p1())

            def live(requests):
                return [(d.network, d.floor_cpm, d.decision_id) for d in store.decide_batch("p1", requests)]

            for r in range(rounds):
                ts = END_TS - (rounds - 1 - r) * 1800.0
                events = as_p1(demo_events(per_round, seed=21 + r, ts=ts, decide=live, start=r * per_round), "arc")
                result = store.ingest(events)
                assert result.accepted == per_round, result.rejected[:3]
                store.flush()
            store.snapshot()  # archives every learned event under state/outcomes/
        finally:
            store.close()
        parts = sorted((Path(tmp) / "state" / "outcomes").glob("*.parquet"))
        frame = pl.concat([pl.read_parquet(p) for p in parts]).sort("ts")
    assert frame.height == rounds * per_round and np.isfinite(frame["propensity"].to_numpy()).all()
    frame.write_parquet(path, compression="zstd")


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


if __name__ == "__main__":
    write_ndjson(HERE / "outcomes.ndjson")
    write_parquet(HERE / "outcomes.parquet")
    for name in ("outcomes.ndjson", "outcomes.parquet"):
        print(f"{name}: {(HERE / name).stat().st_size:,} bytes")
