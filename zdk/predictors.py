"""Batch prediction on Spark: the model is loaded once per Python worker, rows go through Arrow.

dist-keras's ModelPredictor called ``model.predict`` once per row; here each Arrow
record batch is one numpy array and one forward pass per ``batch_size`` rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from zdk.runtime.minibatches import column_to_numpy, fit_to_shapes
from zdk.errors import ConfigError
from zdk.ps.layout import FlatLayout
from zdk.runtime.models import canonical_architecture

logger = logging.getLogger(__name__)

_models: dict[str, Any] = {}
_weights_of: dict[str, str] = {}
_models_lock = threading.Lock()
_TMP = "__zdk_features_{}"


def _cached_model(key: str, model_json: str, shapes: list[list[int]], weights: bytes, modules: Sequence[str]) -> Any:
    """The model for ``key`` in this Python worker process. One model object is kept per
    architecture (layer names aside) and only its weights change between models, so its predict
    function is traced once: a new model per call made TensorFlow retrace, and warn, again and again."""
    with _models_lock:
        architecture = canonical_architecture(model_json)
        model = _models.get(architecture)
        if model is None:
            import importlib

            import keras

            for module in modules:
                importlib.import_module(module)
            model = keras.models.model_from_json(model_json)
            _models.clear()  # one model per worker at a time; a new one replaces it
            _models[architecture] = model
        if _weights_of.get(architecture) != key:
            layout = FlatLayout(tuple(tuple(s) for s in shapes))
            model.set_weights(layout.views(np.frombuffer(weights, dtype="<f4").copy()))
            _weights_of.clear()
            _weights_of[architecture] = key
        return model


def _predict_batches(batches: Iterator, *, key: str, payload: Any, features: Sequence[str], output: str,
                     batch_size: int) -> Iterator:
    import pyarrow as pa

    spec = payload.value
    model = _cached_model(key, spec["model"], spec["shapes"], spec["weights"], spec["modules"])
    shapes = [tuple(t.shape) for t in model.inputs]
    for batch in batches:
        xs = fit_to_shapes([column_to_numpy(batch.column(f), f) for f in features], shapes, features)
        parts = []
        for start in range(0, batch.num_rows, batch_size):
            chunk = [x[start:start + batch_size] for x in xs]
            rows = len(chunk[0])
            if rows < batch_size:
                # One input shape for every call: a short last chunk would retrace the model's
                # function for every new length (TensorFlow warns after a few).
                chunk = [np.concatenate([c, np.zeros((batch_size - rows, *c.shape[1:]), c.dtype)]) for c in chunk]
            out = model.predict_on_batch(chunk[0] if len(chunk) == 1 else chunk)
            parts.append(np.asarray(out, dtype=np.float32).reshape(batch_size, -1)[:rows])
        predictions = np.concatenate(parts) if parts else np.empty((0, 1), np.float32)
        width = predictions.shape[1] if predictions.ndim == 2 else 1
        column = pa.FixedSizeListArray.from_arrays(pa.array(predictions.ravel()), width).cast(pa.list_(pa.float32()))
        yield batch.append_column(output, column)


class ModelPredictor:
    """Adds a model's output as a dense vector column.

    Args:
        keras_model: a built ``keras.Model``.
        features_col: the feature column, or a list for multi-input models.
        output_col: the column added (a dense ``pyspark.ml`` vector).
        batch_size: rows per forward pass.
        custom_modules: modules executors import before rebuilding the model.
    """

    def __init__(self, keras_model: Any, features_col: str | Sequence[str] = "features",
                 output_col: str = "prediction", *, batch_size: int = 1024, custom_modules: Sequence[str] = ()) -> None:
        self.keras_model = keras_model
        self.features_col = (features_col,) if isinstance(features_col, str) else tuple(features_col)
        if not self.features_col:
            raise ConfigError("`features_col` must name at least one column. Received: features_col=[]",
                              field="features_col")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"`batch_size` must be an int ≥ 1. Received: batch_size={batch_size!r}",
                              field="batch_size")
        self.output_col = output_col
        self.batch_size = batch_size
        self.custom_modules = tuple(custom_modules)

    def predict(self, dataframe: Any) -> Any:
        """``dataframe`` with ``output_col`` added."""
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        from zdk.driver.columns import SCALAR, as_array, column_kind

        if self.output_col in dataframe.columns:
            raise ConfigError(f"`output_col` must be a new column. Received: output_col={self.output_col!r} exists",
                              field="output_col")
        weights = self.keras_model.get_weights()
        layout = FlatLayout.of(weights)
        flat = layout.flatten(weights).tobytes()
        model_json = self.keras_model.to_json()
        key = hashlib.sha256(model_json.encode() + flat).hexdigest()
        spec = {"model": model_json, "shapes": [list(s) for s in layout.shapes], "weights": flat,
                "modules": list(self.custom_modules)}
        payload = dataframe.sparkSession.sparkContext.broadcast(spec)
        staged = dataframe
        renamed = []
        for i, name in enumerate(self.features_col):
            if column_kind(dataframe, name) == SCALAR:
                staged = staged.withColumn(_TMP.format(i), as_array(dataframe, name).cast("array<float>"))
                renamed.append(_TMP.format(i))
            else:  # vectors and arrays are read from Arrow as they are, without a copy column
                renamed.append(name)
        schema = T.StructType(staged.schema.fields + [T.StructField(self.output_col, T.ArrayType(T.FloatType()))])
        output, batch_size = self.output_col, self.batch_size

        def run(batches: Iterator) -> Iterator:
            return _predict_batches(batches, key=key, payload=payload, features=renamed, output=output,
                                    batch_size=batch_size)

        predicted = staged.mapInArrow(run, schema)
        predicted = predicted.drop(*[c for c in renamed if c.startswith("__zdk_")])
        return predicted.withColumn(self.output_col, array_to_vector(F.col(self.output_col)))

    transform = predict


def describe(model: Any) -> str:
    """A short JSON description of a model's inputs and outputs, for logs."""
    return json.dumps({"inputs": [list(t.shape) for t in model.inputs], "outputs": [list(t.shape) for t in model.outputs]})
