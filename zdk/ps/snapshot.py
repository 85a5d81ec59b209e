"""An algorithm's shard state as JSON plus numpy arrays, for checkpoints: no pickle.

The state an algorithm keeps in ``ShardState.state`` may hold numpy arrays, numbers,
strings, booleans, None, and lists, sets and dicts of them (dict keys: str or int).
:func:`pack` turns it into a JSON-able description plus named arrays, which a ``.npz``
stores with ``allow_pickle=False``; :func:`unpack` reverses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zdk.errors import ConfigError


def pack(value: Any, arrays: dict[str, np.ndarray], where: str = "state") -> Any:
    """A JSON-able description of ``value``; its arrays are added to ``arrays`` under fresh names."""
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"t": "array", "name": name}
    if isinstance(value, np.generic):
        return {"t": "value", "v": value.item()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"t": "value", "v": value}
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise ConfigError(f"`{where}` keys must be str or int to be checkpointed. Received: key={key!r}",
                                  field=where)
            items.append([key, pack(item, arrays, f"{where}[{key!r}]")])
        return {"t": "dict", "items": items}
    if isinstance(value, (set, frozenset, list, tuple)):
        kind = "set" if isinstance(value, (set, frozenset)) else "list"
        return {"t": kind, "items": [pack(v, arrays, f"{where}[]") for v in value]}
    raise ConfigError(f"`{where}` must hold arrays, numbers, strings, lists, sets or dicts to be checkpointed. "
                      f"Received: {type(value).__name__}", field=where)


def unpack(description: Any, arrays: Any) -> Any:
    """The value :func:`pack` described; ``arrays`` maps names to arrays (an open ``.npz``)."""
    kind = description["t"]
    if kind == "array":
        return np.array(arrays[description["name"]])
    if kind == "value":
        return description["v"]
    if kind == "dict":
        return {key: unpack(item, arrays) for key, item in description["items"]}
    items = [unpack(v, arrays) for v in description["items"]]
    return set(items) if kind == "set" else items
