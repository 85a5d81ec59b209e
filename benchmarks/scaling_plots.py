"""Plots of the scaling benchmark, one PNG per axis.

``scaling.py --png DIR`` draws each axis it runs from its rows as they are measured. This
script draws them again from the tables a run left in RESULTS.md (the measured figures, not new
ones), so the plots there stay those of the recorded runs:

    python benchmarks/scaling_plots.py --results benchmarks/RESULTS.md --out benchmarks

A row is a dict keyed by the table's column names; a column is found by a part of its name, so
the printed tables and the ones edited into RESULTS.md (a few columns renamed) both work.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Callable, Sequence

Row = dict[str, Any]

#: The RESULTS.md section of each axis (a heading's start) and the PNG it gets.
SECTIONS = {
    "model": ("### Model size", "scaling_model.png"),
    "memory": ("### Shard memory", "scaling_memory.png"),
    "keras": ("### A 100 M-parameter Keras model", "scaling_keras.png"),
    "rows": ("### Rows", "scaling_rows.png"),
    "workers": ("### Workers", "scaling_workers.png"),
}


def number(value: Any) -> float | None:
    """The first number in a cell ("6.17 (was 12.11)" → 6.17, "1 M" → 1.0), None for none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    found = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", str(value))
    return float(found.group()) if found else None


def column(rows: Sequence[Row], *parts: str) -> str:
    """The first column whose name contains one of ``parts`` (tried in order)."""
    names = list(rows[0]) if rows else []
    for part in parts:
        for name in names:
            if part in name:
                return name
    raise KeyError(f"no column containing any of {parts} among {names}")


def tables(markdown: str, heading: str) -> list[list[Row]]:
    """Every Markdown table in the section whose heading starts with ``heading`` (up to the next
    heading of the same or a higher level), each as a list of rows keyed by column name."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        raise KeyError(f"no section {heading!r}")
    level = len(heading) - len(heading.lstrip("#"))
    found: list[list[Row]] = []
    header: list[str] | None = None
    for line in lines[start + 1:]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            found.append([])
        elif not all(set(c) <= set("-: ") for c in cells):
            found[-1].append(dict(zip(header, cells)))
    return [t for t in found if t]


def _series(rows: Sequence[Row], group: str, x: str, y: str) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        xv, yv = number(row[x]), number(row[y])
        if xv is None or yv is None:
            continue
        xs, ys = out.setdefault(str(row[group]).removeprefix("after: "), ([], []))
        xs.append(xv)
        ys.append(yv)
    return out


def _figure(width: float = 6.4, panels: int = 1) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width * panels, 4.2))
    return fig, list(axes) if panels > 1 else [axes]


def _save(fig: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_model(rows: Sequence[Row], path: str) -> None:
    """zdk's commit+pull round over the echo+add reference's, against the model's size."""
    fig, (ax,) = _figure()
    for shards, (xs, ys) in sorted(_series(rows, "shards", column(rows, "MiB"),
                                           column(rows, "zdk / reference")).items()):
        ax.plot(xs, ys, marker="o", label=f"{shards} shard{'s' if shards != '1' else ''}")
    ax.axhline(0.8, color="grey", linestyle="--", label="goal 0.8")
    ax.set(xscale="log", xlabel="model MiB", ylabel="reference time / zdk time", ylim=(0, 1.2),
           title="commit + pull round against ZeroMQ echo + np.add")
    ax.legend()
    _save(fig, path)


