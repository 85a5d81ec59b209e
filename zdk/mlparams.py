"""Declaring ``pyspark.ml`` Params in one line."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

from pyspark.ml.param import Param, Params, TypeConverters

from zdk.errors import ConfigError

F = TypeVar("F", bound=Callable[..., None])


def param(name: str, doc: str, converter: Any = TypeConverters.identity) -> Param:
    """A class-level ``Param`` for a ``pyspark.ml`` stage (persisted by its name)."""
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class HasInputOutput(Params):
    """dist-keras's ``input_col`` / ``output_col`` pair."""

    input_col = param("input_col", "input column", TypeConverters.toString)
    output_col = param("output_col", "output column", TypeConverters.toString)


def positional_too(init: F) -> F:
    """pyspark's ``keyword_only``, also accepting dist-keras's positional order.

    The arguments given, by position or by name, are recorded in ``self._input_kwargs``
    (what pyspark's stages read); a wrong call is a :class:`ConfigError` naming the class.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            names = ", ".join(list(signature.parameters)[1:])
            raise ConfigError(f"{type(self).__name__}({names}): {exc}") from None
        given = dict(bound.arguments)
        given.pop(next(iter(signature.parameters)))
        self._input_kwargs = given
        init(self, **given)

    return wrapper  # type: ignore[return-value]
