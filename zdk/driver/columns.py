"""Kinds of Spark columns, and the casts that training, transformers and evaluators apply to them.

A column holds a number (``scalar``), an array of numbers, possibly nested for images
(``array``), or a Spark ML vector (``vector``); anything else is refused here, once, with the
column's name and type.
"""

from __future__ import annotations

from typing import Any

from zdk.errors import ConfigError

SCALAR, ARRAY, VECTOR = "scalar", "array", "vector"


def _levels(dtype: Any) -> tuple[Any, list[Any]]:
    """The element type of a (nested) array type, and its array types from the outermost in."""
    from pyspark.sql import types as T

    arrays = []
    while isinstance(dtype, T.ArrayType):
        arrays.append(dtype)
        dtype = dtype.elementType
    return dtype, arrays


def column_kind(dataframe: Any, name: str) -> str:
    """``"vector"`` (Spark ML vector), ``"array"`` ((nested) array of numbers) or ``"scalar"`` (a number).

    Raises:
        ConfigError: naming the column when it is missing or of another type.
    """
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    if name not in dataframe.columns:
        raise ConfigError(f"column `{name}` is not in the DataFrame. Received columns: {dataframe.columns}")
    dtype = dataframe.schema[name].dataType
    if isinstance(dtype, VectorUDT):
        return VECTOR
    element, arrays = _levels(dtype)
    if isinstance(element, (T.NumericType, T.BooleanType)):
        return ARRAY if arrays else SCALAR
    raise ConfigError(f"column `{name}` must be a number, an array of numbers or an ML vector. "
                      f"Received: {dtype.simpleString()}")


def as_float32(dataframe: Any, name: str) -> Any:
    """Column ``name`` as training reads it: ``float``, or a (nested) ``array<float>`` (vectors converted)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    kind = column_kind(dataframe, name)
    if kind == VECTOR:
        return vector_to_array(F.col(name), "float32")
    if kind == SCALAR:
        return F.col(name).cast("float")
    dtype: Any = T.FloatType()
    for array in reversed(_levels(dataframe.schema[name].dataType)[1]):
        dtype = T.ArrayType(dtype, containsNull=array.containsNull)
    return F.col(name).cast(dtype)


def as_array(dataframe: Any, name: str) -> Any:
    """Column ``name`` as a flat ``array<double>`` (a vector is converted, a scalar wrapped).

    Raises:
        ConfigError: for a nested array, which has no flat form here (reshape it first).
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    kind = column_kind(dataframe, name)
    if kind == VECTOR:
        return vector_to_array(F.col(name), "float64")
    if kind == ARRAY:
        if len(_levels(dataframe.schema[name].dataType)[1]) > 1:
            raise ConfigError(f"column `{name}` must be a flat array of numbers here. Received: "
                              f"{dataframe.schema[name].dataType.simpleString()}; flatten it with F.flatten")
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
