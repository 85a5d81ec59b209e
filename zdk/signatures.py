"""dist-keras's call shapes: each class's positional order, checked with clear errors, and the
arguments as given recorded, for trainers and transformers alike.

A call with too many positional arguments, or one given both by position and by name, is a
:class:`~zdk.errors.ConfigError` naming the class and its positional order, not Python's
``TypeError``; the arguments as given (positional ones by name, ``**kwargs`` flattened) go to
``record``, so the object can be described later (a job spec, pyspark's ``_input_kwargs``).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from zdk.errors import ConfigError

F = TypeVar("F", bound=Callable[..., None])
#: ``record(obj, given, complete)``: the arguments as given, and with every default filled in.
Recorder = Callable[[Any, dict[str, Any], dict[str, Any]], None]


def checked_call(record: Recorder) -> Callable[[F], F]:
    """Wraps an ``__init__`` so its calls are checked against its positional order and recorded."""

    def decorate(init: F) -> F:
        signature = inspect.signature(init)
        parameters = list(signature.parameters.values())[1:]
        names = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        shape = f"({', '.join(names)})"

        @functools.wraps(init)
        def checked(self: Any, *args: Any, **kwargs: Any) -> None:
            cls = type(self).__name__
            if len(args) > len(names):
                raise ConfigError(f"{cls}{shape} takes at most {len(names)} positional arguments; pass the rest "
                                  f"by name. Received: {len(args)} positional arguments")
            for name, value in zip(names, args):
                if name in kwargs:
                    raise ConfigError(f"`{name}` was given both by position and by name to {cls}. Received: "
                                      f"{name}={value!r} and {name}={kwargs[name]!r}", field=name)
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as exc:
                raise ConfigError(f"{cls}{shape}: {exc}") from None
            given = _flat(signature, bound.arguments)
            bound.apply_defaults()
            record(self, given, _flat(signature, bound.arguments))
            init(self, *args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate


def _flat(signature: inspect.Signature, arguments: dict[str, Any]) -> dict[str, Any]:
    """The bound arguments but ``self``, with a ``**kwargs`` parameter's items in its place."""
    out: dict[str, Any] = {}
    for name, value in list(arguments.items())[1:]:
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class Option:
    """A keyword-only argument that several signatures share: its name, type (as written) and default."""

    name: str
    annotation: str
    default: Any


def with_options(*options: Option) -> Callable[[F], F]:
    """Adds ``options`` to the decorated function's signature as keyword-only arguments, between its
    own arguments and its ``**kwargs`` (named ``algorithm_params`` in the signature shown), which
    receives them. ``inspect.signature``, ``help()`` and :func:`checked_call` see the whole
    signature; the options are declared once for every function that takes them."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=o.annotation)
                 for o in options]
        rest = inspect.Parameter("algorithm_params", inspect.Parameter.VAR_KEYWORD, annotation="Any")
        function.__signature__ = signature.replace(parameters=[*own, *added, rest])  # type: ignore[attr-defined]
        return function

    return decorate


def keyword_options(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only arguments of ``function``'s signature and their defaults."""
    return {p.name: p.default for p in inspect.signature(function).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}
