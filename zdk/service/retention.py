"""Removing ended jobs: one at its owner's request (``DELETE /api/jobs/ID``), and every job that
ended more than ``--retention`` days ago, checked by a background thread of the server.

A job is removed record first, then folder: once the record is gone no route serves its files,
and a folder left by a crash between the two is only disk space (its id is never reused).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

from zdk.service.artifacts import StateDir
from zdk.service.policy import amount
from zdk.service.store import JobRecord, Store

logger = logging.getLogger(__name__)

#: Seconds between two sweeps for expired jobs.
SWEEP_EVERY = 3600.0


def delete_job(store: Store, state: StateDir, job: JobRecord) -> bool:
    """Removes an ended job's record and folder; False when it is queued or running (or gone).

    A folder outside the state's ``jobs/`` (a record edited by hand) is left, and logged.
    """
    if not store.delete_job(job.id):
        return False
    if state.owns(job.directory):
        shutil.rmtree(job.directory, ignore_errors=True)
    else:
        logger.error("job %s: its folder %r is not under %s; left in place", job.id, job.directory, state.jobs)
    return True


class Retention:
    """Removes the jobs that ended more than ``days`` ago: at :meth:`start`, then every ``every``
    seconds, until :meth:`stop`.

    Args:
        store: the job records.
        state: where the job folders are.
        days: how long an ended job is kept.
        every: seconds between sweeps.

    Raises:
        ConfigError: naming ``retention`` when ``days`` is not a number > 0.
    """

    def __init__(self, store: Store, state: StateDir, *, days: float, every: float = SWEEP_EVERY) -> None:
        self.store = store
        self.state = state
        self.days = amount(days, "retention", "days")
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zdk-serve-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def sweep(self, now: float | None = None) -> list[str]:
        """Removes the expired jobs now; returns their ids."""
        cutoff = (time.time() if now is None else now) - self.days * 86400
        removed = [job.id for job in self.store.ended_before(cutoff) if delete_job(self.store, self.state, job)]
        if removed:
            logger.info("removed %d job(s) that ended more than %g day(s) ago: %s", len(removed), self.days,
                        ", ".join(removed))
        return removed

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # the next sweep tries again
                logger.exception("removing expired jobs failed")
            self._stop.wait(self.every)
