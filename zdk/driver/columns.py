"""Spark column helpers shared by transformers and evaluators: kinds of columns, arrays and argmax."""

from __future__ import annotations

from typing import Any

from zdk.errors import ConfigError

SCALAR, ARRAY, VECTOR = "scalar", "array", "vector"


def column_kind(dataframe: Any, name: str) -> str:
    """``"vector"`` (Spark ML vector), ``"array"`` (array of numbers) or ``"scalar"`` (a number)."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    if name not in dataframe.columns:
        raise ConfigError(f"column `{name}` is not in the DataFrame. Received columns: {dataframe.columns}")
    dtype = dataframe.schema[name].dataType
    if isinstance(dtype, VectorUDT):
        return VECTOR
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType):
        return ARRAY
    if isinstance(dtype, (T.NumericType, T.BooleanType)):
        return SCALAR
    raise ConfigError(f"column `{name}` must be a number, an array of numbers or an ML vector. "
                      f"Received: {dtype.simpleString()}")


def as_array(dataframe: Any, name: str) -> Any:
    """Column ``name`` as ``array<double>`` (a vector is converted, a scalar wrapped)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    kind = column_kind(dataframe, name)
    if kind == VECTOR:
        return vector_to_array(F.col(name), "float64")
    if kind == ARRAY:
        return F.col(name).cast("array<double>")
    return F.array(F.col(name).cast("double"))


def argmax(array: Any) -> Any:
    """0-based index of the largest element of an array column (the first when tied)."""
    from pyspark.sql import functions as F

    return (F.array_position(array, F.array_max(array)) - 1).cast("double")


def as_index(dataframe: Any, name: str) -> Any:
    """A class index from a label or prediction column: a scalar as is, a vector or array by argmax."""
    from pyspark.sql import functions as F

    if column_kind(dataframe, name) == SCALAR:
        return F.col(name).cast("double")
    return argmax(as_array(dataframe, name))
