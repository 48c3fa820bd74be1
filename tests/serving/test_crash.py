"""Durability against the real process: SIGKILL the server while several clients stream
outcome events, restart it on the same state dir, and check that every acknowledged
event is in the state exactly once.

"In the state" is checked two independent ways: the de-duplication index (re-posting an
acknowledged event must come back as a duplicate) and the learned statistics (the
placement's ``effective_events`` — an exact count here: the ``static`` policy does not
discount, and all events share one timestamp — must equal the number of distinct events
the log holds, no more, no less).
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from serving.process import free_port, start_server, stop_server

CLIENTS = 4
BATCH = 40
TS = "2026-11-21T10:00:00Z"
#: Kill once this many events have been acknowledged (plenty remain in flight).
KILL_AFTER_ACKED = 2000


def event(client: int, batch: int, i: int) -> dict:
    return {
        "event_id": f"c{client}-b{batch}-{i}",
        "ts": TS,
        "placement": "crash",
        "network": "alpha" if i % 2 else "beta",
        "floor_cpm": 1.0,
        "filled": i % 3 != 0,
        "revenue_cpm": 1.5 if i % 3 != 0 else 0.0,
    }


class Streamer(threading.Thread):
    """Posts batches of fresh events until the server goes away; remembers which batches
    were acknowledged (200 with every event accepted) and which were only attempted."""

    def __init__(self, index: int, base: str) -> None:
        super().__init__(daemon=True)
        self.index = index
        self.base = base
        self.acked: list[dict] = []
        self.attempted: list[dict] = []
        self.failure: str | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            for batch in range(10_000):
                events = [event(self.index, batch, i) for i in range(BATCH)]
                self.attempted.extend(events)
                try:
                    response = client.post("/v1/outcomes", json=events)
                except httpx.TransportError:
                    return  # the server was killed
                body = response.json()
                if response.status_code != 200 or body != {"accepted": BATCH, "duplicates": 0, "rejected": []}:
                    self.failure = f"{response.status_code}: {body}"
                    return
                self.acked.extend(events)


def effective_events(base: str) -> float:
    return httpx.get(f"{base}/v1/placements/crash/allocation").json()["effective_events"]


def post_all(base: str, events: list[dict]) -> tuple[int, int]:
    accepted = duplicates = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        for k in range(0, len(events), 2000):
            body = client.post("/v1/outcomes", json=events[k : k + 2000]).json()
            assert body["rejected"] == []
            accepted += body["accepted"]
            duplicates += body["duplicates"]
    return accepted, duplicates


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_event_and_counts_none_twice(tmp_path):
    state_dir = tmp_path / "state"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(state_dir, port)
    try:
        placement = {"networks": [{"id": "alpha"}, {"id": "beta"}]}
        assert httpx.put(f"{base}/v1/placements/crash", json=placement).status_code == 201
        static = {"variants": [{"name": "champion", "traffic": 100, "policy": "static"}]}
        assert httpx.put(f"{base}/v1/placements/crash/experiment", json=static).status_code == 200
        streamers = [Streamer(i, base) for i in range(CLIENTS)]
        for s in streamers:
            s.start()
        deadline = time.monotonic() + 60
        while sum(len(s.acked) for s in streamers) < KILL_AFTER_ACKED and time.monotonic() < deadline:
            time.sleep(0.005)
        server.send_signal(signal.SIGKILL)
        server.wait()
        for s in streamers:
            s.join(timeout=30)
        assert all(s.failure is None for s in streamers), [s.failure for s in streamers]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    acked = [e for s in streamers for e in s.acked]
    attempted = [e for s in streamers for e in s.attempted]
    acked_ids = {e["event_id"] for e in acked}
    unacked = [e for e in attempted if e["event_id"] not in acked_ids]
    assert len(acked) >= KILL_AFTER_ACKED and unacked  # killed mid-stream, with requests in flight

    server = start_server(state_dir, port)
    try:
        recovered = effective_events(base)
        # Every acknowledged event survived; in-flight ones may or may not have.
        assert len(acked) <= recovered <= len(attempted)
        # The dedupe index agrees with the statistics: all acknowledged events are known ...
        assert post_all(base, acked) == (0, len(acked))
        # ... and of the unacknowledged ones exactly those the statistics counted.
        accepted, duplicates = post_all(base, unacked)
        assert duplicates == recovered - len(acked)
        assert accepted == len(attempted) - recovered
        # Now each attempted event is in the state exactly once.
        deadline = time.monotonic() + 10
        while effective_events(base) < len(attempted) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert effective_events(base) == len(attempted)
        report = httpx.get(f"{base}/v1/placements/crash/experiment").json()
        assert report["variants"]["champion"]["requests"] == len(attempted)
    finally:
        stop_server(server, timeout_s=30)
    errors = server.stderr.read().decode()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -15).
    assert server.returncode in (0, -signal.SIGTERM) and "Traceback" not in errors, errors[-2000:]
