"""What watching a run costs, and how fast steering it is.

Fashion-MNIST (sklearn digits when the Debian package is missing), MLP 784-256-128-10, Adam
1e-3, batch 64, 2 workers, ``local[2]``, in one Spark session:

- **validation**: the same ``train()`` with and without ``validation_data`` (the 10,000 test
  images, evaluated on the driver at every epoch's end); wall time, the ratio of the two, and
  ``trainer.timings["validation_per_epoch"]``;
- **stopping**: a callback sets ``model.stop_training`` at the end of epoch 1 of a run planned for
  many epochs; the seconds from that moment to ``train()`` returning, and the steps each worker
  took after it (at most one communication window, plus the step in flight).

Medians of ``--repeats`` runs of each; the table compares runs measured in the same session.

Run: python benchmarks/watching.py [--epochs 3] [--repeats 2] [--algorithm downpour]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def model(inputs: int):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the validation runs (default: 3)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default: 2)")
    parser.add_argument("--algorithm", default="downpour", help="registered algorithm (default: downpour)")
    parser.add_argument("--window", type=int, default=4, help="communication window (default: 4)")
    args = parser.parse_args()

    import keras

    from zdk import datasets
    from zdk.driver.session import get_session
    from zdk.trainers import Trainer

    spark = get_session("local[2]")
    source, x_train, y_train, x_test, y_test = datasets.load_images()
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    train = datasets.to_dataframe(spark, x_train, y_train).cache()
    test = datasets.to_dataframe(spark, x_test, y_test).cache()
    print(f"data: {source}, {train.count()} training and {test.count()} validation rows; algorithm "
          f"{args.algorithm}, window {args.window}, 2 workers", flush=True)

    def trainer(epochs: int) -> Trainer:
        return Trainer(model(x_train.shape[1]), keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                       algorithm=args.algorithm, batch_size=64, num_workers=2, num_epoch=epochs,
                       communication_window=args.window, progress=False)

    Trainer(model(x_train.shape[1]), "adam", "sparse_categorical_crossentropy", algorithm=args.algorithm,
            num_epoch=1, progress=False).train(train)  # warm-up: Python workers, traced steps
    plain, watched, per_epoch = [], [], []
    for _ in range(args.repeats):
        t = trainer(args.epochs)
        started = time.perf_counter()
        t.train(train)
        plain.append(time.perf_counter() - started)
        t = trainer(args.epochs)
        started = time.perf_counter()
        t.train(train, validation_data=test)
        watched.append(time.perf_counter() - started)
        per_epoch.append(t.timings["validation_per_epoch"])

    class StopAt(keras.callbacks.Callback):
        when = 0.0

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True
                StopAt.when = time.time()

    latency, late_steps = [], []
    for _ in range(args.repeats):
        t = trainer(100)
        t.train(train, callbacks=[StopAt()])
        latency.append(time.time() - StopAt.when)
        late_steps.append(max(sum(1 for r in t.history if r["worker"] == w and r["timestamp"] > StopAt.when)
                              for w in (0, 1)))

    med = statistics.median
    print(f"\n| measure | median of {args.repeats} |")
    print("|---|---|")
    print(f"| train(), {args.epochs} epochs, no validation | {med(plain):.1f} s |")
    print(f"| train(), {args.epochs} epochs, validation every epoch | {med(watched):.1f} s |")
    print(f"| ratio with / without validation | {med(watched) / med(plain):.2f} |")
    print(f"| validation per epoch (trainer.timings) | {med(per_epoch):.2f} s |")
    print(f"| stop_training → train() returns | {med(latency):.2f} s |")
    print(f"| steps a worker took after the stop (window {args.window}) | {med(late_steps):.0f} (max "
          f"{max(late_steps)}) |")
    spark.stop()


if __name__ == "__main__":
    main()
