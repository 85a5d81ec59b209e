"""Bounded worker memory: rows past ``cache_memory`` are spilled to local disk and read back in
shuffled blocks; what fits stays in memory as before; the spill folder goes with the stream."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from zdk.driver.memory import default_cache_memory, parse_bytes
from zdk.errors import ConfigError
from zdk.runtime import spill
from zdk.runtime.minibatches import MinibatchStream
from zdk.runtime.spill import RowStore

WIDTH = 16  # floats per row of x: 64 bytes, plus 4 of y


def batches(rows: int, per_batch: int):
    """Record batches of rows numbered 0…rows-1: x is the row number repeated WIDTH times, y twice it."""
    for start in range(0, rows, per_batch):
        n = min(per_batch, rows - start)
        ids = np.arange(start, start + n, dtype=np.float32)
        x = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, WIDTH)), WIDTH)
        yield pa.RecordBatch.from_pydict({"x": x, "y": pa.array(ids * 2)})


def epochs(stream: MinibatchStream, count: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    return [[(x[0].copy(), y[0].copy()) for x, y in stream.epoch()] for _ in range(count)]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 2 KiB and windows of 8 KiB, so that a test's few hundred rows span many of each."""
    monkeypatch.setattr(spill, "BLOCK_BYTES", 2048)
    monkeypatch.setattr(spill, "WINDOW_BYTES", 8192)


@pytest.mark.parametrize("memory", [0, 5000])
def test_spilled_epochs_see_every_row_once_in_full_minibatches_and_shuffled(tmp_path, small_blocks, memory):
    rows, batch = 500, 16
    stream = MinibatchStream(batches(rows, 37), features=["x"], labels=["y"], batch_size=batch, shuffle=True,
                             seed=1, cache_memory=memory, spill_dir=str(tmp_path))
    runs = epochs(stream, 3)
    assert stream.spill_path is not None and stream.spill_path.startswith(str(tmp_path))
    assert stream.cached_bytes <= memory and stream.cached_bytes + stream.spilled_bytes == rows * (WIDTH + 1) * 4
    orders = []
    for run in runs:
        sizes = [len(x) for x, _ in run]
        assert sizes == [batch] * (rows // batch) + [rows % batch]  # ⌈rows / batch⌉ steps, only the last short
        x = np.concatenate([x for x, _ in run])
        y = np.concatenate([y for _, y in run])
        assert (x == x[:, :1]).all()  # every row whole
        np.testing.assert_array_equal(y, 2 * x[:, 0])  # features and labels stay paired
        assert sorted(x[:, 0].tolist()) == list(range(rows))  # each row once
        orders.append(x[:, 0].tolist())
    assert orders[0] == list(range(rows))  # the first epoch streams in order
    assert orders[1] != orders[0] and orders[2] != orders[1]
    # Blocks are shuffled, not only rows within a block: the second epoch does not start at row 0's block.
    first_batch = runs[1][0][0][:, 0]
    assert first_batch.max() - first_batch.min() > spill.BLOCK_BYTES // ((WIDTH + 1) * 4)
    path = stream.spill_path
    assert os.listdir(path)
    stream.close()
    assert not os.path.exists(path)


def test_unshuffled_spilled_epochs_equal_the_in_memory_ones(tmp_path, small_blocks):
    spilled = MinibatchStream(batches(300, 50), features=["x"], labels=["y"], batch_size=7, cache_memory=3000,
                              spill_dir=str(tmp_path))
    kept = MinibatchStream(batches(300, 50), features=["x"], labels=["y"], batch_size=7)
    for a, b in zip(epochs(spilled, 3), epochs(kept, 3)):
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert kept.spill_path is None and kept.spilled_bytes == 0
    spilled.close()


def test_a_partition_that_fits_is_served_from_memory_as_before(tmp_path):
    fits = MinibatchStream(batches(200, 30), features=["x"], labels=["y"], batch_size=8, shuffle=True, seed=5,
                           cache_memory=10**6, spill_dir=str(tmp_path))
    unbounded = MinibatchStream(batches(200, 30), features=["x"], labels=["y"], batch_size=8, shuffle=True, seed=5)
    for a, b in zip(epochs(fits, 3), epochs(unbounded, 3)):
        assert [x.tolist() for x, _ in a] == [x.tolist() for x, _ in b]
    assert fits.spill_path is None and fits.cached_bytes == 200 * (WIDTH + 1) * 4
    assert not os.listdir(tmp_path)


def test_the_spill_folder_is_removed_when_training_fails_mid_epoch(tmp_path):
    stream = MinibatchStream(batches(400, 40), features=["x"], labels=["y"], batch_size=16, cache_memory=0,
                             spill_dir=str(tmp_path))
    with pytest.raises(RuntimeError):
        try:
            for _ in stream.epoch():
                raise RuntimeError("a training step failed")
        finally:
            stream.close()
    assert not os.listdir(tmp_path)


def test_a_collected_store_removes_its_folder(tmp_path):
    store = RowStore(memory=0, directory=str(tmp_path))
    store.add([np.ones((10, 3), np.float32)])
    path = store.path
    assert path and os.path.isdir(path)
    del store
    assert not os.path.exists(path)


def test_the_spill_folder_is_in_sparks_local_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path / 'missing'},{tmp_path}")
    assert spill.local_directory() == str(tmp_path)
    monkeypatch.delenv("SPARK_LOCAL_DIRS")
    import tempfile
    assert spill.local_directory() == tempfile.gettempdir()


