"""Declaring ``pyspark.ml`` Params in one line."""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters


def param(name: str, doc: str, converter: Any = TypeConverters.identity) -> Param:
    """A class-level ``Param`` for a ``pyspark.ml`` stage (persisted by its name)."""
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class HasInputOutput(Params):
    """dist-keras's ``input_col`` / ``output_col`` pair."""

    input_col = param("input_col", "input column", TypeConverters.toString)
    output_col = param("output_col", "output column", TypeConverters.toString)
