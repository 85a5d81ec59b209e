"""``train(plan, dataframe, weights=...)``: one training run, from a plan to a result.

1. Python workers start importing Keras in the background (:func:`~zdk.driver.session.warm_workers`),
   and the run's parameter server starts on a thread (:meth:`~zdk.driver.ps_session.PSSession.begin`:
   own shards, or a running ``zdk ps``; the resume point).
2. Meanwhile the data is checked against the model and prepared (:mod:`zdk.driver.data`); a
   mistake found there stops the shards before any task starts.
3. The starting point is ready: the parameter server serves, or, without one, the starting
   weights are shipped as a file (:func:`~zdk.driver.models.ship_weights`).
4. One Spark task per worker trains (:func:`zdk.runtime.worker.train_partition`) in a job
   group that can be cancelled (:mod:`zdk.driver.spark_job`), with progress polled from the shards.
5. The workers' records become the history; the center (or each worker's weights) becomes
   compiled models; the shards stop whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from zdk.algorithms.sources import sources
from zdk.driver import data, spark_job
from zdk.driver.callbacks import EpochLoop
from zdk.driver.memory import spark_cache_memory
from zdk.driver.models import compiled_model, ship_weights
from zdk.driver.plan import TrainingPlan
from zdk.driver.progress import Listener, ShardProgress
from zdk.driver.ps_session import PSSession, check_resume
from zdk.driver.result import Marks, ResumeInfo, TrainingResult, split_records
from zdk.driver.session import session_seconds, warm_workers
from zdk.driver.validation import validation_set
from zdk.driver.watching import Watch, epoch_loop
from zdk.errors import ConfigError, WorkerFailed
from zdk.runtime.worker import HISTORY_SCHEMA, WorkerConfig, train_partition
from zdk.transports.curve import CurveKeys

logger = logging.getLogger(__name__)


def train(plan: TrainingPlan, dataframe: Any, *, weights: np.ndarray, shuffle: bool = False, resume: bool = False,
          watch: Watch | None = None, on_progress: Listener | None = None,
          on_shards: Callable[[Sequence[str]], None] | None = None,
          cancel: spark_job.CancelToken | None = None) -> TrainingResult:
    """Trains ``plan`` on ``dataframe``, starting from ``weights``.

    Args:
        plan: what to train, how (see :class:`~zdk.driver.plan.TrainingPlan`).
        dataframe: a Spark DataFrame with the plan's feature and label columns.
        weights: the flat float32 starting weights (``plan.model.layout``).
        shuffle: shuffle the rows before they are split among workers, and every epoch.
        resume: continue an interrupted run from its shards' checkpoints (or a running ``zdk ps``'s
            state): only the epochs not completed by every worker are trained.
        watch: validation, Keras callbacks and tracking, run on the driver as epochs end.
        on_progress: called about every second, from a thread, with a progress snapshot (runs with a PS).
        on_shards: called with the shards' endpoints once they serve (before any task starts).
        cancel: a token another thread may cancel the run with (:class:`JobCancelled` is raised then).

    Raises:
        ConfigError: for data, a cluster or a parameter server that does not fit the plan.
        WorkerFailed: when a task failed; the message carries the worker's own error.
        JobCancelled: when ``cancel`` was cancelled.
    """
    flat = np.ascontiguousarray(weights, dtype=np.float32)
    if flat.shape != (plan.model.layout.total_size,):
        raise ConfigError(f"`weights` must be a flat vector of the model's {plan.model.layout.total_size} parameters. "
                          f"Received: shape={tuple(np.shape(weights))}", field="weights")
    watch = watch or Watch()
    watch.check(plan)
    if resume:
        check_resume(plan)
    token = cancel or spark_job.CancelToken()
    token.check()  # a run cancelled before it began starts nothing
    marks = Marks()
    spark = dataframe.sparkSession
    warm_workers(spark, plan.num_tasks)  # TensorFlow's import overlaps with what follows
    # The shards start while the data is checked and prepared.
    shards = PSSession(plan, initial=flat, resume=resume).begin() if plan.uses_ps else None
    try:
        dataframe, validation_frame = watch.split(dataframe, seed=plan.seed)
        prepared = data.prepare(plan, dataframe, shuffle=shuffle)
        validation = validation_set(plan, validation_frame) if validation_frame is not None else None
        data.check_slots(plan, spark)
        marks.mark("prepared")
        token.check()
    except BaseException:
        if shards is not None:
            shards.close()
        raise
    try:
        return _train(plan, prepared, flat, shards=shards, spark=spark, shuffle=shuffle, watch=watch,
                      validation=validation, marks=marks, token=token, on_progress=on_progress, on_shards=on_shards)
    except BaseException:
        if watch.tracking is not None:
            watch.tracking.finish(None, {}, failed=True)
        raise


def _train(plan: TrainingPlan, prepared: data.PreparedData, flat: np.ndarray, *, shards: PSSession | None,
           spark: Any, shuffle: bool, watch: Watch, validation: Any, marks: Marks, token: spark_job.CancelToken,
           on_progress: Listener | None, on_shards: Callable[[Sequence[str]], None] | None) -> TrainingResult:
    """The run once its data is prepared; ``shards`` (begun, see :meth:`PSSession.begin`) are
    waited for here and always stopped."""
    start: PSSession | _LocalStart
    try:
        start = (shards.wait() if shards is not None
                 else _LocalStart(spark, None if plan.reinitialize else flat).__enter__())
    except BaseException:
        if shards is not None:
            shards.close()
        raise
    with contextlib.closing(start):
        marks.mark("shards")
        if on_shards is not None:
            on_shards(tuple(start.endpoints))
        token.check()
        config = worker_config(plan, shuffle=shuffle, endpoints=start.endpoints, curve=start.curve,
                               first_epoch=start.first_epoch, initial_file=start.initial_file,
                               shapes=prepared.shapes, cache_memory=(plan.cache_memory if plan.cache_memory is not None
                                             else spark_cache_memory(spark)))
        if start.curve is not None:
            _warn_clear_closures(spark)
        loop = epoch_loop(plan, watch, initial=flat, first_epoch=config.first_epoch, center=start.center,
                          control=start.control, validation=validation)
        started = time.perf_counter()
        records: list[dict[str, Any]] = []
        if config.first_epoch < plan.num_epoch:
            if loop is not None:
                loop.start(config.first_epoch)
            progress = _progress(plan, start, config, on_progress, loop)
            marks.mark("submitted")
            records = _run_tasks(plan, prepared.frame, config, token, progress,
                                 beside=loop.serve if loop is not None else None)
        training_time = time.perf_counter() - started
        history, summaries = split_records(records, plan.num_tasks)
        models = _models(plan, start, summaries, loop)
    marks.mark("end")
    timings = marks.timings(summaries, session=session_seconds(consume=True))
    if loop is not None and loop.callbacks.validation_seconds:
        spent = loop.callbacks.validation_seconds
        timings.update(validation=round(sum(spent), 3), validation_per_epoch=round(sum(spent) / len(spent), 3))
    if watch.tracking is not None:
        watch.tracking.finish(models[0], timings)
    return TrainingResult(models=tuple(models), result=plan.result, history=history, worker_summaries=summaries,
                          training_time=training_time, timings=timings, endpoints=tuple(start.endpoints),
                          encrypted=start.curve is not None, reused_data=prepared.reused, resumed=start.resumed,
                          keras_history=loop.callbacks.history if loop is not None else None,
                          epochs=list(loop.epochs) if loop is not None else [])


def _warn_clear_closures(spark: Any) -> None:
    """The workers' CURVE client keys reach executors in the task closure: in the clear on a cluster
    unless Spark encrypts its own traffic."""
    conf = spark.sparkContext.getConf()
    if not str(spark.sparkContext.master).startswith("local") and conf.get("spark.network.crypto.enabled",
                                                                            "false").lower() != "true":
        logger.warning("CURVE encrypts the parameter server's traffic, but the workers' client keys travel to the "
                       "executors in Spark's task closures, in the clear: set spark.network.crypto.enabled=true "
                       "(and spark.authenticate=true) so that only this job's executors hold them")


def worker_config(plan: TrainingPlan, *, shuffle: bool, endpoints: Sequence[str] = (), curve: Any = None,
                  first_epoch: int = 0, initial_file: str | None = None,
                  cache_memory: int | None = None, shapes: dict[str, tuple[int, ...]] | None = None) -> WorkerConfig:
    """What every task of ``plan`` is told (shipped as JSON in the task closure); ``cache_memory``
    is the plan's, or the default the driver derived from Spark's settings; ``shapes`` the row
    shapes the driver's check read (:attr:`~zdk.driver.data.PreparedData.shapes`)."""
    return WorkerConfig(
        spec=plan.model.to_json(), algorithm=plan.algorithm.name, params=plan.params.to_dict(),
        endpoints=tuple(endpoints), features=plan.features_col, labels=plan.label_col, batch_size=plan.batch_size,
        num_epoch=plan.num_epoch, exchange_per_epoch=plan.exchange_per_epoch, shuffle=shuffle, seed=plan.seed,
        learning_rate=plan.learning_rate, timeout=plan.server.timeout, prefetch=plan.max_prefetch,
        cache_memory=cache_memory, algorithm_sources=tuple(sources(plan.algorithm, plan.codec)), curve=curve.client().to_dict() if curve else None,
        quorum=plan.num_tasks, first_epoch=first_epoch, initial_file=initial_file,
        reinitialize=plan.reinitialize, on_nan=plan.on_nan, overlap=plan.overlap, codec=plan.codec,
        codec_args=dict(plan.codec_args) or None, steps_per_execution=plan.steps_per_execution,
        shapes={name: list(shape) for name, shape in shapes.items()} if shapes else None,
    )


