"""A job's progress as the API shows it: the latest snapshot, per-worker loss series for the
plot, and the summary recorded when the job finishes."""

from __future__ import annotations

import threading
from typing import Any

#: Points kept per worker for the loss plot (older ones are thinned to every other point).
MAX_POINTS = 600


class LiveProgress:
    """A running job's latest progress snapshot and its loss series, kept in memory.

    The job's thread adds the trainer's snapshots; the HTTP side reads :meth:`view`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Any] = {}
        self._series: dict[str, list[list[float]]] = {}

    def add(self, snapshot: dict[str, Any]) -> None:
        """Takes a snapshot of ``on_progress`` (``elapsed``, and per worker ``step`` and ``loss``)."""
        with self._lock:
            self._latest = snapshot
            for wid, w in snapshot["workers"].items():
                if w["loss"] is None:
                    continue
                points = self._series.setdefault(str(wid), [])
                if not points or points[-1][1] != w["step"]:
                    points.append([round(snapshot["elapsed"], 2), w["step"], float(w["loss"])])
                if len(points) > MAX_POINTS:
                    del points[1::2]

    def view(self) -> dict[str, Any]:
        """The latest snapshot with ``series``: per worker, [seconds, step, loss] points."""
        with self._lock:
            return {**self._latest, "series": {w: list(p) for w, p in self._series.items()}}


def series_from_history(history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Per worker, [seconds since the first step, step, loss] points, thinned to ``MAX_POINTS``
    (the last point always kept)."""
    if not history:
        return {}
    t0 = min(r["timestamp"] for r in history)
    series: dict[str, list[list[float]]] = {}
    for r in history:
        series.setdefault(str(r["worker"]), []).append([round(r["timestamp"] - t0, 2), r["step"], float(r["loss"])])
    for wid, points in series.items():
        stride = max(1, -(-len(points) // MAX_POINTS))
        series[wid] = points[::stride] if points[-1] in points[::stride] else points[::stride] + [points[-1]]
    return series


def final_progress(history: list[dict[str, Any]], *, num_epoch: int, batch_size: int, training_time: float,
                   timings: dict[str, float], members: int) -> dict[str, Any]:
    """The progress of a finished job, from its whole history rather than the last snapshot.

    Args:
        history: the trainer's per-step records (``worker``, ``step``, ``loss``, ``timestamp`` …).
        num_epoch, batch_size: the trainer's.
        training_time: seconds ``train`` took.
        timings: the trainer's phases.
        members: models trained (an ensemble's members, else 1).
    """
    last: dict[int, float] = {r["worker"]: float(r["loss"]) for r in history}
    return {"steps": len(history), "total": len(history), "epoch": num_epoch - 1,
            "loss": sum(last.values()) / len(last) if last else None, "elapsed": training_time,
            "samples_per_s": batch_size * len(history) / training_time if training_time else 0.0,
            "timings": timings, "members": members, "series": series_from_history(history)}
