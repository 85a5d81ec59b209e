"""Shipping Keras models and optimizers as JSON configs, never pickles."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import weakref
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
        inputs: the shape of every model input (None for free dimensions, the batch first).
        outputs: the shape of every model output.
        output_names: the outputs' names, which a dict of losses is keyed by.
    """

    model_json: str
    optimizer: Any
    loss: Any
    metrics: Any
    loss_weights: Any
    custom_modules: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    inputs: tuple[tuple[int | None, ...], ...] = ()
    outputs: tuple[tuple[int | None, ...], ...] = ()
    output_names: tuple[str, ...] = ()

    @property
    def layout(self) -> FlatLayout:
        return FlatLayout(self.shapes)

    def to_json(self) -> str:
        return json.dumps({"model": self.model_json, "optimizer": self.optimizer, "loss": self.loss,
                           "metrics": self.metrics, "loss_weights": self.loss_weights,
                           "custom_modules": list(self.custom_modules), "shapes": [list(s) for s in self.shapes],
                           "inputs": [list(s) for s in self.inputs], "outputs": [list(s) for s in self.outputs],
                           "output_names": list(self.output_names)})

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        d = json.loads(text)
        return cls(model_json=d["model"], optimizer=d["optimizer"], loss=d["loss"], metrics=d["metrics"],
                   loss_weights=d["loss_weights"], custom_modules=tuple(d["custom_modules"]),
                   shapes=tuple(tuple(s) for s in d["shapes"]), inputs=tuple(tuple(s) for s in d["inputs"]),
                   outputs=tuple(tuple(s) for s in d["outputs"]), output_names=tuple(d["output_names"]))


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
        raise ConfigError(f"`{what}` must be a name or a serializable Keras object. Received: {value!r} ({exc})",
                          field=what) from None


def serialize_optimizer(optimizer: Any) -> Any:
    """A JSON-able config of a Keras optimizer given as a name, an instance, or such a config."""
    import keras

    if isinstance(optimizer, (str, dict)):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except (ValueError, TypeError):
            raise ConfigError(f"`worker_optimizer` must be a Keras optimizer name or instance. "
                              f"Received: worker_optimizer={optimizer!r}", field="worker_optimizer") from None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ConfigError(f"`worker_optimizer` must be a Keras optimizer name or instance. "
                          f"Received: worker_optimizer={optimizer!r}", field="worker_optimizer")
    return keras.optimizers.serialize(optimizer)


def make_spec(model: Any, *, optimizer: Any, loss: Any, metrics: Sequence[Any] | None, loss_weights: Any = None,
              custom_modules: Sequence[str] = ()) -> ModelSpec:
    """Describes ``model`` for the executors."""
    import keras

    if not isinstance(model, keras.Model):
        raise ConfigError(f"`keras_model` must be a keras.Model. Received: {type(model).__name__}", field="keras_model")
    if not model.built:
        raise ConfigError("`keras_model` must be built (give it an Input or call build()) so its weights exist",
                          field="keras_model")
    if loss is None:
        raise ConfigError("`loss` must be a Keras loss name or object. Received: loss=None", field="loss")
    return ModelSpec(
        model_json=model.to_json(), optimizer=serialize_optimizer(optimizer), loss=_serializable(loss, "loss"),
        metrics=_serializable(list(metrics or []), "metrics"), loss_weights=_serializable(loss_weights, "loss_weights"),
        custom_modules=tuple(custom_modules), shapes=tuple(tuple(int(d) for d in w.shape) for w in model.weights),
        inputs=_shapes(getattr(model, "inputs", None) or ()), outputs=_shapes(getattr(model, "outputs", None) or ()),
        output_names=tuple(_output_names(model)),
    )


def _shapes(tensors: Sequence[Any]) -> tuple[tuple[int | None, ...], ...]:
    return tuple(tuple(None if d is None else int(d) for d in t.shape) for t in tensors)


def _output_names(model: Any) -> list[str]:
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    return [t.name.split("/")[0] for t in getattr(model, "outputs", None) or ()]


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


_reusable: dict[str, Any] = {}


