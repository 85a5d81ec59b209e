"""Where an algorithm's code lives, so shard processes and Spark executors can load it too.

An algorithm registered at run time (in a user's script or module, not an installed
plugin) exists only in the process that registered it. Shards and executors import its
module by name, or, for a script run as ``__main__``, its file under another module name
(so the script's ``if __name__ == "__main__"`` block does not run there).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
import threading
from typing import Iterable

from zdk.algorithms.base import Algorithm
from zdk.algorithms.codecs import Codec, get_codec
from zdk.errors import ConfigError

logger = logging.getLogger(__name__)

_lock = threading.Lock()


def sources(algorithm: Algorithm, codec: str | Codec | None = None) -> list[str]:
    """Module names or ``.py`` paths that define ``algorithm``'s functions and ``codec``'s (the
    algorithm's own codec when None), zdk's own excluded."""
    functions = [algorithm.server_update, algorithm.worker_delta, algorithm.worker_reset, algorithm.on_leave,
                 algorithm.on_reregister]
    chosen = codec if codec is not None else algorithm.codec
    found = _modules(functions, f"algorithm {algorithm.name!r}")
    if chosen is not None:
        resolved = get_codec(chosen)
        found += [m for m in _modules([resolved.encode, resolved.decode], f"codec {resolved.name!r}") if m not in found]
    return found


def _modules(functions: Iterable[object], what: str) -> list[str]:
    found: list[str] = []
    for fn in functions:
        module = getattr(fn, "__module__", None)
        if module is None or module == "zdk" or module.startswith("zdk."):
            continue
        if module == "__main__":
            path = getattr(sys.modules["__main__"], "__file__", None)
            if path is None:
                raise ConfigError(f"{what} is defined in an interactive session; define it "
                                  "in a module or script so shard processes and executors can import it")
            module = os.path.abspath(path)
        if module not in found:
            found.append(module)
    return found


def load_sources(items: Iterable[str]) -> None:
    """Imports each module name or ``.py`` path once per process (registering its algorithms)."""
    with _lock:
        for item in items:
            if item.endswith(".py"):
                name = "zdk_user_" + hashlib.sha1(item.encode()).hexdigest()[:12]
                if name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(name, item)
                if spec is None or spec.loader is None:
                    raise ConfigError(f"cannot import algorithm source {item!r}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
            else:
                importlib.import_module(item)
            logger.debug("loaded algorithm source %s", item)
