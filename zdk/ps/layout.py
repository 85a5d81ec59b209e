"""The flat parameter vector and how it is cut into shards.

All of a model's weights, in a fixed order, form one contiguous float32 vector
θ ∈ R^n. A :class:`ShardPlan` cuts ``[0, n)`` into contiguous ranges whose sizes
differ by at most one element, so shard ``k`` owns ``θ[start_k:stop_k]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from zdk.errors import ConfigError

DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class FlatLayout:
    """Maps a list of weight arrays to offsets in one flat float32 vector.

    Args:
        shapes: the shape of each weight array, in the model's order.
    """

    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        for i, shape in enumerate(self.shapes):
            if any((not isinstance(d, int)) or d < 0 for d in shape):
                raise ConfigError(f"`shapes[{i}]` must hold non-negative ints. Received: shapes[{i}]={shape!r}",
                                  field=f"shapes[{i}]")

    @classmethod
    def of(cls, arrays: Iterable[np.ndarray]) -> "FlatLayout":
        """The layout of a list of arrays (e.g. ``model.get_weights()``)."""
        return cls(shapes=tuple(tuple(int(d) for d in np.shape(a)) for a in arrays))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def total_size(self) -> int:
        return sum(self.sizes)

    def empty(self) -> np.ndarray:
        """A new zeroed flat vector of this layout."""
        return np.zeros(self.total_size, dtype=DTYPE)

    def flatten(self, arrays: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Copies ``arrays`` into one flat vector (``out`` when given, so nothing is allocated)."""
        if len(arrays) != len(self.shapes):
            raise ConfigError(f"`arrays` must hold {len(self.shapes)} arrays. Received: {len(arrays)} arrays",
                              field="arrays")
        flat = self.empty() if out is None else out
        self._check_flat(flat)
        for view, array, shape in zip(self.views(flat), arrays, self.shapes):
            if tuple(np.shape(array)) != shape:
                raise ConfigError(f"array shape must be {shape}. Received: shape={tuple(np.shape(array))}")
            np.copyto(view, array, casting="same_kind")
        return flat

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """Reshaped views into ``flat``: writing to them writes the flat vector."""
        self._check_flat(flat)
        out, offset = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            out.append(flat[offset : offset + size].reshape(shape))
            offset += size
        return out

    def _check_flat(self, flat: np.ndarray) -> None:
        if flat.dtype != DTYPE or flat.ndim != 1 or flat.size != self.total_size or not flat.flags.c_contiguous:
            raise ConfigError(
                f"`flat` must be a C-contiguous float32 vector of size {self.total_size}. "
                f"Received: dtype={flat.dtype}, shape={flat.shape}"
            , field="flat")


@dataclass(frozen=True)
class ShardPlan:
    """Contiguous, size-balanced ranges of a flat vector.

    Shard ``k`` of ``N`` gets ``[start_k, stop_k)`` with
    ``start_k = k·q + min(k, r)`` where ``q, r = divmod(total_size, N)``: the first
    ``r`` shards hold one element more, so sizes differ by at most one.

    Args:
        total_size: length of the flat vector, ≥ 1.
        num_shards: number of shards, 1 ≤ num_shards ≤ total_size.
    """

    total_size: int
    num_shards: int

    def __post_init__(self) -> None:
        if not isinstance(self.total_size, int) or self.total_size < 1:
            raise ConfigError(f"`total_size` must be ≥ 1. Received: total_size={self.total_size!r}", field="total_size")
        if not isinstance(self.num_shards, int) or self.num_shards < 1:
            raise ConfigError(f"`num_shards` must be ≥ 1. Received: num_shards={self.num_shards!r}", field="num_shards")
        if self.num_shards > self.total_size:
            raise ConfigError(
                f"`num_shards` must be ≤ total_size ({self.total_size}). Received: num_shards={self.num_shards}"
            , field="num_shards")

    def range(self, shard: int) -> tuple[int, int]:
        """``(start, stop)`` of shard ``shard``."""
        if not 0 <= shard < self.num_shards:
            raise ConfigError(f"`shard` must be in [0, {self.num_shards}). Received: shard={shard}", field="shard")
        q, r = divmod(self.total_size, self.num_shards)
        start = shard * q + min(shard, r)
        return start, start + q + (1 if shard < r else 0)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [self.range(k) for k in range(self.num_shards)]

    def slices(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of ``flat``, one per shard."""
        return [flat[a:b] for a, b in self.ranges]
