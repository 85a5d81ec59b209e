"""Live training progress on the driver, fed from the shards' `stats`: a progress bar on a
terminal, and snapshots for a listener (the job service records them)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Callable, Sequence

from zdk.errors import ZdkError
from zdk.ps.client import PSClient
from zdk.ps.protocol import OBSERVER_PROGRESS
from zdk.transports.curve import CurveKeys

logger = logging.getLogger(__name__)

#: What a listener receives every interval (see :func:`snapshot`).
Listener = Callable[[dict[str, Any]], None]


def snapshot(stats: Sequence[dict[str, Any]], *, elapsed: float, num_workers: int, epochs: int) -> dict[str, Any]:
    """Summarizes every shard's `stats` reply at one instant.

    Workers report to every shard; shard 0's reports are read (all shards hold the same ones).

    Returns:
        ``steps`` and ``samples`` summed over workers, ``samples_per_s`` = samples / elapsed,
        ``epoch`` (the furthest worker's, from 0), ``loss`` (mean of the workers' latest),
        ``total`` steps (None until every worker reported its steps per epoch), ``workers``
        (per worker: step, epoch, samples, loss, staleness) and ``shards`` (per shard: version,
        updates, commits per second of uptime, mean staleness, connected workers, errors).
    """
    workers: dict[str, dict[str, Any]] = {}
    for wid, w in (stats[0]["workers"] if stats else {}).items():
        r = w.get("report", {})
        workers[wid] = {"step": int(r.get("step", 0)), "epoch": int(r.get("epoch", 0)),
                        "samples": int(r.get("samples", 0)), "loss": r.get("loss"),
                        "staleness": w.get("staleness"), "epoch_steps": r.get("epoch_steps")}
    per_epoch = [int(w["epoch_steps"]) for w in workers.values() if w["epoch_steps"]]
    losses = [w["loss"] for w in workers.values() if w["loss"] is not None]
    samples = sum(w["samples"] for w in workers.values())
    shards = []
    for s in stats:
        staleness = [w["staleness"] for w in s["workers"].values() if w.get("staleness") is not None]
        shards.append({"shard": s["shard"], "version": s["version"], "updates": s["updates"],
                       "updates_per_s": s["updates"] / s["uptime"] if s["uptime"] > 0 else 0.0,
                       "staleness": sum(staleness) / len(staleness) if staleness else 0.0,
                       "connected": s["connected"], "errors": s["errors"], "bytes_in": s["bytes_in"],
                       "bytes_out": s["bytes_out"]})
    return {
        "elapsed": elapsed, "steps": sum(w["step"] for w in workers.values()), "samples": samples,
        "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
        "epoch": max((w["epoch"] for w in workers.values()), default=0),
        "loss": sum(losses) / len(losses) if losses else None,
        "total": sum(per_epoch) * epochs if len(per_epoch) >= num_workers else None,
        "workers": workers, "shards": shards,
    }


class ShardProgress:
    """Polls the shards every ``interval`` seconds; shows steps, samples/s, the latest loss,
    elapsed time and, once every worker has finished its first epoch, the total and an ETA,
    and hands each :func:`snapshot` to ``listener``.

    The total is not counted up front (that would be one more Spark job before training):
    workers report their steps per epoch after their first epoch.
    The bar is shown only if ``enabled`` and stderr is a terminal. Use as a context manager
    around training.

    Args:
        endpoints: the shards.
        num_workers: workers (tasks) of the job.
        epochs: epochs each worker trains.
        enabled: the trainer's ``progress`` flag.
        listener: called from the polling thread with every snapshot; its errors are logged.
        epochs_from: when given, the polls ask the shards for the workers' epoch reports from
            ``epochs_from()`` on, and hand every ``stats`` reply to ``on_stats``.
        on_stats: called from the polling thread with every shard's ``stats`` reply.
        extra: figures merged into every snapshot (the epoch loop's latest ``val_loss`` and epochs).
    """

    def __init__(self, endpoints: Sequence[str], *, num_workers: int, epochs: int, enabled: bool = True,
                 interval: float = 0.5, curve: CurveKeys | None = None, listener: Listener | None = None,
                 epochs_from: Callable[[], int] | None = None,
                 on_stats: Callable[[list[dict[str, Any]]], None] | None = None,
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.endpoints = list(endpoints)
        self.curve = curve
        self.num_workers = num_workers
        self.epochs = epochs
        self.enabled = enabled and bool(self.endpoints) and sys.stderr.isatty()
        self.listener = listener if self.endpoints else None
        self.interval = interval
        self.epochs_from, self.on_stats, self.extra = epochs_from, on_stats, extra
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict[str, Any] = {}

    def __enter__(self) -> "ShardProgress":
        if self.enabled or self.listener is not None or self.on_stats is not None:
            self._thread = threading.Thread(target=self._run, name="zdk-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def total(self, reports: Sequence[dict[str, float]]) -> int | None:
        """Σ steps per epoch × epochs, once every worker has reported its steps per epoch."""
        per_epoch = [int(r["epoch_steps"]) for r in reports if r.get("epoch_steps")]
        if len(per_epoch) < self.num_workers:
            return None
        return sum(per_epoch) * self.epochs

    def _run(self) -> None:
        started = time.monotonic()
        try:
            with PSClient(self.endpoints, worker_id=OBSERVER_PROGRESS, timeout=5.0, curve=self.curve) as client:
                client.hello(register=False)
                if self.enabled:
                    self._show(client, started)
                else:
                    while not self._stop.wait(self.interval):
                        self._poll(client, started)
        except Exception:  # the display is a convenience: training goes on without it
            logger.debug("progress display stopped", exc_info=True)

    def _poll(self, client: PSClient, started: float) -> dict[str, Any]:
        try:
            stats = client.stats(epochs_from=self.epochs_from()) if self.epochs_from else client.stats()
        except ZdkError:  # a shard slow to answer this once; the next poll asks again
            logger.debug("progress poll failed", exc_info=True)
            return self.last
        if self.on_stats is not None:
            self.on_stats(stats)
        now = snapshot(stats, elapsed=time.monotonic() - started, num_workers=self.num_workers, epochs=self.epochs)
        if self.extra is not None:
            now.update(self.extra())
        self.last = now
        if self.listener is not None:
            try:
                self.listener(now)
            except Exception:
                logger.exception("progress listener failed")
        return now

    def _show(self, client: PSClient, started: float) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn("[bold]zdk[/] {task.description}"), BarColumn(),
                   TextColumn("{task.completed}{task.fields[of_total]} steps"), TextColumn("{task.fields[rate]}"),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn()]
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("starting workers…", total=None, rate="-", loss="-", of_total="")
            while not self._stop.wait(self.interval):
                now = self._poll(client, started)
                total = now["total"]
                bar.update(task, completed=now["steps"], total=total, of_total=f"/{total}" if total else "",
                           description="training" if now["steps"] else "starting workers…",
                           rate=f"epoch {now['epoch'] + 1}, {now['samples_per_s']:,.0f} samples/s",
                           loss=_losses(now))


def _losses(now: dict[str, Any]) -> str:
    """The latest training loss, and the last epoch's validation loss when there is one."""
    loss = f"{now['loss']:.4f}" if now.get("loss") is not None else "-"
    return f"{loss}, val_loss {now['val_loss']:.4f}" if now.get("val_loss") is not None else loss
