"""zdk's main demo: an MLP on Fashion-MNIST with ADAG, 2 workers and 2 PS shards on embedded Spark.

Falls back to sklearn's digits (and says so) when the Debian package dataset-fashion-mnist
is not installed. Run: python examples/demo.py [--epochs 5] [--workers 2] [--shards 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs (default: 5)")
    parser.add_argument("--workers", type=int, default=2, help="Spark tasks / PS workers (default: 2)")
    parser.add_argument("--shards", type=int, default=2, help="parameter-server shards (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch size (default: 64)")
    parser.add_argument("--rows", type=int, default=0, help="use only this many training rows; 0 = all (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown on a TTY)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import keras

    from zdk import datasets
    from zdk.driver.session import get_session
    from zdk.trainers import ADAG

    name, x_train, y_train, x_test, y_test = datasets.load_images()
    if args.rows:
        x_train, y_train = x_train[: args.rows], y_train[: args.rows]
    features = int(x_train[0].size)
    print(f"data: {name}, {len(x_train)} training and {len(x_test)} test rows, {features} features")

    spark = get_session()
    df = datasets.to_dataframe(spark, x_train, y_train).cache()
    df.count()

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((features,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    trainer = ADAG(keras_model=model, worker_optimizer=keras.optimizers.Adam(0.004),
                   loss="sparse_categorical_crossentropy", metrics=["accuracy"], num_workers=args.workers,
                   num_shards=args.shards, batch_size=args.batch_size, num_epoch=args.epochs,
                   communication_window=8, progress=not args.no_progress)
    started = time.perf_counter()
    trained = trainer.train(df, shuffle=True)
    wall = time.perf_counter() - started
    predictions = trained.predict(x_test.reshape(len(x_test), -1), verbose=0, batch_size=1024)
    accuracy = float((predictions.argmax(axis=1) == y_test).mean())

    print()
    print(f"test accuracy: {accuracy:.4f}")
    print(f"training time: {trainer.training_time:.1f} s (train() wall time {wall:.1f} s)")
    print(f"PS wait: {100 * trainer.ps_wait_fraction:.1f}% of worker time")
    print()
    print("per worker (loss and accuracy: means of its minibatches in the last epoch)")
    print(f"{'worker':>6} {'rows':>7} {'steps':>6} {'exchanges':>9} {'loss':>10} {'accuracy':>8} "
          f"{'busy s':>7} {'PS wait':>7}")
    for s in trainer.worker_summaries:
        steps = [r for r in trainer.history if r["worker"] == s["worker"]]
        exchanges = sum(r["staleness"] is not None for r in steps)
        last_epoch = [r for r in steps if r["epoch"] == steps[-1]["epoch"]]
        loss = sum(r["loss"] for r in last_epoch) / len(last_epoch)
        acc = sum(r["metrics"].get("accuracy", 0.0) for r in last_epoch) / len(last_epoch)
        print(f"{s['worker']:>6} {s['rows']:>7} {len(steps):>6} {exchanges:>9} {loss:>10.4f} {acc:>8.4f} {s['busy']:>7.1f} "
              f"{100 * s['wait'] / max(s['busy'], 1e-9):>6.1f}%")
    spark.stop()


if __name__ == "__main__":
    main()
