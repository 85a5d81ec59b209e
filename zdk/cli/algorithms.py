"""``zdk algorithms``: every registered algorithm, plugins included."""

from __future__ import annotations

import argparse
from typing import Any

from zdk import algorithms
from zdk.cli.table import print_table


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name in algorithms.available():
        algo = algorithms.get(name)
        first = " ".join(algo.doc.split("\n\n")[0].split())
        first = first if len(first) <= 90 else first[:87] + "..."
        rows.append((name, "sync" if algo.synchronous else ("no PS" if not algo.uses_ps else "async"), first))
    print_table(("name", "kind", "description"), rows)
    return 0


def add_parser(commands: Any) -> None:
    algos = commands.add_parser("algorithms", help="list registered algorithms, plugins included")
    algos.set_defaults(func=_list)
