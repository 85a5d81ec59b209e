"""Plain-text tables for the CLI's listings."""

from __future__ import annotations

import datetime
from typing import Any, Sequence


def print_table(cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Prints ``rows`` under the header ``cols``, each column as wide as its widest cell."""
    cells = [[str(c) for c in cols]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for n, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def timestamp(stamp: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``, or ``-``."""
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"
