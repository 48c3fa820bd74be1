"""The first hour with the command line: --version, help text, start-up failures as one line."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from adbandit import __version__
from adbandit.cli import build_parser, main
from bandit import POLICIES, InvalidState
from serving.logs import JsonFormatter, TextFormatter, configure_logging, iso_time, resolve_format
from serving.store import PolicyStore
from simulator.scenario import list_scenarios

ROOT = Path(__file__).resolve().parents[2]


def all_help_texts() -> dict[str, str]:
    """The --help text of the program and of every (sub)command."""
    texts = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        texts[name] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")

    walk(build_parser(), "adbandit")
    return texts


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"adbandit {__version__}"


def test_help_lists_the_choices():
    texts = all_help_texts()
    assert {"adbandit serve", "adbandit simulate", "adbandit ab", "adbandit store verify"} <= set(texts)
    for command in ("adbandit serve", "adbandit simulate", "adbandit tune", "adbandit relearn"):
        flat = " ".join(texts[command].split())
        assert all(p in flat for p in POLICIES), command
    for command in ("adbandit simulate", "adbandit ab", "adbandit ope"):
        flat = " ".join(texts[command].split())
        assert all(s in flat for s in list_scenarios()), command


@pytest.mark.parametrize("markup", ["``", ":mod:", ":func:", ":class:", "%%", "%("])
def test_help_has_no_doc_markup(markup):
    bad = [name for name, text in all_help_texts().items() if markup in text]
    assert bad == []


def test_unknown_policy_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--policy", "nope"])
    assert exit_.value.code == 2
    assert "ts_gmm" in capsys.readouterr().err


def _serve_fails(argv: list[str], capsys) -> str:
    code = main(["serve", "--no-fsync", "--log-level", "error", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adbandit serve: "), err
    return lines[0]


def test_a_state_dir_in_use_is_one_line(tmp_path, capsys):
    store = PolicyStore(tmp_path / "state", fsync=False)
    store.open()
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        line = _serve_fails(["--port", str(port), "--state-dir", str(tmp_path / "state")], capsys)
    finally:
        store.close()
    assert "in use by another process" in line and str(tmp_path / "state") in line


def test_a_missing_model_alias_is_one_line(tmp_path, capsys, monkeypatch):
    import adbandit.wiring

    class NoSuchAlias:
        def load(self, alias, name):
            raise InvalidState(f"no model version {name}@{alias}: not registered")

    monkeypatch.setattr(adbandit.wiring, "mlflow_source", NoSuchAlias)
    line = _serve_fails(["--port", "0", "--state-dir", str(tmp_path / "s"), "--model", "gone"], capsys)
    assert "adbandit-policy@gone" in line
    # The state dir was released: it can be opened again at once.
    store = PolicyStore(tmp_path / "s", fsync=False)
    store.open()
    store.close()


def test_sigterm_during_start_up_releases_the_state_dir(tmp_path, capsys, monkeypatch):
    import os
    import signal

    import adbandit.wiring

    class Terminated:
        def load(self, alias, name):
            os.kill(os.getpid(), signal.SIGTERM)  # as if stopped while the model downloads
            raise AssertionError("SIGTERM should have interrupted the start-up")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(adbandit.wiring, "mlflow_source", Terminated)
    argv = ["serve", "--no-fsync", "--log-level", "error", "--port", "0", "--state-dir", str(tmp_path / "s")]
    code = main([*argv, "--model", "x"])
    assert code == 130 and capsys.readouterr().err.strip() == "adbandit serve: interrupted during start-up"
    assert signal.getsignal(signal.SIGTERM) == before
    store = PolicyStore(tmp_path / "s", fsync=False)
    store.open()
    store.close()


def test_a_bad_setting_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADBANDIT_MAX_NETWORKS", "many")
    line = _serve_fails(["--port", "0", "--state-dir", str(tmp_path / "s")], capsys)
    assert "ADBANDIT_MAX_NETWORKS" in line


def test_a_port_in_use_is_one_line_from_the_real_command(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "adbandit", "serve", "--port", str(port), "--state-dir", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    assert done.returncode == 2
    assert done.stderr.strip() == f"adbandit serve: cannot listen on 127.0.0.1:{port}: the port is already in use"
    assert not (tmp_path / "s").exists()  # refused before the store was touched


# ------------------------------------------------------------------------------ logs
def _record(msg: str = "store open", **fields):
    import logging

    record = logging.LogRecord("adbandit.serving", logging.INFO, __file__, 1, msg, None, None)
    record.created = 1_790_000_000.25
    record.fields = fields
    return record


def test_log_lines_have_iso_8601_times_in_both_formats():
    import json

    assert iso_time(1_790_000_000.25) == "2026-09-21T14:13:20.250Z"
    line = json.loads(JsonFormatter().format(_record(placements=2)))
    assert line["ts"] == "2026-09-21T14:13:20.250Z" and line["placements"] == 2
    text = TextFormatter().format(_record(placements=2, state_dir="my state"))
    assert text == '2026-09-21T14:13:20.250Z INFO    adbandit.serving: store open placements=2 state_dir="my state"'


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_log_format_is_text_on_a_terminal_and_json_otherwise():
    assert resolve_format("auto", _Stream(True)) == "text"
    assert resolve_format("auto", _Stream(False)) == "json"
    assert resolve_format("json", _Stream(True)) == "json"
    assert resolve_format("text", _Stream(False)) == "text"


def test_configure_logging_replaces_its_handler():
    import logging

    configure_logging("info", "text")
    configure_logging("warning", "json")
    handlers = [h for h in logging.getLogger("adbandit").handlers if getattr(h, "_adbandit", False)]
    assert len(handlers) == 1 and isinstance(handlers[0].formatter, JsonFormatter)
    assert logging.getLogger("adbandit").level == logging.WARNING