class _LocalStart:
    """The starting point of an algorithm without a parameter server: the weights, shipped to the
    executors as a file (None: every worker draws fresh ones). It has the attributes of a
    :class:`PSSession` that the engine reads."""

    def __init__(self, spark: Any, flat: np.ndarray | None) -> None:
        self._spark, self._flat = spark, flat
        self.endpoints: Sequence[str] = ()
        self.curve: CurveKeys | None = None
        self.first_epoch = 0
        self.resumed: ResumeInfo | None = None
        self.initial_file: str | None = None

    def __enter__(self) -> "_LocalStart":
        if self._flat is not None:
            self.initial_file = ship_weights(self._spark, self._flat)
        return self

    def center(self) -> np.ndarray:
        raise ConfigError("an algorithm without a parameter server has no center", field="algorithm")

    def stats(self, *, epochs_from: int | None = None) -> list[dict[str, Any]]:
        raise ConfigError("an algorithm without a parameter server has no shards to ask", field="algorithm")

    def control(self, stop: bool, learning_rate: float | None = None) -> None:
        raise ConfigError("an algorithm without a parameter server has no control path", field="algorithm")

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(plan: TrainingPlan, start: PSSession | _LocalStart, config: WorkerConfig, listener: Listener | None,
              loop: EpochLoop | None) -> ContextManager[Any]:
    if not start.endpoints:
        return contextlib.nullcontext()
    watched = loop is not None
    return ShardProgress(start.endpoints, num_workers=plan.num_tasks, epochs=plan.num_epoch - config.first_epoch,
                         enabled=plan.progress, curve=start.curve, listener=listener,
                         interval=0.2 if watched else 0.5 if plan.progress else 1.0,
                         epochs_from=(lambda: loop.next_epoch) if loop is not None else None,
                         on_stats=loop.on_stats if loop is not None else None,
                         extra=loop.status if loop is not None else None)


