"""The ``adbandit`` command line. Each package registers its own subcommands:
``serve``, ``ingest`` and ``store`` here (serving), ``simulate``, ``ab``, ``ope``, ``relearn``, ``tune`` and
``promote`` in :mod:`experiments.cli`."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from experiments.cli import register as register_experiments
    from serving.commands import register as register_serving

    parser = argparse.ArgumentParser(prog="adbandit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    register_serving(sub)
    register_experiments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
