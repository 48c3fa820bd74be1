"""``adbandit serve``, ``adbandit ingest`` and ``adbandit store verify``.

``serve`` runs the API with one uvicorn worker: the PolicyStore is in-process state
(policies, event log, dedupe index), so a second worker would be a second, diverging
store. Flags override the ``ADBANDIT_*`` environment, which overrides the defaults
(``adbandit serve`` alone serves ./state on 127.0.0.1:8000). It binds the port and
starts the store (replay, start-up model, demo) before it serves, so a start-up failure
(port taken, state dir in use, model alias missing, bad setting) is one line on stderr
and exit code 2 (1 for an unexpected error), not a traceback.

``store verify`` scans a state dir's snapshots and log segments without changing them and
says what is sound, what is damaged and what the next start would cut or lose (exit 1
when anything is damaged; a torn tail alone is not damage).

The model source and the demo market come from outside this package
(:class:`Wiring`, filled in by :mod:`adbandit.wiring`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from serving.sources import DemoSource, ModelSource

log = logging.getLogger("adbandit.serving")


def _none() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Wiring:
    """Factories of what ``serve`` injects into the app (:mod:`serving.sources`); each may
    return ``None`` (no model registry: swaps by alias answer 503; no demo market)."""

    model_source: Callable[[], ModelSource | None] = _none
    demo_source: Callable[[], DemoSource | None] = _none


class StartupError(Exception):
    """A start-up failure ``serve`` reports as one line (with the exit code)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def register(subparsers: argparse._SubParsersAction, wiring: Wiring | None = None) -> None:
    """Add ``serve``, ``ingest`` and ``store`` to the ``adbandit`` command line."""
    from bandit import POLICIES

    serve = subparsers.add_parser(
        "serve",
        help="run the live decision service (FastAPI, docs at /docs)",
        description="Run the live decision service: one uvicorn worker over the state dir. Flags override "
        "the ADBANDIT_* environment variables (docs/service.md lists them all).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--state-dir", type=Path, default=None, help="event log + snapshots (default ./state)")
    serve.add_argument(
        "--model",
        default=None,
        metavar="ALIAS",
        help="load MLflow model adbandit-policy@ALIAS (e.g. champion) as its placement's champion "
        "(needs adbandit[offline])",
    )
    serve.add_argument("--model-name", default=None, help="MLflow registered model name (default adbandit-policy)")
    serve.add_argument(
        "--policy",
        default=None,
        choices=sorted(POLICIES),
        help="policy of new placements (default ts_gmm): %(choices)s",
        metavar="NAME",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="on an empty state dir, create the 'demo' placement fed with synthetic outcomes from the "
        "simulator's demo market",
    )
    serve.add_argument(
        "--demo-feed",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --demo (implied): keep feeding the demo placement synthetic traffic every SECONDS "
        "(live data for /console)",
    )
    serve.add_argument("--no-fsync", action="store_true", help="do not fsync the event log (tests/benchmarks only)")
    serve.add_argument(
        "--log-level", default=None, choices=["debug", "info", "warning", "error"], help="default info"
    )
    serve.add_argument(
        "--log-format",
        default=None,
        choices=["auto", "text", "json"],
        help="text or JSON lines on stderr (default auto: text on a terminal, JSON otherwise)",
    )
    serve.set_defaults(func=serve_command, wiring=wiring or Wiring())

    ingest = subparsers.add_parser(
        "ingest",
        help="load outcome logs (Parquet/NDJSON) into a state dir or a running service",
        description="Ingest outcome event files into a state dir (offline) or POST them to a running service.",
    )
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH", help=".parquet / .ndjson / .jsonl files")
    where = ingest.add_mutually_exclusive_group()
    where.add_argument("--state-dir", type=Path, default=None, help="state dir to write into (default ./state)")
    where.add_argument("--url", default=None, help="base URL of a running service, e.g. http://127.0.0.1:8000")
    ingest.add_argument("--api-key", default=None, help="Bearer key for --url (default: env ADBANDIT_API_KEY)")
    ingest.set_defaults(func=ingest_command)

    store = subparsers.add_parser("store", help="inspect a state dir (event log + snapshots)")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    verify = store_sub.add_parser(
        "verify",
        help="scan segments and snapshots: what is sound, damaged, and would be lost (exit 1 if damaged)",
        description="Scan every snapshot and log segment of a state dir without changing it.",
    )
    verify.add_argument("--state-dir", type=Path, default=Path("./state"), help="state dir (default ./state)")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    verify.set_defaults(func=verify_command)


