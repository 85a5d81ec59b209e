"""Runs queued jobs on the server's Spark, a bounded number at a time.

Each running job has its own thread (``trainer.train`` blocks), its own Spark job group (set by
the trainer, so :meth:`JobRunner.cancel` stops its tasks) and its own shards (stopped when
``train`` returns or raises). Progress snapshots go to the job's record about once a second.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import threading
import time
from typing import Any, Callable

from zdk.errors import ConfigError, JobCancelled, ZdkError
from zdk.service import build
from zdk.service.spec import JobSpec
from zdk.service.store import (CANCELLED, FAILED, FINISHED, INTERRUPTED, QUEUED, RUNNING, JobRecord, Store)

logger = logging.getLogger(__name__)

#: Points kept per worker for the loss plot (older ones are thinned to every other point).
MAX_POINTS = 600
INPUT_MODEL = "submitted.keras"
#: Seconds between a running job's shard checkpoints, from which it resumes after a server restart.
CHECKPOINT_EVERY = 10.0


def checkpoint_dir(job: JobRecord) -> str:
    return os.path.join(job.directory, "checkpoints")


def resumable(job: JobRecord) -> bool:
    """Whether every shard of the job left a checkpoint (algorithms with a PS only write them)."""
    shards = job.spec["trainer"]["arguments"].get("num_shards", 1)
    if not isinstance(shards, int) or shards < 1:
        return False
    return all(os.path.exists(os.path.join(checkpoint_dir(job), f"shard-{k:03d}-of-{shards:03d}.npz"))
               for k in range(shards))


class JobRunner:
    """The queue and the running jobs.

    Args:
        store: the job records.
        spark: returns the Spark session (called once, on first need).
        policy: what jobs may read and import.
        max_jobs: jobs running at once.
    """

    def __init__(self, store: Store, *, spark: Callable[[], Any], policy: build.Policy, max_jobs: int = 1) -> None:
        if max_jobs < 1:
            raise ConfigError(f"`max_jobs` must be ≥ 1. Received: max_jobs={max_jobs}", field="max_jobs")
        self.store = store
        self.policy = policy
        self.max_jobs = max_jobs
        self._spark_factory = spark
        self._spark: Any = None
        self._spark_lock = threading.Lock()
        self._wake = threading.Condition()
        self._running: dict[str, _Running] = {}
        self._stopping = False
        self._scheduler = threading.Thread(target=self._schedule, name="zdk-serve-scheduler", daemon=True)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """:meth:`recover`, then runs the queue."""
        self.recover()
        self._scheduler.start()

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
        """Stops the queue and cancels running jobs, which go back to the queue to resume from the
        checkpoint their shards write as they stop (or are marked interrupted without one);
        waits for their cleanup."""
        with self._wake:
            self._stopping = True
            running = list(self._running.values())
            self._wake.notify_all()
        for run in running:
            run.trainer_cancel()
        deadline = time.monotonic() + timeout
        for run in running:
            run.thread.join(max(0.0, deadline - time.monotonic()))
        self._scheduler.join(5)

    def spark(self) -> Any:
        with self._spark_lock:
            if self._spark is None:
                self._spark = self._spark_factory()
            return self._spark

    def warm(self) -> None:
        """Starts Spark now (the first submission needs it); a failure is logged and retried then."""
        try:
            self.spark()
        except Exception:
            logger.exception("starting Spark failed; the next submission tries again")

    def slots(self) -> int:
        from zdk.driver.session import task_slots

        return task_slots(self.spark())

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
            run.trainer_cancel()
        current = self.store.job(job.id)
        return current.state if current else CANCELLED

    def live(self, job_id: str) -> dict[str, Any] | None:
        """The running job's latest progress, with the loss series, from memory."""
        with self._wake:
            run = self._running.get(job_id)
        return run.progress() if run else None

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
                run = _Running(self, job)
                self._running[job.id] = run
            run.thread.start()

    def _next(self) -> JobRecord | None:
        queued = self.store.jobs(states=(QUEUED,))
        if not queued:
            return None
        reserved = sum(r.spec.slots for r in self._running.values())
        spec = JobSpec.from_dict(queued[0].spec)
        if self._running and reserved + spec.slots > self.slots():
            return None  # first come, first served: the head waits for slots
        return queued[0]

    def _finished(self, job_id: str) -> None:
        with self._wake:
            self._running.pop(job_id, None)
            self._wake.notify_all()