def _run_tasks(plan: TrainingPlan, frame: Any, config: WorkerConfig, token: spark_job.CancelToken,
               progress: ContextManager[Any], beside: Callable[[Any], None] | None = None) -> list[dict[str, Any]]:
    config_json = config.to_json()
    job = frame.mapInArrow(lambda batches: train_partition(config_json, batches), HISTORY_SCHEMA,
                           barrier=plan.algorithm.synchronous)
    if plan.algorithm.synchronous:
        # Spark retries a failed barrier stage as a whole only when it is not the job's last one
        # ("Could not recover from a failed barrier ResultStage"): a shuffle after it makes it a
        # map stage, so a killed worker restarts the round's tasks instead of failing the job.
        job = job.repartition(1)
    return spark_job.collect(job, name=f"zdk-{plan.algorithm.name}", description=f"zdk {plan.algorithm.name} training",
                             token=token, around=progress, beside=beside)


def _models(plan: TrainingPlan, start: PSSession | _LocalStart, summaries: Sequence[dict[str, Any]],
            loop: EpochLoop | None) -> list[Any]:
    if loop is not None:  # the epochs reported last, then on_train_end on the final center
        loop.finish(start.stats(epochs_from=loop.next_epoch))
        return [loop.callbacks.end(start.center())]
    if plan.uses_ps:
        return [compiled_model(plan.model, start.center())]
    weights = [np.frombuffer(s["weights"], dtype="<f4").copy() for s in summaries if s.get("weights")]
    if not weights:
        raise WorkerFailed("no worker returned weights: was the DataFrame empty?")
    return [compiled_model(plan.model, w) for w in weights]
