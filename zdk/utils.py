"""dist-keras's utility functions, for scripts that called them."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from zdk.errors import ConfigError


def shuffle(dataframe: Any, seed: int | None = None) -> Any:
    """The rows in a random order, cached."""
    from pyspark.sql import functions as F

    return dataframe.orderBy(F.rand(seed)).cache()


def precache(dataframe: Any, num_workers: int) -> Any:
    """Repartitioned to ``num_workers``, cached and counted, so training reads it from memory."""
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"`num_workers` must be an int ≥ 1. Received: num_workers={num_workers!r}",
                          field="num_workers")
    cached = dataframe.repartition(num_workers).cache()
    cached.count()
    return cached


def to_one_hot_encoded_dense(value: int | float, n_dim: int) -> np.ndarray:
    """A float32 one-hot vector of length ``n_dim`` with a 1 at ``value``."""
    index = int(value)
    if index != value or not 0 <= index < n_dim:
        raise ConfigError(f"`value` must be an integer in [0, {n_dim}). Received: value={value!r}", field="value")
    out = np.zeros(n_dim, dtype=np.float32)
    out[index] = 1.0
    return out


def uniform_weights(model: Any, constraints: Sequence[float] = (-0.5, 0.5), seed: int | None = None) -> Any:
    """Reinitialises every weight of ``model`` uniformly in [low, high); returns the model."""
    low, high = float(constraints[0]), float(constraints[1])
    if not low < high:
        raise ConfigError(f"`constraints` must be [low, high] with low < high. Received: constraints={list(constraints)}",
                          field="constraints")
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(low, high, size=w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def serialize_keras_model(model: Any) -> dict[str, Any]:
    """The model as ``{"model": Keras JSON config, "weights": [numpy arrays]}`` (no pickle)."""
    return {"model": model.to_json(), "weights": [np.asarray(w) for w in model.get_weights()]}


def deserialize_keras_model(description: dict[str, Any]) -> Any:
    """The model :func:`serialize_keras_model` described."""
    import keras

    model = keras.models.model_from_json(description["model"])
    model.set_weights(description["weights"])
    return model
