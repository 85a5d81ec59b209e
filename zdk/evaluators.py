"""Evaluators computed on Spark: accuracy, mean Keras loss and F1, without collecting the data.

Each is a ``pyspark.ml.evaluation.Evaluator``; ``evaluate(df)`` returns a float.
Labels and predictions may be class indices, or one-hot / probability vectors or arrays
(compared by argmax).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterator

import numpy as np
from pyspark.ml.evaluation import Evaluator
from pyspark.sql import functions as F

from zdk.driver.columns import as_array, as_index
from zdk.errors import ConfigError

logger = logging.getLogger(__name__)


class AccuracyEvaluator(Evaluator):
    """The fraction of rows whose predicted class equals the label.

    Args:
        label_col: class index, or one-hot vector/array.
        prediction_col: class index, or probability vector/array.
    """

    def __init__(self, label_col: str = "label", prediction_col: str = "prediction") -> None:
        super().__init__()
        self.label_col = label_col
        self.prediction_col = prediction_col

    def _evaluate(self, dataframe: Any) -> float:
        hit = (as_index(dataframe, self.label_col) == as_index(dataframe, self.prediction_col)).cast("double")
        row = dataframe.agg(F.avg(hit).alias("accuracy"), F.count(F.lit(1)).alias("n")).first()
        if not row["n"]:
            raise ConfigError("`dataframe` must have rows to evaluate. Received: an empty DataFrame", field="dataframe")
        return float(row["accuracy"])

    def isLargerBetter(self) -> bool:
        return True


class F1Evaluator(Evaluator):
    """F1 score from a confusion matrix counted on Spark (only the k×k counts are collected).

    Args:
        label_col, prediction_col: as for :class:`AccuracyEvaluator`.
        average: ``"macro"`` (mean of per-class F1) or ``"binary"`` (F1 of ``positive_label``).
        positive_label: the positive class index for ``"binary"``.
    """

    def __init__(self, label_col: str = "label", prediction_col: str = "prediction", *, average: str = "macro",
                 positive_label: int = 1) -> None:
        super().__init__()
        if average not in ("macro", "binary"):
            raise ConfigError(f"`average` must be 'macro' or 'binary'. Received: average={average!r}", field="average")
        self.label_col, self.prediction_col = label_col, prediction_col
        self.average, self.positive_label = average, positive_label

    def _evaluate(self, dataframe: Any) -> float:
        pairs = dataframe.select(as_index(dataframe, self.label_col).alias("y"),
                                 as_index(dataframe, self.prediction_col).alias("p"))
        counts = {(int(r["y"]), int(r["p"])): int(r["count"]) for r in pairs.groupBy("y", "p").count().collect()}
        if not counts:
            raise ConfigError("`dataframe` must have rows to evaluate. Received: an empty DataFrame", field="dataframe")
        classes = sorted({c for pair in counts for c in pair})
        if self.average == "binary":
            classes = [self.positive_label]
        scores = []
        for c in classes:
            tp = counts.get((c, c), 0)
            fp = sum(n for (y, p), n in counts.items() if p == c and y != c)
            fn = sum(n for (y, p), n in counts.items() if y == c and p != c)
            scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return float(np.mean(scores))

    def isLargerBetter(self) -> bool:
        return True


def _loss_batches(batches: Iterator, *, loss: Any, label: str, prediction: str) -> Iterator:
    import keras
    import pyarrow as pa

    from zdk.runtime.minibatches import column_to_numpy

    fn = keras.losses.get(loss)
    for batch in batches:
        y = column_to_numpy(batch.column(label), label)
        p = column_to_numpy(batch.column(prediction), prediction)
        values = np.asarray(fn(y, p), dtype=np.float64).reshape(len(y), -1).mean(axis=1)
        yield pa.RecordBatch.from_pydict({"total": [float(values.sum())], "rows": [len(values)]})


class LossEvaluator(Evaluator):
    """The mean of a Keras loss over the rows, computed per Arrow batch on the executors.

    Args:
        loss: a Keras loss name (e.g. ``"categorical_crossentropy"``) or its serialized config.
        label_col: the labels as the loss expects them (index or one-hot).
        prediction_col: the model outputs (vector or array).
    """

    def __init__(self, loss: Any = "categorical_crossentropy", label_col: str = "label",
                 prediction_col: str = "prediction") -> None:
        super().__init__()
        json.dumps(loss)  # shipped to executors as JSON, never pickled objects
        self.loss, self.label_col, self.prediction_col = loss, label_col, prediction_col

    def _evaluate(self, dataframe: Any) -> float:
        staged = dataframe.select(as_array(dataframe, self.label_col).cast("array<float>").alias("y"),
                                  as_array(dataframe, self.prediction_col).cast("array<float>").alias("p"))
        loss = self.loss

        def run(batches: Iterator) -> Iterator:
            return _loss_batches(batches, loss=loss, label="y", prediction="p")

        row = staged.mapInArrow(run, "total double, rows long").agg(
            F.sum("total").alias("total"), F.sum("rows").alias("rows")).first()
        if not row["rows"]:
            raise ConfigError("`dataframe` must have rows to evaluate. Received: an empty DataFrame", field="dataframe")
        return float(row["total"] / row["rows"])

    def isLargerBetter(self) -> bool:
        return False
