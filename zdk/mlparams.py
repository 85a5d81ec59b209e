"""Declaring ``pyspark.ml`` Params in one line."""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters

from zdk.signatures import checked_call


def param(name: str, doc: str, converter: Any = TypeConverters.identity) -> Param:
    """A class-level ``Param`` for a ``pyspark.ml`` stage (persisted by its name)."""
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class HasInputOutput(Params):
    """dist-keras's ``input_col`` / ``output_col`` pair."""

    input_col = param("input_col", "input column", TypeConverters.toString)
    output_col = param("output_col", "output column", TypeConverters.toString)


def _record_input_kwargs(stage: Any, given: dict[str, Any], complete: dict[str, Any]) -> None:
    stage._input_kwargs = given


#: pyspark's ``keyword_only``, also accepting dist-keras's positional order: the arguments given,
#: by position or by name, are recorded in ``self._input_kwargs`` (what pyspark's stages read); a
#: wrong call is a :class:`ConfigError` naming the class (see :mod:`zdk.signatures`).
positional_too = checked_call(_record_input_kwargs)