@pytest.mark.parametrize("value, expected", [(0, 0), (1234, 1234), ("256m", 256 * 2**20), ("1.5g", 3 * 2**29),
                                             ("512 KiB", 512 * 1024), ("64k", 65536), ("100", 100)])
def test_sizes_parse_to_bytes(value, expected):
    assert parse_bytes(value, "cache_memory") == expected


@pytest.mark.parametrize("value", [-1, "lots", "12 parsecs", 1.5, True, None, "-3m"])
def test_bad_sizes_are_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"`cache_memory` must be a number of bytes ≥ 0 .* Received: cache_memory=") \
            as caught:
        parse_bytes(value, "cache_memory")
    assert caught.value.field == "cache_memory"


def test_the_default_is_half_a_tasks_share_of_the_python_workers_memory():
    # local mode: executors live in the driver, whose memory the tasks share.
    assert default_cache_memory({"spark.driver.memory": "4g"}, local=True, local_cores=2) == 2**30
    # a cluster: the executor's memory over the tasks it runs at once; a bare number is MiB, as in Spark.
    assert default_cache_memory({"spark.executor.memory": "8192", "spark.executor.cores": "4"}, local=False,
                                local_cores=1) == 2**30
    assert default_cache_memory({"spark.executor.memory": "8g", "spark.executor.cores": "4", "spark.task.cpus": "2"},
                                local=False, local_cores=1) == 2 * 2**30
    # spark.executor.pyspark.memory, when set, is what the Python workers may use.
    assert default_cache_memory({"spark.executor.memory": "8g", "spark.executor.pyspark.memory": "2g"}, local=False,
                                local_cores=1) == 2**30
    assert default_cache_memory({}, local=False, local_cores=1) == 2**29  # Spark's 1g default


def test_trainers_take_cache_memory_and_refuse_a_bad_one():
    import keras

    from zdk.trainers import ADAG, SingleTrainer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert ADAG(model, "adam", "mse", cache_memory="64m").plan.cache_memory == 64 * 2**20
    assert SingleTrainer(model, "adam", "mse", cache_memory=0).plan.cache_memory == 0
    assert ADAG(model, "adam", "mse").plan.cache_memory is None  # derived from Spark when training
    with pytest.raises(ConfigError, match="cache_memory"):
        ADAG(model, "adam", "mse", cache_memory="a lot")


@pytest.mark.spark
def test_a_trainer_with_a_small_cache_spills_learns_and_leaves_no_file(digits_df, digits):
    from conftest import digits_mlp
    from zdk.trainers import DOWNPOUR

    import keras

    keras.utils.set_random_seed(2)
    trainer = DOWNPOUR(digits_mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=8,
                       batch_size=32, communication_window=4, cache_memory="16k", progress=False)
    trained = trainer.train(digits_df, shuffle=True)
    summaries = trainer.worker_summaries
    assert len(summaries) == 2
    for s in summaries:  # each worker's ~670 rows of 65 floats (~175 KB): most of them spilled
        assert 0 < s["cached_bytes"] <= 16 * 1024 and s["spilled_bytes"] > 100_000, s
        assert "blockmgr-" in s["spill_path"]  # in Spark's local directory, which Spark removes with the app
        assert not os.path.exists(s["spill_path"])  # removed when the task ended
    x_test, y_test = digits[1], digits[3]
    accuracy = float((trained.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    assert accuracy > 0.85
    # With the default (half a task's share of the driver's 4g here) every row stays in memory.
    default = DOWNPOUR(digits_mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=2,
                       progress=False)
    default.train(digits_df)
    assert all(s["spilled_bytes"] == 0 and s["spill_path"] is None and s["cached_bytes"] > 100_000
               for s in default.worker_summaries)
