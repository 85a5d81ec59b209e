"""Arrow columns to numpy minibatches, without Spark."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from zdk.runtime.minibatches import MinibatchStream, column_to_numpy, fit_to_shapes, record_batch_arrays
from zdk.errors import ConfigError


def test_scalar_list_and_nested_list_columns():
    assert column_to_numpy(pa.array([1, 2, 3]), "s").tolist() == [1.0, 2.0, 3.0]
    lists = column_to_numpy(pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())), "v")
    assert lists.shape == (2, 2) and lists.dtype == np.float32
    nested = column_to_numpy(pa.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], pa.list_(pa.list_(pa.float64()))), "n")
    assert nested.shape == (2, 2, 2) and nested[1, 1, 0] == 7.0


def test_sliced_list_column_respects_offsets():
    array = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32())).slice(1, 2)
    assert column_to_numpy(array, "v").tolist() == [[3.0, 4.0], [5.0, 6.0]]


def test_ragged_lists_and_nulls_are_errors_naming_the_column():
    with pytest.raises(ConfigError, match="column `v` must hold lists of one length"):
        column_to_numpy(pa.array([[1.0], [1.0, 2.0]]), "v")
    with pytest.raises(ConfigError, match="column `s` must have no nulls. Received: 1 null rows"):
        column_to_numpy(pa.array([1.0, None]), "s")
    with pytest.raises(ConfigError, match="column `t` must be numeric"):
        column_to_numpy(pa.array(["a", "b"]), "t")


def test_record_batch_arrays_and_missing_columns():
    batch = pa.RecordBatch.from_pydict({"f": pa.array([[1.0, 2.0]], pa.list_(pa.float32())), "y": [3]})
    xs, ys = record_batch_arrays(batch, ["f"], ["y"])
    assert xs[0].tolist() == [[1.0, 2.0]] and ys[0].tolist() == [3.0]
    with pytest.raises(ConfigError, match=r"columns \['nope'\] are not in the data"):
        record_batch_arrays(batch, ["nope"], ["y"])


def test_fit_to_shapes_reshapes_inputs_and_passes_labels():
    flat = np.zeros((4, 12), np.float32)
    assert fit_to_shapes([flat], [(None, 3, 4)], ["x"])[0].shape == (4, 3, 4)
    with pytest.raises(ConfigError, match="column `x` has 12 values per row; the model expects shape"):
        fit_to_shapes([flat], [(None, 10)], ["x"])
    labels = np.zeros((4,), np.float32)
    assert fit_to_shapes([labels], [(None, 10)], ["y"], strict=False)[0].shape == (4,)


def batches(rows: int, per_batch: int):
    for start in range(0, rows, per_batch):
        n = min(per_batch, rows - start)
        values = np.arange(start, start + n, dtype=np.float32)
        yield pa.RecordBatch.from_pydict({"x": pa.array(values), "y": pa.array(values * 2)})


def test_stream_yields_full_minibatches_across_record_batches_then_caches():
    stream = MinibatchStream(batches(10, 3), features=["x"], labels=["y"], batch_size=4)
    first = [x[0].tolist() for x, _ in stream.epoch()]
    assert first == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert stream.rows == 10
    second = [x[0].tolist() for x, _ in stream.epoch()]
    assert second == first  # no shuffle: the cached order


def test_a_stream_for_one_epoch_keeps_no_rows_and_refuses_a_second_epoch():
    stream = MinibatchStream(batches(10, 3), features=["x"], labels=["y"], batch_size=4, keep=False)
    assert [x[0].tolist() for x, _ in stream.epoch()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert stream.rows == 10 and stream.cached_bytes == 0 and stream.spilled_bytes == 0
    with pytest.raises(RuntimeError, match="kept no rows"):
        list(stream.epoch())


def test_stream_shuffles_later_epochs_keeping_rows_paired():
    stream = MinibatchStream(batches(64, 16), features=["x"], labels=["y"], batch_size=8, shuffle=True, seed=3)
    list(stream.epoch())
    xs, ys = zip(*[(x[0], y[0]) for x, y in stream.epoch()])
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert sorted(x.tolist()) == list(range(64)) and x.tolist() != list(range(64))
    np.testing.assert_array_equal(y, 2 * x)


def test_stream_reraises_a_producer_error_in_the_consumer():
    def broken():
        yield from batches(4, 4)
        raise RuntimeError("disk on fire")

    stream = MinibatchStream(broken(), features=["x"], labels=["y"], batch_size=2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        list(stream.epoch())


def test_stream_stops_its_thread_when_the_consumer_stops_early():
    stream = MinibatchStream(batches(1000, 10), features=["x"], labels=["y"], batch_size=1, prefetch=2)
    it = stream.epoch()
    next(it)
    it.close()
    assert not any(t.name == "zdk-prefetch" and t.is_alive() for t in threading.enumerate())


def test_spark_ml_vector_structs_dense_and_sparse():
    vector = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                        ("values", pa.list_(pa.float64()))])
    array = pa.array([{"type": 1, "size": None, "indices": None, "values": [1.0, 2.0, 3.0]},
                      {"type": 0, "size": 3, "indices": [2], "values": [5.0]},
                      {"type": 0, "size": 3, "indices": [0, 1], "values": [7.0, 8.0]}], vector)
    assert column_to_numpy(array, "v").tolist() == [[1, 2, 3], [0, 0, 5], [7, 8, 0]]
    dense_only = pa.array([{"type": 1, "size": None, "indices": None, "values": [1.0, 2.0]}], vector)
    assert column_to_numpy(dense_only, "v").tolist() == [[1.0, 2.0]]


def test_a_started_stream_reads_rows_before_its_epoch_is_asked_for():
    pulled = threading.Event()

    def source():
        pulled.set()
        yield from batches(10, 5)

    stream = MinibatchStream(source(), features=["x"], labels=["y"], batch_size=4)
    stream.start()
    assert pulled.wait(10), "start() did not begin reading the rows"
    assert [x[0].tolist() for x, _ in stream.epoch()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [x[0].tolist() for x, _ in stream.epoch()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_closing_a_started_stream_that_was_never_read_stops_its_thread():
    stream = MinibatchStream(batches(1000, 10), features=["x"], labels=["y"], batch_size=1, prefetch=2)
    stream.start()
    stream.close()
    assert not any(t.name == "zdk-prefetch" and t.is_alive() for t in threading.enumerate())
