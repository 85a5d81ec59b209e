"""Trainers: ``trainer.train(dataframe)`` trains a Keras model on Spark through the sharded PS.

The keyword arguments are dist-keras's (``keras_model``, ``worker_optimizer``, ``loss``,
``metrics``, ``num_workers``, ``batch_size``, ``num_epoch``, ``features_col``,
``label_col``, ``communication_window``, ``rho``, ``learning_rate``, ``momentum``,
``master_port``, ``loss_weights``), so its users' scripts run after changing the import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from zdk import algorithms
from zdk.algorithms.base import Algorithm, Params
from zdk.algorithms.easgd import EAMSGDParams
from zdk.algorithms.sources import sources
from zdk.ps.client import PSClient
from zdk.ps.protocol import OBSERVER_DRIVER
from zdk.errors import ConfigError, DeadlineExceeded, JobCancelled, WorkerFailed
from zdk.ps.launcher import ShardGroup, start_shards
from zdk.runtime.models import ModelSpec, build_model, make_spec, set_flat_weights
from zdk.driver import preflight
from zdk.driver.prepared import prepared
from zdk.driver.progress import ShardProgress
from zdk.transports.curve import CurveKeys, is_loopback
from zdk.driver.session import session_seconds, task_slots, warm_workers
from zdk.runtime.worker import HISTORY_SCHEMA, WorkerConfig, train_partition

logger = logging.getLogger(__name__)

#: Seconds a running ``zdk ps`` (``parameter_server=``) has to answer the first `hello`.
PROBE_SECONDS = 5.0


def _columns(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    cols = (value,) if isinstance(value, str) else tuple(value)
    if not cols or not all(isinstance(c, str) and c for c in cols):
        raise ConfigError(f"`{name}` must be a column name or a list of them. Received: {name}={value!r}", field=name)
    return cols


def _by_name(cls: type, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Names dist-keras-style positional arguments after ``loss`` by the class's ``positional`` order."""
    order: tuple[str, ...] = getattr(cls, "positional", ())
    if len(args) > len(order):
        names = ", ".join(("keras_model", "worker_optimizer", "loss", *order))
        raise ConfigError(f"{cls.__name__} takes at most {3 + len(order)} positional arguments ({names}); pass "
                          f"the rest by name. Received: {3 + len(args)} positional arguments")
    named = dict(kwargs)
    for name, value in zip(order, args):
        if name in named:
            raise ConfigError(f"`{name}` was given both by position and by name to {cls.__name__}. "
                              f"Received: {name}={value!r} and {name}={named[name]!r}", field=name)
        named[name] = value
    return named


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"`{name}` must be an int ≥ 1. Received: {name}={value!r}", field=name)
    return value


