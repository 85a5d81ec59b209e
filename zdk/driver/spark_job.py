"""Running the training tasks as one Spark job: its job group, cancelling it (from another
thread or by Ctrl-C), and turning a task's failure into an error that names the worker's own.

PySpark's own Ctrl-C handler cancels jobs through a re-entrant py4j call and prints half a
dozen tracebacks; while training runs, zdk's handler cancels the job group on a thread
instead, and a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import uuid
from typing import Any, Callable, ContextManager, Iterator

from zdk.errors import JobCancelled, WorkerFailed

logger = logging.getLogger(__name__)


class CancelToken:
    """Cancels a run from any thread: the Spark job group the run is in is cancelled, and the
    run raises :class:`JobCancelled` at its next check. A token serves one run."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._group: tuple[Any, str] | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            group = self._group
        if group is not None:
            group[0].cancelJobGroup(group[1])

    def check(self) -> None:
        """Raises :class:`JobCancelled` once :meth:`cancel` was called."""
        if self._event.is_set():
            raise JobCancelled("training was cancelled")

    @contextlib.contextmanager
    def job_group(self, sc: Any, name: str, description: str) -> Iterator[str]:
        """Runs the block's Spark jobs in a job group of their own, which :meth:`cancel` cancels."""
        group_id = f"{name}-{uuid.uuid4().hex[:8]}"
        sc.setJobGroup(group_id, description, interruptOnCancel=True)
        with self._lock:
            self._group = (sc, group_id)
        try:
            self.check()  # a cancel() that came before the group existed
            yield group_id
        finally:
            with self._lock:
                self._group = None
            sc.setLocalProperty("spark.jobGroup.id", None)


def collect(job: Any, *, name: str, description: str, token: CancelToken,
            around: ContextManager[Any] | None = None) -> list[dict[str, Any]]:
    """Runs ``job`` (a DataFrame) to completion and returns its rows as dicts.

    Args:
        job: the DataFrame whose tasks train.
        name: the job group's prefix (a random suffix is added).
        description: shown in Spark's UI.
        token: cancels the job group from another thread.
        around: a context (the progress display) held while the job runs.

    Raises:
        JobCancelled: when ``token`` cancelled it.
        KeyboardInterrupt: on Ctrl-C, once the job group is cancelled.
        WorkerFailed: when a task failed, with the worker's own error and the path of Spark's full report.
    """
    sc = job.sparkSession.sparkContext
    interrupted = threading.Event()
    with token.job_group(sc, name, description) as group_id:
        try:
            with around or contextlib.nullcontext(), _on_ctrl_c(lambda: _cancel_once(sc, group_id, interrupted)):
                rows = job.collect()
        except KeyboardInterrupt:
            _cancel_once(sc, group_id, interrupted)
            raise
        except Exception as exc:
            raise _translated(exc, group_id, token, interrupted) from None
    return [row.asDict() for row in rows]


def _translated(exc: Exception, group_id: str, token: CancelToken, interrupted: threading.Event) -> BaseException:
    if token.cancelled:
        return JobCancelled("training was cancelled: its Spark jobs were cancelled and its shards stop")
    if interrupted.is_set():
        logger.warning("training interrupted (Ctrl-C): the Spark job was cancelled and the shards stop")
        return KeyboardInterrupt("zdk training interrupted")
    if type(exc).__module__.startswith(("pyspark", "py4j")):
        report = save_report(group_id, exc)
        return WorkerFailed(f"training failed in a Spark task: {worker_message(exc)} (Spark's full report: "
                            f"{report})", report=report)
    return exc


@contextlib.contextmanager
def _on_ctrl_c(handler: Callable[[], None]) -> Iterator[None]:
    """Runs ``handler`` on a thread at the first SIGINT; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[bool] = []

    def on_sigint(signum: int, frame: Any) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)
        threading.Thread(target=handler, name="zdk-cancel", daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cancel_once(sc: Any, group_id: str, done: threading.Event) -> None:
    if not done.is_set():
        done.set()
        sc.cancelJobGroup(group_id)


def save_report(group_id: str, exc: BaseException) -> str:
    """Writes Spark's whole error (Java stack included) to a log file; returns its path."""
    directory = os.path.join(tempfile.gettempdir(), "zdk-logs")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{group_id}.log")
    with open(path, "w") as fh:
        fh.write(f"{type(exc).__module__}.{type(exc).__name__}: {exc}\n")
    return path


def worker_message(exc: BaseException) -> str:
    """The last line of the worker's Python traceback inside a Spark error, or the error itself."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for k in range(len(lines) - 1, -1, -1):
        line = lines[k]
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Failed", "Exceeded")) and not line.startswith("at "):
            if line.endswith(":"):  # TensorFlow's "Graph execution error:" puts the reason after the op's stack
                detail = [d for d in lines[k + 1:] if not d.startswith(("File ", "[[", "Detected at node", "at ", "^"))]
                if detail:
                    return f"{line} {detail[-1]}"
            return line
    return lines[-1] if lines else repr(exc)
