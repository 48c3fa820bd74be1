"""Run the real service in a child process (crash tests and load benchmarks drive it there)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(
    state_dir: Path,
    port: int,
    *extra_args: str,
    timeout_s: float = 60.0,
    env: Mapping[str, str] | None = None,
    stderr_path: Path | None = None,
) -> subprocess.Popen:
    """``adbandit serve`` on 127.0.0.1:``port`` over ``state_dir``, returned once ``/healthz`` answers.

    ``ADBANDIT_*`` variables of this process are not passed on, so the child runs on the
    embedded defaults plus ``extra_args`` and ``env`` (e.g. ``ADBANDIT_FAULT_FILE``, see
    :mod:`serving.faults`). The child's log goes to ``stderr_path`` if given (a file never
    fills up and blocks the server the way an unread pipe does), else to a pipe.
    """
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ADBANDIT_")}, **(env or {})}
    cmd = [sys.executable, "-m", "adbandit", "serve", "--host", HOST, "--port", str(port),
           "--state-dir", str(state_dir), "--log-level", "warning", *extra_args]  # fmt: skip
    err = open(stderr_path, "ab") if stderr_path is not None else subprocess.PIPE
    try:
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    finally:
        if stderr_path is not None:
            err.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = stderr_path.read_text() if stderr_path is not None else process.stderr.read().decode()
            raise RuntimeError(f"server exited: {text[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start within {timeout_s:.0f} s")


def stop_server(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM (a clean close: final snapshot), SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