def reusable_model(spec: ModelSpec, *, learning_rate: float | None = None) -> tuple[Any, bool]:
    """The compiled model for ``spec``, kept per process so a second ``train()`` in the same Python
    worker skips building it and tracing its training step.

    A kept model gets a fresh optimizer state: a new optimizer is built from the same config
    and its variables (step count, learning rate, moments, accumulators with their initial
    values) are copied into the kept one, whose traced step keeps using them. Metrics are
    reset; the weights are the caller's to set (from the PS or the user's model).

    Returns:
        the model, and whether it was reused.
    """
    # The signature fields are derived from the config, and carry Keras's per-process tensor names.
    computation = dataclasses.replace(spec, inputs=(), outputs=(), output_names=())
    key = hashlib.sha256((_canonical(computation.to_json()) + repr(learning_rate)).encode()).hexdigest()
    model = _reusable.get(key)
    if model is not None and _reset_optimizer(model):
        model.reset_metrics()
        return model, True
    model = build_model(spec, learning_rate=learning_rate)
    _reusable.clear()  # one model per worker process at a time
    _reusable[key] = model
    return model, False


def _canonical(text: str) -> str:
    """``text`` (a model spec's or a model's JSON) with every name replaced by its order of appearance: a model rebuilt from
    the same code gets new layer names (``dense_7``), but it is the same computation."""
    names: dict[str, str] = {}

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "name" and isinstance(item, str):
                    names.setdefault(item, f"#{len(names)}")
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: rename(item) for key, item in value.items()}
        if isinstance(value, list):
            return [rename(item) for item in value]
        return names.get(value, value) if isinstance(value, str) else value

    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        data["model"] = json.loads(data["model"])
    collect(data)
    return json.dumps(rename(data), sort_keys=True)


def canonical_architecture(model_json: str) -> str:
    """A key for a model's architecture that ignores its layer names (a model rebuilt from the same
    code gets new ones)."""
    return hashlib.sha256(_canonical(model_json).encode()).hexdigest()


def _reset_optimizer(model: Any) -> bool:
    """Puts the optimizer of a used model back in its initial state; False when it cannot be matched."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not optimizer.variables:
        return False
    fresh = type(optimizer).from_config(optimizer.get_config())
    fresh.build(model.trainable_variables)
    old, new = list(optimizer.variables), list(fresh.variables)
    if len(old) != len(new) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(old, new)):
        return False
    for a, b in zip(old, new):
        a.assign(b.value)
    return True


def set_flat_weights(model: Any, layout: FlatLayout, flat: np.ndarray) -> None:
    model.set_weights(layout.views(flat))


def non_finite_weight(model: Any) -> str | None:
    """The path of the first of ``model.weights`` holding a NaN or an infinity, or None.

    One traced reduction over every floating-point weight, all(isfinite(w)) for all w, kept per
    model (about 0.5 ms for 32 variables, against 8 ms as one eager op per variable); the
    variables are looked at one by one only to name a bad one."""
    check = _finite_checks.get(model)
    if check is None:
        check = _finite_checks[model] = _all_finite(model)
    if check is None or bool(check()):
        return None
    from keras import ops

    for variable in model.weights:
        if "float" in str(variable.dtype) and not bool(ops.all(ops.isfinite(variable))):
            return str(variable.path)
    return None


def _all_finite(model: Any) -> Any:
    import tensorflow as tf

    variables = [v.value for v in model.weights if "float" in str(v.dtype)]
    if not variables:
        return None
    # No autograph: nothing here needs converting, and autograph leaves a source file per converted
    # lambda in the temp directory.
    return tf.function(lambda: tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in variables])),
                       autograph=False)


#: ``non_finite_weight``'s traced check, per model.
_finite_checks: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def get_flat_weights(model: Any, layout: FlatLayout, out: np.ndarray) -> np.ndarray:
    """θ ← the model's weights (``model.weights``, the order of ``get_weights``), read one variable
    at a time into its view of ``out``: the transient copy is one variable's, not the whole
    model's as with ``model.get_weights()``."""
    variables = model.weights
    views = layout.views(out)
    if len(variables) != len(views):
        raise ConfigError(f"the model must have the {len(views)} weights its layout was made from. "
                          f"Received: a model with {len(variables)}", field="keras_model")
    for variable, view in zip(variables, views):
        value = variable.numpy()
        if value.shape != view.shape:
            raise ConfigError(f"weight `{variable.path}` must have shape {view.shape}. Received: shape={value.shape}",
                              field="keras_model")
        np.copyto(view, value, casting="same_kind")
    return out
