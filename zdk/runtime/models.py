"""Shipping Keras models and optimizers as JSON configs, never pickles."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from zdk.errors import ConfigError
from zdk.ps.layout import FlatLayout


@dataclass(frozen=True)
class ModelSpec:
    """Everything an executor needs to rebuild and compile the user's model.

    Args:
        model_json: ``model.to_json()`` (Keras 3 config).
        optimizer: the worker optimizer as ``keras.optimizers.serialize`` gives it.
        loss: a loss name, a serialized loss, or a list/dict of them.
        metrics: metric names or serialized metrics.
        loss_weights: passed to ``compile``.
        custom_modules: modules to import first, so registered custom objects resolve.
        shapes: the shape of every weight, for the flat layout.
    """

    model_json: str
    optimizer: Any
    loss: Any
    metrics: Any
    loss_weights: Any
    custom_modules: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def layout(self) -> FlatLayout:
        return FlatLayout(self.shapes)

    def to_json(self) -> str:
        return json.dumps({"model": self.model_json, "optimizer": self.optimizer, "loss": self.loss,
                           "metrics": self.metrics, "loss_weights": self.loss_weights,
                           "custom_modules": list(self.custom_modules), "shapes": [list(s) for s in self.shapes]})

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        d = json.loads(text)
        return cls(model_json=d["model"], optimizer=d["optimizer"], loss=d["loss"], metrics=d["metrics"],
                   loss_weights=d["loss_weights"], custom_modules=tuple(d["custom_modules"]),
                   shapes=tuple(tuple(s) for s in d["shapes"]))


def _serializable(value: Any, what: str) -> Any:
    import keras

    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_serializable(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _serializable(v, what) for k, v in value.items()}
    try:
        return keras.saving.serialize_keras_object(value)
    except Exception as exc:
        raise ConfigError(f"`{what}` must be a name or a serializable Keras object. Received: {value!r} ({exc})") from None


def serialize_optimizer(optimizer: Any) -> Any:
    """A JSON-able config of a Keras optimizer given as a name or an instance."""
    import keras

    if isinstance(optimizer, str):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError:
            raise ConfigError(f"`worker_optimizer` must be a Keras optimizer name or instance. "
                              f"Received: worker_optimizer={optimizer!r}") from None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ConfigError(f"`worker_optimizer` must be a Keras optimizer name or instance. "
                          f"Received: worker_optimizer={optimizer!r}")
    return keras.optimizers.serialize(optimizer)


def make_spec(model: Any, *, optimizer: Any, loss: Any, metrics: Sequence[Any] | None, loss_weights: Any = None,
              custom_modules: Sequence[str] = ()) -> ModelSpec:
    """Describes ``model`` for the executors."""
    import keras

    if not isinstance(model, keras.Model):
        raise ConfigError(f"`keras_model` must be a keras.Model. Received: {type(model).__name__}")
    if not model.built:
        raise ConfigError("`keras_model` must be built (give it an Input or call build()) so its weights exist")
    if loss is None:
        raise ConfigError("`loss` must be a Keras loss name or object. Received: loss=None")
    return ModelSpec(
        model_json=model.to_json(), optimizer=serialize_optimizer(optimizer), loss=_serializable(loss, "loss"),
        metrics=_serializable(list(metrics or []), "metrics"), loss_weights=_serializable(loss_weights, "loss_weights"),
        custom_modules=tuple(custom_modules), shapes=FlatLayout.of(model.get_weights()).shapes,
    )


def _deserialize(value: Any) -> Any:
    import keras

    if isinstance(value, dict) and "class_name" in value:
        return keras.saving.deserialize_keras_object(value)
    if isinstance(value, list):
        return [_deserialize(v) for v in value]
    if isinstance(value, dict):
        return {k: _deserialize(v) for k, v in value.items()}
    return value


def build_model(spec: ModelSpec, *, compile: bool = True, learning_rate: float | None = None) -> Any:
    """Rebuilds the model from ``spec`` (and compiles it with the worker optimizer)."""
    import keras

    for module in spec.custom_modules:
        importlib.import_module(module)
    model = keras.models.model_from_json(spec.model_json)
    if compile:
        optimizer = keras.optimizers.deserialize(spec.optimizer)
        if learning_rate is not None:
            optimizer.learning_rate = learning_rate
        model.compile(optimizer=optimizer, loss=_deserialize(spec.loss), metrics=_deserialize(spec.metrics),
                      loss_weights=spec.loss_weights)
    return model


def set_flat_weights(model: Any, layout: FlatLayout, flat: np.ndarray) -> None:
    model.set_weights(layout.views(flat))


def get_flat_weights(model: Any, layout: FlatLayout, out: np.ndarray) -> np.ndarray:
    return layout.flatten(model.get_weights(), out=out)
