"""The console's history: what a tick records, that it survives restarts and torn writes, that it
stays bounded, and ``GET /v1/placements/{p}/history`` (its parameters and its key)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bandit import ALL_SEGMENTS
from bandit.drift import ChangeAlarm
from serving.history import HistoryRecorder, WindowTally
from tests.serving.conftest import P1_BODY
from tests.serving.test_store import ab, crash_copy, events, open_store, placement


def tally(requests: int, fills: int, revenue: float, segments: dict[str, tuple] | None = None) -> WindowTally:
    window = WindowTally()
    window.total = np.array([requests, fills, revenue], dtype=float)
    window.segments = {s: np.array(v, dtype=float) for s, v in (segments or {}).items()}
    window.last_ts = 1000.0
    return window


ALLOCATION = {"alpha": (0.7, 1.5), "beta": (0.3, 0.8)}


def test_a_tick_records_the_window_and_the_champion_allocation_per_segment(tmp_path):
    store = open_store(tmp_path, history_every_s=3600.0)
    store.put_placement(placement())
    batch = events(np.random.default_rng(1), 400, 0)
    store.ingest(batch)
    store.flush()
    store.record_history()
    history = store.history("p1")
    (point,) = history["points"]
    rewards = [e["revenue_cpm"] if e["filled"] else 0.0 for e in batch]
    assert point["requests"] == 400
    assert point["fills"] == sum(e["filled"] for e in batch)
    assert point["revenue_per_request"] == pytest.approx(np.mean(rewards))
    assert point["fill_rate"] == pytest.approx(point["fills"] / 400)
    allocation = store.allocation("p1")
    assert point["networks"] == {
        n.network: {"weight": pytest.approx(n.weight), "floor_cpm": pytest.approx(n.floor_cpm)}
        for n in allocation.networks
    }
    assert history["last_event_ts"] == max(e["ts"] for e in batch)
    # Each segment seen has its own series, with its own events.
    in_kr_ios = [e for e in batch if e["context"] == {"country": "KR", "os": "ios"}]
    assert "KR|ios" in history["segments"] and history["segments"][0] == ALL_SEGMENTS
    (kr,) = store.history("p1", "KR|ios")["points"]
    assert kr["requests"] == len(in_kr_ios)
    assert kr["networks"].keys() == {"alpha", "beta", "house"}
    health = history["health"]
    assert health["events_accepted_total"] == 400 and health["log_lag_events"] == 0
    store.close()


def test_history_survives_a_restart_and_replayed_events_are_not_counted_twice(tmp_path):
    store = open_store(tmp_path, history_every_s=3600.0)
    store.put_placement(placement())
    store.ingest(events(np.random.default_rng(2), 300, 0))
    store.flush()
    store.record_history()
    store.ingest(events(np.random.default_rng(3), 200, 300))
    store.close()  # records the last window: 200 events
    before = store.history("p1")
    assert [p["requests"] for p in before["points"]] == [300, 200]

    again = open_store(tmp_path, history_every_s=3600.0)  # replays the log after the last snapshot
    assert again.history("p1")["points"] == before["points"]
    assert again.history("p1", "KR|ios")["points"] == store.history("p1", "KR|ios")["points"]
    again.record_history()
    assert again.history("p1")["points"][-1]["requests"] == 0
    again.close()


def test_after_a_crash_the_replayed_log_is_not_recorded_again(tmp_path):
    store = open_store(tmp_path / "live", history_every_s=3600.0)
    store.put_placement(placement())
    store.ingest(events(np.random.default_rng(2), 300, 0))
    store.flush()
    store.record_history()
    store.ingest(events(np.random.default_rng(3), 200, 300))
    store.flush()
    crash_copy(tmp_path / "live", tmp_path / "crashed")  # no snapshot yet: open replays all 500 events
    store.close()
    again = open_store(tmp_path / "crashed", history_every_s=3600.0)
    assert [p["requests"] for p in again.history("p1")["points"]] == [300]
    again.record_history()  # the 200 of the unrecorded window are lost to the history, never doubled
    assert [p["requests"] for p in again.history("p1")["points"]] == [300, 0]
    again.close()


def test_a_torn_line_is_skipped_and_the_file_repaired(tmp_path):
    recorder = HistoryRecorder(tmp_path)
    recorder.load()
    for i in range(3):
        recorder.record(100.0 + i, "p1", tally(10, 5, 12.5), [], {ALL_SEGMENTS: ALLOCATION})
    path = tmp_path / "p1.ndjson"
    with open(path, "ab") as f:
        f.write(b'{"t": 102.5, "p": "p1", "alarm": {"ts": 1.0, "segment": "*"}}\n')  # JSON, but not an alarm
        f.write(b'{"t": 103.0, "p": "p1", "s": "*", "req": 1')  # a crash mid-write
    reloaded = HistoryRecorder(tmp_path)
    reloaded.load()
    assert reloaded.skipped_lines == 2
    assert [p["t"] for p in reloaded.read("p1")["points"]] == [100.0, 101.0, 102.0]
    reloaded.record(104.0, "p1", tally(1, 1, 2.0), [], {ALL_SEGMENTS: ALLOCATION})
    lines = path.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 4


def test_history_is_bounded_by_thinning_old_points_and_keeps_totals(tmp_path):
    recorder = HistoryRecorder(tmp_path, max_points=16, max_segments=2)
    recorder.load()
    segs = {"KR|ios": (3, 1, 2.0), "US|ios": (2, 1, 1.0), "JP|ios": (1, 1, 1.0)}
    for i in range(500):
        window = tally(10, 4, 20.0, segs)
        segments = recorder.segments_to_record("p1", window)
        alarms = [ChangeAlarm(float(i), "KR|ios", "alpha", -0.5)] if i % 3 == 0 else []
        recorder.record(float(i), "p1", window, alarms, {s: ALLOCATION for s in segments})
    history = recorder.read("p1")
    points = history["points"]
    assert len(points) <= 16
    assert sum(p["requests"] for p in points) == 5000  # thinning merges windows, never drops them
    assert [p["t"] for p in points] == sorted(p["t"] for p in points) and points[-1]["t"] == 499.0
    assert recorder.segments("p1") == [ALL_SEGMENTS, "KR|ios", "US|ios"]  # the 2 busiest first seen
    assert 0 < len(history["alarms"]) <= 500
    # The file is rewritten from memory before it holds twice what is kept (plus a margin).
    lines = (tmp_path / "p1.ndjson").read_bytes().splitlines()
    kept = 3 * 16 + len(history["alarms"])
    assert len(lines) <= 2 * kept + 64 + 4
    reloaded = HistoryRecorder(tmp_path, max_points=16, max_segments=2)
    reloaded.load()
    assert reloaded.read("p1")["points"] == points


def _decided(store, rng, n: int, start: int) -> list[dict]:
    """``n`` outcome events answering the store's own decisions (so each is its variant's)."""
    context = {"country": "KR", "os": "ios"}
    decisions = store.decide_batch("p1", [(f"u{start + i}", context) for i in range(n)])
    out = events(rng, n, start, decision_ids=[d.decision_id for d in decisions])
    for event, d in zip(out, decisions, strict=True):
        event["network"], event["floor_cpm"], event["context"] = d.network, d.floor_cpm, context
        if event["filled"]:
            event["revenue_cpm"] = max(event["revenue_cpm"], d.floor_cpm)
    return out


def test_a_tick_records_the_live_experiments_lift_and_ci_over_time(tmp_path):
    """Each tick keeps the experiment report of that time on the placement's own series: the
    lift of every variant against the champion with its 95% CI and always-valid p-value."""
    store = open_store(tmp_path, history_every_s=3600.0)
    store.put_placement(placement())
    store.record_history()  # before the experiment: no experiment in the point
    store.set_experiment("p1", ab())
    rng = np.random.default_rng(5)
    reports = []
    for k in range(3):
        store.ingest(_decided(store, rng, 600, 1000 * k))
        store.flush()
        store.record_history()
        reports.append(store.experiment_report("p1")["variants"])
    points = store.history("p1")["points"]
    assert "experiment" not in points[0] and len(points) == 4
    for point, report in zip(points[1:], reports, strict=True):
        assert point["experiment"].keys() == {"challenger", "holdout"}  # not the champion
        for name, figures in point["experiment"].items():
            assert figures == {k: report[name][k] for k in figures}, name
            assert figures["ci_low"] <= figures["lift"] <= figures["ci_high"]
    growth = [p["experiment"]["challenger"]["requests"] for p in points[1:]]
    assert growth == sorted(growth) and growth[0] > 0  # cumulative since the experiment began
    assert "experiment" not in store.history("p1", "KR|ios")["points"][-1]  # the placement's series only
    store.close()
    again = open_store(tmp_path, history_every_s=3600.0)  # and it survives a restart
    assert again.history("p1")["points"] == store.history("p1")["points"]
    again.close()


def test_history_files_without_experiments_still_load(tmp_path):
    """A file written before experiments were kept (no ``x``) loads as it is, and new points
    with figures follow it; thinning keeps the later point's figures."""
    old = {"t": 100.0, "p": "p1", "s": "*", "req": 5, "fill": 2, "rev": 3.0, "last": 99.0, "n": {"alpha": [1.0, 0.5]}}
    (tmp_path / "p1.ndjson").write_text(json.dumps(old) + "\n")
    recorder = HistoryRecorder(tmp_path, max_points=4)
    recorder.load()
    assert recorder.skipped_lines == 0
    (point,) = recorder.read("p1")["points"]
    assert "experiment" not in point and point["requests"] == 5
    for i in range(1, 6):
        figures = {"challenger": [100.0 * i, 0.01 * i, -0.1, 0.1 + 0.01 * i, None]}
        recorder.record(100.0 + i, "p1", tally(10, 5, 12.5), [], {ALL_SEGMENTS: ALLOCATION}, figures)
    points = recorder.read("p1")["points"]
    last = dict(points[-1]["experiment"]["challenger"])
    assert len(points) <= 4 and last.pop("p_value_always_valid") is None
    assert last == pytest.approx({"requests": 500, "lift": 0.05, "ci_low": -0.1, "ci_high": 0.15})
    merged = [p for p in points if "experiment" in p]
    assert all(p["experiment"]["challenger"]["requests"] == 100 * (p["t"] - 100) for p in merged)  # the later kept
    reloaded = HistoryRecorder(tmp_path, max_points=4)
    reloaded.load()
    assert reloaded.read("p1")["points"] == points


