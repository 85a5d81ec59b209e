"""A lab run's figures: the mean per algorithm × worker count, its table, a JSON file and a PNG.

Each summary row averages a cell's seeds: the metric, the test loss, the mean staleness,
the commits applied and the wall time are means over seeds; the largest staleness is the
largest of any seed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from zdk.errors import ConfigError
from zdk.lab.run import CellResult, LabResult

#: Bumped when the JSON file's shape changes.
JSON_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The mean over seeds of one algorithm × worker count.

    Args:
        algorithm: the algorithm.
        workers: K.
        seeds: how many seeds were averaged.
        metric: the metric's name.
        value: its mean over seeds.
        spread: its standard deviation over seeds (0 for one seed).
        loss: the mean test loss.
        staleness_mean: the mean of the seeds' mean τ.
        staleness_max: the largest τ of any seed.
        commits: the mean of commits applied.
        exchanges: the mean of the workers' exchanges.
        commit_bytes: the mean payload bytes of a commit.
        wall: the mean wall time, seconds.
        diverged: workers that stopped on a non-finite loss, all seeds.
        curve: (seconds, training loss) per epoch: the mean over workers and seeds of each
            epoch's end time and mean loss.
    """

    algorithm: str
    workers: int
    seeds: int
    metric: str
    value: float
    spread: float
    loss: float
    staleness_mean: float
    staleness_max: int
    commits: float
    exchanges: float
    commit_bytes: float
    wall: float
    diverged: int
    curve: tuple[tuple[float, float], ...]


def _curve(cells: Sequence[CellResult]) -> tuple[tuple[float, float], ...]:
    by_epoch: dict[int, list[tuple[float, float]]] = {}
    for cell in cells:
        for worker_curve in cell.curves:
            for epoch, point in enumerate(worker_curve):
                by_epoch.setdefault(epoch, []).append(point)
    return tuple((float(np.mean([t for t, _ in pts])), float(np.mean([v for _, v in pts])))
                 for _, pts in sorted(by_epoch.items()))


def summarize(result: LabResult) -> list[Summary]:
    """One :class:`Summary` per algorithm × worker count, in run order."""
    groups: dict[tuple[str, int], list[CellResult]] = {}
    for cell in result.cells:
        groups.setdefault((cell.algorithm, cell.workers), []).append(cell)
    out = []
    for (algorithm, workers), cells in groups.items():
        values = [c.value for c in cells]
        out.append(Summary(
            algorithm=algorithm, workers=workers, seeds=len(cells), metric=cells[0].metric,
            value=float(np.mean(values)), spread=float(np.std(values)), loss=float(np.mean([c.loss for c in cells])),
            staleness_mean=float(np.mean([c.staleness_mean for c in cells])),
            staleness_max=max(c.staleness_max for c in cells), commits=float(np.mean([c.commits for c in cells])),
            exchanges=float(np.mean([c.exchanges for c in cells])),
            commit_bytes=float(np.mean([c.commit_bytes for c in cells])), wall=float(np.mean([c.wall for c in cells])),
            diverged=sum(c.diverged for c in cells), curve=_curve(cells),
        ))
    return out


def table(summaries: Sequence[Summary]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The header and rows of the summary table, formatted for printing."""
    metric = summaries[0].metric if summaries else "metric"
    spread = any(s.seeds > 1 for s in summaries)
    cols: tuple[str, ...] = ("algorithm", "workers", metric, "loss", "τ mean", "τ max", "commits", "kB/commit",
                               "wall s")
    rows: list[tuple[str, ...]] = []
    for s in summaries:
        value = f"{s.value:.4f}" + (f" ± {s.spread:.4f}" if spread else "")
        if s.diverged:
            value += f" ({s.diverged} diverged)"
        commits = f"{s.commits:.0f}" if float(s.commits).is_integer() else f"{s.commits:.1f}"
        rows.append((s.algorithm, str(s.workers), value, f"{s.loss:.4f}", f"{s.staleness_mean:.1f}",
                     str(s.staleness_max), commits, f"{s.commit_bytes / 1e3:.2f}", f"{s.wall:.1f}"))
    return cols, rows


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(result: LabResult) -> dict[str, Any]:
    """Every figure of the run: the settings, the summaries (with their loss curves) and every cell."""
    return _finite({
        "version": JSON_VERSION,
        "settings": result.settings.to_dict(),
        "summary": [asdict(s) for s in summarize(result)],
        "cells": [c.to_dict() for c in result.cells],
    })


def write_json(result: LabResult, path: str) -> None:
    """Writes :func:`to_json` to ``path``, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(to_json(result), fh, indent=1)
        fh.write("\n")


def plot(result: LabResult, path: str, *, title: str | None = None) -> None:
    """Writes a PNG: the metric against workers (one line per algorithm), and the training loss
    against time (one line per algorithm × worker count, darker for more workers).

    Raises:
        ConfigError: when matplotlib is missing, naming the extra that installs it.
    """
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("`plot` needs matplotlib: pip install 'zdk[lab]'", field="plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = summarize(result)
    names = list(dict.fromkeys(s.algorithm for s in summaries))
    counts = sorted({s.workers for s in summaries})
    colors = plt.get_cmap("tab10")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        for i, name in enumerate(names):
            rows = [s for s in summaries if s.algorithm == name]
            left.errorbar([s.workers for s in rows], [s.value for s in rows], yerr=[s.spread for s in rows],
                          marker="o", capsize=3, color=colors(i % 10), label=name)
            for s in rows:
                if s.curve:
                    shade = 0.35 + 0.65 * (counts.index(s.workers) + 1) / len(counts)
                    times, losses = zip(*s.curve)
                    right.plot(times, losses, color=colors(i % 10), alpha=shade,
                               label=name if s.workers == rows[-1].workers else None)
        if len(counts) > 1:
            left.set_xscale("log", base=2)
        left.set_xticks(counts, [str(k) for k in counts])
        left.set_xlabel("workers (staleness grows with them)")
        left.set_ylabel(f"test {summaries[0].metric if summaries else 'metric'} of the center")
        left.legend()
        right.set_yscale("log")
        right.set_xlabel("seconds since the workers started")
        right.set_ylabel("training loss (mean over workers, per epoch)")
        right.set_title("darker: more workers", fontsize=9)
        right.legend()
        run = result.settings
        window = run.window if run.window is not None else "default"
        fig.suptitle(title or f"{run.model}, λ = {window}, lr {run.lr}, {run.epochs} epochs, {run.shards} shards")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
