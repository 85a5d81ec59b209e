"""``zdk algorithms``: every registered algorithm, plugins included; ``zdk algorithms check NAME``:
the conformance kit's invariants (:mod:`zdk.ps.conformance`) for one of them."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from zdk import algorithms
from zdk.algorithms.testing import DEFAULT_EXAMPLES
from zdk.cli.table import print_table
from zdk.ps import conformance


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name in algorithms.available():
        algo = algorithms.get(name)
        first = " ".join(algo.doc.split("\n\n")[0].split())
        first = first if len(first) <= 90 else first[:87] + "..."
        rows.append((name, "sync" if algo.synchronous else ("no PS" if not algo.uses_ps else "async"), first))
    print_table(("name", "kind", "description"), rows)
    return 0


def _check(args: argparse.Namespace) -> int:
    """Prints one row per invariant; a broken one raises ConformanceError, which `zdk` reports (exit 1)."""
    params = json.loads(args.params) if args.params else None
    began = time.perf_counter()
    report = conformance.run(args.name, params=params, max_examples=args.examples)
    rows = [(o.invariant, o.status, _short(o.detail)) for o in report.outcomes]
    print_table(("invariant", "result", "detail"), rows)
    counts = {s: sum(o.status == s for o in report.outcomes) for s in ("passed", "skipped", "failed")}
    print(f"{report.algorithm}: {counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed "
          f"in {time.perf_counter() - began:.1f} s")
    report.raise_for_failure()
    return 0


def _short(detail: str) -> str:
    first = detail.split(". Minimal failing input")[0]
    return first if len(first) <= 100 else first[:97] + "..."


def add_parser(commands: Any) -> None:
    algos = commands.add_parser("algorithms", help="list registered algorithms, plugins included, or check one")
    algos.set_defaults(func=_list)
    actions = algos.add_subparsers(dest="action", metavar="{check}")
    check = actions.add_parser("check", help="check an algorithm against the conformance kit's invariants "
                               "(needs `pip install 'zdk[testing]'`)")
    check.add_argument("name", help="a registered algorithm name, plugins included")
    check.add_argument("--params", default=None,
                       help="its hyperparameters as a JSON object (default: the algorithm's defaults)")
    check.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES,
                       help=f"generated runs per invariant (default: {DEFAULT_EXAMPLES})")
    check.set_defaults(func=_check)