def settings_from_args(args: argparse.Namespace):  # -> serving.settings.Settings
    from serving.settings import Settings

    overrides: dict = {}
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    if args.model is not None:
        overrides["model"] = args.model
    if args.model_name is not None:
        overrides["model_name"] = args.model_name
    if args.policy is not None:
        overrides["default_policy"] = args.policy
    if args.demo:
        overrides["demo"] = True
    if getattr(args, "demo_feed", None) is not None:
        overrides["demo_feed_s"] = args.demo_feed
        overrides["demo"] = True
    if args.no_fsync:
        overrides["fsync"] = False
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    if getattr(args, "log_format", None) is not None:
        overrides["log_format"] = args.log_format
    return Settings(**overrides)


def serve_command(args: argparse.Namespace) -> int:
    try:
        return _serve(args)
    except StartupError as exc:
        print(f"adbandit serve: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("adbandit serve: interrupted during start-up", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While starting (replay may take seconds), SIGTERM stops like Ctrl-C: the store closes
    what it opened and releases the state dir (uvicorn handles signals once it serves)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from bandit import POLICIES, AdbanditError
    from serving.app import create_app, start_store
    from serving.logs import configure_logging

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        raise StartupError(_setting_errors(exc)) from None
    if settings.default_policy not in POLICIES:
        raise StartupError(f"unknown policy {settings.default_policy!r}; choose one of {', '.join(sorted(POLICIES))}")
    configure_logging(settings.log_level, settings.log_format)
    sock = listen_socket(args.host, args.port)
    wiring: Wiring = args.wiring
    try:
        model_source = wiring.model_source()
        demo_source = wiring.demo_source() if settings.demo else None
        try:
            with sigterm_interrupts():
                store = start_store(settings, model_source, demo_source)
        except AdbanditError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"state dir {str(settings.state_dir)!r}: {exc.strerror or exc}") from None
        except Exception as exc:
            log.debug("start-up failed", exc_info=True)
            raise StartupError(
                f"start-up failed: {type(exc).__name__}: {exc} (--log-level debug shows the traceback)", code=1
            ) from None
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        create_app(settings, model_source=model_source, demo_source=demo_source, store=store),
        host=args.host,
        port=args.port,
        workers=1,
        log_level=settings.log_level,
        access_log=False,  # per-request lines cost throughput; /metrics has the counts
        log_config=None,  # keep the logging configured above
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    url = f"http://{args.host}:{args.port}"
    log.info("listening", extra={"fields": {"url": url, "docs": f"{url}/docs"}})
    try:
        server.run(sockets=[sock])
    finally:
        store.close()  # idempotent: the app's lifespan closes it on a normal exit
        sock.close()
    return 0 if server.started else 1


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (uvicorn listens on it); a :class:`StartupError`
    that names the address when it cannot be bound (port taken, no such interface)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "the port is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def _setting_errors(exc) -> str:  # exc: pydantic.ValidationError
    parts = []
    for e in exc.errors(include_url=False):
        name = "_".join(str(p) for p in e["loc"]).upper()
        parts.append(f"ADBANDIT_{name} (or its flag): {e['msg']}")
    return "invalid setting: " + "; ".join(parts)


def ingest_command(args: argparse.Namespace) -> int:
    import json
    import os

    from bandit import AdbanditError
    from serving.decision_ids import key_from_setting
    from serving.ingest import ingest_files
    from serving.settings import Settings

    url = args.url
    state_dir = None if url else (args.state_dir or Path("./state"))
    api_key = args.api_key or os.environ.get("ADBANDIT_API_KEY") or None
    decision_key = os.environ.get("ADBANDIT_DECISION_KEY") or None
    # Offline, outcomes' decision ids are verified with the service's key (else the state dir's).
    offline = {"decision_key": key_from_setting(decision_key)} if state_dir is not None and decision_key else {}
    try:
        if state_dir is not None:  # the service's limits (ADBANDIT_MAX_*) apply offline too
            offline["limits"] = Settings().limits()
        result = ingest_files(args.paths, state_dir=state_dir, url=url, api_key=api_key, **offline)
    except AdbanditError as exc:
        print(f"adbandit ingest: {exc}", file=sys.stderr)
        return 2
    shown = result.rejected[:20]
    print(
        json.dumps(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "rejected": len(result.rejected),
                "first_rejected": [{"index": i, "error": e} for i, e in shown],
            }
        )
    )
    return 1 if result.rejected else 0


def verify_command(args: argparse.Namespace) -> int:
    import json

    from serving.recovery import verify

    if not args.state_dir.is_dir():
        print(f"adbandit store verify: {str(args.state_dir)!r} is not a directory", file=sys.stderr)
        return 2
    report = verify(args.state_dir)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print("\n".join(report.lines()))
    return 1 if report.damaged else 0
