"""Trainers: ``trainer.train(dataframe)`` trains a Keras model on Spark through the sharded PS.

Each class keeps dist-keras's signature (``keras_model``, ``worker_optimizer``, ``loss``, then
its own positional order), turns its arguments into a :class:`~zdk.driver.plan.TrainingPlan`
(:func:`~zdk.driver.planning.plan_training`, which checks them all) and hands it to the engine
(:func:`zdk.driver.engine.train`). Reading a setting reads the plan; assigning one (or
dist-keras's ``set_…``) plans again, so it is checked too.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

from zdk.driver import data, engine
from zdk.driver.plan import TrainingPlan
from zdk.driver.planning import algorithm_of, plan_training
from zdk.driver.result import TrainingResult, averaged_history, history_frame
from zdk.driver.spark_job import CancelToken
from zdk.driver.tracking import MlflowTracking
from zdk.driver.tracking import active as tracking_active
from zdk.driver.watching import Watch
from zdk.errors import ConfigError
from zdk.runtime.steps import DEFAULT_STEPS_PER_EXECUTION
from zdk.signatures import Option, checked_call, keyword_options, with_options

Columns = str | Sequence[str]
Metrics = Sequence[Any] | None

#: zdk's keyword-only options of every trainer (documented on :class:`Trainer`).
COMMON = (Option("progress", "bool", True), Option("custom_modules", "Sequence[str]", ()), Option("seed", "int", 0),
          Option("on_nan", "str", "raise"), Option("cache_memory", "int | str | None", None),
          Option("steps_per_execution", "int", DEFAULT_STEPS_PER_EXECUTION))
#: zdk's keyword-only options of the trainers with a parameter server.
SERVER = (Option("num_shards", "int", 1), Option("parameter_server", "Sequence[str] | None", None),
          Option("ps_host", "str", "127.0.0.1"), Option("timeout", "float", 120.0),
          Option("parallelism_factor", "int", 1), Option("security", "str", "auto"),
          Option("curve_keys", "CurveKeys | None", None), Option("checkpoint_dir", "str | None", None),
          Option("checkpoint_every", "float | None", None), Option("overlap", "bool", False),
          Option("codec", "str | None", None), Option("codec_args", "Mapping[str, Any] | None", None))


def _record(trainer: Any, given: dict[str, Any], complete: dict[str, Any]) -> None:
    #: The arguments as given, for describing the trainer elsewhere (``zdk.jobs`` sends them).
    trainer.arguments = {"worker_optimizer": complete["worker_optimizer"], "loss": complete["loss"],
                         **{k: v for k, v in given.items() if k != "keras_model"}}


_dist_keras_call = checked_call(_record)


class _Setting:
    """A setting read from the trainer's plan; assigning it plans again (so it is checked)."""

    def __init__(self, key: str = "") -> None:
        self.key = key

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.key = name, self.key or name

    def __get__(self, trainer: Any, owner: type | None = None) -> Any:
        return self if trainer is None else getattr(trainer.plan, self.name)

    def __set__(self, trainer: Any, value: Any) -> None:
        trainer._change(**{self.key: value})


