"""``adbandit serve``, ``adbandit ingest`` and ``adbandit store verify``.

``serve`` runs the API with one uvicorn worker: the PolicyStore is in-process state
(policies, event log, dedupe index), so a second worker would be a second, diverging
store. Flags override the ``ADBANDIT_*`` environment, which overrides the defaults
(``adbandit serve`` alone serves ``./state`` on 127.0.0.1:8000).

``store verify`` scans a state dir's snapshots and log segments without changing them and
says what is sound, what is damaged and what the next start would cut or lose (exit 1
when anything is damaged; a torn tail alone is not damage).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``ingest`` and ``store`` to the ``adbandit`` command line."""
    serve = subparsers.add_parser(
        "serve",
        help="run the live decision service (FastAPI, docs at /docs)",
        description="Run the live decision service: one uvicorn worker over the state dir.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--state-dir", type=Path, default=None, help="event log + snapshots (default ./state)")
    serve.add_argument(
        "--model",
        default=None,
        metavar="ALIAS",
        help="load MLflow model adbandit-policy@ALIAS (e.g. champion) as its placement's champion",
    )
    serve.add_argument("--model-name", default=None, help="MLflow registered model name (default adbandit-policy)")
    serve.add_argument("--policy", default=None, metavar="NAME", help="policy of new placements (default ts_gmm)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="on an empty state dir, create the 'demo' placement fed with synthetic outcomes",
    )
    serve.add_argument("--no-fsync", action="store_true", help="do not fsync the event log (tests/benchmarks only)")
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=serve_command)

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
    if args.no_fsync:
        overrides["fsync"] = False
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    return Settings(**overrides)


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from bandit import POLICIES
    from serving.app import create_app
    from serving.metrics import configure_logging

    settings = settings_from_args(args)
    if settings.default_policy not in POLICIES:
        print(
            f"adbandit serve: unknown policy {settings.default_policy!r}; choose one of {sorted(POLICIES)}",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_level=settings.log_level,
        access_log=False,  # per-request lines cost throughput; /metrics has the counts
        log_config=None,  # keep the JSON-lines logging configured above
        timeout_graceful_shutdown=10,
    )
    return 0


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
