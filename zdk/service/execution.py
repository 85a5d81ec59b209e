"""One job's run, on its own thread: build the trainer from the job's files, train, save the
artifacts, record the outcome.

``trainer.train`` blocks, so each running job has a thread; it has its own Spark job group
(set by the trainer, so :meth:`Execution.cancel` stops its tasks) and its own shards (stopped
when ``train`` returns or raises). Progress snapshots go to the job's record about once a second.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any, Callable

from zdk.errors import JobCancelled, ZdkError
from zdk.jobs.spec import JobSpec
from zdk.jobs.states import CANCELLED, FAILED, FINAL, FINISHED, INTERRUPTED, QUEUED, RUNNING
from zdk.service import build, watching
from zdk.service.artifacts import JobFolder
from zdk.service.cluster import Cluster
from zdk.service.policy import Policy
from zdk.service.progress import LiveProgress, epochs_from_history, final_progress, merge_epochs
from zdk.service.shards import ShardSettings
from zdk.service.store import JobRecord, Store

logger = logging.getLogger(__name__)

#: Seconds between writes of a running job's progress to its record.
PROGRESS_WRITE_EVERY = 1.0
#: The error of a job its owner cancelled.
CANCELLED_BY_OWNER = "cancelled by its owner"
#: Seconds to wait before each retry of recording a job's outcome (a locked database, say).
RECORD_RETRIES = (0.5, 2.0)


def resumable(job: JobRecord) -> bool:
    """Whether every shard of the job left a checkpoint to resume from."""
    return JobFolder(directory=job.directory).resumable(job.spec["trainer"]["arguments"].get("num_shards", 1))


class Execution:
    """A job's run. :meth:`start` it once; it records its outcome, then calls ``on_end``.

    Args:
        job: the job's record, just moved to ``running``.
        store: where the outcome and the progress go.
        cluster: the Spark the job runs on.
        policy: what the job may read and import.
        on_end: called with the job's id when the run has ended and its outcome is recorded.
        shards: where the job's shards bind and how often they checkpoint.
    """

    def __init__(self, job: JobRecord, *, store: Store, cluster: Cluster, policy: Policy,
                 on_end: Callable[[str], None], shards: ShardSettings = ShardSettings()) -> None:
        self.job = job
        self.spec = JobSpec.from_dict(job.spec)
        self.folder = JobFolder(directory=job.directory)
        # A resumed job shows the epochs its earlier run recorded before the ones it trains again.
        earlier = (job.progress or {}).get("epoch_logs") if job.resumes > 0 else None
        self.progress = LiveProgress(earlier or ())
        self._shards = shards
        self.thread = threading.Thread(target=self._main, name=f"zdk-job-{job.id}", daemon=True)
        self._store = store
        self._cluster = cluster
        self._policy = policy
        self._on_end = on_end
        self._trainer: Any = None
        self._cancelled = threading.Event()
        self._by_owner = False
        self._stopping = False
        self._written = 0.0

    def start(self) -> None:
        self.thread.start()

    def cancel(self) -> None:
        """Stops the run at its owner's request: the job ends ``cancelled``."""
        self._by_owner = True
        self._interrupt()

    def stop(self) -> None:
        """Stops the run because the server stops: the job goes back to the queue when its
        shards left a checkpoint (they write one as they stop), else ends ``interrupted``."""
        self._stopping = True
        self._interrupt()

    def _interrupt(self) -> None:
        self._cancelled.set()
        trainer = self._trainer
        if trainer is not None:
            trainer.cancel()

    def _main(self) -> None:
        _running_job.set(self.job.id)  # threads the run starts with this context log to the job too
        try:
            handler = _job_log(self.folder.log, self.thread, self.job.id)
            logging.getLogger("zdk").addHandler(handler)
            try:
                fields = self._outcome()
            finally:
                logging.getLogger("zdk").removeHandler(handler)
                handler.close()
            state = fields.pop("state")
            fields["progress"] = {**self.progress.view(), **fields.get("progress", {})}
            if state in FINAL:
                fields["finished"] = time.time()
            self.folder.sync()  # the record says the files exist: they must, after a power cut too
            self._record(state, log_path=handler.baseFilename, **fields)
        except Exception:  # the record could not be written: the server's log keeps why
            logger.exception("job %s: recording its outcome failed", self.job.id)
        finally:
            self._on_end(self.job.id)  # the job's slots are free whatever happened above

    def _record(self, state: str, **fields: Any) -> None:
        """Moves the job's record from ``running`` to ``state``, retrying a failed write."""
        for wait in (*RECORD_RETRIES, None):
            try:
                self._store.transition(self.job.id, (RUNNING,), state, **fields)
                return
            except Exception:
                if wait is None:
                    raise
                logger.warning("job %s: recording its outcome failed; retrying in %g s", self.job.id, wait,
                               exc_info=True)
                time.sleep(wait)

    def _outcome(self) -> dict[str, Any]:
        """Runs the job; returns its new state and the record's fields that go with it."""
        job = self.job
        try:
            logger.info("job %s (%r) of %s started", job.id, job.name, job.owner)
            fields = {"state": FINISHED, **self._train()}
            logger.info("job %s finished", job.id)
        except JobCancelled:
            fields = self._cancelled_outcome()
            logger.info("job %s %s", job.id, fields["state"])
        except ZdkError as exc:
            fields = {"state": FAILED, "error": str(exc)}
            logger.error("job %s failed: %r", job.id, str(exc))
            report = getattr(exc, "report", None)
            if report:
                # The report lives on the server's disk; the job's log is what its owner can read.
                try:
                    self.folder.append_to_log("Spark's full report", report)
                except OSError as error:  # a symlink, a FIFO, gone: never followed, only named
                    logger.warning("job %s: Spark's report %r was not copied: %s", job.id, report, error)
        except Exception as exc:  # anything else is a bug in zdk or Spark: recorded with its traceback
            fields = {"state": FAILED, "error": f"{type(exc).__name__}: {exc}"}
            logger.exception("job %s failed", job.id)
        return fields

    def _cancelled_outcome(self) -> dict[str, Any]:
        if self._by_owner or not self._stopping:
            return {"state": CANCELLED, "error": CANCELLED_BY_OWNER}
        if resumable(self.job):
            return {"state": QUEUED, "resumes": self.job.resumes + 1, "started": None}
        return {"state": INTERRUPTED, "error": "the server stopped while this job was running, before its first "
                                               "checkpoint; submit it again"}

    def _train(self) -> dict[str, Any]:
        spec, folder, job = self.spec, self.folder, self.job
        server = build.server_arguments(spec, checkpoint_dir=folder.checkpoints, shards=self._shards)
        self._trainer = trainer = build.make_trainer(spec, build.load_model(folder.submitted_model), self._policy,
                                                     server=server)
        watching.check_algorithm(spec, trainer)
        resume = "checkpoint_dir" in server and job.resumes > 0 and resumable(job)
        callbacks = watching.make_callbacks(spec, watching.CallbackFiles(
            csv_log=folder.csv_log, tensorboard=folder.tensorboard, append=resume))
        if self._cancelled.is_set():
            raise JobCancelled("cancelled before training started")
        stages = build.make_stages(spec)
        spark = self._cluster.spark()
        data = build.prepare(build.read_data(spark, spec.data, self._policy), stages, trainer)
        validation = watching.validation_arguments(spec, spark=spark, policy=self._policy, stages=stages,
                                                   trainer=trainer)
        if resume:
            logger.info("job %s resumes from its checkpoint (resume %d)", job.id, job.resumes)
        result = trainer.train(data, shuffle=spec.shuffle, resume=resume, on_progress=self._on_progress,
                               callbacks=callbacks, **validation)
        models = result if isinstance(result, list) else [result]
        paths = folder.save_models(models)
        history_path = folder.write_history(trainer.history)
        epochs = None
        if trainer.keras_history is not None:
            epochs = merge_epochs(self.progress.earlier_epochs, epochs_from_history(trainer.keras_history))
            folder.write_epochs(epochs)
        folder.drop_checkpoints()
        return {"model_path": paths[0], "history_path": history_path,
                "progress": final_progress(trainer.history, num_epoch=trainer.num_epoch,
                                           batch_size=trainer.batch_size, training_time=trainer.training_time,
                                           timings=trainer.timings, members=len(models), epochs=epochs)}

    def _on_progress(self, snapshot: dict[str, Any]) -> None:
        self.progress.add(snapshot)
        now = time.monotonic()
        if now - self._written >= PROGRESS_WRITE_EVERY:
            self._written = now
            try:
                self._store.update(self.job.id, progress=self.progress.view())
            except Exception:  # the record's copy lags; the live view and the training go on
                logger.exception("job %s: writing its progress failed", self.job.id)


#: The job whose run the current context belongs to: set on the job's thread, and carried to the
#: threads its run starts with a copy of its context (the shards' start, :meth:`PSSession.begin`).
_running_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("zdk_running_job", default=None)


def _job_log(path: str, thread: threading.Thread, job_id: str) -> logging.FileHandler:
    """A log file for the job, fed by zdk's loggers from the job's own thread and the threads its
    run started with its context (a filter runs on the thread that logs)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: record.thread == thread.ident or _running_job.get() == job_id)
    handler.setLevel(logging.INFO)
    return handler
