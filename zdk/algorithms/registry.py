"""The algorithm registry: built-ins, ``@register`` and the ``zdk.algorithms`` entry-point group."""

from __future__ import annotations

import logging
import threading
from importlib import metadata
from typing import Any, Callable, overload

from zdk.algorithms.base import Algorithm
from zdk.errors import AlgorithmNotFound, ConfigError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "zdk.algorithms"

_registry: dict[str, Algorithm] = {}
_lock = threading.RLock()
_entry_points_loaded = False


def _from_class(name: str, cls: type) -> Algorithm:
    values = {f: getattr(cls, f) for f in Algorithm.FIELDS if hasattr(cls, f)}
    if "params" not in values and hasattr(cls, "Params"):
        values["params"] = cls.Params
    values.setdefault("server_update", None)
    return Algorithm(name=name, doc=(cls.__doc__ or "").strip(), **values)


def _add(algorithm: Algorithm) -> Algorithm:
    with _lock:
        existing = _registry.get(algorithm.name)
        if existing is not None and existing is not algorithm:
            raise ConfigError(
                f"`name` must be unique. Received: name={algorithm.name!r}, already registered by "
                f"{existing.server_update!r}"
            , field="name")
        _registry[algorithm.name] = algorithm
    return algorithm


@overload
def register(target: Algorithm) -> Algorithm: ...
@overload
def register(target: str) -> Callable[[type], Algorithm]: ...


def register(target: Algorithm | str) -> Algorithm | Callable[[type], Algorithm]:
    """Registers an algorithm under its name.

    Use it on an :class:`Algorithm`, or as a class decorator whose class attributes
    (``Params`` and any of :attr:`Algorithm.FIELDS`: ``server_update``, ``worker_delta``,
    ``worker_reset``, the flags and the hooks) and docstring describe the algorithm; the
    decorator returns the frozen :class:`Algorithm`::

        @register("downpour")
        class Downpour:
            '''θ̃ ← θ̃ + Δ'''
            Params = Params
            additive = True  # the server update is θ̃ + Δ
            worker_delta = staticmethod(accumulated_delta)
            ...

    Raises:
        ConfigError: when the name is already taken by another algorithm.
    """
    if isinstance(target, Algorithm):
        return _add(target)
    if not isinstance(target, str):
        raise ConfigError(f"`register` takes a name or an Algorithm. Received: {target!r}", field="register")

    def decorate(cls: type) -> Algorithm:
        return _add(_from_class(target, cls))

    return decorate


def unregister(name: str) -> None:
    """Removes ``name``; for tests and for plugins that replace themselves."""
    with _lock:
        _registry.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded: Any = ep.load()
            except Exception:
                logger.exception("could not load algorithm plugin %r (%s)", ep.name, ep.value)
                continue
            if isinstance(loaded, Algorithm):
                _add(loaded)
            elif ep.name not in _registry:
                logger.warning(
                    "entry point %r (%s) registered nothing: it must name an Algorithm or a module that "
                    "calls zdk.algorithms.register", ep.name, ep.value,
                )


def reload_entry_points() -> None:
    """Scans the ``zdk.algorithms`` entry points again (after installing a plugin)."""
    global _entry_points_loaded
    with _lock:
        _entry_points_loaded = False
    _load_entry_points()


def available() -> list[str]:
    """Every registered name, plugins included, sorted."""
    _load_entry_points()
    with _lock:
        return sorted(_registry)


def get(algorithm: str | Algorithm) -> Algorithm:
    """The algorithm registered as ``algorithm``, or ``algorithm`` itself when it already is one.

    Raises:
        AlgorithmNotFound: naming the unknown value and listing the available ones.
    """
    if isinstance(algorithm, Algorithm):
        return algorithm
    if isinstance(algorithm, str):
        with _lock:
            found = _registry.get(algorithm)
        if found is None:
            _load_entry_points()
            with _lock:
                found = _registry.get(algorithm)
        if found is not None:
            return found
    raise AlgorithmNotFound(f"Could not interpret algorithm: {algorithm!r}; available: {', '.join(available())}")
