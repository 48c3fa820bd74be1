"""The adbandit command line: serve, ingest and store (the live service), simulate, ab, ope,
relearn, tune and promote (offline experiments; they need adbandit[offline]).
Run "adbandit COMMAND --help" for a command's options."""

from __future__ import annotations

import argparse
import sys

from adbandit import __version__

#: Modules whose absence means an extra is not installed.
OFFLINE_MODULES = frozenset({"ray", "mlflow", "matplotlib", "pyarrow", "tqdm"})
SERVE_MODULES = frozenset(
    {"fastapi", "uvicorn", "pydantic", "pydantic_settings", "prometheus_client", "orjson", "httpx", "fastapi_offline"}
)


def build_parser() -> argparse.ArgumentParser:
    from adbandit.wiring import wiring
    from experiments.cli import register as register_experiments
    from serving.commands import register as register_serving

    parser = argparse.ArgumentParser(prog="adbandit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"adbandit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_serving(sub, wiring())
    register_experiments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        extra = _missing_extra(exc.name or "")
        if extra is None:
            raise
        print(
            f"adbandit {args.command}: needs the {extra!r} extra (module {exc.name!r} is not installed): "
            f"pip install 'adbandit[{extra}]'",
            file=sys.stderr,
        )
        return 2


def _missing_extra(module: str) -> str | None:
    top = module.split(".")[0]
    if top in OFFLINE_MODULES:
        return "offline"
    if top in SERVE_MODULES:
        return "serve"
    return None


if __name__ == "__main__":
    sys.exit(main())
