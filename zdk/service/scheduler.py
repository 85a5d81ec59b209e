"""The queue: runs queued jobs on the server's Spark, a bounded number at a time, first come
first served, each while its task slots fit beside the running ones.

The loop survives its own failures (a locked database, a Spark error): it logs them and goes on
scheduling, and a job that cannot be started is marked failed instead of blocking the queue. A
cancel is never lost: a job whose owner asked to cancel it is not started, nor resumed after a
restart.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from zdk.errors import ConfigError
from zdk.jobs.spec import JobSpec
from zdk.jobs.states import CANCELLED, FAILED, INTERRUPTED, QUEUED, RUNNING
from zdk.service.cluster import Cluster
from zdk.service.execution import CANCELLED_BY_OWNER, Execution, resumable
from zdk.service.policy import Policy
from zdk.service.shards import ShardSettings
from zdk.service.store import JobRecord, Store

logger = logging.getLogger(__name__)

#: Seconds the loop waits after one of its own failures before trying again.
RETRY_AFTER_FAILURE = 1.0


class Scheduler:
    """The queue and the running jobs.

    Args:
        store: the job records.
        cluster: the Spark the jobs run on.
        policy: what jobs may read and import.
        max_jobs: jobs running at once.
        shards: where jobs' shards bind and how often they checkpoint.

    Raises:
        ConfigError: naming ``max_jobs`` when it is below 1.
    """

    def __init__(self, store: Store, *, cluster: Cluster, policy: Policy, max_jobs: int = 1,
                 shards: ShardSettings = ShardSettings()) -> None:
        if max_jobs < 1:
            raise ConfigError(f"`max_jobs` must be ≥ 1. Received: max_jobs={max_jobs}", field="max_jobs")
        self.store = store
        self.cluster = cluster
        self.policy = policy
        self.max_jobs = max_jobs
        self.shards = shards
        self._wake = threading.Condition()
        self._running: dict[str, Execution] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._schedule, name="zdk-serve-scheduler", daemon=True)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """:meth:`recover`, then runs the queue."""
        self.recover()
        self._thread.start()

    def recover(self) -> None:
        """Requeues the jobs that were running when the server died, to resume from their shards'
        last checkpoint, or marks them interrupted when they have none; a job its owner asked to
        cancel (running or queued) is cancelled instead."""
        for job in self.store.jobs(states=(QUEUED, RUNNING)):
            if job.cancel_requested:
                self.store.transition(job.id, (job.state,), CANCELLED, finished=time.time(), error=CANCELLED_BY_OWNER)
                logger.warning("job %s was %s with a cancel request when the server stopped; cancelled", job.id,
                               job.state)
                continue
            if job.state != RUNNING:
                continue
            if resumable(job):
                self.store.transition(job.id, (RUNNING,), QUEUED, resumes=job.resumes + 1)
                logger.warning("job %s was running when the server stopped; it resumes from its checkpoint", job.id)
                continue
            step = (job.progress or {}).get("steps")
            self.store.transition(job.id, (RUNNING,), INTERRUPTED, finished=time.time(),
                                  error=f"the server stopped while this job was running (at step {step or 0}) "
                                        f"before its first checkpoint; submit it again")
            logger.warning("job %s was running when the server stopped; marked interrupted", job.id)

    def stop(self, timeout: float = 60.0) -> None:
        """Stops the queue and the running jobs, which go back to the queue to resume from the
        checkpoint their shards write as they stop (or are marked interrupted without one);
        waits for their cleanup."""
        with self._wake:
            self._stopping = True
            running = list(self._running.values())
            self._wake.notify_all()
        for run in running:
            run.stop()
        deadline = time.monotonic() + timeout
        for run in running:
            run.thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._thread.join(5)

    def notify(self) -> None:
        """A job was queued."""
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job: JobRecord) -> str:
        """Cancels a queued or running job; returns its state after the request. The request
        is recorded first (``cancel_requested``), so a restart honours it."""
        if self.store.transition(job.id, (QUEUED,), CANCELLED, finished=time.time(), error="cancelled before it ran"):
            return CANCELLED
        self.store.update(job.id, cancel_requested=1)
        with self._wake:
            run = self._running.get(job.id)
        if run is not None:
            run.cancel()
        current = self.store.job(job.id)
        return current.state if current else CANCELLED

    def live(self, job_id: str) -> dict[str, Any] | None:
        """The running job's latest progress, with the loss series, from memory."""
        with self._wake:
            run = self._running.get(job_id)
        return run.progress.view() if run else None

    # ------------------------------------------------------------------ scheduling

    def _schedule(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except Exception:  # a locked database, a Spark error: logged, and the queue goes on
                logger.exception("the scheduler's loop failed; it tries again in %g s", RETRY_AFTER_FAILURE)
                with self._wake:
                    if self._stopping:
                        return
                    self._wake.wait(RETRY_AFTER_FAILURE)

    def _step(self) -> bool:
        """Starts the next job if one fits, else waits a little; False once stopping."""
        with self._wake:
            if self._stopping:
                return False
            job = self._next() if len(self._running) < self.max_jobs else None
            if job is None:
                self._wake.wait(1.0)
                return True
            if job.cancel_requested:
                self.store.transition(job.id, (QUEUED,), CANCELLED, finished=time.time(), error=CANCELLED_BY_OWNER)
                return True
            if not self.store.transition(job.id, (QUEUED,), RUNNING, started=time.time()):
                return True  # cancelled meanwhile
            try:
                run = Execution(job, store=self.store, cluster=self.cluster, policy=self.policy, on_end=self._ended,
                                shards=self.shards)
                self._running[job.id] = run
                run.start()
            except Exception as exc:
                self._running.pop(job.id, None)
                self._fail(job, exc)
        return True

    def _next(self) -> JobRecord | None:
        queued = self.store.jobs(states=(QUEUED,))
        if not queued:
            return None
        try:
            slots = JobSpec.from_dict(queued[0].spec).slots
        except Exception as exc:  # a record the server cannot read: it must not block the queue
            self._fail(queued[0], exc)
            return None
        reserved = sum(r.spec.slots for r in self._running.values())
        if self._running and reserved + slots > self.cluster.slots():
            return None  # first come, first served: the head waits for slots
        return queued[0]

    def _fail(self, job: JobRecord, exc: Exception) -> None:
        logger.error("job %s could not be started: %s: %r", job.id, type(exc).__name__, str(exc))
        self.store.transition(job.id, (QUEUED, RUNNING), FAILED, finished=time.time(),
                              error=f"the server could not start this job: {type(exc).__name__}: {exc}")

    def _ended(self, job_id: str) -> None:
        with self._wake:
            self._running.pop(job_id, None)
            self._wake.notify_all()
