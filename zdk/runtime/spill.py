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
minibatch), and the minibatches prefetched for training. The window is one buffer per epoch that
the blocks are read into and every minibatch is copied out of: allocating a window's blocks, their
concatenation and its permutation afresh for every window tripled the window's share of the
worker's peak RSS, and the allocator kept much of what was freed.
"""

from __future__ import annotations

import io
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
        self._readers: list[io.BufferedReader] = []
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
        # The rows carried over (fewer than a minibatch) sit at the front of the window's buffer.
        window = [np.empty((per_window * block + batch_size, *s), np.float32) for s in self._shapes]
        carried = 0
        for w in range(0, len(starts), per_window):
            n = carried
            for s in starts[w:w + per_window]:
                n += self._read_into(window, n, int(s), min(int(s) + block, self.rows))
            order = rng.permutation(n) if rng is not None else np.arange(n)
            full = n - n % batch_size
            for start in range(0, full, batch_size):
                rows = order[start:start + batch_size]
                yield [a[rows] for a in window]  # copies: the buffer is refilled while they wait in the queue
            carry = [a[order[full:]] for a in window]
            for a, c in zip(window, carry):
                a[:len(c)] = c
            carried = n - full
        if carried:
            yield [a[:carried].copy() for a in window]

    def _read_into(self, window: Columns, at: int, start: int, stop: int) -> int:
        """Copies rows [start, stop) of every column into ``window`` from row ``at`` on: from the
        in-memory rows, then read from the spilled files. Returns the number of rows."""
        split = self._memory_rows
        for k, (memory, out) in enumerate(zip(self._in_memory, window)):
            kept = max(0, min(stop, split) - start)
            if kept:
                out[at:at + kept] = memory[start:start + kept]
            if stop > split:
                first = max(start, split)
                target = out[at + kept:at + stop - start].data.cast("B")
                reader = self._readers[k]
                reader.seek((first - split) * (target.nbytes // (stop - first)))
                done = 0
                while done < target.nbytes:
                    got = reader.readinto(target[done:])
                    if not got:
                        raise OSError(f"the spilled rows in {self.path} end early: a {target.nbytes}-byte read got "
                                      f"{done} bytes (was the file removed or truncated?)")
                    done += got
        return stop - start

    def close(self) -> None:
        """Drops the rows and removes the spill folder."""
        for fh in self._files + self._readers:
            fh.close()
        self._files, self._readers, self._in_memory, self._chunks = [], [], [], []
        if self._cleanup is not None:
            self._cleanup()


__all__ = ["BLOCK_BYTES", "WINDOW_BYTES", "RowStore", "local_directory"]