def plot_memory(groups: Sequence[Sequence[Row]], path: str) -> None:
    """A shard's peak memory over its slice, against the number of workers, per algorithm."""
    fig, (ax,) = _figure()
    for i, rows in enumerate(groups):
        y = column(rows, "with admission", "(peak − empty) / slice")
        suffix = "" if i == 0 else " (history 2)"
        for algorithm, (xs, ys) in _series(rows, "algorithm", "workers", y).items():
            ax.plot(xs, ys, marker="o", linestyle="-" if i == 0 else ":", label=algorithm + suffix)
    ax.axhline(2.5, color="grey", linestyle="--", label="goal 2.5")
    ax.set(xlabel="workers", ylabel="(shard peak − empty shard) / slice", title="shard memory, 100 M parameters, 4 shards")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_keras(rows: Sequence[Row], path: str) -> None:
    """The 100 M-parameter Keras model: shard peak over its slice, worker peak over the model."""
    rows = [r for r in rows if str(r[column(rows, "trainer")]).startswith("after")] or list(rows)
    fig, axes = _figure(panels=2, width=4.2)
    names = [str(r[column(rows, "trainer")]).removeprefix("after: ") for r in rows]
    for ax, part, title in ((axes[0], "shard peak / slice", "shard peak / its slice"),
                            (axes[1], "worker peak / model", "worker peak / model bytes")):
        ax.bar(names, [number(r[column(rows, part)]) or 0.0 for r in rows])
        ax.set(title=title)
    axes[0].axhline(2.5, color="grey", linestyle="--")
    _save(fig, path)


def plot_rows(rows: Sequence[Row], path: str) -> None:
    """Seconds per million rows and the workers' peak RSS, against the rows."""
    fig, axes = _figure(panels=2, width=4.8)
    for trainer, (xs, ys) in _series(rows, column(rows, "trainer"), column(rows, "rows"),
                                     column(rows, "s per M rows")).items():
        axes[0].plot(xs, ys, marker="o", label=trainer)
    for trainer, (xs, ys) in _series(rows, column(rows, "trainer"), column(rows, "rows"),
                                     column(rows, "worker peak RSS")).items():
        axes[1].plot(xs, ys, marker="o", label=trainer)
    axes[0].set(xscale="log", xlabel="rows", ylabel="train() s per million rows", title="time (flat = linear)")
    axes[1].set(xscale="log", xlabel="rows", ylabel="MB", ylim=(0, None), title="worker peak RSS")
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_workers(rows: Sequence[Row], path: str) -> None:
    """Steps/s of all workers together and test accuracy, against the workers."""
    fig, axes = _figure(panels=2, width=4.8)
    for trainer, (xs, ys) in _series(rows, column(rows, "trainer"), "workers",
                                     column(rows, "all workers steps/s")).items():
        axes[0].plot(xs, ys, marker="o", label=trainer)
    for trainer, (xs, ys) in _series(rows, column(rows, "trainer"), "workers",
                                     column(rows, "accuracy")).items():
        axes[1].plot(xs, ys, marker="o", label=trainer)
    axes[0].set(xscale="log", xlabel="Spark workers", ylabel="steps/s, all workers", ylim=(0, None),
                title="throughput on 2 cores")
    axes[1].set(xscale="log", xlabel="Spark workers", ylabel="test accuracy", title="accuracy")
    axes[0].legend(fontsize=8)
    _save(fig, path)


PLOTS: dict[str, Callable[[Any, str], None]] = {
    "model": plot_model, "keras": plot_keras, "rows": plot_rows, "workers": plot_workers,
}


def plot_axis(axis: str, rows: Sequence[Row], directory: str) -> str | None:
    """Draws ``axis``'s rows (as ``scaling.py`` measured them) into ``directory``; its path."""
    if not rows or axis not in SECTIONS:
        return None
    path = os.path.join(directory, SECTIONS[axis][1])
    if axis == "memory":
        plot_memory([rows], path)
    else:
        PLOTS[axis](rows, path)
    return path


def from_results(results: str, directory: str) -> list[str]:
    """Draws every axis from the tables recorded in ``results``; the paths written."""
    with open(results) as f:
        markdown = f.read()
    written = []
    for axis, (heading, name) in SECTIONS.items():
        found = tables(markdown, heading)
        path = os.path.join(directory, name)
        if axis == "memory":
            plot_memory(found, path)
        else:
            PLOTS[axis](found[0], path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--results", default=os.path.join(here, "RESULTS.md"))
    parser.add_argument("--out", default=here)
    args = parser.parse_args(argv)
    for path in from_results(args.results, args.out):
        print(path)


if __name__ == "__main__":
    main()
