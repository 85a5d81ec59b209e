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
    """Polls the shards every ``interval`` seconds and shows steps, samples/s and the latest loss.

    Quiet unless ``enabled`` and stderr is a terminal. Use as a context manager around training.

    Args:
        endpoints: the shards.
        total_steps: expected training steps over all workers, for the bar's total (None: unknown).
        enabled: the trainer's ``progress`` flag.
    """

    def __init__(self, endpoints: Sequence[str], *, total_steps: int | None, enabled: bool = True,
                 interval: float = 0.5, curve: CurveKeys | None = None) -> None:
        self.endpoints = list(endpoints)
        self.curve = curve
        self.total_steps = total_steps
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

    def _run(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        of_total = "/{task.total}" if self.total_steps else ""
        columns = [TextColumn("[bold]zdk[/] {task.description}"), BarColumn(),
                   TextColumn("{task.completed}" + of_total + " steps"), TextColumn("{task.fields[rate]}"),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn()]
        if self.total_steps:
            columns += [TextColumn("ETA"), TimeRemainingColumn()]
        started = time.monotonic()
        try:
            with PSClient(self.endpoints, worker_id=2**32 - 2, timeout=5.0, curve=self.curve) as client, \
                    Progress(*columns, transient=False) as bar:
                client.hello(register=False)
                task = bar.add_task("starting workers…", total=self.total_steps, rate="-", loss="-")
                while not self._stop.wait(self.interval):
                    stats = client.stats()[0]
                    reports = [w.get("report", {}) for w in stats["workers"].values()]
                    steps = sum(int(r.get("step", 0)) for r in reports)
                    epoch = max((int(r.get("epoch", 0)) for r in reports), default=0)
                    samples = sum(int(r.get("samples", 0)) for r in reports)
                    losses = [r["loss"] for r in reports if r.get("loss") is not None]
                    rate = samples / max(time.monotonic() - started, 1e-9)
                    self.last = {"steps": steps, "samples": samples, "loss": losses}
                    bar.update(task, completed=steps, description="training" if steps else "starting workers…", rate=f"epoch {epoch + 1}, {rate:,.0f} samples/s",
                               loss=f"{sum(losses) / len(losses):.4f}" if losses else "-")
        except Exception:  # the bar is a convenience: training goes on without it
            logger.debug("progress display stopped", exc_info=True)
