"""From what a user asks for (a model, an algorithm, its options) to a :class:`TrainingPlan`.

The rules that derive a run's settings live here, once:
- ``learning_rate`` is the algorithm's when its params have one, else the worker optimizer's;
- the window defaults to the algorithm's rule for the number of tasks (``Params.window_for``),
  and a synchronous algorithm without one exchanges every epoch;
- job-dependent params (``Params.for_job``), and the local optimizer an algorithm's math needs
  (``Algorithm.local_optimizer``), are filled in;
- a checkpoint directory without a period checkpoints every :data:`CHECKPOINT_EVERY` seconds;
- an option that has no effect on an algorithm without a parameter server is refused by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from zdk import algorithms
from zdk.algorithms.base import Algorithm, Params
from zdk.driver.memory import parse_bytes
from zdk.driver.plan import CENTER, MODEL, MODELS, ServerPlan, TrainingPlan, positive_int
from zdk.errors import ConfigError
from zdk.ps.checkpoint import CheckpointPolicy
from zdk.runtime.models import ModelSpec, make_spec, serialize_optimizer
from zdk.runtime.steps import DEFAULT_STEPS_PER_EXECUTION
from zdk.transports.curve import CurveKeys

#: Seconds between shard checkpoints when a checkpoint directory is given without a period.
CHECKPOINT_EVERY = 30.0

#: Options that only matter with a parameter server, and their neutral values.
_PS_OPTIONS: dict[str, Any] = {"communication_window": None, "master_port": None, "parameter_server": None,
                               "checkpoint_dir": None, "checkpoint_every": None, "curve_keys": None, "num_shards": 1,
                               "security": "auto", "ps_host": "127.0.0.1", "overlap": False, "timeout": 120.0,
                               "codec": None, "codec_args": None}


def algorithm_of(owner: str, fixed: str | None, given: str | Algorithm | None) -> str | Algorithm:
    """The algorithm of a trainer: its own (``fixed``), which ``given`` may only repeat, or ``given``."""
    if fixed is not None and given is not None and given != fixed:
        raise ConfigError(f"`algorithm` is fixed to {fixed!r} in {owner}; use zdk.trainers.Trainer for another. "
                          f"Received: algorithm={given!r}", field="algorithm")
    chosen = fixed if fixed is not None else given
    if chosen is None:
        raise ConfigError(f"`algorithm` is required for the generic {owner}. Received: algorithm=None", field="algorithm")
    return chosen


def columns(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    """A column name or a list of them, as a tuple (checked by the plan)."""
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"`{name}` must be a column name or a list of them. Received: {name}={value!r}",
                          field=name) from None


def routed_learning_rate(algorithm: Algorithm, options: dict[str, Any]) -> float | None:
    """Takes ``learning_rate`` out of ``options`` when the algorithm's params have no such field:
    it is then the worker optimizer's."""
    if "learning_rate" in options and "learning_rate" not in {f.name for f in dataclasses.fields(algorithm.params)}:
        return float(options.pop("learning_rate"))
    return None


def algorithm_params(algorithm: Algorithm, values: Mapping[str, Any], *, communication_window: int | None,
                     num_tasks: int) -> Params:
    """The algorithm's params for a run of ``num_tasks`` tasks: the window defaults to the
    algorithm's rule (``Params.window_for``), and job-dependent fields are filled (``Params.for_job``)."""
    values = dict(values)
    if communication_window is not None:
        values["communication_window"] = communication_window
    elif algorithm.uses_ps and "communication_window" not in values:
        window = algorithm.params.window_for(num_tasks)
        if window is not None:
            values["communication_window"] = window
    return algorithm.make_params(values).for_job(num_tasks)


def local_optimizer(algorithm: Algorithm, params: Params, optimizer: Any) -> Any:
    """The worker optimizer as ``keras.optimizers.serialize`` data, adjusted by the algorithm's
    ``local_optimizer`` hook when it has one (EAMSGD: SGD with its Nesterov momentum)."""
    if algorithm.local_optimizer is None:
        return serialize_optimizer(optimizer)
    given = optimizer if isinstance(optimizer, str) else serialize_optimizer(optimizer)
    return serialize_optimizer(algorithm.local_optimizer(given, params))


def model_spec(keras_model: Any, *, algorithm: Algorithm, params: Params, worker_optimizer: Any, loss: Any,
               metrics: Sequence[Any] | None, loss_weights: Any = None, custom_modules: Sequence[str] = ()) -> ModelSpec:
    """The model as executors rebuild it, with the optimizer the algorithm's math needs."""
    return make_spec(keras_model, optimizer=local_optimizer(algorithm, params, worker_optimizer), loss=loss,
                     metrics=metrics, loss_weights=loss_weights, custom_modules=custom_modules)


