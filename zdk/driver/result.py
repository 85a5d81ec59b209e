"""What a run leaves: the trained models, the workers' per-step history and summaries, and timings.

Workers send back one record per training step (``kind = "step"``) and one summary each
(``kind = "summary"``: rows, samples, time busy and waiting on the PS, phase clocks, the bytes
of rows cached and spilled, the Python worker's RSS at the task's start and its sampled peak,
and their weights when there is no PS). :func:`split_records` turns them into the history a
trainer shows and the summaries the timings are read from.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from zdk.driver.plan import MODELS

logger = logging.getLogger(__name__)

#: The fields of a history record (``metrics`` maps each metric to its value).
HISTORY_KEYS = ("worker", "attempt", "epoch", "step", "timestamp", "loss", "metrics", "staleness", "scale")


def split_records(records: Sequence[dict[str, Any]], num_tasks: int) -> tuple[list[dict[str, Any]],
                                                                               list[dict[str, Any]]]:
    """The per-step history, in time order, and the per-worker summaries, by worker.

    A worker that got no rows is named in a warning: the others trained, on less data than
    the user may think.
    """
    steps: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    for record in records:
        r = dict(record)
        r["metrics"] = json.loads(r["metrics"]) if r["metrics"] else {}
        (summaries if r["kind"] == "summary" else steps).append(r)
    history = sorted(({k: r[k] for k in HISTORY_KEYS} for r in steps), key=lambda r: (r["timestamp"], r["worker"]))
    summaries.sort(key=lambda r: r["worker"])
    idle = [s["worker"] for s in summaries if not s.get("rows")]
    if idle:
        logger.warning("worker(s) %s got no rows (the DataFrame has fewer non-empty partitions than the %d tasks); "
                       "the others trained. Use fewer workers or more data.", idle, num_tasks)
    return history, summaries


def averaged_history(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loss and metrics averaged over the workers, per step index."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for r in history:
        by_step.setdefault(r["step"], []).append(r)
    out = []
    for step, rows in sorted(by_step.items()):
        keys = {k for r in rows for k in r["metrics"]}
        out.append({"step": step, "loss": float(np.mean([r["loss"] for r in rows])),
                    **{k: float(np.mean([r["metrics"][k] for r in rows if k in r["metrics"]])) for k in keys}})
    return out


def history_frame(history: Sequence[dict[str, Any]]) -> Any:
    """The history as a pandas DataFrame, one column per metric."""
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in r.items() if k != "metrics"} | r["metrics"] for r in history])


class Marks:
    """Wall-clock marks of a run's phases on the driver (``start`` is taken at creation)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {"start": time.time()}

    def mark(self, name: str) -> None:
        self.at[name] = time.time()

    def timings(self, summaries: Sequence[dict[str, Any]], *, session: float = 0.0) -> dict[str, float]:
        """Seconds per phase, from these marks and the workers' clocks (one host's clock in local
        mode; across hosts, the worker phases carry the hosts' clock skew).

        Phases: ``session`` (starting Spark, once), ``data_preparation``, ``shard_start``,
        ``worker_start`` (task submission to the first worker ready), ``first_step``, ``steps``
        (first to last step of any worker), ``teardown``, ``time_to_first_step``, ``total``.
        """
        m = self.at
        ran = [s for s in summaries if s.get("t_first") is not None]
        out = {"session": float(session), "data_preparation": m.get("prepared", m["start"]) - m["start"]}
        if "shards" in m:
            out["shard_start"] = m["shards"] - m["prepared"]
        end = m.get("end", time.time())
        if ran and "submitted" in m:
            ready = min(s["t_ready"] for s in ran)
            first = min(s["t_first"] for s in ran)
            last = max(s["t_last"] for s in ran)
            out.update(worker_start=ready - m["submitted"], first_step=first - ready, steps=last - first,
                       teardown=end - last, time_to_first_step=first - m["start"])
        out["total"] = end - m["start"]
        return {k: round(v, 3) for k, v in out.items()}


@dataclass(frozen=True)
class ResumeInfo:
    """Where a resumed run started: the shards' restored version, the first epoch trained, and
    the checkpoint file it came from."""

    version: int
    first_epoch: int
    source: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "first_epoch": self.first_epoch, "from": self.source}


@dataclass(frozen=True)
class TrainingResult:
    """The outcome of :func:`zdk.driver.engine.train`.

    Args:
        models: compiled Keras models: the center's, or one per worker (no PS).
        result: the plan's ``result`` kind (``"center"``, ``"model"`` or ``"models"``).
        history: one record per worker step (see :data:`HISTORY_KEYS`), in time order.
        worker_summaries: one per worker: rows, samples, ``busy`` and ``wait`` seconds, phase clocks,
            ``cached_bytes`` and ``spilled_bytes``, ``rss_start_bytes`` and ``rss_peak_bytes`` (its Python
            worker's resident set size when the task started, and the largest sampled until it ended).
        training_time: seconds from the start of the parameter server session to the last record.
        timings: seconds per phase (see :meth:`Marks.timings`).
        endpoints: the shards the run used (none without a PS).
        encrypted: whether PS traffic was CURVE-encrypted.
        reused_data: whether the prepared data of an earlier run was reused.
        resumed: where a resumed run started, else None.
        keras_history: a ``keras.callbacks.History`` of the per-epoch figures, when the run was watched
            (validation, callbacks or tracking); else None.
        epochs: the per-epoch figures (``epoch``, ``loss``, metrics, ``val_…``) of a watched run.
    """

    models: tuple[Any, ...]
    result: str
    history: list[dict[str, Any]] = field(default_factory=list)
    worker_summaries: list[dict[str, Any]] = field(default_factory=list)
    training_time: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    endpoints: tuple[str, ...] = ()
    encrypted: bool = False
    reused_data: bool = False
    resumed: ResumeInfo | None = None
    keras_history: Any = None
    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def value(self) -> Any:
        """What ``train`` hands the user: one model, or the list of every worker's."""
        return list(self.models) if self.result == MODELS else self.models[0]

    @property
    def ps_wait_fraction(self) -> float:
        """Share of the workers' training time spent waiting on the parameter server."""
        busy = sum(s["busy"] or 0.0 for s in self.worker_summaries)
        return sum(s["wait"] or 0.0 for s in self.worker_summaries) / busy if busy else 0.0
