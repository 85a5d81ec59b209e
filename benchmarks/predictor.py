"""Batch prediction: zdk's Arrow ModelPredictor against a row-at-a-time predictor like dist-keras's.

Both run in the same Spark session on the same 20 000 rows and the same MLP (784-256-128-10).
The row-at-a-time baseline rebuilds the model once per partition and predicts one row
per call, as dist-keras did. dist-keras called ``model.predict`` per row; in Keras 3 that
costs ~60 ms a call here, so by default the baseline uses ``predict_on_batch`` per row
(~100× cheaper per call, so the reported speed-up is conservative); ``--faithful`` uses
``model.predict`` (slow: about 10 minutes on 2 cores).

Run: .venv/bin/python benchmarks/predictor.py [--rows 20000] [--faithful]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def row_at_a_time(df, model_json: str, weights: list, features: str, faithful: bool):
    """dist-keras's ModelPredictor._predict, ported: one model per partition, one call per row."""
    import numpy as np
    from pyspark.ml.linalg import DenseVector
    from pyspark.sql import Row

    def predict_partition(rows):
        import keras

        model = keras.models.model_from_json(model_json)
        model.set_weights(weights)
        for row in rows:
            x = np.asarray([row[features]], dtype=np.float32)
            y = model.predict(x, verbose=0) if faithful else model.predict_on_batch(x)
            yield Row(**row.asDict(), prediction=DenseVector(np.asarray(y)[0]))

    return df.rdd.mapPartitions(predict_partition)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows to predict (default: 20000)")
    parser.add_argument("--faithful", action="store_true", help="baseline calls model.predict per row, as "
                        "dist-keras did (default: predict_on_batch per row)")
    args = parser.parse_args()

    import keras
    import numpy as np

    from zdk import datasets
    from zdk.predictors import ModelPredictor
    from zdk.driver.session import get_session

    spark = get_session()
    if datasets.fashion_mnist_available():
        x = datasets.load_fashion_mnist()[0][: args.rows].reshape(-1, 784)
        source = "Fashion-MNIST"
    else:
        x = np.random.default_rng(0).random((args.rows, 784), dtype=np.float32)
        source = "random pixels"
    df = datasets.to_dataframe(spark, x, np.zeros(len(x), np.int64)).repartition(2).cache()
    df.count()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")])

    def zdk_run(frame) -> None:
        ModelPredictor(model).predict(frame).select("prediction").write.format("noop").mode("overwrite").save()

    def baseline_run(frame) -> int:
        return row_at_a_time(frame, model.to_json(), model.get_weights(), "features", args.faithful).count()

    # Warm every Python worker up (TensorFlow import, model build) on a sample that keeps both
    # partitions; then both predict every row on the executors, neither collects to the driver.
    sample = df.sample(fraction=0.005, seed=1)
    for _ in range(2):
        zdk_run(sample)
        baseline_run(sample)
    zdk_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        zdk_run(df)
        zdk_times.append(time.perf_counter() - t0)
    zdk_seconds = sorted(zdk_times)[1]
    t0 = time.perf_counter()
    assert baseline_run(df) == len(x)
    base_seconds = time.perf_counter() - t0

    baseline = "model.predict per row" if args.faithful else "predict_on_batch per row"
    print(f"# predictor benchmark — {time.strftime('%Y-%m-%d')} — {platform.node()}, {os.cpu_count()} CPUs, "
          f"{len(x)} rows of {source}, local[*]")
    print()
    print("| predictor | seconds | rows/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| row at a time ({baseline}) | {base_seconds:.1f} | {len(x) / base_seconds:,.0f} | 1.0× |")
    print(f"| zdk ModelPredictor (Arrow batches; median of 3) | {zdk_seconds:.2f} | {len(x) / zdk_seconds:,.0f} | "
          f"{base_seconds / zdk_seconds:.1f}× |")
    spark.stop()


if __name__ == "__main__":
    main()
