"""The ``zdk`` command: argument parsing for every subcommand, one module each.

    zdk ps --shards 2 --bind tcp://127.0.0.1:5000 --size 1000000 --algorithm adag    (zdk.cli.ps)
    zdk ps status|stop|checkpoint ENDPOINT...
    zdk algorithms, zdk algorithms check NAME                                       (zdk.cli.algorithms)
    zdk serve --state-dir DIR ..., zdk serve token create|revoke|list               (zdk.cli.serve)
    zdk job submit|list|status|cancel|fetch|delete ...                                     (zdk.cli.job)
    zdk lab --algorithms downpour adag --workers 1 4 16 --plot lab.png                (zdk.cli.lab)

Each module adds its subcommand with ``add_parser(commands)`` and does its work in the
library it drives; tables go through :func:`zdk.cli.table.print_table`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from zdk.cli import algorithms, job, lab, ps, serve
from zdk.errors import ZdkError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zdk", description="zdk: parameter-server, job-server, algorithm and lab tools")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (ps, algorithms, serve, job, lab):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except (ZdkError, json.JSONDecodeError) as exc:
        print(f"zdk: {exc}", file=sys.stderr)
        return 1