class Trainer:
    """Trains ``keras_model`` on a Spark DataFrame with any registered algorithm.

    Args:
        keras_model: a built ``keras.Model``; its weights are the start, and it is shipped to
            executors as its JSON config.
        worker_optimizer: the workers' local Keras optimizer, a name or an instance.
        loss: a Keras loss (name or object), or a list/dict for multi-output models.
        algorithm: a registered algorithm name (plugins included) or an Algorithm.
        metrics, loss_weights: passed to ``compile``; metrics are reported in the history.
        features_col, label_col: the feature and label columns (lists for several inputs/outputs).
        num_epoch: passes over each worker's partition.
        batch_size: rows per training step.
        num_workers: workers, one Spark task each (× ``parallelism_factor``).
        communication_window: λ, steps between exchanges (the algorithm's default when None).
        master_port: the first shard's port (None: free ports).
        num_shards: parameter-server shard processes.
        parameter_server: endpoints of a running ``zdk ps``; no shards are started then.
        progress: a live progress bar on a terminal.
        ps_host: the address shards bind to; executors must reach it.
        timeout: seconds for any PS request.
        custom_modules: modules executors import before rebuilding the model.
        parallelism_factor: k; the data is cut into num_workers × k tasks.
        seed: seeds shuffles.
        security: ``"curve"`` encrypts PS traffic and admits only this job's workers, ``"none"``
            talks in the clear, ``"auto"`` is CURVE unless ``ps_host`` is a loopback address.
        curve_keys: the keys of a CURVE-protected ``parameter_server``.
        checkpoint_dir: where shards checkpoint (a directory of the driver's host);
            ``train(df, resume=True)`` continues from it.
        checkpoint_every: seconds between checkpoints (default 30 with a ``checkpoint_dir``).
        on_nan: ``"raise"`` stops at the first NaN or infinite loss, naming worker, epoch and
            step; ``"warn"`` logs it and trains on.
        overlap: exchange on a background thread while the worker trains (asynchronous
            algorithms; docs/algorithms.md says how each composes the steps taken meanwhile).
        codec: encode every commit with a registered codec (``"fp16"``, ``"bf16"``, ``"int8"``,
            ``"topk"`` or a plugin's) to send fewer bytes (asynchronous algorithms; docs/algorithms.md,
            "Compressed commits").
        codec_args: the codec's arguments, e.g. ``{"ratio": 0.01}`` for ``topk``; every codec takes
            ``error_feedback`` (``topk``: on by default).
        cache_memory: bytes (or a size such as ``"256m"``) of its partition a worker keeps in
            memory after the first epoch; the rest is spilled to a file in Spark's local
            directories and read back in shuffled blocks (default: half the memory Spark gives
            a task's Python worker; docs/guide.md, "How much memory a worker holds").
        steps_per_execution: the most training steps a worker runs in one compiled call (a
            ``tf.function`` looping over the steps' minibatches; its windows also end at every
            exchange and epoch end); the per-step history is the same. 1: one ``train_on_batch``
            call per step.
        **algorithm_params: the algorithm's hyperparameters (``rho``, ``momentum``, ``eta``, a
            plugin's own); ``learning_rate`` goes to the algorithm when it has one, else to
            the worker optimizer.
    """

    #: The algorithm of a specialized trainer; the generic one takes ``algorithm=``.
    default_algorithm: ClassVar[str | None] = None
    #: Arguments of the signature that are the algorithm's hyperparameters (None: its default).
    hyperparameters: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _dist_keras_call(cls.__init__)  # type: ignore[method-assign]

    @with_options(*SERVER, *COMMON)
    def __init__(self, keras_model: Any, worker_optimizer: Any = "adam", loss: Any = None, *, algorithm: Any = None,
                 metrics: Metrics = ("accuracy",), features_col: Columns = "features", label_col: Columns = "label",
                 num_epoch: int = 1, batch_size: int = 32, num_workers: int = 2,
                 communication_window: int | None = None, loss_weights: Any = None, master_port: int | None = None,
                 **options: Any) -> None:
        self._configure(locals())

    def _configure(self, values: dict[str, Any]) -> None:
        values = {k: v for k, v in values.items() if k not in ("self", "__class__")}
        self.keras_model = values.pop("keras_model")
        options = dict(values.pop("options"))
        for name, default in keyword_options(type(self).__init__).items():
            if name not in values:
                values[name] = options.pop(name, default)
        given = {k: values.pop(k) for k in self.hyperparameters}
        options.update({k: v for k, v in given.items() if v is not None})
        values["algorithm"] = algorithm_of(type(self).__name__, self.default_algorithm,
                                           values.pop("algorithm", options.pop("algorithm", None)))
        self._translate(values, options)
        self._values, self._options = values, options
        self._overrides: dict[str, Any] = {}
        self._token = CancelToken()
        self.endpoints: list[str] = []
        self.last: TrainingResult | None = None
        self.plan: TrainingPlan = self._make_plan()

    def _translate(self, values: dict[str, Any], options: dict[str, Any]) -> None:
        """Maps a trainer's own argument names to the plan's (EnsembleTrainer's ``num_ensembles``)."""

    def _make_plan(self) -> TrainingPlan:
        return plan_training(self.keras_model, owner=type(self).__name__,
                             algorithm_options=self._options, **self._values, **self._overrides)

    def _change(self, **changes: Any) -> None:
        saved = dict(self._values), dict(self._overrides)
        for key, value in changes.items():
            (self._values if key in self._values else self._overrides)[key] = value
        try:
            self.plan = self._make_plan()
        except BaseException:
            self._values, self._overrides = saved
            raise
        self.arguments.update({k: v for k, v in changes.items() if k in self._values})

    # ------------------------------------------------------------------ settings and results

    num_epoch, batch_size, num_workers, parallelism_factor = _Setting(), _Setting(), _Setting(), _Setting()
    features_col, label_col, max_prefetch = _Setting(), _Setting(), _Setting()
    learning_rate = _Setting("worker_learning_rate")

    @property
    def algorithm(self) -> Any:
        return self.plan.algorithm

    @property
    def params(self) -> Any:
        return self.plan.params

    def __getattr__(self, name: str) -> Any:
        # The other constructor arguments as given (worker_optimizer, loss, metrics, master_port, …).
        values = self.__dict__.get("_values", {})
        if name in values:
            return list(values[name] or []) if name == "metrics" else values[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    history = property(lambda self: self.last.history if self.last else [], doc="One record per worker step.")
    worker_summaries = property(lambda self: self.last.worker_summaries if self.last else [])
    training_time = property(lambda self: self.last.training_time if self.last else 0.0, doc="Seconds training.")
    timings = property(lambda self: self.last.timings if self.last else {}, doc="Seconds per phase of train().")
    ps_wait_fraction = property(lambda self: self.last.ps_wait_fraction if self.last else 0.0)
    reused_data = property(lambda self: bool(self.last and self.last.reused_data))
    encrypted = property(lambda self: bool(self.last and self.last.encrypted), doc="Whether PS traffic was CURVE.")
    resumed = property(lambda self: self.last.resumed.as_dict() if self.last and self.last.resumed else None)
    keras_history = property(lambda self: self.last.keras_history if self.last else None,
                             doc="A keras.callbacks.History of the per-epoch figures of a watched run.")

    def history_frame(self) -> Any:
        """The history as a pandas DataFrame, one column per metric."""
        return history_frame(self.history)

    # ------------------------------------------------------------------ dist-keras's getters and setters

    def get_training_time(self) -> float:
        return self.training_time

    def get_history(self) -> list[dict[str, Any]]:
        return self.history

    def get_executor_history(self, worker_id: int) -> list[dict[str, Any]]:
        return [r for r in self.history if r["worker"] == worker_id]

    def get_averaged_history(self) -> list[dict[str, Any]]:
        """Loss and metrics averaged over workers, per step index."""
        return averaged_history(self.history)

    def set_num_epoch(self, num_epoch: int) -> None:
        self.num_epoch = num_epoch

    def set_learning_rate(self, learning_rate: float) -> None:
        """Sets the workers' optimizer's learning rate."""
        self.learning_rate = float(learning_rate)

    def set_max_prefetch(self, max_prefetch: int) -> None:
        self.max_prefetch = max_prefetch

    def set_parallelism_factor(self, factor: int) -> None:
        self.parallelism_factor = factor

    # ------------------------------------------------------------------ training

    def check(self, dataframe: Any) -> None:
        """The checks ``train()`` starts with: the columns exist and one row fits the model.

        Raises:
            ConfigError: naming the column or argument to change.
        """
        data.check(self._make_plan(), dataframe)

    def cancel(self) -> None:
        """Cancels the running ``train()`` (or the next one, when none has started yet): its Spark
        jobs are cancelled, its shards stop, and ``train()`` raises :class:`~zdk.errors.JobCancelled`."""
        self._token.cancel()

    def train(self, dataframe: Any, shuffle: bool = False, resume: bool = False, *,
              on_progress: Callable[[dict[str, Any]], None] | None = None, validation_data: Any = None,
              validation_split: float | None = None, callbacks: Sequence[Any] = (), mlflow: bool = False) -> Any:
        """Trains on ``dataframe``; returns the trained, compiled ``keras.Model`` (EnsembleTrainer: a list).

        Args:
            dataframe: a Spark DataFrame with the feature and label columns.
            shuffle: shuffle the rows before they are split among workers, and every epoch.
            resume: continue a job interrupted by a driver crash from the shards' last checkpoint
                in ``checkpoint_dir``: only the epochs not completed by every worker are trained.
            on_progress: called about every second from a thread with a progress snapshot
                (``zdk.driver.progress.snapshot``); algorithms with a parameter server only.
            validation_data: a DataFrame evaluated on the center at the end of every epoch
                (``val_loss``, ``val_<metric>`` in ``keras_history``).
            validation_split: or the fraction of ``dataframe`` set aside for that (a seeded split).
            callbacks: Keras callbacks, run on the driver at every epoch's end with a model holding
                the center; ``stop_training`` and learning-rate changes reach every worker at its
                next exchange (docs/guide.md, "Watching and steering a run").
            mlflow: log the run to MLflow (also done whenever an MLflow run is active).
        """
        self.plan = self._make_plan()  # the model's current weights and architecture
        weights = self.plan.model.layout.flatten(self.keras_model.get_weights())
        tracking = MlflowTracking(self._tracked()) if mlflow or tracking_active() else None
        watch = Watch(callbacks=tuple(callbacks), validation_data=validation_data, validation_split=validation_split,
                      tracking=tracking)
        try:
            self.last = engine.train(self.plan, dataframe, weights=weights, shuffle=shuffle, resume=resume,
                                     watch=watch, on_progress=on_progress, on_shards=self._shards_ready,
                                     cancel=self._token)
        finally:
            self._token = CancelToken()
        return self.last.value

    def _tracked(self) -> dict[str, Any]:
        """The params an MLflow run records: the trainer, its arguments and the algorithm's hyperparameters."""
        return {"trainer": type(self).__name__, "algorithm": self.plan.algorithm.name, **self.arguments,
                **{f"params.{k}": v for k, v in self.plan.params.to_dict().items()}}

    def _shards_ready(self, endpoints: Sequence[str]) -> None:
        self.endpoints = list(endpoints)


class _Asynchronous(Trainer):
    @with_options(*SERVER, *COMMON)
    def __init__(self, keras_model: Any, worker_optimizer: Any = "adam", loss: Any = None,
                 metrics: Metrics = ("accuracy",), num_workers: int = 2, batch_size: int = 32,
                 features_col: Columns = "features", label_col: Columns = "label", num_epoch: int = 1,
                 communication_window: int | None = None, master_port: int | None = None, loss_weights: Any = None,
                 **options: Any) -> None:
        self._configure(locals())


class DOWNPOUR(_Asynchronous):
    """DOWNPOUR (Dean et al. 2012): workers commit their accumulated updates every
    ``communication_window`` steps (default 5)."""

    default_algorithm = "downpour"


class AGN(_Asynchronous):
    """Accumulated gradient normalization, Δ/λ (what dist-keras shipped as "ADAG"); the window
    defaults to the number of workers (see ``zdk.algorithms.agn.AGNParams``)."""

    default_algorithm = "agn"


class ADAG(_Asynchronous):
    """Asynchronous Distributed Adaptive Gradients (Hermans 2017): AGN commits, scaled on the
    server elementwise by 1/(η⁻¹(θ̃_t − θ̃_{t−τ})² + 1); ``eta`` 1e-4; the window defaults to
    max(4, number of workers) (see ``zdk.algorithms.adag.ADAGParams.window_for``)."""

    default_algorithm = "adag"


class DynSGD(_Asynchronous):
    """DynSGD (Jiang et al. 2017): each commit scaled by 1/(staleness + 1); window 5."""

    default_algorithm = "dynsgd"


class AEASGD(Trainer):
    """Asynchronous elastic averaging SGD (Zhang et al. 2015); window 32, ``rho`` 5,
    ``learning_rate`` 0.1 (α = ρ·η); None takes the algorithm's default."""

    default_algorithm = "aeasgd"
    hyperparameters = ("rho", "learning_rate")

    @with_options(*SERVER, *COMMON)
    def __init__(self, keras_model: Any, worker_optimizer: Any = "adam", loss: Any = None,
                 metrics: Metrics = ("accuracy",), num_workers: int = 2, batch_size: int = 32,
                 features_col: Columns = "features", label_col: Columns = "label", num_epoch: int = 1,
                 communication_window: int | None = None, rho: float | None = None,
                 learning_rate: float | None = None, master_port: int | None = None, loss_weights: Any = None,
                 **options: Any) -> None:
        self._configure(locals())


class EAMSGD(Trainer):
    """Asynchronous elastic averaging with Nesterov momentum δ = ``momentum`` in the local step
    (window 32, rho 5, learning_rate 0.1, momentum 0.9; None takes the default). ``"sgd"`` gives
    SGD(learning_rate, momentum, nesterov=True); a ``keras.optimizers.SGD`` keeps its own
    learning rate and settings and gets the momentum; any other optimizer is refused."""

    default_algorithm = "eamsgd"
    hyperparameters = ("rho", "learning_rate", "momentum")

    @with_options(*SERVER, *COMMON)
    def __init__(self, keras_model: Any, worker_optimizer: Any = "sgd", loss: Any = None,
                 metrics: Metrics = ("accuracy",), num_workers: int = 2, batch_size: int = 32,
                 features_col: Columns = "features", label_col: Columns = "label", num_epoch: int = 1,
                 communication_window: int | None = None, rho: float | None = None,
                 learning_rate: float | None = None, momentum: float | None = None, master_port: int | None = None,
                 loss_weights: Any = None, **options: Any) -> None:
        self._configure(locals())


class SingleTrainer(Trainer):
    """Trains on one worker with the whole DataFrame (dist-keras's SingleTrainer), starting from
    the weights of the model passed."""

    default_algorithm = "sequential"

    @with_options(*COMMON)
    def __init__(self, keras_model: Any, worker_optimizer: Any = "adam", loss: Any = None,
                 metrics: Metrics = ("accuracy",), features_col: Columns = "features", label_col: Columns = "label",
                 num_epoch: int = 1,
                 batch_size: int = 32, loss_weights: Any = None, **options: Any) -> None:
        self._configure(locals())

    def _translate(self, values: dict[str, Any], options: dict[str, Any]) -> None:
        workers = options.pop("num_workers", 1)
        if workers != 1:
            raise ConfigError(f"`num_workers` must be 1 for SingleTrainer, which trains on one worker; use DOWNPOUR, "
                              f"ADAG or AveragingTrainer for more. Received: num_workers={workers}",
                              field="num_workers")
        values["num_workers"] = 1


class AveragingTrainer(Trainer):
    """Synchronous model averaging: the replicas' weights are averaged after every epoch
    (or every ``communication_window`` steps when given)."""

    default_algorithm = "averaging"

    @with_options(*SERVER, *COMMON)
    def __init__(self, keras_model: Any, worker_optimizer: Any = "adam", loss: Any = None,
                 metrics: Metrics = ("accuracy",), features_col: Columns = "features", label_col: Columns = "label",
                 num_epoch: int = 1,
                 batch_size: int = 32, num_workers: int = 2, loss_weights: Any = None, *,
                 communication_window: int | None = None, master_port: int | None = None, **options: Any) -> None:
        self._configure(locals())


class EnsembleTrainer(Trainer):
    """Trains ``num_ensembles`` independent models, one per partition; ``train`` returns them all.

    Every member starts from the weights of the model passed (as in dist-keras), so members
    differ by their data; ``reinitialize=True`` draws fresh initial weights for each member
    from the model's initializers (seeded by ``seed`` and the member's index) instead."""

    default_algorithm = "ensemble"

    @with_options(*COMMON)
    def __init__(self, keras_model: Any, worker_optimizer: Any = "adam", loss: Any = None,
                 metrics: Metrics = ("accuracy",), features_col: Columns = "features", label_col: Columns = "label",
                 batch_size: int = 32,
                 num_ensembles: int = 2, loss_weights: Any = None, *, num_epoch: int = 1, reinitialize: bool = False,
                 **options: Any) -> None:
        self._configure(locals())

    def _translate(self, values: dict[str, Any], options: dict[str, Any]) -> None:
        members = values.pop("num_ensembles")
        if options.get("num_workers", members) != members:
            raise ConfigError(f"`num_workers` is `num_ensembles` for EnsembleTrainer; give only num_ensembles. "
                              f"Received: num_workers={options['num_workers']}, num_ensembles={members}",
                              field="num_workers")
        options.pop("num_workers", None)
        values["num_workers"] = members


Trainer.__init__ = _dist_keras_call(Trainer.__init__)  # type: ignore[method-assign]

#: Every trainer class by name: the names a job spec's ``trainer.class`` may use.
TRAINERS: dict[str, type[Trainer]] = {cls.__name__: cls for cls in (
    DOWNPOUR, AGN, ADAG, DynSGD, AEASGD, EAMSGD, SingleTrainer, AveragingTrainer, EnsembleTrainer, Trainer)}
