"""A partition's rows between epochs, in bounded memory: the first ones in memory, the rest spilled.

The first epoch streams the partition and adds each record batch's arrays here, in order. Rows
stay in memory until they would take more than ``memory`` bytes; from then on every row is
appended to one file per column in a fresh folder under Spark's local directories
(``SPARK_LOCAL_DIRS``, which Spark gives its Python workers and deletes with the application),
read back with plain reads in later epochs. The folder is removed by :meth:`RowStore.close`
(the worker calls it when its task ends, also on failure), or when the store is collected.

Later epochs read the rows as blocks of about ``BLOCK_BYTES`` (a whole number of minibatches).
Shuffled, an epoch visits the blocks in a random order, gathers them into windows of about
``WINDOW_BYTES``, permutes the rows of each window, and carries the rows short of a minibatch
over to the next window; so every row is seen once per epoch, every minibatch but the last is
full, and the number of steps is ⌈rows / batch_size⌉, as in memory. A partition that fits is
served exactly as before: one permutation of all its rows.

What a worker holds: the in-memory rows (≤ ``memory``), one window (≤ ``WINDOW_BYTES`` plus a
minibatch), and the minibatches prefetched for training.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from typing import BinaryIO, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Rows read from a spilled file at a time, in bytes (rounded to whole minibatches).
BLOCK_BYTES = 4 * 2**20
#: Rows shuffled together in a spilled epoch, in bytes.
WINDOW_BYTES = 32 * 2**20

Columns = list[np.ndarray]


def local_directory() -> str:
    """The first of Spark's local directories in this Python worker, else the system's temp folder."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d and os.path.isdir(d)]
    return dirs[0] if dirs else tempfile.gettempdir()


class RowStore:
    """The rows of a partition's columns (float32 arrays of shape (rows, …)), in memory up to
    ``memory`` bytes, the rest spilled to files.

    Args:
        memory: bytes of rows kept in memory (None: all of them).
        directory: where the spill folder is made (default: :func:`local_directory`).
    """

    def __init__(self, *, memory: int | None = None, directory: str | None = None) -> None:
        self.memory = memory
        self.directory = directory
        self.rows = 0
        self.resident_bytes = 0
        self.spilled_bytes = 0
        self.path: str | None = None
        self._chunks: list[list[np.ndarray]] = []
        self._memory_rows = 0
        self._files: list[BinaryIO] = []
        self._shapes: list[tuple[int, ...]] = []
        self._in_memory: Columns = []
        self._readers: list[BinaryIO] = []
        self._cleanup: weakref.finalize | None = None

    @property
    def spilling(self) -> bool:
        return self.path is not None

    def add(self, columns: Sequence[np.ndarray]) -> None:
        """Appends one record batch's columns (all with the same number of rows)."""
        rows = len(columns[0])
        if not rows:
            return
        if not self._shapes:
            self._shapes = [tuple(a.shape[1:]) for a in columns]
            self._chunks = [[] for _ in columns]
        row_bytes = sum(a[0].nbytes for a in columns)
        fit = rows
        if self.memory is not None and not self.spilling:
            fit = min(rows, max(0, (self.memory - self.resident_bytes) // max(1, row_bytes)))
        elif self.spilling:
            fit = 0
        if fit:
            for chunk, a in zip(self._chunks, columns):
                chunk.append(a[:fit] if fit < rows else a)
            self.resident_bytes += fit * row_bytes
            self._memory_rows += fit
        if fit < rows:
            self._spill([a[fit:] for a in columns])
        self.rows += rows

    def _spill(self, columns: Sequence[np.ndarray]) -> None:
        if self.path is None:
            self.path = tempfile.mkdtemp(prefix="zdk-cache-", dir=self.directory or local_directory())
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, True)
            self._files = [open(os.path.join(self.path, f"column-{k}.f32"), "wb") for k in range(len(columns))]
            logger.info("partition larger than cache_memory=%d bytes: spilling rows to %s", self.memory, self.path)
        for fh, a in zip(self._files, columns):
            data = np.ascontiguousarray(a, dtype=np.float32)
            data.tofile(fh)
            self.spilled_bytes += data.nbytes

    def finish(self) -> None:
        """Ends the first epoch: joins the in-memory chunks, maps the spilled files."""
        self._in_memory = [np.concatenate(c) if c else np.empty((0, *s), np.float32)
                           for c, s in zip(self._chunks, self._shapes)]
        self._chunks = []
        for fh in self._files:
            fh.close()
        # Read back with plain reads, not a memory map: mapped pages would count in the worker's
        # RSS, which is what cluster managers watch and kill containers for.
        self._readers = [open(fh.name, "rb") for fh in self._files]
        self._files = []

    def epoch(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[Columns]:
        """One epoch's minibatches (a list of arrays, one per column); shuffled with ``rng``."""
        if not self._shapes:
            return
        if not self.spilling:
            yield from self._memory_epoch(batch_size, rng)
        else:
            yield from self._block_epoch(batch_size, rng)

    def _memory_epoch(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[Columns]:
        arrays = self._in_memory
        n = len(arrays[0])
        order = rng.permutation(n) if rng is not None else None
        for start in range(0, n, batch_size):
            if order is None:
                yield [a[start:start + batch_size] for a in arrays]
            else:
                idx = order[start:start + batch_size]
                yield [a[idx] for a in arrays]

    def _block_epoch(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[Columns]:
        row_bytes = sum(int(np.prod(s, dtype=np.int64)) * 4 for s in self._shapes)
        block = max(batch_size, BLOCK_BYTES // max(1, row_bytes) // batch_size * batch_size)
        per_window = max(1, WINDOW_BYTES // max(1, block * row_bytes))
        starts = np.arange(0, self.rows, block)
        if rng is not None:
            starts = rng.permutation(starts)
        carry: Columns | None = None
        for w in range(0, len(starts), per_window):
            window = [self._rows(int(s), min(int(s) + block, self.rows)) for s in starts[w:w + per_window]]
            arrays = [np.concatenate(([carry[k]] if carry is not None else []) + [b[k] for b in window])
                      for k in range(len(self._shapes))]
            n = len(arrays[0])
            if rng is not None:
                order = rng.permutation(n)
                arrays = [a[order] for a in arrays]
            full = n - n % batch_size
            for start in range(0, full, batch_size):
                yield [a[start:start + batch_size] for a in arrays]
            carry = [a[full:] for a in arrays] if full < n else None
        if carry is not None:
            yield carry

    def _rows(self, start: int, stop: int) -> Columns:
        """Rows [start, stop) of every column: views of the in-memory rows, reads of the spilled ones."""
        split = self._memory_rows
        out = []
        for k, (memory, shape) in enumerate(zip(self._in_memory, self._shapes)):
            parts = []
            if start < split:
                parts.append(memory[start:min(stop, split)])
            if stop > split:
                first, rows = max(start, split) - split, stop - max(start, split)
                per_row = int(np.prod(shape, dtype=np.int64))
                reader = self._readers[k]
                reader.seek(first * per_row * 4)
                parts.append(np.fromfile(reader, dtype=np.float32, count=rows * per_row).reshape((rows, *shape)))
            out.append(parts[0] if len(parts) == 1 else np.concatenate(parts))  # the window copies them
        return out

    def close(self) -> None:
        """Drops the rows and removes the spill folder."""
        for fh in self._files + self._readers:
            fh.close()
        self._files, self._readers, self._in_memory, self._chunks = [], [], [], []
        if self._cleanup is not None:
            self._cleanup()


__all__ = ["BLOCK_BYTES", "WINDOW_BYTES", "RowStore", "local_directory"]
