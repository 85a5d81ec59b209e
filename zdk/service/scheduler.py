"""The queue: runs queued jobs on the server's Spark, a bounded number at a time, first come
first served, each while its task slots fit beside the running ones."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from zdk.errors import ConfigError
from zdk.jobs.spec import JobSpec
from zdk.jobs.states import CANCELLED, INTERRUPTED, QUEUED, RUNNING
from zdk.service import build
from zdk.service.cluster import Cluster
from zdk.service.execution import Execution, resumable
from zdk.service.store import JobRecord, Store

logger = logging.getLogger(__name__)


class Scheduler:
    """The queue and the running jobs.

    Args:
        store: the job records.
        cluster: the Spark the jobs run on.
        policy: what jobs may read and import.
        max_jobs: jobs running at once.

    Raises:
        ConfigError: naming ``max_jobs`` when it is below 1.
    """

    def __init__(self, store: Store, *, cluster: Cluster, policy: build.Policy, max_jobs: int = 1) -> None:
        if max_jobs < 1:
            raise ConfigError(f"`max_jobs` must be ≥ 1. Received: max_jobs={max_jobs}", field="max_jobs")
        self.store = store
        self.cluster = cluster
        self.policy = policy
        self.max_jobs = max_jobs
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
        last checkpoint, or marks them interrupted when they have none."""
        for job in self.store.jobs(states=(RUNNING,)):
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
        """Cancels a queued or running job; returns its state after the request."""
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
            with self._wake:
                if self._stopping:
                    return
                job = self._next() if len(self._running) < self.max_jobs else None
                if job is None:
                    self._wake.wait(1.0)
                    continue
                if not self.store.transition(job.id, (QUEUED,), RUNNING, started=time.time()):
                    continue  # cancelled meanwhile
                run = Execution(job, store=self.store, cluster=self.cluster, policy=self.policy, on_end=self._ended)
                self._running[job.id] = run
            run.start()

    def _next(self) -> JobRecord | None:
        queued = self.store.jobs(states=(QUEUED,))
        if not queued:
            return None
        reserved = sum(r.spec.slots for r in self._running.values())
        if self._running and reserved + JobSpec.from_dict(queued[0].spec).slots > self.cluster.slots():
            return None  # first come, first served: the head waits for slots
        return queued[0]

    def _ended(self, job_id: str) -> None:
        with self._wake:
            self._running.pop(job_id, None)
            self._wake.notify_all()
