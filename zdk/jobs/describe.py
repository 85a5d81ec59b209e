"""A configured trainer and its transformer stages, described as job-spec JSON.

The trainer is described, not shipped: its class name and its arguments as JSON, with Keras
optimizer, loss and metric objects as their Keras configs and an algorithm as its registered
name. Anything else without a JSON form is refused, naming the argument.
"""

from __future__ import annotations

import json
from typing import Any

from zdk.errors import ConfigError
from zdk.jobs.spec import Stage


def trainer_spec(trainer: Any) -> dict[str, Any]:
    """The ``trainer`` part of a job spec: the class name and the arguments as JSON.

    Args:
        trainer: a ``zdk.trainers`` trainer, configured but not trained.

    Raises:
        ConfigError: naming an argument that has no JSON form (a custom Python object).
    """
    from zdk import trainers

    cls = type(trainer)
    if trainers.TRAINERS.get(cls.__name__) is not cls:
        raise ConfigError(f"`trainer` must be a zdk.trainers class (a job server builds it by name). Received: "
                          f"{cls.__module__}.{cls.__name__}", field="trainer")
    return {"class": cls.__name__,
            "arguments": {name: json_argument(name, value) for name, value in trainer.arguments.items()}}


def stage(transformer: Any) -> Stage:
    """A ``zdk.transformers`` stage as a spec stage: its class name and keyword arguments."""
    # zdk.mlparams.positional_too records the arguments given in _input_kwargs, pyspark's convention.
    return Stage(cls=type(transformer).__name__,
                 arguments={k: json_argument(k, v) for k, v in transformer._input_kwargs.items()})


def json_argument(name: str, value: Any) -> Any:
    """``value`` as JSON the job server can turn back into it.

    Raises:
        ConfigError: naming ``name`` when the value has no JSON form.
    """
    import keras

    from zdk.algorithms.base import Algorithm

    if isinstance(value, Algorithm):
        return value.name
    if isinstance(value, (keras.optimizers.Optimizer, keras.losses.Loss, keras.metrics.Metric)):
        return _plain(keras.saving.serialize_keras_object(value))
    if isinstance(value, (list, tuple)):
        return [json_argument(name, v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_argument(name, v) for k, v in value.items()}
    if callable(value):
        serialized = keras.saving.serialize_keras_object(value)
        if isinstance(serialized, str):
            return serialized
        raise ConfigError(f"`{name}` has no JSON form for a job server: give a Keras name or a built-in Keras "
                          f"object. Received: {name}={value!r}", field=name)
    try:
        json.dumps(value)
    except TypeError:
        raise ConfigError(f"`{name}` has no JSON form for a job server. Received: {name}={value!r}",
                          field=name) from None
    return value


def _plain(value: Any) -> Any:
    """Keras configs may hold numpy scalars; JSON wants Python ones."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
