"""What the operator allows a job: where its data may come from, which modules it may name,
how large its model may be, and the caps on what it may ask of the server's host.

One frozen value, built once from ``zdk serve``'s flags; every check of a submission reads it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from zdk.errors import ConfigError


def count(value: Any, name: str) -> int:
    """``value``, which must be an integer ≥ 1.

    Raises:
        ConfigError: naming ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"`{name}` must be an integer ≥ 1. Received: {name}={value!r}", field=name)
    return value


def amount(value: Any, name: str, unit: str = "seconds") -> float:
    """``value``, which must be a finite number > 0 (of ``unit``).

    Raises:
        ConfigError: naming ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"`{name}` must be a number of {unit} > 0. Received: {name}={value!r}", field=name)
    return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """What the operator allows.

    Args:
        data_roots: local directories, or URI prefixes (``hdfs://nn/data/``, ``file:///data/``),
            that data paths must lie under; relative paths are taken from the first local one.
            Nobody who submits jobs may be able to write under them (symlinks are followed).
        tables: catalog tables jobs may read.
        custom_modules: modules the operator installed (custom layers, algorithm plugins);
            imported once at start, and the only ones a job's ``custom_modules`` may name.
        max_model_bytes: the largest ``.keras`` file accepted.
        max_unpacked_bytes: the largest total size of the ``.keras`` archive's members once
            unpacked (None: 4 × ``max_model_bytes``).
        max_model_params: the most parameters a model may have, estimated from its
            ``config.json`` before it is loaded, and counted once it is.
        model_memory_bytes: address space a model's loading may add, in the loader process.
        model_load_seconds: CPU seconds, and wall-clock seconds, a model's loading may take.
        max_shards: parameter-server shards a job may start (each is a process on the server's host).
        max_epochs: the largest ``num_epoch``.
        max_batch_size: the largest ``batch_size``.
        max_timeout: the largest ``timeout`` (seconds a parameter-server request may wait).

    Raises:
        ConfigError: naming the first field that is not a positive number.
    """

    data_roots: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    custom_modules: tuple[str, ...] = ()
    max_model_bytes: int = 64 * 2**20
    max_unpacked_bytes: int | None = None
    max_model_params: int = 50_000_000
    model_memory_bytes: int = 2 * 2**30
    model_load_seconds: float = 60.0
    max_shards: int = 4
    max_epochs: int = 1000
    max_batch_size: int = 8192
    max_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.max_unpacked_bytes is None:
            object.__setattr__(self, "max_unpacked_bytes", 4 * self.max_model_bytes)
        for name in ("max_model_bytes", "max_unpacked_bytes", "max_model_params", "model_memory_bytes",
                     "max_shards", "max_epochs", "max_batch_size"):
            count(getattr(self, name), name)
        for name in ("model_load_seconds", "max_timeout"):
            amount(getattr(self, name), name)

    @property
    def unpacked_limit(self) -> int:
        """``max_unpacked_bytes``, resolved."""
        return int(self.max_unpacked_bytes or 4 * self.max_model_bytes)
