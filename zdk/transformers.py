"""dist-keras's transformers as ``pyspark.ml`` Transformers built from Spark SQL expressions.

Each keeps dist-keras's constructor arguments and ``transform(df)`` (one column added),
runs as column expressions in the JVM (no per-row Python), and is a Pipeline stage
that ``Pipeline.save`` / ``PipelineModel.load`` persist.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector
from pyspark.ml.param import TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import functions as F

from zdk.driver.columns import ARRAY, SCALAR, VECTOR, argmax, as_array, column_kind
from zdk.errors import ConfigError
from zdk.mlparams import HasInputOutput, positional_too
from zdk.mlparams import param as _param

logger = logging.getLogger(__name__)


class _ZdkTransformer(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """Common plumbing: keyword-only params, required-param checks, error wording."""

    _required: tuple[str, ...] = ()
    _input_kwargs: dict[str, Any]  # set by pyspark's @positional_too

    def _configure(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if value is not None:
                try:
                    self._set(**{name: value})
                except TypeError:  # pyspark's type converters say only "Invalid param value"
                    raise ConfigError(f"`{name}` has the wrong type for {type(self).__name__}. Received: "
                                      f"{name}={value!r}", field=name) from None

    def _value(self, name: str) -> Any:
        if not self.isDefined(self.getParam(name)):
            raise ConfigError(f"`{name}` must be set on {type(self).__name__}. Received: {name}=None", field=name)
        return self.getOrDefault(self.getParam(name))

    def _check_required(self) -> None:
        for name in self._required:
            self._value(name)


class MinMaxTransformer(_ZdkTransformer, HasInputOutput):
    """x' = (x − o_min)·(n_max − n_min)/(o_max − o_min) + n_min, elementwise on a vector or
    array column, or on a scalar column with ``is_vector=False``.

    Args:
        o_min, o_max: the old range.
        n_min, n_max: the new range.
        input_col, output_col: the column read and the column added.
        is_vector: the input holds vectors or arrays (True) or numbers (False).
    """

    o_min = _param("o_min", "old minimum", TypeConverters.toFloat)
    o_max = _param("o_max", "old maximum", TypeConverters.toFloat)
    n_min = _param("n_min", "new minimum", TypeConverters.toFloat)
    n_max = _param("n_max", "new maximum", TypeConverters.toFloat)
    is_vector = _param("is_vector", "whether the input is a vector", TypeConverters.toBoolean)
    _required = ("o_min", "o_max", "n_min", "n_max", "input_col", "output_col")

    @positional_too
    def __init__(self, o_min: float | None = None, o_max: float | None = None, n_min: float | None = None,
                 n_max: float | None = None, input_col: str | None = None, output_col: str | None = None,
                 is_vector: bool = True) -> None:
        super().__init__()
        if o_min is not None and o_max is not None and o_min == o_max:
            raise ConfigError(f"`o_max` must differ from `o_min`. Received: o_min={o_min}, o_max={o_max}",
                              field="o_max")
        self._setDefault(is_vector=True)
        self._configure(self._input_kwargs)

    def _transform(self, dataframe: Any) -> Any:
        self._check_required()
        o_min, o_max, n_min, n_max = (self._value(k) for k in ("o_min", "o_max", "n_min", "n_max"))
        scale = (n_max - n_min) / (o_max - o_min)
        name, out = self._value("input_col"), self._value("output_col")
        kind = column_kind(dataframe, name)
        if not self._value("is_vector"):
            if kind != SCALAR:
                raise ConfigError(f"`is_vector` must be True for the {kind} column `{name}`. Received: is_vector=False",
                                  field="is_vector")
            return dataframe.withColumn(out, (F.col(name) - o_min) * scale + n_min)
        if kind == SCALAR:
            raise ConfigError(f"`is_vector` must be False for the numeric column `{name}`. Received: is_vector=True",
                              field="is_vector")
        scaled = F.transform(as_array(dataframe, name), lambda x: (x - o_min) * scale + n_min)
        return dataframe.withColumn(out, array_to_vector(scaled) if kind == VECTOR else scaled)


class BinaryLabelTransformer(_ZdkTransformer):
    """[1.0, 0.0] where ``input_column`` equals ``label``, [0.0, 1.0] elsewhere, as a dense vector.

    Args:
        input_column, output_column: dist-keras's names (``_column``, not ``_col``).
        label: the positive value.
    """

    input_column = _param("input_column", "input column", TypeConverters.toString)
    output_column = _param("output_column", "output column", TypeConverters.toString)
    label = _param("label", "the positive label")
    _required = ("input_column", "output_column", "label")

    @positional_too
    def __init__(self, input_column: str | None = None, output_column: str | None = None,
                 label: Any = None) -> None:
        super().__init__()
        self._configure(self._input_kwargs)

    def _transform(self, dataframe: Any) -> Any:
        self._check_required()
        name = self._value("input_column")
        column_kind(dataframe, name)
        hot = F.col(name) == F.lit(self._value("label"))
        pair = F.when(hot, F.array(F.lit(1.0), F.lit(0.0))).otherwise(F.array(F.lit(0.0), F.lit(1.0)))
        return dataframe.withColumn(self._value("output_column"), array_to_vector(pair))


class StandardTransformer(_ZdkTransformer):
    """For each column c, adds c + suffix = (c − mean(c)) / stddev_pop(c), the statistics
    computed on the DataFrame being transformed (as dist-keras did), in one aggregation.
    A constant column (stddev 0) becomes 0.

    Args:
        columns: numeric columns to standardize.
        suffix: appended to each column's name.
    """

    columns = _param("columns", "columns to standardize", TypeConverters.toListString)
    suffix = _param("suffix", "suffix of the output columns", TypeConverters.toString)
    _required = ("columns",)

    @positional_too
    def __init__(self, columns: Sequence[str] | None = None, suffix: str = "_normalized") -> None:
        super().__init__()
        if columns is not None and (isinstance(columns, str) or not columns):
            raise ConfigError(f"`columns` must be a non-empty list of column names. Received: columns={columns!r}",
                              field="columns")
        self._setDefault(suffix="_normalized")
        self._configure(self._input_kwargs)

    def _transform(self, dataframe: Any) -> Any:
        self._check_required()
        columns, suffix = self._value("columns"), self._value("suffix")
        for c in columns:
            if column_kind(dataframe, c) != SCALAR:
                raise ConfigError(f"`columns` must name numeric columns. Received: `{c}` is not numeric",
                                  field="columns")
        aggs = [F.mean(c).alias(f"m{i}") for i, c in enumerate(columns)]
        aggs += [F.stddev_pop(c).alias(f"s{i}") for i, c in enumerate(columns)]
        stats = dataframe.agg(*aggs).first()
        added = {}
        for i, c in enumerate(columns):
            mean, std = stats[f"m{i}"], stats[f"s{i}"]
            if std is None or std == 0:
                logger.warning("column `%s` is constant; %s%s is 0", c, c, suffix)
                added[c + suffix] = F.lit(0.0)
            else:
                added[c + suffix] = (F.col(c) - mean) / std
        # One projection: a withColumn per column re-analyses a plan that grows with each (seconds at 30 columns).
        return dataframe.withColumns(added)


class DenseTransformer(_ZdkTransformer, HasInputOutput):
    """A sparse (or dense) vector column as a dense vector column."""

    _required = ("input_col", "output_col")

    @positional_too
    def __init__(self, input_col: str | None = None, output_col: str | None = None) -> None:
        super().__init__()
        self._configure(self._input_kwargs)

    def _transform(self, dataframe: Any) -> Any:
        self._check_required()
        name = self._value("input_col")
        return dataframe.withColumn(self._value("output_col"), array_to_vector(as_array(dataframe, name)))


class ReshapeTransformer(_ZdkTransformer, HasInputOutput):
    """A vector or array as nested arrays of ``shape`` (row-major), e.g. (32, 32, 3) for images.
    A row of another size fails the job with an error naming the column and the sizes.

    Args:
        input_col, output_col: the column read and the column added.
        shape: the target shape, without the row dimension.
    """

    shape = _param("shape", "target shape", TypeConverters.toListInt)
    _required = ("input_col", "output_col", "shape")

    @positional_too
    def __init__(self, input_col: str | None = None, output_col: str | None = None,
                 shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if shape is not None and (not shape or any(int(d) < 1 for d in shape)):
            raise ConfigError(f"`shape` must be positive dimensions. Received: shape={tuple(shape)}", field="shape")
        self._configure(self._input_kwargs)

    def _transform(self, dataframe: Any) -> Any:
        self._check_required()
        name, shape = self._value("input_col"), list(self._value("shape"))
        size = math.prod(shape)
        array = as_array(dataframe, name)
        checked = F.when(F.size(array) == size, array).otherwise(F.raise_error(F.concat(
            F.lit(f"ReshapeTransformer: column `{name}` must hold {size} values for shape {tuple(shape)}. Received: "),
            F.size(array).cast("string"), F.lit(" values"))))
        return dataframe.withColumn(self._value("output_col"), _nest(checked, shape))


def _nest(array: Any, shape: list[int]) -> Any:
    if len(shape) == 1:
        return array
    inner = math.prod(shape[1:])
    rows = F.transform(F.sequence(F.lit(0), F.lit(shape[0] - 1)),
                       lambda i: F.slice(array, i * inner + 1, inner))
    return F.transform(rows, lambda row: _nest(row, shape[1:])) if len(shape) > 2 else rows


class OneHotTransformer(_ZdkTransformer, HasInputOutput):
    """An integer label as a one-hot ``array<double>`` of length ``output_dim``; a label out of
    [0, output_dim) fails the job with an error naming the value."""

    output_dim = _param("output_dim", "number of classes", TypeConverters.toInt)
    _required = ("output_dim", "input_col", "output_col")

    @positional_too
    def __init__(self, output_dim: int | None = None, input_col: str | None = None,
                 output_col: str | None = None) -> None:
        super().__init__()
        self._configure(self._input_kwargs)
        if output_dim is not None and self.getOrDefault(self.output_dim) < 1:
            raise ConfigError(f"`output_dim` must be ≥ 1. Received: output_dim={output_dim}", field="output_dim")

    def _transform(self, dataframe: Any) -> Any:
        self._check_required()
        name, dim = self._value("input_col"), self._value("output_dim")
        if column_kind(dataframe, name) != SCALAR:
            raise ConfigError(f"`input_col` must be a numeric label column. Received: `{name}`", field="input_col")
        label = F.col(name).cast("int")
        hot = F.transform(F.sequence(F.lit(0), F.lit(dim - 1)), lambda i: F.when(i == label, 1.0).otherwise(0.0))
        valid = (label >= 0) & (label < dim) & (F.col(name) == label)
        checked = F.when(valid, hot).otherwise(F.raise_error(F.concat(
            F.lit(f"OneHotTransformer: column `{name}` must hold integers in [0, {dim}). Received: "),
            F.col(name).cast("string"))))
        return dataframe.withColumn(self._value("output_col"), checked)


class LabelIndexTransformer(_ZdkTransformer, HasInputOutput):
    """The first index whose value is ≥ ``activation_threshold``; otherwise the argmax; and
    ``default_index`` when no value is above 0. The output is a double.

    Args:
        output_dim: the vector length (checked).
        input_col, output_col: defaults "prediction" and "prediction_index".
        default_index: the index when nothing is positive.
        activation_threshold: the threshold.
    """

    output_dim = _param("output_dim", "vector length", TypeConverters.toInt)
    default_index = _param("default_index", "index when no value is positive", TypeConverters.toInt)
    activation_threshold = _param("activation_threshold", "threshold", TypeConverters.toFloat)
    _required = ("output_dim",)

    @positional_too
    def __init__(self, output_dim: int | None = None, input_col: str = "prediction",
                 output_col: str = "prediction_index", default_index: int = 0,
                 activation_threshold: float = 0.55) -> None:
        super().__init__()
        self._setDefault(input_col="prediction", output_col="prediction_index", default_index=0,
                         activation_threshold=0.55)
        self._configure(self._input_kwargs)

    def _transform(self, dataframe: Any) -> Any:
        self._check_required()
        name, dim = self._value("input_col"), self._value("output_dim")
        if column_kind(dataframe, name) == SCALAR:
            raise ConfigError(f"`input_col` must be a vector or array column. Received: `{name}` is numeric",
                              field="input_col")
        array = as_array(dataframe, name)
        threshold = self._value("activation_threshold")
        first = F.array_position(F.transform(array, lambda x: x >= threshold), True)
        index = (F.when(first > 0, first - 1)
                 .when(F.array_max(array) > 0, argmax(array))
                 .otherwise(F.lit(self._value("default_index"))))
        checked = F.when(F.size(array) == dim, index.cast("double")).otherwise(F.raise_error(F.concat(
            F.lit(f"LabelIndexTransformer: column `{name}` must hold {dim} values. Received: "),
            F.size(array).cast("string"))))
        return dataframe.withColumn(self._value("output_col"), checked)
