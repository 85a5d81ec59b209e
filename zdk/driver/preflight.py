"""Checks on the driver before any training task starts: mistakes found in seconds, with the fix.

Training tasks would find these too, but only after the executors have started, imported
TensorFlow and built the model, and behind a page of Spark's stack traces. One row of
the DataFrame and the model's shapes are enough to catch them here.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from zdk.errors import ConfigError

_CATEGORICAL = {"categorical_crossentropy", "categoricalcrossentropy", "categorical_focal_crossentropy",
                "categoricalfocalcrossentropy"}
_SPARSE = {"sparse_categorical_crossentropy", "sparsecategoricalcrossentropy"}


def loss_name(loss: Any) -> str:
    """A loss's normalized name: ``"categorical_crossentropy"`` for the string, the function or the class."""
    if isinstance(loss, str):
        return loss.lower()
    if isinstance(loss, dict):  # serialized
        return str(loss.get("config", {}).get("name") or loss.get("class_name", "")).lower()
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__
    return str(name).lower()


def first_row(dataframe: Any, columns: Sequence[str]) -> Any:
    """One row of ``columns``, or a clear error when the DataFrame is empty."""
    rows = dataframe.select(*columns).limit(1).collect()
    if not rows:
        raise ConfigError("`dataframe` must have rows to train on. Received: an empty DataFrame (check the filter, "
                          "the path or the split that produced it)", field="dataframe")
    return rows[0]


def _values(value: Any) -> np.ndarray:
    if hasattr(value, "toArray"):  # a Spark ML vector
        return np.asarray(value.toArray(), dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def value_shape(value: Any) -> tuple[int, ...]:
    """The shape a worker reads one row's ``value`` as (:func:`zdk.runtime.minibatches.column_to_numpy`
    without its rows axis): ``()`` for a number, ``(n, ...)`` for (nested) lists, ``(size,)`` for an
    ML vector."""
    if hasattr(value, "toArray"):  # a Spark ML vector, dense or sparse
        return (int(value.size),)
    if isinstance(value, (list, tuple)):
        return (len(value), *(value_shape(value[0]) if value else ()))
    return ()


def check_features(row: Any, features: Sequence[str], input_shapes: Sequence[tuple]) -> None:
    """Each feature column's values per row against its model input's shape."""
    for name, shape in zip(features, input_shapes):
        dims = [d for d in shape[1:]]
        if any(d is None for d in dims):
            continue
        expected = math.prod(int(d) for d in dims) if dims else 1
        got = _values(row[name]).size
        if got != expected:
            raise ConfigError(
                f"column `{name}` has {got} values per row; the model's input expects shape {tuple(dims)} "
                f"({expected} values). Check `features_col`, or the model's Input shape."
            )


def check_labels(row: Any, labels: Sequence[str], output_shapes: Sequence[tuple], losses: Sequence[Any]) -> None:
    """Each label column against its loss: class indices for sparse categorical cross-entropy,
    one-hot vectors of the output's width for categorical cross-entropy."""
    for name, shape, loss in zip(labels, output_shapes, losses):
        kind = loss_name(loss)
        width = shape[-1] if len(shape) > 1 else None
        value = _values(row[name])
        if kind in _CATEGORICAL:
            if value.size == 1 and width not in (None, 1):
                raise ConfigError(
                    f"`loss` {kind} needs one-hot labels of length {width}, but column `{name}` holds class "
                    f"indices (e.g. {value.ravel()[0]:g}). Use loss='sparse_categorical_crossentropy', or one-hot "
                    f"encode the labels with OneHotTransformer({width}, {name!r}, '{name}_onehot')."
                , field="loss")
            if width is not None and value.size not in (1, width):
                raise ConfigError(f"column `{name}` holds {value.size} values per row; the model's output has "
                                  f"{width} classes for {kind}.")
        elif kind in _SPARSE:
            if value.size > 1:
                raise ConfigError(
                    f"`loss` {kind} needs class indices, but column `{name}` holds vectors of length {value.size}. "
                    f"Use loss='categorical_crossentropy' for one-hot labels, or a column of class indices."
                , field="loss")
            index = float(value.ravel()[0])
            if width is not None and not (index.is_integer() and 0 <= index < width):
                raise ConfigError(f"column `{name}` holds the label {index:g}; the model's output has {width} "
                                  f"classes, so labels must be integers in [0, {width}).")


def losses_per_output(loss: Any, output_names: Sequence[str]) -> list[Any]:
    """The loss of each output, from a single loss, a list, or a dict by output name."""
    if isinstance(loss, dict) and "class_name" not in loss:
        return [loss.get(n) for n in output_names]
    if isinstance(loss, (list, tuple)):
        return list(loss)
    return [loss] * len(output_names)