class _Running:
    """One job's thread: build, train, save artifacts, record the outcome."""

    def __init__(self, runner: JobRunner, job: JobRecord) -> None:
        self.runner = runner
        self.job = job
        self.spec = JobSpec.from_dict(job.spec)
        self.thread = threading.Thread(target=self._main, name=f"zdk-job-{job.id}", daemon=True)
        self.trainer: Any = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._latest: dict[str, Any] = {}
        self._series: dict[str, list[list[float]]] = {}
        self._written = 0.0

    def trainer_cancel(self) -> None:
        self._cancelled.set()
        if self.trainer is not None:
            self.trainer.cancel()

    def progress(self) -> dict[str, Any]:
        with self._lock:
            return {**self._latest, "series": {w: list(p) for w, p in self._series.items()}}

    def _on_progress(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            self._latest = snapshot
            for wid, w in snapshot["workers"].items():
                if w["loss"] is None:
                    continue
                points = self._series.setdefault(wid, [])
                if not points or points[-1][1] != w["step"]:
                    points.append([round(snapshot["elapsed"], 2), w["step"], float(w["loss"])])
                if len(points) > MAX_POINTS:
                    del points[1::2]
        now = time.monotonic()
        if now - self._written >= 1.0:
            self._written = now
            self.runner.store.update(self.job.id, progress=self.progress())

    def _main(self) -> None:
        job, store = self.job, self.runner.store
        handler = _job_log(job, self.thread)
        logging.getLogger("zdk").addHandler(handler)
        outcome: dict[str, Any]
        try:
            logger.info("job %s (%s) of %s started", job.id, job.name, job.owner)
            outcome = self._train()
            outcome["state"] = FINISHED
            logger.info("job %s finished", job.id)
        except JobCancelled:
            if not self.runner._stopping:
                outcome = {"state": CANCELLED, "error": "cancelled by its owner"}
            elif resumable(job):
                outcome = {"state": QUEUED, "resumes": job.resumes + 1, "started": None}
            else:
                outcome = {"state": INTERRUPTED, "error": "the server stopped while this job was running, before "
                           "its first checkpoint; submit it again"}
            logger.info("job %s %s", job.id, outcome["state"])
        except ZdkError as exc:
            outcome = {"state": FAILED, "error": str(exc)}
            logger.error("job %s failed: %s", job.id, exc)
            report = getattr(exc, "report", None)
            if report and os.path.exists(report):
                # The report lives on the server's disk; the job's log is what its owner can read.
                with open(report) as source, open(os.path.join(job.directory, "job.log"), "a") as log:
                    log.write("\n---- Spark's full report ----\n")
                    shutil.copyfileobj(source, log)
        except Exception as exc:  # anything else is a bug in zdk or Spark: recorded with its traceback
            outcome = {"state": FAILED, "error": f"{type(exc).__name__}: {exc}"}
            logger.exception("job %s failed", job.id)
        finally:
            logging.getLogger("zdk").removeHandler(handler)
            handler.close()
        final_progress = {**self.progress(), **outcome.pop("progress", {})}
        state = outcome.pop("state")
        if state != QUEUED:
            outcome["finished"] = time.time()
        store.transition(job.id, (RUNNING,), state, progress=final_progress, log_path=handler.baseFilename,
                         **outcome)
        self.runner._finished(job.id)

    def _train(self) -> dict[str, Any]:
        runner, spec = self.runner, self.spec
        model = build.load_model(os.path.join(self.job.directory, INPUT_MODEL))
        self.trainer = build.make_trainer(spec, model, runner.policy)
        if self._cancelled.is_set():
            raise JobCancelled("cancelled before training started")
        stages = build.make_stages(spec)
        data = build.prepare(build.read_data(runner.spark(), spec.data, runner.policy), stages, self.trainer)
        resume = False
        if self.trainer.algorithm.uses_ps:
            # The server's own setting (clients may not set it): shards checkpoint, so a restart resumes.
            self.trainer.checkpoint_dir, self.trainer.checkpoint_every = checkpoint_dir(self.job), CHECKPOINT_EVERY
            resume = self.job.resumes > 0 and resumable(self.job)
            if resume:
                logger.info("job %s resumes from its checkpoint (resume %d)", self.job.id, self.job.resumes)
        result = self.trainer.train(data, shuffle=spec.shuffle, resume=resume, on_progress=self._on_progress)
        models = result if isinstance(result, list) else [result]
        directory = self.job.directory
        paths = [os.path.join(directory, "model.keras" if k == 0 else f"model-{k}.keras") for k in range(len(models))]
        for model, path in zip(models, paths):
            model.save(path)
        history_path = os.path.join(directory, "history.json")
        _write_history(self.trainer.history, history_path)
        history = self.trainer.history
        last: dict[int, float] = {r["worker"]: float(r["loss"]) for r in history}
        final = {"steps": len(history), "total": len(history), "epoch": self.trainer.num_epoch - 1,
                 "loss": sum(last.values()) / len(last) if last else None, "elapsed": self.trainer.training_time,
                 "samples_per_s": self.trainer.batch_size * len(history) / self.trainer.training_time
                 if self.trainer.training_time else 0.0}
        shutil.rmtree(checkpoint_dir(self.job), ignore_errors=True)
        return {"model_path": paths[0], "history_path": history_path,
                "progress": {**final, "timings": self.trainer.timings, "members": len(models),
                             "series": series_from_history(history)}}


def _job_log(job: JobRecord, thread: threading.Thread) -> logging.FileHandler:
    """A log file for the job, fed by zdk's loggers from the job's own thread."""
    handler = logging.FileHandler(os.path.join(job.directory, "job.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: record.thread == thread.ident)
    handler.setLevel(logging.INFO)
    return handler


def _write_history(history: list[dict[str, Any]], path: str) -> None:
    """The per-step history as JSON (``path``) and CSV (same name, ``.csv``), one metric per column."""
    with open(path, "w") as fh:
        json.dump(history, fh)
    metrics = sorted({k for r in history for k in r.get("metrics", {})})
    fixed = [k for k in ("worker", "attempt", "epoch", "step", "timestamp", "loss", "staleness", "scale")
             if any(k in r for r in history)]
    with open(os.path.splitext(path)[0] + ".csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(fixed + metrics)
        for r in history:
            writer.writerow([r.get(k) for k in fixed] + [r.get("metrics", {}).get(k) for k in metrics])


def series_from_history(history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Per worker, [seconds since the first step, step, loss] points, thinned to ``MAX_POINTS``."""
    if not history:
        return {}
    t0 = min(r["timestamp"] for r in history)
    series: dict[str, list[list[float]]] = {}
    for r in history:
        series.setdefault(str(r["worker"]), []).append([round(r["timestamp"] - t0, 2), r["step"], float(r["loss"])])
    for wid, points in series.items():
        stride = max(1, -(-len(points) // MAX_POINTS))
        series[wid] = points[::stride] if points[-1] in points[::stride] else points[::stride] + [points[-1]]
    return series