def test_placement_ids_are_file_names_that_cannot_leave_the_directory(tmp_path):
    recorder = HistoryRecorder(tmp_path / "history")
    recorder.load()
    for pid in ("..", "a/b", "x:y~z"):
        recorder.record(1.0, pid, tally(1, 1, 1.0), [], {ALL_SEGMENTS: ALLOCATION})
    assert sorted(p.name for p in (tmp_path / "history").iterdir()) == ["...ndjson", "a%2Fb.ndjson", "x%3Ay~z.ndjson"]
    reloaded = HistoryRecorder(tmp_path / "history")
    reloaded.load()
    assert len(reloaded.read("a/b")["points"]) == 1


# ------------------------------------------------------------------------------------ HTTP
@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("since=yesterday", 422, "since 'yesterday' is not a time"),
        ("since=2026-12-02T10:00:00", 422, "with a time zone"),
        ("since=nan", 422, "is not a time"),
        ("sinse=1", 422, "unknown query parameter 'sinse': it takes segment, since"),
        ("since=1&since=2", 422, "given more than once"),
        ("segment=KR", 422, "segments by country|os"),
    ],
)
def test_bad_query_parameters_are_a_422_that_says_why(make_client, query, status, message):
    client = make_client(history_every_s=3600.0)
    client.put("/v1/placements/p1", json=P1_BODY)
    r = client.get(f"/v1/placements/p1/history?{query}")
    assert r.status_code == status
    assert message in json.dumps(r.json()["detail"])


