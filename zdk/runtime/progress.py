"""A live progress bar on the driver, fed from the shards' `stats`."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Sequence

from zdk.ps.client import PSClient
from zdk.transports.curve import CurveKeys

logger = logging.getLogger(__name__)


class ShardProgress:
    """Polls the shards every ``interval`` seconds and shows steps, samples/s, the latest loss,
    elapsed time and, once every worker has finished its first epoch, the total and an ETA.

    The total is not counted up front (that would be one more Spark job before training):
    workers report their steps per epoch after their first epoch.
    Quiet unless ``enabled`` and stderr is a terminal. Use as a context manager around training.

    Args:
        endpoints: the shards.
        num_workers: workers (tasks) of the job.
        epochs: epochs each worker trains.
        enabled: the trainer's ``progress`` flag.
    """

    def __init__(self, endpoints: Sequence[str], *, num_workers: int, epochs: int, enabled: bool = True,
                 interval: float = 0.5, curve: CurveKeys | None = None) -> None:
        self.endpoints = list(endpoints)
        self.curve = curve
        self.num_workers = num_workers
        self.epochs = epochs
        self.enabled = enabled and bool(self.endpoints) and sys.stderr.isatty()
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict[str, Any] = {}

    def __enter__(self) -> "ShardProgress":
        if self.enabled:
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
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn("[bold]zdk[/] {task.description}"), BarColumn(),
                   TextColumn("{task.completed}{task.fields[of_total]} steps"), TextColumn("{task.fields[rate]}"),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn()]
        started = time.monotonic()
        try:
            with PSClient(self.endpoints, worker_id=2**32 - 2, timeout=5.0, curve=self.curve) as client, \
                    Progress(*columns, transient=False) as bar:
                client.hello(register=False)
                task = bar.add_task("starting workers…", total=None, rate="-", loss="-", of_total="")
                while not self._stop.wait(self.interval):
                    stats = client.stats()[0]
                    reports = [w.get("report", {}) for w in stats["workers"].values()]
                    steps = sum(int(r.get("step", 0)) for r in reports)
                    epoch = max((int(r.get("epoch", 0)) for r in reports), default=0)
                    samples = sum(int(r.get("samples", 0)) for r in reports)
                    losses = [r["loss"] for r in reports if r.get("loss") is not None]
                    rate = samples / max(time.monotonic() - started, 1e-9)
                    total = self.total(reports)
                    self.last = {"steps": steps, "samples": samples, "loss": losses, "total": total}
                    bar.update(task, completed=steps, total=total, of_total=f"/{total}" if total else "",
                               description="training" if steps else "starting workers…",
                               rate=f"epoch {epoch + 1}, {rate:,.0f} samples/s",
                               loss=f"{sum(losses) / len(losses):.4f}" if losses else "-")
        except Exception:  # the bar is a convenience: training goes on without it
            logger.debug("progress display stopped", exc_info=True)
