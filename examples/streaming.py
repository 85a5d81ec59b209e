"""Streaming inference (dist-keras's Kafka notebook, without Kafka): files arrive in a
directory, Spark Structured Streaming reads them, the transformers and ModelPredictor run
on the stream, and predictions land in a Parquet sink.

A producer thread writes the test rows as small JSON files, one batch at a time; the query
picks each up as it arrives. At the end the sink is read back and evaluated.
Run: python examples/streaming.py [--files 6] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def produce(directory: str, rows: list[dict], files: int, pause: float) -> None:
    """Writes ``rows`` as ``files`` JSON-lines files, each atomically (write, then rename)."""
    size = -(-len(rows) // files)
    for k in range(files):
        part = rows[k * size:(k + 1) * size]
        tmp = os.path.join(directory, f".part-{k}.tmp")
        with open(tmp, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in part)
        os.rename(tmp, os.path.join(directory, f"part-{k:04d}.json"))
        time.sleep(pause)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6, help="files the producer writes (default: 6)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between files (default: 0.5)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default: 15)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the stream (default: 120)")
    args = parser.parse_args(argv)

    import keras
    from pyspark.sql import types as T
    from sklearn.datasets import load_digits

    from zdk.evaluators import AccuracyEvaluator
    from zdk.predictors import ModelPredictor
    from zdk.driver.session import get_session
    from zdk.trainers import SingleTrainer
    from zdk.transformers import LabelIndexTransformer, MinMaxTransformer

    spark = get_session()
    digits = load_digits()
    pixels, labels = digits.data.tolist(), digits.target.tolist()
    cut = int(0.75 * len(labels))
    schema = T.StructType([T.StructField("pixels", T.ArrayType(T.DoubleType())), T.StructField("label", T.LongType())])
    scale = MinMaxTransformer(0.0, 16.0, 0.0, 1.0, "pixels", "features")  # dist-keras's positional order
    train = scale.transform(spark.createDataFrame(list(zip(pixels[:cut], labels[:cut])), schema))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    trained = SingleTrainer(model, "adam", "sparse_categorical_crossentropy", num_epoch=args.epochs,
                            progress=False).train(train)

    with tempfile.TemporaryDirectory(prefix="zdk-stream-") as work:
        incoming, sink, checkpoints = (os.path.join(work, d) for d in ("incoming", "sink", "checkpoints"))
        os.makedirs(incoming)
        stream = spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).json(incoming)
        predicted = ModelPredictor(trained, features_col="features").predict(scale.transform(stream))
        indexed = LabelIndexTransformer(10).transform(predicted).select("label", "prediction_index")
        query = (indexed.writeStream.format("parquet").option("path", sink)
                 .option("checkpointLocation", checkpoints).trigger(processingTime="250 milliseconds").start())
        rows = [{"pixels": p, "label": y} for p, y in zip(pixels[cut:], labels[cut:])]
        producer = threading.Thread(target=produce, args=(incoming, rows, args.files, args.pause))
        started = time.monotonic()
        producer.start()
        producer.join()
        try:
            while True:
                done = spark.read.schema("label long, prediction_index double").parquet(sink).count() \
                    if os.listdir(sink) else 0
                if done >= len(rows):
                    break
                if query.exception() is not None:
                    raise RuntimeError(f"the streaming query failed: {query.exception()}")
                if time.monotonic() - started > args.timeout:
                    raise TimeoutError(f"the stream delivered {done} of {len(rows)} rows in {args.timeout:.0f} s")
                time.sleep(0.25)
            batches = len(query.recentProgress)
        finally:
            query.stop()
        result = spark.read.parquet(sink)
        accuracy = AccuracyEvaluator("label", "prediction_index").evaluate(result)
        count = result.count()
    print(f"streamed {count} rows in {args.files} files through {batches} micro-batches "
          f"in {time.monotonic() - started:.1f} s")
    print(f"streaming accuracy: {accuracy:.4f}")
    spark.stop()
    return {"rows": count, "accuracy": accuracy}


if __name__ == "__main__":
    main()