def refuse_without_ps(algorithm: Algorithm, options: Mapping[str, Any], owner: str) -> None:
    """Refuses, by name, the first option that would have no effect on an algorithm without a PS."""
    if algorithm.uses_ps:
        return
    for name, value in options.items():
        if name not in _PS_OPTIONS or value != _PS_OPTIONS[name]:
            raise ConfigError(f"`{name}` has no effect on {owner} ({algorithm.name!r} trains without a parameter "
                              f"server); remove it. Received: {name}={value!r}", field=name)


def server_plan(*, num_shards: int = 1, parameter_server: Sequence[str] | None = None, ps_host: str = "127.0.0.1",
                master_port: int | None = None, security: str = "auto", curve_keys: CurveKeys | None = None,
                timeout: float = 120.0, checkpoint_dir: str | None = None,
                checkpoint_every: float | None = None) -> ServerPlan:
    """The parameter-server part of a plan, from the trainers' option names."""
    if checkpoint_dir is not None and checkpoint_every is None:
        checkpoint_every = CHECKPOINT_EVERY
    return ServerPlan(num_shards=num_shards, endpoints=tuple(parameter_server or ()), host=ps_host,
                      port=0 if master_port is None else master_port, security=security, curve_keys=curve_keys,
                      timeout=float(timeout) if isinstance(timeout, (int, float)) else timeout,
                      checkpoint=CheckpointPolicy(directory=checkpoint_dir, every=checkpoint_every))


def plan_training(keras_model: Any, *, algorithm: str | Algorithm, owner: str, worker_optimizer: Any = "adam",
                  loss: Any = None, metrics: Sequence[Any] | None = ("accuracy",), loss_weights: Any = None,
                  custom_modules: Sequence[str] = (), features_col: str | Sequence[str] = "features",
                  label_col: str | Sequence[str] = "label", num_epoch: int = 1, batch_size: int = 32,
                  num_workers: int = 2, parallelism_factor: int = 1, seed: int = 0, max_prefetch: int = 8,
                  cache_memory: int | str | None = None, on_nan: str = "raise", progress: bool = True, reinitialize: bool = False, result: str | None = None,
                  worker_learning_rate: float | None = None,
                  steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION, algorithm_options: Mapping[str, Any] | None = None,
                  **ps_options: Any) -> TrainingPlan:
    """A validated plan from a trainer's arguments.

    Args:
        keras_model: the built model to train.
        algorithm: a registered algorithm name or an Algorithm.
        owner: who asks (a trainer class name), for error messages.
        worker_learning_rate: overrides the worker optimizer's learning rate (``set_learning_rate``).
        algorithm_options: the algorithm's hyperparameters by name (a ``learning_rate`` it does not
            take goes to the worker optimizer).
        ps_options: ``communication_window``, ``overlap`` and the :func:`server_plan` options.
        cache_memory: bytes, or a size such as ``"256m"`` (:func:`zdk.driver.memory.parse_bytes`).
        result: what ``train`` returns (default: the center with a PS, every worker's model without).
        The rest: as :class:`TrainingPlan`.
    """
    algo = algorithms.get(algorithm)
    options = dict(algorithm_options or {})
    routed_rate = routed_learning_rate(algo, options)
    refuse_without_ps(algo, {**ps_options, **options}, owner)
    num_tasks = positive_int(num_workers, "num_workers") * positive_int(parallelism_factor, "parallelism_factor")
    window = ps_options.pop("communication_window", None)
    params = algorithm_params(algo, options, communication_window=window, num_tasks=num_tasks)
    spec = model_spec(keras_model, algorithm=algo, params=params, worker_optimizer=worker_optimizer, loss=loss,
                      metrics=metrics, loss_weights=loss_weights, custom_modules=custom_modules)
    overlap = bool(ps_options.pop("overlap", False))
    codec, codec_args = ps_options.pop("codec", None), ps_options.pop("codec_args", None)
    return TrainingPlan(
        model=spec, algorithm=algo, params=params, features_col=columns(features_col, "features_col"),
        label_col=columns(label_col, "label_col"), num_epoch=num_epoch, batch_size=batch_size,
        num_workers=num_workers, parallelism_factor=parallelism_factor,
        exchange_per_epoch=algo.synchronous and window is None,
        learning_rate=worker_learning_rate if worker_learning_rate is not None else routed_rate, seed=seed,
        max_prefetch=max_prefetch, overlap=overlap, on_nan=on_nan, codec=codec, codec_args=dict(codec_args or {}),
        cache_memory=None if cache_memory is None else parse_bytes(cache_memory, "cache_memory"),
        result=result or (CENTER if algo.uses_ps else MODEL if algo.workers == 1 else MODELS), reinitialize=bool(reinitialize), progress=progress,
        steps_per_execution=steps_per_execution, server=server_plan(**ps_options),
    )


__all__ = ["CHECKPOINT_EVERY", "MODEL", "columns", "model_spec", "plan_training", "server_plan"]
