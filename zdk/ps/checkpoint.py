"""Shard checkpoints on disk: where they live, when they are written, and the atomic write and read.

Every shard k of N writes ``shard-KKK-of-NNN.npz`` in the job's checkpoint directory. The name
carries N so that a checkpoint of another cut of the vector is never restored by mistake. A
checkpoint is written to a temporary file in the same directory, flushed to disk and renamed
over the old one, so a reader sees either the previous checkpoint or the new one, never half.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from zdk.errors import ConfigError


def checkpoint_path(directory: str, shard: int, num_shards: int) -> str:
    """The file shard ``shard`` of ``num_shards`` checkpoints to in ``directory``."""
    return os.path.join(directory, f"shard-{shard:03d}-of-{num_shards:03d}.npz")


def missing(directory: str, num_shards: int) -> list[str]:
    """The checkpoint files of the ``num_shards`` shards that do not exist in ``directory``."""
    paths = (checkpoint_path(directory, k, num_shards) for k in range(num_shards))
    return [p for p in paths if not os.path.exists(p)]


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where shards checkpoint, and how often.

    Args:
        directory: the checkpoint directory; None: no checkpoints.
        every: seconds between periodic checkpoints; None: only on request (and, for shards
            with a period, once more as they stop).

    Raises:
        ConfigError: naming ``checkpoint_every`` when it is not > 0 or has no directory.
    """

    directory: str | None = None
    every: float | None = None

    def __post_init__(self) -> None:
        every = self.every
        valid = every is None or (isinstance(every, (int, float)) and not isinstance(every, bool) and every > 0)
        if not valid or (every is not None and self.directory is None):
            raise ConfigError(f"`checkpoint_every` must be > 0 seconds and needs `checkpoint_dir`. "
                              f"Received: checkpoint_every={every!r}, checkpoint_dir={self.directory!r}",
                              field="checkpoint_every")

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def path(self, shard: int, num_shards: int) -> str | None:
        """Shard ``shard``'s checkpoint file, or None without a directory."""
        return None if self.directory is None else checkpoint_path(self.directory, shard, num_shards)


def write(path: str, arrays: Mapping[str, np.ndarray]) -> str:
    """Writes ``arrays`` as an ``.npz`` at ``path`` atomically (temporary file, fsync, rename).

    Returns:
        ``path``.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    # Typed Any: numpy's stub would read a key named `allow_pickle` as its flag.
    entries: dict[str, Any] = dict(arrays)
    fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **entries)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read(path: str) -> dict[str, np.ndarray]:
    """Every array of the checkpoint at ``path`` (no pickled objects are loaded)."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
