"""Arrow record batches to numpy minibatches, with no per-row Python work.

Columns arrive as Arrow arrays: numeric scalars, or (nested) lists of floats, which is
what Spark ML vectors become after ``vector_to_array``. A list column becomes a
(rows, d, ...) array from its flat values buffer; offsets are checked to be uniform.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np

from zdk.errors import ConfigError
from zdk.runtime.spill import RowStore

logger = logging.getLogger(__name__)

Batch = tuple[list[np.ndarray], list[np.ndarray]]


def column_to_numpy(array, name: str) -> np.ndarray:
    """One Arrow column as a float32 array of shape (rows, ...)."""
    import pyarrow as pa

    if array.null_count:
        raise ConfigError(f"column `{name}` must have no nulls. Received: {array.null_count} null rows")
    if pa.types.is_struct(array.type) and {"type", "size", "indices", "values"} <= {f.name for f in array.type}:
        return _ml_vectors(array, name)
    rows = len(array)
    shape: list[int] = [rows]
    values = array
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        count = len(values)
        if pa.types.is_fixed_size_list(values.type):
            width = values.type.list_size
        else:
            offsets = values.offsets.to_numpy()
            lengths = np.diff(offsets)
            width = int(lengths[0]) if count else 0
            if count and not (lengths == width).all():
                raise ConfigError(f"column `{name}` must hold lists of one length. Received: lengths from "
                                  f"{int(lengths.min())} to {int(lengths.max())}")
        shape.append(width)
        values = values.flatten()
        if values.null_count:
            raise ConfigError(f"column `{name}` must have no null elements")
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type)):
        raise ConfigError(f"column `{name}` must be numeric or a (nested) list of numbers. Received: {array.type}")
    flat = values.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(shape)


def _ml_vectors(array, name: str) -> np.ndarray:
    """Spark ML vectors as Arrow gives them (struct<type, size, indices, values>; type 1 = dense)."""
    rows = len(array)
    kinds = array.field("type").to_numpy(zero_copy_only=False)
    values = array.field("values")
    if (kinds == 1).all():
        return column_to_numpy(values, name)
    sizes = array.field("size").to_numpy(zero_copy_only=False)
    width = int(sizes[kinds == 0].max()) if (kinds == 0).any() else 0
    if (kinds == 1).any():
        width = max(width, int(np.diff(values.offsets.to_numpy())[kinds == 1].max()))
    out = np.zeros((rows, width), dtype=np.float32)
    offsets = values.offsets.to_numpy()
    flat = values.flatten().to_numpy(zero_copy_only=False)
    counts = np.diff(offsets)
    row_of = np.repeat(np.arange(rows), counts)
    dense = kinds[row_of] == 1
    position = np.arange(len(flat)) - np.repeat(offsets[:-1] - offsets[0], counts)
    index_offsets = array.field("indices").offsets.to_numpy()
    sparse_idx = array.field("indices").flatten().to_numpy(zero_copy_only=False)
    columns = np.empty(len(flat), dtype=np.int64)
    columns[dense] = position[dense]
    if (~dense).any():
        # Sparse rows: their indices list runs parallel to their values list.
        idx_counts = np.diff(index_offsets)
        if not (idx_counts[kinds == 0] == counts[kinds == 0]).all():
            raise ConfigError(f"column `{name}` holds a sparse vector whose indices and values differ in length")
        columns[~dense] = sparse_idx
    out[row_of, columns] = flat
    return out


def record_batch_arrays(batch, features: Sequence[str], labels: Sequence[str]) -> Batch:
    """The feature and label columns of one record batch as numpy arrays."""
    missing = [c for c in (*features, *labels) if batch.schema.get_field_index(c) < 0]
    if missing:
        raise ConfigError(f"columns {missing} are not in the data. Received columns: {batch.schema.names}")
    xs = [column_to_numpy(batch.column(c), c) for c in features]
    ys = [column_to_numpy(batch.column(c), c) for c in labels]
    return xs, ys


def fit_to_shapes(arrays: list[np.ndarray], shapes: Sequence[tuple[int | None, ...]], names: Sequence[str],
                  *, strict: bool = True) -> list[np.ndarray]:
    """Reshapes each (rows, ...) array to the model's (rows, *shape[1:]) when the sizes agree.

    Args:
        strict: raise when the sizes disagree (inputs); labels pass through unchanged,
            since a loss such as sparse categorical cross-entropy takes (rows,) labels
            for (rows, k) outputs.
    """
    if len(arrays) != len(shapes):
        raise ConfigError(f"the model has {len(shapes)} {'inputs' if strict else 'outputs'}; "
                          f"{len(arrays)} columns were given: {list(names)}")
    out = []
    for a, shape, name in zip(arrays, shapes, names):
        if any(d is None for d in shape[1:]):
            out.append(a)
            continue
        target = tuple(int(d) for d in shape[1:] if d is not None)
        if a.shape[1:] == target:
            out.append(a)
            continue
        size = int(np.prod(target)) if target else 1
        per_row = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
        if size != per_row:
            if not strict:
                out.append(a)
                continue
            raise ConfigError(f"column `{name}` has {per_row} values per row; the model expects shape "
                              f"{target} ({size} values)")
        out.append(a.reshape((a.shape[0], *target)))
    return out


class MinibatchStream:
    """Minibatches from a partition, prepared on a background thread with a bounded queue.

    The first epoch converts the Arrow batches as they stream in and keeps the numpy
    arrays, up to ``cache_memory`` bytes in memory and the rest spilled to local disk
    (:class:`~zdk.runtime.spill.RowStore`); later epochs reuse them (in a new random order
    when ``shuffle``). Call :meth:`close` when done: it removes the spilled rows.

    Args:
        batches: the partition's Arrow record batches (consumed once).
        features: feature column names, one per model input.
        labels: label column names, one per model output.
        batch_size: rows per minibatch; the last one of an epoch may be smaller.
        shuffle: permute rows each epoch after the first.
        seed: for the permutations.
        prefetch: minibatches the queue holds.
        cache_memory: bytes of rows kept in memory between epochs (None: every row).
        spill_dir: where rows beyond ``cache_memory`` go (default: Spark's local directory).
        keep: keep the rows for later epochs; False when the first epoch is the only one, so a
            one-epoch worker holds only the minibatches in flight, however large its partition.
    """

    _END = object()

    def __init__(self, batches: Iterable, *, features: Sequence[str], labels: Sequence[str], batch_size: int,
                 shuffle: bool = False, seed: int = 0, prefetch: int = 8, cache_memory: int | None = None,
                 spill_dir: str | None = None, keep: bool = True) -> None:
        if batch_size < 1:
            raise ConfigError(f"`batch_size` must be ≥ 1. Received: batch_size={batch_size}", field="batch_size")
        self._source: Iterator | None = iter(batches)
        self.features, self.labels = list(features), list(labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self.prefetch = prefetch
        self._store = RowStore(memory=cache_memory, directory=spill_dir)
        self._cached = False
        self._keep = keep
        self._served = False
        self._running: tuple[queue.Queue, threading.Event, threading.Thread] | None = None
        self.rows = 0

    @property
    def cached_bytes(self) -> int:
        """Bytes of rows held in memory between epochs."""
        return self._store.resident_bytes

    @property
    def spilled_bytes(self) -> int:
        """Bytes of rows spilled to local disk."""
        return self._store.spilled_bytes

    @property
    def spill_path(self) -> str | None:
        """The folder of the spilled rows (None when none were spilled)."""
        return self._store.path

    def close(self) -> None:
        """Stops an epoch started but never read (:meth:`start`), drops the kept rows and removes
        the spilled ones."""
        if self._running is not None:
            _halt(*self._running)
            self._running = None
        self._store.close()

    def start(self) -> None:
        """Starts preparing the next epoch's minibatches now, on the background thread (up to
        ``prefetch`` ahead), so rows arrive while the caller still gets ready; :meth:`epoch` then
        serves them."""
        if self._running is None:
            self._running = self._launch()

    def _launch(self) -> tuple[queue.Queue, threading.Event, threading.Thread]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(q, stop), name="zdk-prefetch", daemon=True)
        producer.start()
        return q, stop, producer

    def epoch(self) -> Iterator[Batch]:
        """The next epoch's minibatches (the one :meth:`start` began, if any)."""
        running, self._running = self._running or self._launch(), None
        q, stop, producer = running
        try:
            while True:
                item = q.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            _halt(q, stop, producer)

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            if self._served and not self._cached:
                raise RuntimeError("this MinibatchStream kept no rows (keep=False): it serves one epoch")
            self._served = True
            source = self._cached_epoch() if self._cached else self._first_epoch()
            for batch in source:
                if not put(batch):
                    return
            put(self._END)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)

    def _first_epoch(self) -> Iterator[Batch]:
        assert self._source is not None
        pending: Batch | None = None
        for record_batch in self._source:
            if record_batch.num_rows == 0:
                continue
            xs, ys = record_batch_arrays(record_batch, self.features, self.labels)
            if self._keep:
                self._store.add(xs + ys)
            self.rows += record_batch.num_rows
            n = len(xs[0])
            first = 0
            if pending is not None:
                # Only the minibatch that straddles two record batches is joined: joining whole
                # batches copied the partition once more, in allocations the allocator kept.
                first = min(n, self.batch_size - len(pending[0][0]))
                xs_p = [np.concatenate([p, a[:first]]) for p, a in zip(pending[0], xs)]
                ys_p = [np.concatenate([p, a[:first]]) for p, a in zip(pending[1], ys)]
                pending = None
                if len(xs_p[0]) < self.batch_size:
                    pending = (xs_p, ys_p)
                    continue
                yield xs_p, ys_p
            full = first + (n - first) // self.batch_size * self.batch_size
            for start in range(first, full, self.batch_size):
                yield [a[start:start + self.batch_size] for a in xs], [a[start:start + self.batch_size] for a in ys]
            if full < n:
                pending = ([a[full:] for a in xs], [a[full:] for a in ys])
        self._source = None
        if pending is not None:
            yield pending
        if self._keep:
            self._store.finish()
            self._cached = True

    def _cached_epoch(self) -> Iterator[Batch]:
        split = len(self.features)
        for columns in self._store.epoch(self.batch_size, self._rng if self.shuffle else None):
            yield columns[:split], columns[split:]


def _halt(q: queue.Queue, stop: threading.Event, producer: threading.Thread) -> None:
    """Stops an epoch's producer, unblocking it if it waits on a full queue."""
    stop.set()
    while producer.is_alive():
        try:
            q.get_nowait()
        except queue.Empty:
            pass
        producer.join(0.05)
