"""The README cannot drift: its tour runs against a real service process (the curl lines and
examples/tour.py), its offline commands parse, and the files they name exist."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adbandit.cli import build_parser, main
from serving.process import free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_block(after_heading: str, nth: int = 0) -> str:
    """The ``nth`` ```sh block after the heading ``after_heading``."""
    rest = README[README.index(after_heading) :]
    for _ in range(nth + 1):
        start = rest.index("```sh\n") + len("```sh\n")
        block, rest = rest[start : rest.index("\n```", start)], rest[rest.index("\n```", start) + 4 :]
    return block


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "server.log"
    process = start_server(tmp_path_factory.mktemp("state") / "state", port, "--demo", stderr_path=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's tour uses curl")
def test_the_readme_curl_tour_runs_against_a_live_service(service):
    block = code_block("## A five-minute tour")
    assert "localhost:8000" in block
    script = 'set -euo pipefail\ncurl() { command curl -sS -f "$@"; echo; }\n'
    script += block.replace("localhost:8000", service.removeprefix("http://"))
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(replies) == block.count("\ncurl ") + block.startswith("curl ")
    placement, decision, outcome, logged, allocation, floors, _, report, bid_request = replies
    assert [n["id"] for n in placement["networks"]] == ["admob", "adfit", "house"]
    assert decision["placement"] == "p1" and decision["segment"] == "KR|ios"
    assert outcome == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert logged["accepted"] == 400 and logged["rejected"] == []
    assert allocation["segment"] == "KR|ios" and abs(sum(n["weight"] for n in allocation["networks"]) - 1) < 1e-6
    assert floors["floorsSchemaVersion"] == 2
    assert set(report["variants"]) == {"champion", "challenger", "holdout"}
    (imp,) = bid_request["imp"]
    assert imp["tagid"] == "demo" and imp["bidfloorcur"] == "USD" and imp["bidfloor"] >= 0
    assert imp["ext"]["adbandit"]["segment"] == "KR|ios" and "${AUCTION_PRICE}" in imp["ext"]["adbandit"]["nurl"]


def test_examples_tour_runs_against_a_live_service(service):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tour.py"), "--url", service],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    steps = [line.split(".")[0] for line in done.stdout.splitlines() if line[:1].isdigit()]
    assert steps == ["1", "2", "3", "4", "5"], done.stdout
    assert "sent again: duplicate" in done.stdout and "allocation of demo KR|ios" in done.stdout


def test_the_readme_offline_commands_parse():
    block = code_block("## A five-minute tour", nth=1)
    commands = [line.split("  #")[0] for line in block.splitlines() if line.startswith(".venv/bin/adbandit ")]
    assert len(commands) >= 8
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command.replace("<RUN_ID>", "0123abcd"))[1:]
        parser.parse_args(argv)  # exits (fails the test) on an unknown command or flag


def test_files_the_readme_names_exist():
    named = set(re.findall(r"\bexamples/[\w./-]+\w", README))
    assert {"examples/p1.json", "examples/outcomes.ndjson", "examples/outcomes.parquet", "examples/tour.py"} <= named
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_the_readme_ope_command_runs_on_the_example_log(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = ["ope", "--logs", "examples/outcomes.parquet", "--policy", "grid_ts", "--placement", "examples/p1.json"]
    assert main([*argv, "--json"]) == 0
    estimates = json.loads(capsys.readouterr().out)
    assert {"ips", "snips", "dr"} <= set(estimates)
