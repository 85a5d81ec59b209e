"""The start-up work that makes train() faster does what it says (no timings asserted here:
speed is measured by benchmarks/time_to_accuracy.py)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("pyspark")

from zdk import trainers  # noqa: E402
from zdk.driver import data  # noqa: E402
from zdk.driver.session import warm_workers  # noqa: E402

pytestmark = pytest.mark.spark


def mlp():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, activation="softmax")])


def test_shuffle_spreads_every_stretch_evenly_and_randomizes_each_partition_without_a_global_sort(spark):
    rows = 4000
    # Sorted by class, the worst order for a partitioning that keeps stretches together.
    df = spark.createDataFrame([([float(i), 0.0], i * 4 // rows) for i in range(rows)],
                               "features array<double>, label long")
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", num_workers=4, progress=False)
    prepared = data.prepare(trainer.plan, df, shuffle=True).frame
    plan = prepared._jdf.queryExecution().executedPlan().toString()
    assert "RangePartitioning" not in plan, "shuffle=True still sorts globally"
    parts = prepared.rdd.glom().collect()
    assert len(parts) == 4
    for part in parts:
        labels = np.array([r.label for r in part])
        counts = np.bincount(labels.astype(int), minlength=4)
        assert abs(len(part) - rows / 4) <= rows * 0.02, [len(p) for p in parts]
        assert (np.abs(counts - len(part) / 4) <= len(part) * 0.05).all(), counts
        order = np.array([r.features[0] for r in part])
        rho = np.corrcoef(np.arange(len(order)), order)[0, 1]
        assert abs(rho) < 0.1, f"a partition keeps its input order (correlation {rho:.2f})"


def test_warm_workers_leaves_keras_imported_in_the_python_workers(spark):
    from conftest import poll_until

    warm_workers(spark, force=True).join(120)

    def check(batches):
        import os
        import sys
        import threading

        import pyarrow as pa

        from zdk.runtime.threads import _tf_started, size_tf_threads

        for _ in batches:
            pass
        loading = any(t.name == "zdk-keras-import" for t in threading.enumerate())
        started = _tf_started()
        size_tf_threads()  # what a training task does first
        yield pa.RecordBatch.from_pydict({"pid": [os.getpid()], "ready": ["keras" in sys.modules and not loading],
                                          "started": [started],
                                          "threads": [os.environ.get("TF_NUM_INTRAOP_THREADS", "")]})

    slots = spark.sparkContext.defaultParallelism

    def all_ready():
        found = spark.range(slots, numPartitions=slots).mapInArrow(
            check, "pid long, ready boolean, started boolean, threads string").collect()
        return all(r.ready for r in found) and found

    # The session's daemon (zdk.runtime.daemon) imported Keras before forking the workers.
    found = poll_until(all_ready, timeout=60, interval=0.5, what="Keras to be imported in every Python worker")
    # TensorFlow starts with one intra-op thread per CPU Spark gives a task (spark.task.cpus = 1),
    # not one per core of the host in every worker: a forked worker has TensorFlow imported but
    # not started, so its task still sizes the pools (a reused one sized them in its first task).
    assert {r.threads for r in found} == {"1"}, found


def test_timings_account_for_the_phases_of_train(spark, digits_df):
    trainer = trainers.DOWNPOUR(keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")]),
                                "adam", "sparse_categorical_crossentropy", num_workers=2, progress=False)
    trainer.train(digits_df)
    t = trainer.timings
    phases = ("data_preparation", "shard_start", "worker_start", "first_step", "steps", "teardown")
    assert set(phases) <= set(t) and all(t[p] >= 0 for p in phases), t
    assert abs(sum(t[p] for p in phases) - t["total"]) < 0.05 * t["total"] + 0.1, t
    assert t["time_to_first_step"] <= t["total"]


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])  # Adagrad's accumulators start at 0.1, not 0
def test_a_second_run_reuses_the_model_with_a_fresh_optimizer_state(optimizer):
    """Same start, same data: a second run on the kept model (optimizer state reset) must end exactly
    where the first ends; carried-over moments or accumulators would not."""
    import pyarrow as pa

    from zdk.runtime.models import make_spec
    from zdk.runtime.worker import WorkerConfig, WorkerRun

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)

    def batches():
        yield pa.RecordBatch.from_pydict({"features": pa.array(list(x), pa.list_(pa.float32())), "label": y})

    def run():
        keras.utils.set_random_seed(3)  # a fresh model object each time, as a user's script makes
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(2, activation="softmax")])
        spec = make_spec(model, optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        initial = spec.layout.flatten(model.get_weights())
        config = WorkerConfig(spec=spec.to_json(), algorithm="sequential", params={}, endpoints=(),
                              features=("features",), labels=("label",), batch_size=32, num_epoch=2)
        worker = WorkerRun(config, worker_id=0)
        summary = worker.run(batches(), initial=initial)[-1]
        return np.frombuffer(summary["weights"], "<f4"), worker.reused

    first, _ = run()
    second, reused = run()
    assert reused, "the second run rebuilt the model"
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)


def test_a_cached_dataframe_is_prepared_once_and_an_uncached_one_every_time(spark):
    from zdk.driver import prepared as cache

    df = spark.createDataFrame([([float(i), 1.0], i % 4) for i in range(400)], "features array<double>, label long")
    plan = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, progress=False).plan
    first = data.prepare(plan, df, shuffle=True)
    again = data.prepare(plan, df, shuffle=True)
    assert not first.reused and not again.reused and again.frame is not first.frame  # not cached: afresh

    df.cache()
    try:
        first = data.prepare(plan, df, shuffle=True)
        assert not first.reused
        again = data.prepare(plan, df, shuffle=True)
        assert again.reused and again.frame is first.frame
        # The reused data is what a fresh preparation gives: same rows in the same partitions and order.
        fresh = data.partitioned(plan, df, shuffle=True)
        assert again.frame.rdd.glom().collect() == fresh.rdd.glom().collect()
        # Another shuffle, column set or task count is another preparation, and the old one is released.
        other = data.prepare(plan, df, shuffle=False)
        assert not other.reused and other.frame is not first.frame and not cache.is_cached(first.frame)
        assert data.prepare(plan, df, shuffle=False).reused
        # A DataFrame whose content may have changed (no longer cached) is prepared afresh.
        df.unpersist()
        assert not data.prepare(plan, df, shuffle=False).reused
    finally:
        df.unpersist()
        cache.release(spark)


def test_training_twice_on_a_cached_dataframe_reuses_its_prepared_data(spark, digits_df, digits):
    _, x_test, _, y_test = digits
    results = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
        trainer = trainers.SingleTrainer(model, keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                                         num_epoch=3, progress=False)
        trained = trainer.train(digits_df, shuffle=True)
        results.append((trainer.reused_data, float((trained.predict(x_test, verbose=0).argmax(1) == y_test).mean())))
    assert results[1][0] and results[0][1] > 0.85 and results[1][1] > 0.85, results


def test_tf_threads_follow_the_task_cpus_unless_the_environment_or_tensorflow_decided_first():
    import os
    import subprocess
    import sys

    code = ("import os, sys; from zdk.runtime.threads import size_tf_threads; {pre}"
            "print(size_tf_threads(), os.environ.get('TF_NUM_INTRAOP_THREADS'), os.environ.get('TF_NUM_INTEROP_THREADS'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}

    def run(pre: str = "", **extra: str) -> str:
        return subprocess.run([sys.executable, "-c", code.format(pre=pre)], env={**env, **extra}, check=True,
                              capture_output=True, text=True).stdout.split("\n")[0]

    assert run() == "1 1 2"  # outside a task: one CPU
    assert run(TF_NUM_INTRAOP_THREADS="4") == "None 4 None"
    assert run(pre="sys.modules['tensorflow'] = object(); ") == "None None None"
    # imported but not started (a worker forked from zdk.runtime.daemon): still sized
    assert run(pre="import tensorflow; ") == "1 1 2"
    assert run(pre="import tensorflow as tf; tf.constant(1.0); ") == "None None None"  # started: too late
