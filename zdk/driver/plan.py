"""What one training run needs, as frozen, validated values: a :class:`TrainingPlan` and its
:class:`ServerPlan`.

A plan is complete: :func:`zdk.driver.engine.train` reads nothing else but the DataFrame and
the starting weights. Every field is checked when the plan is made (or replaced), and an
error names the field, the value and what would be valid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from zdk.algorithms import codecs
from zdk.algorithms.base import Algorithm, Params
from zdk.errors import AlgorithmNotFound, ConfigError
from zdk.ps.checkpoint import CheckpointPolicy
from zdk.runtime.models import ModelSpec
from zdk.runtime.steps import DEFAULT_STEPS_PER_EXECUTION
from zdk.transports.curve import CurveKeys

#: What ``train`` returns: the parameter server's center, the one worker's model, or every worker's.
CENTER, MODEL, MODELS = "center", "model", "models"
SECURITY = ("auto", "curve", "none")
ON_NAN = ("raise", "warn")


def positive_int(value: Any, name: str) -> int:
    """``value`` when it is an int ≥ 1; else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"`{name}` must be an int ≥ 1. Received: {name}={value!r}", field=name)
    return value


def _one_of(value: Any, name: str, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        names = [repr(c) for c in choices]
        rule = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ConfigError(f"`{name}` must be {rule}. Received: {name}={value!r}", field=name)


def _columns(value: Any, name: str) -> None:
    if not value or not isinstance(value, tuple) or not all(isinstance(c, str) and c for c in value):
        raise ConfigError(f"`{name}` must be a column name or a list of them. Received: {name}={value!r}", field=name)


@dataclass(frozen=True)
class ServerPlan:
    """Where the parameter server runs and how workers reach it.

    Args:
        num_shards: shard processes started for the run.
        endpoints: the shards of a running ``zdk ps`` to use instead (none are started then).
        host: the address started shards bind to; executors must reach it.
        port: the first started shard's port (shard k gets port + k); 0 picks free ports.
        security: ``"curve"`` encrypts and admits only this run's workers, ``"none"`` talks in the
            clear, ``"auto"`` is CURVE unless ``host`` is a loopback address.
        curve_keys: the keys of a running CURVE-protected ``endpoints``.
        timeout: seconds any parameter-server request may take.
        checkpoint: where and how often shards checkpoint.
    """

    num_shards: int = 1
    endpoints: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    security: str = "auto"
    curve_keys: CurveKeys | None = None
    timeout: float = 120.0
    checkpoint: CheckpointPolicy = CheckpointPolicy()

    def __post_init__(self) -> None:
        positive_int(self.num_shards, "num_shards")
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError(f"`master_port` must be a port in [0, 65536). Received: master_port={port!r}",
                              field="master_port")
        _one_of(self.security, "security", SECURITY)
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0 or math.isinf(self.timeout):
            raise ConfigError(f"`timeout` must be > 0 seconds. Received: timeout={self.timeout!r}", field="timeout")
        if not all(isinstance(e, str) and e for e in self.endpoints):
            raise ConfigError(f"`parameter_server` must be a list of endpoints. Received: "
                              f"parameter_server={list(self.endpoints)!r}", field="parameter_server")

    @property
    def external(self) -> bool:
        """Whether the run uses a running ``zdk ps`` rather than shards of its own."""
        return bool(self.endpoints)


@dataclass(frozen=True)
class TrainingPlan:
    """Everything a run needs but the data and the starting weights.

    Args:
        model: the architecture, the workers' optimizer, loss and metrics (JSON, shipped to executors).
        algorithm: the distributed optimizer.
        params: its hyperparameters, complete for this run (window and job-dependent defaults filled).
        features_col: feature columns, one per model input.
        label_col: label columns, one per model output.
        num_epoch: passes over each worker's partition.
        batch_size: rows per training step.
        num_workers: workers; with ``parallelism_factor`` k the data is cut into num_workers × k tasks.
        parallelism_factor: k, tasks per worker.
        exchange_per_epoch: exchange with the PS at the end of every epoch instead of every window.
        learning_rate: overrides the worker optimizer's learning rate (None: the optimizer's own).
        seed: seeds the shuffles and fresh initial weights.
        max_prefetch: minibatches a worker prepares ahead.
        cache_memory: bytes of its partition a worker keeps in memory between epochs, the rest
            spilled to local disk (None: half of what Spark gives a task's Python worker,
            :mod:`zdk.driver.memory`).
        overlap: exchange on a background thread while the worker trains (asynchronous algorithms).
        codec: the commit codec (:mod:`zdk.algorithms.codecs`) the workers encode commits with;
            None: the algorithm's own, or raw float32.
        codec_args: the codec's arguments, validated (``{"ratio": 0.01, "error_feedback": True}``).
        on_nan: ``"raise"`` stops at the first non-finite loss; ``"warn"`` logs it and trains on.
        result: :data:`CENTER`, :data:`MODEL` (the one worker's) or :data:`MODELS` (every worker's).
        reinitialize: workers draw fresh initial weights (seed + worker id) instead of the given ones.
        progress: show a progress bar on a terminal.
        steps_per_execution: the most training steps a worker runs in one compiled call (its windows
            end at exchanges and epoch ends too); 1: one ``train_on_batch`` call per step.
        server: the parameter server (ignored by algorithms without one).
    """

    model: ModelSpec
    algorithm: Algorithm
    params: Params
    features_col: tuple[str, ...] = ("features",)
    label_col: tuple[str, ...] = ("label",)
    num_epoch: int = 1
    batch_size: int = 32
    num_workers: int = 2
    parallelism_factor: int = 1
    exchange_per_epoch: bool = False
    learning_rate: float | None = None
    seed: int = 0
    max_prefetch: int = 8
    cache_memory: int | None = None
    overlap: bool = False
    codec: str | None = None
    codec_args: Mapping[str, Any] = field(default_factory=dict)
    on_nan: str = "raise"
    result: str = CENTER
    reinitialize: bool = False
    progress: bool = True
    steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION
    server: ServerPlan = ServerPlan()

    def __post_init__(self) -> None:
        _columns(self.features_col, "features_col")
        _columns(self.label_col, "label_col")
        for name in ("num_epoch", "batch_size", "num_workers", "parallelism_factor", "max_prefetch",
                     "steps_per_execution"):
            positive_int(getattr(self, name), name)
        _one_of(self.on_nan, "on_nan", ON_NAN)
        if self.cache_memory is not None and (isinstance(self.cache_memory, bool) or not isinstance(
                self.cache_memory, int) or self.cache_memory < 0):
            raise ConfigError(f"`cache_memory` must be a number of bytes ≥ 0. Received: cache_memory="
                              f"{self.cache_memory!r}", field="cache_memory")
        if not isinstance(self.params, self.algorithm.params):
            raise ConfigError(f"`params` must be a {self.algorithm.params.__name__} for {self.algorithm.name!r}. "
                              f"Received: {type(self.params).__name__}", field="params")
        if self.learning_rate is not None and not (isinstance(self.learning_rate, float) and self.learning_rate > 0):
            raise ConfigError(f"`learning_rate` must be > 0. Received: learning_rate={self.learning_rate!r}",
                              field="learning_rate")
        if self.overlap and self.algorithm.synchronous:
            raise ConfigError(f"`overlap` must be False for the synchronous algorithm {self.algorithm.name!r}: its "
                              f"rounds need every worker at the same point. Received: overlap=True", field="overlap")
        self._check_codec()
        self._check_result()

    def _check_codec(self) -> None:
        name = self.codec if self.codec is not None else self.algorithm.codec
        if name is None:
            if self.codec_args:
                raise ConfigError(f"`codec_args` needs a `codec`. Received: codec_args={dict(self.codec_args)!r}",
                                  field="codec_args")
            return
        try:
            codec = codecs.get_codec(name)
        except AlgorithmNotFound as exc:
            raise ConfigError(f"`codec` must be a registered codec. {exc}", field="codec") from None
        if not self.algorithm.uses_ps or self.algorithm.synchronous:
            kind = "synchronous" if self.algorithm.uses_ps else "without a parameter server"
            raise ConfigError(f"`codec` needs an asynchronous algorithm with a parameter server; "
                              f"{self.algorithm.name!r} is {kind}. Received: codec={name!r}", field="codec")
        object.__setattr__(self, "codec_args", codec.make_args(self.codec_args).to_dict())

    def _check_result(self) -> None:
        expected = (CENTER,) if self.algorithm.uses_ps else (MODEL, MODELS)
        _one_of(self.result, "result", expected)
        if self.reinitialize and self.algorithm.uses_ps:
            raise ConfigError(f"`reinitialize` needs an algorithm without a parameter server (the center starts every "
                              f"worker). Received: reinitialize=True with {self.algorithm.name!r}",
                              field="reinitialize")
        fixed = self.algorithm.workers
        if fixed is not None and self.num_tasks != fixed:
            raise ConfigError(f"`num_workers` must be {fixed} for {self.algorithm.name!r}, which trains with "
                              f"{fixed} worker(s). Received: num_workers={self.num_workers}, parallelism_factor="
                              f"{self.parallelism_factor}", field="num_workers")
        if self.result == MODEL and self.num_tasks != 1:
            raise ConfigError(f"`num_workers` must be 1 for a run that returns the one worker's model. Received: "
                              f"num_workers={self.num_workers}, parallelism_factor={self.parallelism_factor}",
                              field="num_workers")

    @property
    def num_tasks(self) -> int:
        """Spark tasks, one worker each: num_workers × parallelism_factor."""
        return self.num_workers * self.parallelism_factor

    @property
    def uses_ps(self) -> bool:
        return self.algorithm.uses_ps

    def replace(self, **changes: Any) -> "TrainingPlan":
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)
