"""A job's progress as the API shows it: the latest snapshot, per-worker loss series for the
plot, the per-epoch figures of a watched job, and the summary recorded when the job finishes."""

from __future__ import annotations

import math
import threading
from typing import Any, Sequence

#: Points kept per worker for the loss plot (older ones are thinned to every other point).
MAX_POINTS = 600


def clean_epochs(epochs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch figures as JSON can carry them: ``epoch`` an integer, every other figure a
    float, or None when it is not finite (NaN is not JSON, and a browser refuses it)."""
    out = []
    for e in epochs:
        row: dict[str, Any] = {"epoch": int(e["epoch"])}
        for name, value in e.items():
            if name == "epoch":
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):  # not a figure (a callback's own log entry): not plotted
                continue
            row[name] = number if math.isfinite(number) else None
        out.append(row)
    return out


def epochs_from_history(history: Any) -> list[dict[str, Any]]:
    """The per-epoch figures of a ``keras.callbacks.History``: ``{"epoch", "loss", "val_loss", …}``
    for each epoch it saw (``history.epoch`` numbers them, from 0)."""
    return clean_epochs([{"epoch": epoch, **{k: v[i] for k, v in history.history.items() if i < len(v)}}
                         for i, epoch in enumerate(history.epoch)])


def merge_epochs(earlier: Sequence[dict[str, Any]], later: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A resumed job's epochs: those of the run before the restart that come before the resumed
    run's first epoch (which trains again every epoch not finished by all workers), then the
    resumed run's."""
    if not later:
        return list(earlier)
    first = min(int(e["epoch"]) for e in later)
    return [e for e in earlier if int(e["epoch"]) < first] + list(later)


class LiveProgress:
    """A running job's latest progress snapshot and its loss series, kept in memory.

    The job's thread adds the trainer's snapshots; the HTTP side reads :meth:`view`.

    Args:
        earlier_epochs: the per-epoch figures of the run this one resumes, shown before its own.
    """

    def __init__(self, earlier_epochs: Sequence[dict[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Any] = {}
        self._series: dict[str, list[list[float]]] = {}
        self.earlier_epochs = list(earlier_epochs)

    def add(self, snapshot: dict[str, Any]) -> None:
        """Takes a snapshot of ``on_progress`` (``elapsed``, and per worker ``step`` and ``loss``;
        ``epoch_logs`` and ``val_loss`` when the run is watched)."""
        if "epoch_logs" in snapshot or self.earlier_epochs:
            epochs = merge_epochs(self.earlier_epochs, clean_epochs(snapshot.get("epoch_logs") or []))
            snapshot = {**snapshot, "epoch_logs": epochs, "val_loss": epochs[-1].get("val_loss") if epochs else None}
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
                   timings: dict[str, float], members: int,
                   epochs: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The progress of a finished job, from its whole history rather than the last snapshot.

    Args:
        history: the trainer's per-step records (``worker``, ``step``, ``loss``, ``timestamp`` …).
        num_epoch, batch_size: the trainer's.
        training_time: seconds ``train`` took.
        timings: the trainer's phases.
        members: models trained (an ensemble's members, else 1).
        epochs: a watched job's per-epoch figures (:func:`epochs_from_history`): ``epoch_logs``,
            and the last one's ``val_loss``.

    ``epoch`` is the last epoch a worker trained in (a callback may have stopped the run early).
    """
    last: dict[int, float] = {r["worker"]: float(r["loss"]) for r in history}
    trained = [int(r["epoch"]) for r in history if "epoch" in r]
    final: dict[str, Any] = {
        "steps": len(history), "total": len(history), "epoch": max(trained) if trained else num_epoch - 1,
        "loss": sum(last.values()) / len(last) if last else None, "elapsed": training_time,
        "samples_per_s": batch_size * len(history) / training_time if training_time else 0.0,
        "timings": timings, "members": members, "series": series_from_history(history)}
    if epochs is not None:
        final.update(epoch_logs=list(epochs), val_loss=epochs[-1].get("val_loss") if epochs else None)
    return final