def test_history_endpoint_filters_by_since_and_follows_the_read_key(make_client):
    client = make_client(history_every_s=3600.0, read_api_key="reader-key", api_key="writer-key")
    assert client.get("/v1/placements/nope/history").status_code == 401
    write = {"Authorization": "Bearer writer-key"}
    assert client.put("/v1/placements/p1", json=P1_BODY, headers=write).status_code == 201
    read = {"Authorization": "Bearer reader-key"}
    assert client.get("/v1/placements/nope/history", headers=read).status_code == 404
    store = client.app.state.store
    for _ in range(3):
        store.record_history()
    points = client.get("/v1/placements/p1/history", headers=read).json()["points"]
    assert len(points) == 3 and points[0]["requests"] == 0 and points[0]["revenue_per_request"] is None
    later = client.get(f"/v1/placements/p1/history?since={points[0]['t']}", headers=read).json()["points"]
    assert later == points[1:]
    assert client.get("/v1/placements/p1/history?since=1970-01-01T00:00:00Z", headers=read).json()["points"] == points
    schema = client.get("/openapi.json").json()
    assert "/v1/placements/{placement}/history" in schema["paths"]


def test_the_demo_feed_gives_the_console_live_traffic(tmp_path):
    from serving.demo import DemoFeed, install_demo
    from simulator.demo import MarketDemo

    store = open_store(tmp_path, history_every_s=3600.0)
    install_demo(store, MarketDemo(), n=300, rounds=1)
    store.flush()
    store.record_history()
    feed = DemoFeed(store, MarketDemo(), every_s=0.05, n=50)
    feed.start()
    deadline = time.monotonic() + 20
    while feed.rounds < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    feed.stop()
    store.flush()
    store.record_history()
    fed = store.history("demo")["points"][-1]["requests"]
    assert feed.rounds >= 3 and fed == 50 * feed.rounds
    store.close()
