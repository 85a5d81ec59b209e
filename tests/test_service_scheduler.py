"""The scheduler keeps scheduling through its own failures, frees a job's slots whatever its end,
and never loses a cancel; job names cannot forge log lines. Real Spark, real SQLite; faults are
injected by subclassing the store."""

from __future__ import annotations

import logging
import os
import sqlite3

import pytest

from conftest import digits_mlp, poll_until
from zdk.jobs.states import FINAL, QUEUED, RUNNING
from zdk.service.artifacts import JobFolder
from zdk.service.store import Store

pytestmark = pytest.mark.spark


FORGED = "2000-01-01 00:00:00,000 INFO zdk: FORGED"


def spec(path: str = "digits.parquet") -> dict:
    args = {"worker_optimizer": "adam", "loss": "sparse_categorical_crossentropy", "num_workers": 2,
            "num_epoch": 1, "batch_size": 32}
    return {"name": "digits", "trainer": {"class": "ADAG", "arguments": args},
            "data": {"format": "parquet", "path": path}, "resources": {"num_executors": 1, "num_processes": 2}}


class FlakyStore(Store):
    """A store whose queue read fails once (a locked database), and whose writes of one job's
    outcome always fail."""

    def __init__(self, path: str, *, unrecordable: str) -> None:
        super().__init__(path)
        self.unrecordable = unrecordable
        self.queue_failures = 1

    def jobs(self, owner=None, states=None):
        if states == (QUEUED,) and self.queue_failures:
            self.queue_failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return super().jobs(owner, states)

    def transition(self, job_id, from_states, to_state, **fields):
        if job_id == self.unrecordable and to_state in FINAL:
            raise sqlite3.OperationalError("disk I/O error")
        return super().transition(job_id, from_states, to_state, **fields)


def add(store: Store, root, job_id: str, body: dict, name: str = "digits") -> JobFolder:
    folder = JobFolder(directory=str(root / job_id))
    os.makedirs(folder.directory)
    digits_mlp().save(folder.submitted_model)
    store.add_job(owner="alice", name=name, spec=body, directory=folder.directory, job_id=job_id)
    return folder


def test_the_queue_goes_on_through_failures_and_a_job_name_forges_no_log_line(spark, job_data, tmp_path, caplog):
    from zdk.service.cluster import Cluster
    from zdk.service.policy import Policy
    from zdk.service.scheduler import Scheduler

    store = FlakyStore(str(tmp_path / "zdk.db"), unrecordable="lost")
    store.add_job(owner="alice", name="broken", spec={"name": "no trainer"}, directory=str(tmp_path / "broken"),
                  job_id="broken")  # a record the server cannot read
    add(store, tmp_path, "lost", spec(path="missing.parquet"))  # fails fast; its outcome cannot be recorded
    good = add(store, tmp_path, "good", spec(), name=f"digits\n{FORGED}")
    scheduler = Scheduler(store, cluster=Cluster(lambda: spark), policy=Policy(data_roots=(str(job_data),)),
                          max_jobs=1)
    with caplog.at_level(logging.INFO, logger="zdk"):
        scheduler.start()
        try:
            done = poll_until(lambda: (j := store.job("good")) is not None and j.state in FINAL and j, timeout=180,
                              interval=0.2, what="the good job to end")
        finally:
            scheduler.stop()
    assert done.state == "finished", done.error
    broken = store.job("broken")
    assert broken.state == "failed" and "the server could not start this job" in broken.error
    assert store.job("lost").state == RUNNING  # never recorded; but its slot was freed for "good"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "the scheduler's loop failed" in logged and "recording its outcome failed" in logged
    with open(good.log) as fh:
        lines = fh.read().splitlines()
    assert not any(line.startswith(FORGED) for line in lines), lines
    assert any(f"job good ({f'digits{chr(10)}{FORGED}'!r}) of alice started" in line for line in lines), lines
    assert not any(line.startswith(FORGED) for line in logged.splitlines())
    store.close()


def test_a_cancel_asked_before_a_crash_is_honoured_on_restart(tmp_path):
    from zdk.ps import checkpoint
    from zdk.service.cluster import Cluster
    from zdk.service.policy import Policy
    from zdk.service.scheduler import Scheduler

    store = Store(str(tmp_path / "zdk.db"))
    for job_id, cancel in (("asked", 1), ("resumes", 0)):
        folder = add(store, tmp_path, job_id, spec())
        os.makedirs(folder.checkpoints)
        open(checkpoint.checkpoint_path(folder.checkpoints, 0, 1), "wb").close()  # it could resume
        store.transition(job_id, (QUEUED,), RUNNING)
        store.update(job_id, cancel_requested=cancel)
    add(store, tmp_path, "queued-asked", spec())
    store.update("queued-asked", cancel_requested=1)
    Scheduler(store, cluster=Cluster(lambda: None), policy=Policy()).recover()
    for job_id in ("asked", "queued-asked"):
        job = store.job(job_id)
        assert (job.state, job.error) == ("cancelled", "cancelled by its owner") and job.finished is not None
    assert store.job("resumes").state == QUEUED and store.job("resumes").resumes == 1
    store.close()


def test_a_server_stops_only_a_spark_session_it_started(spark):
    # The active session (this test session's) is someone else's: the server's stop leaves it running.
    from zdk.service.cluster import Cluster

    cluster = Cluster.of_master("local[2]")
    assert cluster.spark() is spark
    cluster.stop()
    assert spark.sparkContext._jsc is not None
    assert spark.range(3).count() == 3
    with pytest.raises(RuntimeError, match="stopping"):
        cluster.spark()