class Trainer:
    """Trains ``keras_model`` on a Spark DataFrame with any registered algorithm.

    Args:
        keras_model: a built ``keras.Model``; shipped to executors as its JSON config.
        worker_optimizer: the workers' local Keras optimizer, a name or an instance.
        loss: a Keras loss (name or object), or a list/dict for multi-output models.
        algorithm: a registered algorithm name (plugins included) or an Algorithm.
        metrics: Keras metrics reported in the history.
        features_col: the feature column, or a list for multi-input models.
        label_col: the label column, or a list for multi-output models.
        num_epoch: passes over each worker's partition.
        batch_size: rows per training step.
        num_workers: Spark tasks, one per worker.
        communication_window: λ, steps between exchanges (the algorithm's default when None).
        loss_weights: passed to ``compile``.
        master_port: the first shard's port (0 or None: free ports).
        num_shards: parameter-server shard processes.
        parameter_server: endpoints of a running ``zdk ps``; no shards are started then.
        progress: show a live progress bar on a terminal.
        ps_host: the address shards bind to; executors must reach it (default 127.0.0.1).
        timeout: seconds for any PS request.
        custom_modules: modules executors import before rebuilding the model.
        parallelism_factor: k; the data is cut into num_workers × k partitions (tasks).
        seed: seeds shuffles.
        security: ``"curve"`` encrypts PS traffic and admits only this job's workers;
            ``"none"`` talks in the clear; ``"auto"`` (default) is CURVE unless ``ps_host``
            is a loopback address.
        curve_keys: the keys of a CURVE-protected ``parameter_server``.
        checkpoint_dir: where the shards write checkpoints (any local or shared directory of
            the driver's host); ``train(df, resume=True)`` continues from them.
        checkpoint_every: seconds between checkpoints (default 30 with a ``checkpoint_dir``).
        overlap: exchange with the PS on a background thread while the worker keeps training
            (asynchronous algorithms; docs/algorithms.md says how each composes the steps taken
            meanwhile). Refused for synchronous algorithms, whose rounds need every worker at once.
        on_nan: ``"raise"`` (default) stops training at the first NaN or infinite loss with an
            error naming the worker, epoch and step; ``"warn"`` logs it and trains on.
        **algorithm_params: further algorithm hyperparameters (``rho``, ``momentum``,
            ``eta``, a plugin's own); ``learning_rate`` goes to the algorithm when it has
            one, else to the worker optimizer.
    """

    default_algorithm: ClassVar[str | None] = None
    #: dist-keras's positional order of the arguments after ``loss`` (scripts pass them so).
    positional: ClassVar[tuple[str, ...]] = ()

    def __init__(self, keras_model: Any, worker_optimizer: Any = "adam", loss: Any = None, *args: Any,
                 **kwargs: Any) -> None:
        named = _by_name(type(self), args, kwargs)
        #: The arguments as given (positional ones by name), for describing the trainer elsewhere
        #: (``zdk.jobs`` turns them into a job spec).
        self.arguments: dict[str, Any] = {"worker_optimizer": worker_optimizer, "loss": loss, **named}
        self._cancel = threading.Event()
        self._group_id: str | None = None
        self._setup(keras_model, worker_optimizer, loss, **named)

    def _setup(self, keras_model: Any, worker_optimizer: Any, loss: Any, *,
                 algorithm: str | Algorithm | None = None, metrics: Sequence[Any] | None = ("accuracy",),
                 features_col: str | Sequence[str] = "features", label_col: str | Sequence[str] = "label",
                 num_epoch: int = 1, batch_size: int = 32, num_workers: int = 2,
                 communication_window: int | None = None, loss_weights: Any = None, master_port: int | None = None,
                 num_shards: int = 1, parameter_server: Sequence[str] | None = None, progress: bool = True,
                 ps_host: str = "127.0.0.1", timeout: float = 120.0, custom_modules: Sequence[str] = (),
                 parallelism_factor: int = 1, seed: int = 0, security: str = "auto",
                 curve_keys: CurveKeys | None = None, checkpoint_dir: str | None = None,
                 checkpoint_every: float | None = None, on_nan: str = "raise", overlap: bool = False,
                 **algorithm_params: Any) -> None:
        if self.default_algorithm is not None and algorithm is not None and algorithm != self.default_algorithm:
            raise ConfigError(f"`algorithm` is fixed to {self.default_algorithm!r} in {type(self).__name__}; use "
                              f"zdk.trainers.Trainer for another. Received: algorithm={algorithm!r}", field="algorithm")
        name = algorithm if algorithm is not None else self.default_algorithm
        if name is None:
            raise ConfigError("`algorithm` is required for the generic Trainer. Received: algorithm=None",
                              field="algorithm")
        self.algorithm = algorithms.get(name)
        self.keras_model = keras_model
        self.worker_optimizer = worker_optimizer
        self.loss = loss
        self.metrics = list(metrics or [])
        self.loss_weights = loss_weights
        self.features_col = _columns(features_col, "features_col")
        self.label_col = _columns(label_col, "label_col")
        self.num_epoch = _positive_int(num_epoch, "num_epoch")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.num_workers = _positive_int(num_workers, "num_workers")
        self.num_shards = _positive_int(num_shards, "num_shards")
        self.parallelism_factor = _positive_int(parallelism_factor, "parallelism_factor")
        if master_port is not None and not (isinstance(master_port, int) and 0 <= master_port < 65536):
            raise ConfigError(f"`master_port` must be a port in [0, 65536). Received: master_port={master_port!r}",
                              field="master_port")
        self.master_port = master_port
        self.parameter_server = list(parameter_server) if parameter_server else None
        self.progress = progress
        self.ps_host = ps_host
        self.timeout = float(timeout)
        self.custom_modules = tuple(custom_modules)
        self.seed = seed
        if security not in ("auto", "curve", "none"):
            raise ConfigError(f"`security` must be 'auto', 'curve' or 'none'. Received: security={security!r}",
                              field="security")
        self.security = security
        self.curve_keys = curve_keys
        if checkpoint_every is not None and (checkpoint_dir is None or not checkpoint_every > 0):
            raise ConfigError(f"`checkpoint_every` must be > 0 seconds and needs `checkpoint_dir`. "
                              f"Received: checkpoint_every={checkpoint_every!r}, checkpoint_dir={checkpoint_dir!r}",
                              field="checkpoint_every")
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every if checkpoint_every is not None else (
            30.0 if checkpoint_dir is not None else None)
        self.resumed: dict[str, Any] | None = None
        self.reinitialize = False
        self.timings: dict[str, float] = {}
        self.reused_data = False
        self._marks: dict[str, float] = {}
        if overlap and self.algorithm.synchronous:
            raise ConfigError(f"`overlap` must be False for the synchronous algorithm {self.algorithm.name!r}: its "
                              f"rounds need every worker at the same point. Received: overlap=True", field="overlap")
        self.overlap = bool(overlap)
        if on_nan not in ("raise", "warn"):
            raise ConfigError(f"`on_nan` must be 'raise' or 'warn'. Received: on_nan={on_nan!r}", field="on_nan")
        self.on_nan = on_nan
        self.learning_rate: float | None = None
        fields = {f.name for f in dataclasses.fields(self.algorithm.params)}
        if "learning_rate" in algorithm_params and "learning_rate" not in fields:
            self.learning_rate = float(algorithm_params.pop("learning_rate"))
        if communication_window is not None:
            algorithm_params["communication_window"] = communication_window
        elif self.algorithm.uses_ps and "communication_window" not in algorithm_params:
            window = self.algorithm.params.window_for(self.num_workers * self.parallelism_factor)
            if window is not None:
                algorithm_params["communication_window"] = window
        if not self.algorithm.uses_ps:
            ignored = {"communication_window": communication_window, "master_port": master_port,
                       "parameter_server": parameter_server, "checkpoint_dir": checkpoint_dir,
                       "curve_keys": curve_keys, "num_shards": None if num_shards == 1 else num_shards,
                       "security": None if security == "auto" else security,
                       "ps_host": None if ps_host == "127.0.0.1" else ps_host, "overlap": overlap or None,
                       **algorithm_params}
            given = {k: v for k, v in ignored.items() if v is not None}
            if given:
                name, value = next(iter(given.items()))
                raise ConfigError(f"`{name}` has no effect on {type(self).__name__} ({self.algorithm.name!r} trains "
                                  f"without a parameter server); remove it. Received: {name}={value!r}", field=name)
        self.exchange_per_epoch = self.algorithm.synchronous and communication_window is None
        self.params: Params = self.algorithm.make_params(algorithm_params)
        self.max_prefetch = 8
        self.history: list[dict[str, Any]] = []
        self.worker_summaries: list[dict[str, Any]] = []
        self.training_time = 0.0
        self._spec: ModelSpec | None = None
        self._curve: CurveKeys | None = None
        self.endpoints: list[str] = []

    # ------------------------------------------------------------------ dist-keras compatible aliases

    def get_training_time(self) -> float:
        return self.training_time

    def get_history(self) -> list[dict[str, Any]]:
        return self.history

    def get_executor_history(self, worker_id: int) -> list[dict[str, Any]]:
        return [r for r in self.history if r["worker"] == worker_id]

    def get_averaged_history(self) -> list[dict[str, Any]]:
        """Loss and metrics averaged over workers, per step index."""
        by_step: dict[int, list[dict[str, Any]]] = {}
        for r in self.history:
            by_step.setdefault(r["step"], []).append(r)
        out = []
        for step, rows in sorted(by_step.items()):
            keys = {k for r in rows for k in r["metrics"]}
            out.append({"step": step, "loss": float(np.mean([r["loss"] for r in rows])),
                        **{k: float(np.mean([r["metrics"][k] for r in rows if k in r["metrics"]])) for k in keys}})
        return out

    def set_num_epoch(self, num_epoch: int) -> None:
        self.num_epoch = _positive_int(num_epoch, "num_epoch")

    def set_learning_rate(self, learning_rate: float) -> None:
        self.learning_rate = float(learning_rate)

    def set_max_prefetch(self, max_prefetch: int) -> None:
        self.max_prefetch = _positive_int(max_prefetch, "max_prefetch")

    def set_parallelism_factor(self, factor: int) -> None:
        self.parallelism_factor = _positive_int(factor, "parallelism_factor")

    def history_frame(self) -> Any:
        """The history as a pandas DataFrame, one column per metric."""
        import pandas as pd

        rows = [{k: v for k, v in r.items() if k != "metrics"} | r["metrics"] for r in self.history]
        return pd.DataFrame(rows)

    @property
    def ps_wait_fraction(self) -> float:
        """Share of the workers' training time spent waiting on the parameter server."""
        busy = sum(s["busy"] or 0.0 for s in self.worker_summaries)
        return sum(s["wait"] or 0.0 for s in self.worker_summaries) / busy if busy else 0.0

    # ------------------------------------------------------------------ training

    @property
    def num_tasks(self) -> int:
        return 1 if self.algorithm.name == "sequential" else self.num_workers * self.parallelism_factor

    def cancel(self) -> None:
        """Stops a ``train()`` running in another thread: its Spark jobs are cancelled, its shards
        stop, and ``train()`` raises :class:`JobCancelled`. A no-op when nothing runs."""
        self._cancel.set()
        group = self._group_id
        if group is not None:
            from pyspark import SparkContext

            sc = SparkContext._active_spark_context
            if sc is not None:
                sc.cancelJobGroup(group)

    def _check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled("training was cancelled")

    def train(self, dataframe: Any, shuffle: bool = False, resume: bool = False, *,
              on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Trains on ``dataframe`` and returns the trained, compiled ``keras.Model``.

        Args:
            dataframe: a Spark DataFrame with the feature and label columns.
            shuffle: shuffle the rows before they are split among workers, and every epoch.
            resume: continue a job that was interrupted (a driver crash) from the shards' last
                checkpoint in ``checkpoint_dir``: the center, version and algorithm state are
                restored, and only the epochs not completed by every worker are trained
                (the epoch in progress at the crash starts over from the checkpointed weights).
            on_progress: called about every second from a background thread with a progress
                snapshot (``zdk.driver.progress.snapshot``: steps, samples/s, loss per worker,
                the shards' version and staleness); algorithms with a parameter server only.

        Raises:
            JobCancelled: when :meth:`cancel` was called.
        """
        if resume and not self.algorithm.uses_ps:
            raise ConfigError(f"`resume` needs an algorithm with a parameter server. Received: resume=True with "
                              f"{self.algorithm.name!r}", field="resume")
        if resume and self.checkpoint_dir is None and not self.parameter_server:
            raise ConfigError("`resume=True` needs the `checkpoint_dir` the interrupted job wrote. "
                              "Received: checkpoint_dir=None")
        self._marks = {"start": time.time()}
        self.timings = {}
        self._cancel.clear()
        self._on_progress = on_progress
        # Python workers import TensorFlow while the driver prepares data and starts shards.
        warm_workers(dataframe.sparkSession, self.num_tasks)
        self._spec = make_spec(self.keras_model, optimizer=self._worker_optimizer(), loss=self.loss,
                               metrics=self.metrics, loss_weights=self.loss_weights,
                               custom_modules=self.custom_modules)
        data = self._prepare(dataframe, shuffle)
        self._check_slots(dataframe.sparkSession)
        self._marks["prepared"] = time.time()
        started = time.perf_counter()
        group: ShardGroup | None = None
        staging: str | None = None
        records: list[dict[str, Any]] = []
        self._curve = self._job_keys()
        try:
            endpoints: list[str] = []
            first_epoch = 0
            initial_file = None
            if self.algorithm.uses_ps:
                group, endpoints = self._parameter_server(resume)
                self.endpoints = list(endpoints)
                if resume:
                    first_epoch = self._resume_point(endpoints)
            elif not self.reinitialize:
                initial_file, staging = self._ship_initial_weights(dataframe.sparkSession)
            self._marks["shards"] = time.time()
            self._check_cancelled()
            config = WorkerConfig(
                spec=self._spec.to_json(), algorithm=self.algorithm.name, params=self.params.to_dict(),
                endpoints=tuple(endpoints), features=self.features_col, labels=self.label_col,
                batch_size=self.batch_size, num_epoch=self.num_epoch, exchange_per_epoch=self.exchange_per_epoch,
                shuffle=shuffle, seed=self.seed, learning_rate=self.learning_rate, timeout=self.timeout,
                prefetch=self.max_prefetch, algorithm_sources=tuple(sources(self.algorithm)),
                curve=self._curve.to_dict() if self._curve else None, quorum=self.num_tasks,
                first_epoch=first_epoch, initial_file=initial_file, reinitialize=self.reinitialize,
                on_nan=self.on_nan, overlap=self.overlap,
            )
            records = self._run(data, config, endpoints) if first_epoch < self.num_epoch else []
            self.training_time = time.perf_counter() - started
            self._collect_history(records)
            if self.algorithm.uses_ps:
                return self._model_from_ps(endpoints)
            return self._models_from_workers(records)
        finally:
            if group is not None:
                group.stop()
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            self._marks["end"] = time.time()
            self.timings = self._phase_timings()

    def _phase_timings(self) -> dict[str, float]:
        """Seconds per phase of the last ``train()``, from the driver's marks and the workers' clocks
        (one host's clock in local mode; across hosts, worker phases carry their clock skew)."""
        m = self._marks
        summaries = [s for s in self.worker_summaries if s.get("t_first") is not None]
        out = {"session": float(session_seconds(consume=True)), "data_preparation": m["prepared"] - m["start"]}
        if "shards" in m:
            out["shard_start"] = m["shards"] - m["prepared"]
        if summaries and "submitted" in m:
            ready = min(s["t_ready"] for s in summaries)
            first = min(s["t_first"] for s in summaries)
            last = max(s["t_last"] for s in summaries)
            out.update(worker_start=ready - m["submitted"], first_step=first - ready, steps=last - first,
                       teardown=m["end"] - last, time_to_first_step=first - m["start"])
        out["total"] = m["end"] - m["start"]
        return {k: round(v, 3) for k, v in out.items()}

    def _ship_initial_weights(self, spark: Any) -> tuple[str, str]:
        """Writes the model's weights as a raw float32 ``.npy`` and hands it to Spark's file
        distribution (``SparkContext.addFile``): executors on any host fetch it, no pickle.

        Returns:
            the file's name for ``SparkFiles.get`` and the local directory to remove afterwards.
        """
        assert self._spec is not None
        flat = self._spec.layout.flatten(self.keras_model.get_weights())
        staging = tempfile.mkdtemp(prefix="zdk-initial-")
        name = f"zdk-initial-{uuid.uuid4().hex}.npy"
        path = os.path.join(staging, name)
        np.save(path, flat, allow_pickle=False)
        spark.sparkContext.addFile(path)
        return name, staging

    def _worker_optimizer(self) -> Any:
        if isinstance(self.params, EAMSGDParams):
            return eamsgd_optimizer(self.worker_optimizer, self.params)
        return self.worker_optimizer

    def _job_keys(self) -> CurveKeys | None:
        if self.parameter_server:
            return self.curve_keys
        if self.security == "curve" or (self.security == "auto" and not is_loopback(self.ps_host)):
            return CurveKeys.generate()
        return None

    def _prepare(self, dataframe: Any, shuffle: bool) -> Any:
        """The training data: checked, then prepared (or reused, for a cached DataFrame trained
        again with the same columns, tasks and shuffle: see ``zdk.driver.prepared``)."""
        self.check(dataframe)
        key = (self.features_col, self.label_col, self.num_tasks, shuffle, self.seed)
        data, self.reused_data = prepared(dataframe, key, lambda: self._prepared(dataframe, shuffle))
        return data

    def _prepared(self, dataframe: Any, shuffle: bool) -> Any:
        from pyspark.ml.functions import vector_to_array
        from pyspark.ml.linalg import VectorUDT
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        selected = []
        for name in dict.fromkeys((*self.features_col, *self.label_col)):
            dtype = dataframe.schema[name].dataType
            col = F.col(name)
            if isinstance(dtype, VectorUDT):
                col = vector_to_array(col, "float32")
            elif isinstance(dtype, T.ArrayType):
                col = col.cast(_float_array_type(dtype))
            elif isinstance(dtype, T.NumericType) or isinstance(dtype, T.BooleanType):
                col = col.cast("float")
            else:
                raise ConfigError(f"column `{name}` must be numeric, an array of numbers or an ML vector. "
                                  f"Received: {dtype.simpleString()}")
            selected.append(col.alias(name))
        data = dataframe.select(*selected)
        data = data.repartition(self.num_tasks)
        if shuffle:
            # Round-robin partitioning spreads every stretch of the input evenly over the tasks, and
            # a local sort by a random key shuffles each task's rows: no global sort, whose range
            # partitioning costs a sampling job (about a second here). tests/test_speed.py shows both.
            data = data.sortWithinPartitions(F.rand(self.seed))
        return data

    def check(self, dataframe: Any) -> None:
        """The checks ``train()`` starts with, on the driver: the columns exist, and one row fits
        the model (feature widths, labels against the loss; no empty DataFrame).

        Raises:
            ConfigError: naming the column or argument to change.
        """
        missing = [c for c in (*self.features_col, *self.label_col) if c not in dataframe.columns]
        if missing:
            raise ConfigError(f"columns {missing} are not in the DataFrame. Received columns: {dataframe.columns}")
        model = self.keras_model
        if len(self.features_col) != len(model.inputs):
            raise ConfigError(f"`features_col` must name one column per model input ({len(model.inputs)}). "
                              f"Received: features_col={list(self.features_col)}", field="features_col")
        if len(self.label_col) != len(model.outputs):
            raise ConfigError(f"`label_col` must name one column per model output ({len(model.outputs)}). "
                              f"Received: label_col={list(self.label_col)}", field="label_col")
        row = preflight.first_row(dataframe, list(dict.fromkeys((*self.features_col, *self.label_col))))
        preflight.check_features(row, self.features_col, [tuple(t.shape) for t in model.inputs])
        preflight.check_labels(row, self.label_col, [tuple(t.shape) for t in model.outputs],
                               preflight.losses_per_output(self.loss, _output_names(model)))

    def _check_slots(self, spark: Any) -> None:
        if not self.algorithm.synchronous:
            return
        slots = task_slots(spark)
        if slots < self.num_tasks:
            raise ConfigError(
                f"`num_workers` must be ≤ the cluster's {slots} task slots for the synchronous algorithm "
                f"{self.algorithm.name!r}, whose workers all run at once in one barrier stage. "
                f"Received: num_workers={self.num_tasks}"
            , field="num_workers")

    def _parameter_server(self, resume: bool = False) -> tuple[ShardGroup | None, list[str]]:
        assert self._spec is not None
        initial = self._spec.layout.flatten(self.keras_model.get_weights())
        if self.parameter_server:
            with PSClient(self.parameter_server, worker_id=OBSERVER_DRIVER, timeout=self.timeout,
                          curve=self._curve) as client:
                info = self._probe(client)
                if info.total_size != initial.size:
                    raise ConfigError(f"`parameter_server` holds {info.total_size} parameters; the model has "
                                      f"{initial.size}. Received: parameter_server={self.parameter_server}",
                                      field="parameter_server")
                if info.algorithm != self.algorithm.name:
                    raise ConfigError(f"`parameter_server` runs {info.algorithm!r}; this trainer needs "
                                      f"{self.algorithm.name!r}. Received: parameter_server={self.parameter_server}",
                                      field="parameter_server")
                if not resume:
                    client.init(initial)
            return None, list(self.parameter_server)
        if resume:
            assert self.checkpoint_dir is not None
            missing = [p for p in (os.path.join(self.checkpoint_dir, f"shard-{k:03d}-of-{self.num_shards:03d}.npz")
                                   for k in range(self.num_shards)) if not os.path.exists(p)]
            if missing:
                raise ConfigError(f"`resume=True` needs a checkpoint of each of the {self.num_shards} shards in "
                                  f"checkpoint_dir={self.checkpoint_dir!r}. Received: {missing} missing",
                                  field="resume")
        port = self.master_port or 0
        group = start_shards(num_shards=self.num_shards, total_size=initial.size,
                             bind=f"tcp://{self.ps_host}:{port}", algorithm=self.algorithm.name,
                             params=self._shard_params(), initial=None if resume else initial, curve=self._curve,
                             checkpoint_dir=self.checkpoint_dir, checkpoint_every=self.checkpoint_every)
        return group, group.endpoints

    def _probe(self, client: PSClient) -> Any:
        """``hello`` to a running ``zdk ps`` with a short deadline, so a wrong address fails in seconds."""
        timeout, tries = client.timeout, client.tries
        client.timeout, client.tries = min(timeout, PROBE_SECONDS), 2
        try:
            return client.hello(register=False)
        except DeadlineExceeded:
            raise ConfigError(
                f"`parameter_server` {self.parameter_server} did not answer within {client.timeout:.0f} s: is `zdk ps` "
                f"running there, and reachable from this host? Check with `zdk ps status "
                f"{' '.join(self.parameter_server or [])}`" + (" --curve-keys FILE" if self._curve else "") + "."
            ) from None
        finally:
            client.timeout, client.tries = timeout, tries

    def _resume_point(self, endpoints: list[str]) -> int:
        """The first epoch not completed by every worker, from the checkpoint's progress reports."""
        with PSClient(endpoints, worker_id=OBSERVER_DRIVER, timeout=self.timeout, curve=self._curve) as client:
            client.hello(register=False)
            stats = client.stats()[0]
        progress = {int(w): r for w, r in stats.get("restored_progress", {}).items() if int(w) < self.num_tasks}
        done = [int(r.get("epoch", 0)) + (0 if r.get("active", 1.0) else 1) for r in progress.values()]
        first = min(done) if len(done) == self.num_tasks else 0
        self.resumed = {"version": int(stats["version"]), "first_epoch": first, "from": stats.get("restored_from")}
        logger.info("resuming from %s at version %d: epochs %d..%d remain", stats.get("restored_from"),
                    stats["version"], first, self.num_epoch - 1)
        return first

    def _shard_params(self) -> dict[str, Any]:
        params = self.params.to_dict()
        if "num_workers" in params and not params["num_workers"]:
            params["num_workers"] = self.num_tasks
        return params

    def _run(self, data: Any, config: WorkerConfig, endpoints: list[str]) -> list[dict[str, Any]]:
        spark = data.sparkSession
        sc = spark.sparkContext
        group_id = f"zdk-{self.algorithm.name}-{uuid.uuid4().hex[:8]}"
        sc.setJobGroup(group_id, f"zdk {self.algorithm.name} training", interruptOnCancel=True)
        self._group_id = group_id
        config_json = config.to_json()
        job = data.mapInArrow(lambda batches: train_partition(config_json, batches), HISTORY_SCHEMA,
                              barrier=self.algorithm.synchronous)
        progress = ShardProgress(endpoints, num_workers=self.num_tasks, epochs=config.num_epoch - config.first_epoch,
                                 enabled=self.progress, curve=self._curve, listener=self._on_progress,
                                 interval=0.5 if self.progress else 1.0)
        self._marks["submitted"] = time.time()
        interrupted = threading.Event()
        try:
            self._check_cancelled()  # a cancel() that came before the group existed
            with progress, _on_ctrl_c(lambda: _cancel_once(sc, group_id, interrupted)):
                rows = job.collect()
        except KeyboardInterrupt:
            _cancel_once(sc, group_id, interrupted)
            raise
        except Exception as exc:
            if self._cancel.is_set():
                raise JobCancelled("training was cancelled: its Spark jobs were cancelled and its shards stop") from None
            if interrupted.is_set():
                logger.warning("training interrupted (Ctrl-C): the Spark job was cancelled and the shards stop")
                raise KeyboardInterrupt("zdk training interrupted") from None
            if type(exc).__module__.startswith(("pyspark", "py4j")):
                report = _save_report(group_id, exc)
                raise WorkerFailed(f"training failed in a Spark task: {_worker_message(exc)} "
                                   f"(Spark's full report: {report})", report=report) from None
            raise
        finally:
            self._group_id = None
            sc.setLocalProperty("spark.jobGroup.id", None)
        return [row.asDict() for row in rows]

    def _collect_history(self, records: list[dict[str, Any]]) -> None:
        import json

        steps: list[dict[str, Any]] = []
        summaries: list[dict[str, Any]] = []
        for r in records:
            r = dict(r)
            r["metrics"] = json.loads(r["metrics"]) if r["metrics"] else {}
            (summaries if r["kind"] == "summary" else steps).append(r)
        keep = ("worker", "attempt", "epoch", "step", "timestamp", "loss", "metrics", "staleness", "scale")
        self.history = sorted(({k: r[k] for k in keep} for r in steps), key=lambda r: (r["timestamp"], r["worker"]))
        self.worker_summaries = sorted(summaries, key=lambda r: r["worker"])
        idle = [s["worker"] for s in self.worker_summaries if not s.get("rows")]
        if idle:
            logger.warning("worker(s) %s got no rows (the DataFrame has fewer non-empty partitions than the %d "
                           "tasks); the others trained. Use fewer workers or more data.", idle, self.num_tasks)

    def _compiled_model(self, flat: np.ndarray) -> Any:
        import keras

        assert self._spec is not None
        model = build_model(self._spec, compile=False)
        set_flat_weights(model, self._spec.layout, flat)
        optimizer = self.worker_optimizer
        if not isinstance(optimizer, str):
            optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
        model.compile(optimizer=optimizer, loss=self.loss, metrics=self.metrics, loss_weights=self.loss_weights)
        # Built now, so a saved model carries all optimizer variables and loads without a warning.
        model.optimizer.build(model.trainable_variables)
        return model

    def _model_from_ps(self, endpoints: list[str]) -> Any:
        with PSClient(endpoints, worker_id=OBSERVER_DRIVER, timeout=self.timeout, curve=self._curve) as client:
            client.hello(register=False)
            center = client.pull()
        return self._compiled_model(center)

    def _models_from_workers(self, records: list[dict[str, Any]]) -> Any:
        models = [self._compiled_model(np.frombuffer(s["weights"], dtype="<f4").copy())
                  for s in self.worker_summaries if s.get("weights")]
        if not models:
            raise WorkerFailed("no worker returned weights: was the DataFrame empty?")
        return models[0] if self.algorithm.name == "sequential" else models


def _output_names(model: Any) -> list[str]:
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    return [t.name.split("/")[0] for t in model.outputs]


def _float_array_type(dtype: Any) -> Any:
    from pyspark.sql import types as T

    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_float_array_type(dtype.elementType), containsNull=dtype.containsNull)
    return T.FloatType()


@contextlib.contextmanager
def _on_ctrl_c(handler: Any) -> Iterator[None]:
    """Runs ``handler`` on SIGINT instead of PySpark's own handler, which cancels jobs through a
    re-entrant py4j call and prints half a dozen tracebacks. A second Ctrl-C interrupts at once."""
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


def _save_report(group_id: str, exc: BaseException) -> str:
    """Writes Spark's whole error (Java stack included) to a log file; returns its path."""
    directory = os.path.join(tempfile.gettempdir(), "zdk-logs")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{group_id}.log")
    with open(path, "w") as fh:
        fh.write(f"{type(exc).__module__}.{type(exc).__name__}: {exc}\n")
    return path


def _worker_message(exc: BaseException) -> str:
    """The last line of the worker's Python traceback inside a Spark error, or the error itself."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
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


_ASYNC_ORDER = ("metrics", "num_workers", "batch_size", "features_col", "label_col", "num_epoch",
                "communication_window", "master_port", "loss_weights")


class DOWNPOUR(Trainer):
    """DOWNPOUR (Dean et al. 2012): workers commit their accumulated updates every
    ``communication_window`` steps (default 5)."""

    default_algorithm = "downpour"
    positional = _ASYNC_ORDER


class AGN(Trainer):
    """Accumulated gradient normalization, Δ/λ (what dist-keras shipped as "ADAG"); the window
    defaults to the number of workers (see ``zdk.algorithms.agn.AGNParams``)."""

    default_algorithm = "agn"
    positional = _ASYNC_ORDER


class ADAG(Trainer):
    """Asynchronous Distributed Adaptive Gradients (Hermans 2017): AGN commits, scaled on the
    server elementwise by 1/(η⁻¹(θ̃_t − θ̃_{t−τ})² + 1); ``eta`` 1e-4; the window defaults to
    the number of workers (see ``zdk.algorithms.adag.ADAGParams``)."""

    default_algorithm = "adag"
    positional = _ASYNC_ORDER


class DynSGD(Trainer):
    """DynSGD (Jiang et al. 2017): each commit scaled by 1/(staleness + 1); window 5."""

    default_algorithm = "dynsgd"
    positional = _ASYNC_ORDER


class AEASGD(Trainer):
    """Asynchronous elastic averaging SGD (Zhang et al. 2015); window 32, ``rho`` 5,
    ``learning_rate`` 0.1 (α = ρ·η)."""

    default_algorithm = "aeasgd"
    positional = ("metrics", "num_workers", "batch_size", "features_col", "label_col", "num_epoch",
                  "communication_window", "rho", "learning_rate", "master_port", "loss_weights")


class EAMSGD(Trainer):
    """Asynchronous elastic averaging with Nesterov momentum in the local step (window 32,
    rho 5, learning_rate 0.1, momentum 0.9). The local optimizer is SGD with Nesterov
    momentum δ = ``momentum``: ``"sgd"`` (the default) gives SGD(learning_rate, momentum,
    nesterov=True); a ``keras.optimizers.SGD`` keeps its own learning rate and settings and
    gets the momentum; any other optimizer is refused."""

    default_algorithm = "eamsgd"
    positional = ("metrics", "num_workers", "batch_size", "features_col", "label_col", "num_epoch",
                  "communication_window", "rho", "learning_rate", "momentum", "master_port", "loss_weights")

    def __init__(self, keras_model: Any, worker_optimizer: Any = "sgd", loss: Any = None, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(keras_model, worker_optimizer, loss, *args, **kwargs)


def eamsgd_optimizer(optimizer: Any, params: EAMSGDParams) -> Any:
    """The local optimizer EAMSGD's math needs: SGD with Nesterov momentum δ = ``params.momentum``.

    Raises:
        ConfigError: for an optimizer other than SGD, or an SGD with another momentum.
    """
    import keras

    if isinstance(optimizer, str) and optimizer.lower() == "sgd":
        return keras.optimizers.SGD(learning_rate=params.learning_rate, momentum=params.momentum, nesterov=True)
    if isinstance(optimizer, keras.optimizers.SGD):
        config = optimizer.get_config()
        if config.get("momentum") not in (0.0, params.momentum):
            raise ConfigError(f"`momentum` is EAMSGD's Nesterov momentum ({params.momentum}); the SGD passed as "
                              f"`worker_optimizer` has momentum={config['momentum']}. Set one of them only.",
                              field="momentum")
        config.update(momentum=params.momentum, nesterov=True)
        return keras.optimizers.SGD.from_config(config)
    raise ConfigError(f"`worker_optimizer` must be 'sgd' or a keras.optimizers.SGD for EAMSGD, whose momentum is "
                      f"Nesterov momentum in a local SGD step; use AEASGD for elastic averaging with another "
                      f"optimizer. Received: worker_optimizer={optimizer!r}", field="worker_optimizer")


class SingleTrainer(Trainer):
    """Trains on one worker with the whole DataFrame (dist-keras's SingleTrainer), starting from
    the weights of the model passed."""

    default_algorithm = "sequential"
    positional = ("metrics", "features_col", "label_col", "num_epoch", "batch_size", "loss_weights")

    def _setup(self, keras_model: Any, worker_optimizer: Any, loss: Any, **kwargs: Any) -> None:
        if kwargs.get("num_workers", 1) != 1:
            raise ConfigError(f"`num_workers` must be 1 for SingleTrainer, which trains on one worker; use "
                              f"DOWNPOUR, ADAG or AveragingTrainer for more. Received: num_workers={kwargs['num_workers']}",
                              field="num_workers")
        kwargs["num_workers"] = 1
        super()._setup(keras_model, worker_optimizer, loss, **kwargs)


class AveragingTrainer(Trainer):
    """Synchronous model averaging: the replicas' weights are averaged after every epoch
    (or every ``communication_window`` steps when given)."""

    default_algorithm = "averaging"
    positional = ("metrics", "features_col", "label_col", "num_epoch", "batch_size", "num_workers", "loss_weights")


class EnsembleTrainer(Trainer):
    """Trains ``num_ensembles`` independent models, one per partition; ``train`` returns them all.

    Every member starts from the weights of the model passed (as in dist-keras), so members
    differ by their data; ``reinitialize=True`` draws fresh initial weights for each member
    from the model's initializers (seeded by ``seed`` and the member's index) instead."""

    default_algorithm = "ensemble"
    positional = ("metrics", "features_col", "label_col", "batch_size", "num_ensembles", "loss_weights")

    def _setup(self, keras_model: Any, worker_optimizer: Any, loss: Any, *, num_ensembles: int = 2,
               reinitialize: bool = False, **kwargs: Any) -> None:
        if "num_workers" in kwargs and kwargs["num_workers"] != num_ensembles:
            raise ConfigError(f"`num_workers` is `num_ensembles` for EnsembleTrainer; give only num_ensembles. "
                              f"Received: num_workers={kwargs['num_workers']}, num_ensembles={num_ensembles}",
                              field="num_workers")
        kwargs["num_workers"] = num_ensembles
        super()._setup(keras_model, worker_optimizer, loss, **kwargs)
        self.reinitialize = bool(reinitialize)


#: Every trainer class by name: the names a job spec's ``trainer.class`` may use.
TRAINERS: dict[str, type[Trainer]] = {cls.__name__: cls for cls in (
    DOWNPOUR, AGN, ADAG, DynSGD, AEASGD, EAMSGD, SingleTrainer, AveragingTrainer, EnsembleTrainer, Trainer)}
