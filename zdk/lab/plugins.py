"""Plugin modules for the lab: imported by module name everywhere, so shards and workers find them.

A ``.py`` path is imported as the module its file name makes, from its directory (put on
``sys.path`` here, and on the shards' ``PYTHONPATH``): the algorithms it registers then
name that module, which every process can import. An installed plugin needs none of
this; its ``zdk.algorithms`` entry point is found by name.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Mapping

from zdk.algorithms.sources import load_sources
from zdk.errors import ConfigError


def split(items: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(module names, directories their ``.py`` files are in) for module names or ``.py`` paths."""
    names: list[str] = []
    dirs: list[str] = []
    for item in items:
        if item.endswith(".py"):
            path = os.path.abspath(item)
            if not os.path.isfile(path):
                raise ConfigError(f"`plugin` must be a module name or an existing .py file. Received: plugin={item!r}",
                                  field="plugin")
            stem = os.path.splitext(os.path.basename(path))[0]
            if not stem.isidentifier():
                raise ConfigError(f"`plugin` file name must be a valid module name. Received: plugin={item!r}",
                                  field="plugin")
            names.append(stem)
            dirs.append(os.path.dirname(path))
        else:
            names.append(item)
    return tuple(dict.fromkeys(names)), tuple(dict.fromkeys(dirs))


def load_plugins(items: Iterable[str]) -> tuple[str, ...]:
    """Imports each plugin (registering its algorithms) once; returns their module names."""
    names, dirs = split(items)
    for directory in reversed(dirs):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    load_sources(names)
    return names


def child_env(items: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the plugins' directories first on ``PYTHONPATH``."""
    out = dict(os.environ if env is None else env)
    _, dirs = split(items)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (*dirs, out.get("PYTHONPATH")) if p)
    return out
