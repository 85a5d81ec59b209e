"""A new user's mistakes: each is caught on the driver before training starts, or stops training
with an error naming the worker, epoch and step; never a silently wrong model."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("pyspark")

from zdk import trainers  # noqa: E402
from zdk.errors import ConfigError, WorkerFailed  # noqa: E402

pytestmark = pytest.mark.spark


def mlp(inputs: int = 64):
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def shard_pids() -> set[int]:
    """The shards this test process started (a trainer's shards are its children); other tests'
    helpers, such as a supervised `zdk ps`, start shards of their own."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "zdk.ps.server"], capture_output=True,
                         text=True).stdout
    return {int(p) for p in out.split()}


def fails(call, error, match: str) -> float:
    """Runs ``call``, expects ``error`` matching ``match``, checks nothing is left running; returns seconds."""
    before = shard_pids()
    started = time.perf_counter()
    with pytest.raises(error, match=match) as info:
        call()
    seconds = time.perf_counter() - started
    print(f"{seconds:5.1f} s  {type(info.value).__name__}: {str(info.value)[:200]}")
    assert shard_pids() <= before, "a shard outlived the failure"
    return seconds


@pytest.fixture(scope="module")
def small(spark, digits):
    x_train, _, y_train, _ = digits
    rows = [(x.tolist(), int(y)) for x, y in zip(x_train[:200], y_train[:200])]
    return spark.createDataFrame(rows, "features array<double>, label long").cache()


def test_an_empty_dataframe_is_refused_before_training(small):
    empty = small.filter("label < 0")
    trainer = trainers.ADAG(mlp(), "adam", "sparse_categorical_crossentropy", progress=False)
    seconds = fails(lambda: trainer.train(empty), ConfigError, "must have rows to train on")
    assert seconds < 20


def test_class_indices_with_categorical_crossentropy_name_the_fix(small):
    trainer = trainers.DOWNPOUR(mlp(), "adam", "categorical_crossentropy", progress=False)
    fails(lambda: trainer.train(small), ConfigError,
          r"holds class indices.*sparse_categorical_crossentropy.*OneHotTransformer\(10, 'label'")


def test_one_hot_labels_with_sparse_loss_name_the_fix(spark):
    df = spark.createDataFrame([([0.0] * 64, [0.0] * 9 + [1.0])] * 8, "features array<double>, label array<double>")
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", progress=False)
    fails(lambda: trainer.train(df), ConfigError, "needs class indices.*vectors of length 10.*categorical_crossentropy")


def test_a_feature_width_that_does_not_fit_the_model_is_refused(small):
    trainer = trainers.SingleTrainer(mlp(784), "adam", "sparse_categorical_crossentropy", progress=False)
    fails(lambda: trainer.train(small), ConfigError, r"`features` has 64 values per row.*\(784,\) \(784 values\)")


def test_an_unreachable_parameter_server_fails_in_seconds_with_a_hint(small):
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", progress=False,
                                parameter_server=["tcp://127.0.0.1:9"])
    seconds = fails(lambda: trainer.train(small), ConfigError, r"did not answer within 5 s.*zdk ps status")
    assert seconds < 20


def with_a_nan(spark, digits):
    x_train, _, y_train, _ = digits
    x = x_train[:200].copy()
    x[17, 5] = np.nan
    return spark.createDataFrame([(r.tolist(), int(y)) for r, y in zip(x, y_train[:200])],
                                 "features array<double>, label long")


@pytest.mark.parametrize("name", ["SingleTrainer", "ADAG"])
def test_a_nan_in_the_features_stops_training_naming_worker_epoch_and_step(spark, digits, name):
    trainer = getattr(trainers, name)(mlp(), "adam", "sparse_categorical_crossentropy", num_epoch=2,
                                      progress=False)
    fails(lambda: trainer.train(with_a_nan(spark, digits)), WorkerFailed,
          r"worker \d \(attempt 0\): the training loss became nan at epoch 0, step \d+\. Check the input data")


def test_on_nan_warn_trains_on(spark, digits):
    trainer = trainers.SingleTrainer(mlp(), "adam", "sparse_categorical_crossentropy", num_epoch=1,
                                     progress=False, on_nan="warn")
    trainer.train(with_a_nan(spark, digits))
    assert any(r["loss"] is not None and not np.isfinite(r["loss"]) for r in trainer.history)


def test_on_nan_is_validated():
    with pytest.raises(ConfigError, match="`on_nan` must be 'raise' or 'warn'"):
        trainers.ADAG(mlp(), "adam", "mse", on_nan="ignore")


def test_a_worker_without_rows_is_named_in_a_warning(spark, caplog):
    one_row = spark.createDataFrame([([0.0] * 64, 1)], "features array<double>, label long")
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, progress=False)
    with caplog.at_level("WARNING", logger="zdk.trainers"):
        trainer.train(one_row)
    assert any("got no rows" in r.getMessage() for r in caplog.records), caplog.text


def test_a_tensorflow_graph_error_is_reported_with_its_reason():
    from zdk.driver.spark_job import worker_message

    text = "\n".join([
        "An exception was thrown from the Python worker:", "Traceback (most recent call last):",
        '  File "worker.py", line 3, in step', "    result = step_func(data)",
        "tensorflow.python.framework.errors_impl.InvalidArgumentError: Graph execution error:", "",
        "Detected at node loss/SparseSoftmaxCrossEntropyWithLogits defined at (most recent call last):",
        '  File "<frozen runpy>", line 198, in _run_module_as_main', "",
        "Received a label value of 9 which is outside the valid range of [0, 5).  Label values: 5 7 9",
        "\t [[{{node loss/SparseSoftmaxCrossEntropyWithLogits}}]] [Op:__inference_one_step_on_data_9642]",
        "\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(PythonRunner.scala:1)"])
    message = worker_message(RuntimeError(text))
    assert message.startswith("tensorflow.python.framework.errors_impl.InvalidArgumentError: Graph execution error:")
    assert message.endswith("Received a label value of 9 which is outside the valid range of [0, 5).  "
                            "Label values: 5 7 9")
    assert worker_message(RuntimeError("x\nValueError: bad shape\n\tat org.Foo")) == "ValueError: bad shape"
