"""Builds the service's image from the Dockerfile and runs it: ``/healthz`` answers, the demo
placement decides, the process is not root and the state dir is the image's volume.

Skips only where no Docker daemon answers (``docker info``). The base image is
``python:3.11-slim`` (pulled when missing), or ``ADBANDIT_DOCKER_BASE`` — any Debian-based image
with Python >= 3.11 and its venv module, for a machine without access to Docker Hub; with a
daemon but no base image to build from, the test fails and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from serving.process import free_port

ROOT = Path(__file__).resolve().parents[1]
BASE = os.environ.get("ADBANDIT_DOCKER_BASE", "python:3.11-slim")


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def no_docker() -> str | None:
    """Why Docker cannot be used here, or None."""
    if shutil.which("docker") is None:
        return "no docker command (install docker.io and run dockerd to build the image)"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out: no Docker daemon answers"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker daemon answers: {lines[-1] if lines else info.returncode}"
    return None


@pytest.fixture(scope="module")
def image():
    reason = no_docker()
    if reason:
        pytest.skip(reason)
    if docker("image", "inspect", BASE, check=False).returncode != 0:
        pulled = docker("pull", BASE, timeout=600, check=False)
        if pulled.returncode != 0:
            pytest.fail(
                f"Docker works but the base image {BASE} is neither here nor pullable "
                f"({pulled.stderr.strip().splitlines()[-1] if pulled.stderr.strip() else pulled.returncode}): set "
                "ADBANDIT_DOCKER_BASE to a local Debian-based image with Python >= 3.11 and its venv module"
            )
    tag = f"adbandit-test:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    build = docker("build", "--build-arg", f"PYTHON_IMAGE={BASE}", "-t", tag, str(ROOT), timeout=1800, check=False)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    print(f"\nbuilt {tag} from {BASE} in {time.monotonic() - started:.0f} s")
    try:
        yield tag
    finally:
        docker("image", "rm", "-f", tag, check=False)


def test_the_image_serves_as_a_non_root_user_with_its_state_in_a_volume(image) -> None:
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "adbandit:adbandit"
    assert list(config["Volumes"]) == ["/var/lib/adbandit"]
    port = free_port()
    run = docker("run", "-d", "-p", f"127.0.0.1:{port}:8000", "-e", "ADBANDIT_DEMO=1", image)
    container = run.stdout.strip()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        logs = docker("logs", container, check=False)
        assert health is not None and health.status_code == 200, (logs.stdout + logs.stderr)[-3000:]
        decision = httpx.post(f"{base}/v1/decide", json={"placement": "demo", "request_id": "r1"}, timeout=10)
        assert decision.status_code == 200, decision.text
        assert round(decision.json()["floor_cpm"], 2) == decision.json()["floor_cpm"]
        assert docker("exec", container, "id", "-u").stdout.strip() != "0"
        mounts = json.loads(docker("inspect", container).stdout)[0]["Mounts"]
        assert [m["Destination"] for m in mounts] == ["/var/lib/adbandit"]
        listing = docker("exec", container, "ls", "/var/lib/adbandit").stdout.split()
        assert "decision.key" in listing  # the state is written into the volume
    finally:
        docker("rm", "-f", "-v", container, check=False)
