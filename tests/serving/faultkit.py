"""What the fault-injection suites share: a real server over a temporary state dir, known
batches of outcome events, and exact counts of what the state learned.

"Learned" is read two independent ways, as in ``test_crash.py``: the placement's
``effective_events`` (exact here: the ``static`` policy does not discount, every event
has the same timestamp) and the de-duplication index (re-posting an event answers
``duplicate`` exactly when the state holds it).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from serving.process import HOST, free_port, start_server

PLACEMENT = "faults"
TS = "2026-11-21T10:00:00Z"
BATCH = 50


def batch(tag: str, n: int = BATCH) -> list[dict]:
    """``n`` fresh outcome events with ids ``<tag>-<i>``."""
    return [
        {
            "event_id": f"{tag}-{i}",
            "ts": TS,
            "placement": PLACEMENT,
            "network": "alpha" if i % 2 else "beta",
            "floor_cpm": 1.0,
            "filled": i % 3 != 0,
            "revenue_cpm": 1.5 if i % 3 != 0 else 0.0,
        }
        for i in range(n)
    ]


class Server:
    """``adbandit serve`` in a child process on a free loopback port."""

    def __init__(self, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log_path = state_dir.parent / f"{state_dir.name}-server-{self.port}.log"
        self.process: subprocess.Popen = start_server(state_dir, self.port, env=env, stderr_path=self.log_path)
        self.client = httpx.Client(base_url=self.base, timeout=30)
        self.stderr = ""

    def setup(self) -> None:
        """The placement of the suite: two networks, the non-discounting ``static`` policy."""
        body = {"networks": [{"id": "alpha"}, {"id": "beta"}]}
        assert self.client.put(f"/v1/placements/{PLACEMENT}", json=body).status_code == 201
        static = {"variants": [{"name": "champion", "traffic": 100, "policy": "static"}]}
        assert self.client.put(f"/v1/placements/{PLACEMENT}/experiment", json=static).status_code == 200

    def ack(self, events: list[dict]) -> None:
        """Post ``events`` and require every one to be acknowledged as new."""
        r = self.client.post("/v1/outcomes", json=events)
        assert r.status_code == 200 and r.json() == {"accepted": len(events), "duplicates": 0, "rejected": []}, r.text

    def repost(self, events: Sequence[dict]) -> tuple[int, int]:
        """Post events again: (accepted = the state did not hold them, duplicates = it did)."""
        accepted = duplicates = 0
        for k in range(0, len(events), 2000):
            r = self.client.post("/v1/outcomes", json=list(events[k : k + 2000]))
            assert r.status_code == 200 and r.json()["rejected"] == [], r.text
            accepted += r.json()["accepted"]
            duplicates += r.json()["duplicates"]
        return accepted, duplicates

    def learned(self) -> float:
        return self.client.get(f"/v1/placements/{PLACEMENT}/allocation").json()["effective_events"]

    def requests(self) -> int:
        return self.client.get(f"/v1/placements/{PLACEMENT}/experiment").json()["variants"]["champion"]["requests"]

    def wait_learned(self, n: int, timeout_s: float = 15.0) -> float:
        """``learned()`` once it reaches ``n`` (the applier is asynchronous), or at the deadline."""
        deadline = time.monotonic() + timeout_s
        while (got := self.learned()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return got

    def health(self) -> httpx.Response:
        return self.client.get("/healthz")

    def wait_ready(self, timeout_s: float = 15.0) -> httpx.Response:
        deadline = time.monotonic() + timeout_s
        while (r := self.health()).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        return r

    def metric(self, name: str) -> float | None:
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def kill(self) -> None:
        """SIGKILL: no final snapshot, no flush."""
        self.process.send_signal(signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """SIGTERM: a clean close (final snapshot)."""
        self.client.close()  # no idle keep-alive connection for the shutdown to wait on
        self.process.send_signal(signal.SIGTERM)
        self._reap()

    def _reap(self) -> None:
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.client.close()
        self.stderr = self.log_path.read_text(errors="replace")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()
