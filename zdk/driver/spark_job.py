"""Running the training tasks as one Spark job: its job group, cancelling it (from another
thread, by Ctrl-C or by SIGTERM), and turning a task's failure into an error that names the
worker's own.

PySpark's own Ctrl-C handler cancels jobs through a re-entrant py4j call and prints half a
dozen tracebacks, and Python's SIGTERM ends the process with no cleanup at all; while training
runs, zdk's handler cancels the job group on a thread instead, so ``train()`` ends through its
own cleanup (its shards stop) and raises KeyboardInterrupt or SystemExit(143). A second signal
interrupts at once.
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
            around: ContextManager[Any] | None = None,
            beside: Callable[[threading.Event], None] | None = None) -> list[dict[str, Any]]:
    """Runs ``job`` (a DataFrame) to completion and returns its rows as dicts.

    Args:
        job: the DataFrame whose tasks train.
        name: the job group's prefix (a random suffix is added).
        description: shown in Spark's UI.
        token: cancels the job group from another thread.
        around: a context (the progress display) held while the job runs.
        beside: when given, the job runs on a thread of its own (in the same job group) and
            ``beside(done)`` runs on this thread until ``done`` is set (the epoch loop).

    Raises:
        JobCancelled: when ``token`` cancelled it.
        KeyboardInterrupt: on Ctrl-C, once the job group is cancelled.
        SystemExit: on SIGTERM (status 143), once the job group is cancelled.
        WorkerFailed: when a task failed, with the worker's own error and the path of Spark's full report.
    """
    sc = job.sparkSession.sparkContext
    with token.job_group(sc, name, description) as group_id:
        interruption = _Interruption(sc, group_id)
        try:
            with around or contextlib.nullcontext(), _on_signals(interruption):
                rows = job.collect() if beside is None else _collect_beside(job, beside, interruption)
        except (KeyboardInterrupt, SystemExit):
            interruption.cancel()
            raise
        except Exception as exc:
            raise _translated(exc, group_id, token, interruption) from None
    return [row.asDict() for row in rows]


class _Interruption:
    """A signal that stops the run: the job group is cancelled once, and the run then raises what
    the signal means (Ctrl-C: KeyboardInterrupt; SIGTERM: SystemExit with status 143)."""

    def __init__(self, sc: Any, group_id: str) -> None:
        self.sc, self.group_id = sc, group_id
        self.signum: int | None = None
        self._lock = threading.Lock()
        self._done = False

    @property
    def happened(self) -> bool:
        return self._done

    def cancel(self, signum: int | None = None) -> None:
        with self._lock:
            if self._done:
                return
            self._done, self.signum = True, signum if self.signum is None else self.signum
        self.sc.cancelJobGroup(self.group_id)

    def exception(self) -> BaseException:
        if self.signum == signal.SIGTERM:
            logger.warning("training terminated (SIGTERM): the Spark job was cancelled and the shards stop")
            return SystemExit(128 + signal.SIGTERM)
        logger.warning("training interrupted (Ctrl-C): the Spark job was cancelled and the shards stop")
        return KeyboardInterrupt("zdk training interrupted")


def _collect_beside(job: Any, beside: Callable[[threading.Event], None], interruption: _Interruption) -> Any:
    """``job.collect()`` on a thread that inherits this one's job group, while ``beside`` runs here."""
    from pyspark import InheritableThread

    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["rows"] = job.collect()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    thread = InheritableThread(target=run, name="zdk-spark-job", daemon=True)
    thread.start()
    try:
        beside(done)
    except BaseException:
        interruption.cancel()  # the caller is leaving: the tasks must not train on
        raise
    finally:
        thread.join()
    if "error" in box:
        raise box["error"]
    return box["rows"]


def _translated(exc: Exception, group_id: str, token: CancelToken, interruption: _Interruption) -> BaseException:
    if token.cancelled:
        return JobCancelled("training was cancelled: its Spark jobs were cancelled and its shards stop")
    if interruption.happened:
        return interruption.exception()
    if type(exc).__module__.startswith(("pyspark", "py4j")):
        report = save_report(group_id, exc)
        return WorkerFailed(f"training failed in a Spark task: {worker_message(exc)} (Spark's full report: "
                            f"{report})", report=report)
    return exc


@contextlib.contextmanager
def _on_signals(interruption: _Interruption) -> Iterator[None]:
    """Ctrl-C and SIGTERM cancel the job group on a thread at the first signal, so the run ends
    through its own cleanup (its shards stop); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
        received.append(signum)
        threading.Thread(target=interruption.cancel, args=(signum,), name="zdk-cancel", daemon=True).start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def save_report(group_id: str, exc: BaseException, directory: str | None = None) -> str:
    """Writes Spark's whole error (Java stack included) to a file only this user can read;
    returns its path.

    The file is created, never opened: ``O_CREAT | O_EXCL | O_NOFOLLOW`` at mode 0600, in
    ``directory`` (a private folder of the caller's) or, without one, in a new 0700 folder of its
    own (``tempfile.mkdtemp``), where nobody else can have put anything. A name already taken in
    ``directory`` (a file, or a symlink planted there) is not followed: the report goes to a new
    private folder instead.
    """
    text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}\n"

    def create(folder: str) -> str:
        path = os.path.join(folder, f"{group_id}.log")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "w") as fh:
            fh.write(text)
        return path

    if directory:
        try:
            return create(directory)
        except FileExistsError:
            pass
    return create(tempfile.mkdtemp(prefix="zdk-report-"))


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
