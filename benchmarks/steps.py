"""Compiled multi-step windows against ``model.fit`` and ``train_on_batch``, measured in the same run.

Fashion-MNIST (sklearn digits when the Debian package is missing), MLP 784-256-128-10, Adam 1e-3,
batch 64. Part 1, in this process: seconds per step of plain ``model.fit`` (default arguments but
``verbose=0``; the faster of two one-epoch fits, so tracing is excluded), of one ``train_on_batch``
per step, and of zdk's compiled window loop (:mod:`zdk.runtime.steps`) with windows of 4, 12 and 32
steps, each a ratio against the faster fit (every way runs
one epoch twice, interleaved, and keeps its faster). Part 2, on Spark: ``SingleTrainer`` and ``ADAG``
(2 workers, local[2]) ``train()`` for 3 epochs with one ``train_on_batch`` per step
(``steps_per_execution=1``) and with compiled windows (the default): test accuracy, ``train()`` wall
time, and the workers' seconds per step (their busy time over their steps) against fit's.

Run: python benchmarks/steps.py [--windows 4 12 32] [--epochs 3] [--skip-trainers]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

BATCH = 64


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[4, 12, 32], help="window lengths (default: 4 12 32)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the train() runs (default: 3)")
    parser.add_argument("--rows", type=int, default=0, help="training rows; 0 = all (default: 0)")
    parser.add_argument("--skip-trainers", action="store_true", help="only part 1 (no Spark)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from zdk import datasets
    from zdk.runtime.steps import compiled_steps

    source, x_train, y_train, x_test, y_test = datasets.load_images()
    if args.rows:
        x_train, y_train = x_train[: args.rows], y_train[: args.rows]
    x_train = np.ascontiguousarray(x_train.reshape(len(x_train), -1), dtype=np.float32)
    x_test = np.ascontiguousarray(x_test.reshape(len(x_test), -1), dtype=np.float32)
    y_float = y_train.astype(np.float32)
    steps = -(-len(x_train) // BATCH)
    batches = [([x_train[i:i + BATCH]], [y_float[i:i + BATCH]]) for i in range(0, len(x_train), BATCH)]

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((x_train.shape[1],)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")])
        m.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    print(f"{source}: {len(x_train)} rows, {steps} steps of {BATCH} an epoch; {platform.node()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    fit_model, step_model = model(), model()
    fit_model.fit(x_train[:BATCH * 4], y_train[:BATCH * 4], batch_size=BATCH, epochs=1, verbose=0)  # traces
    step_model.train_on_batch(*batches[0][0], *batches[0][1])
    windows = {window: compiled_steps(model()) for window in args.windows}
    for window, compiled in windows.items():
        compiled.run(batches[:window])

    def fit_epoch() -> None:
        fit_model.fit(x_train, y_train, batch_size=BATCH, epochs=1, verbose=0)

    def train_on_batch_epoch() -> None:
        for (x,), (y,) in batches:
            step_model.train_on_batch(x, y, return_dict=True)

    def windows_epoch(window: int) -> None:
        for i in range(0, len(batches), window):
            windows[window].run(batches[i:i + window])

    ways = {"model.fit (faster of 2)": fit_epoch, "train_on_batch per step": train_on_batch_epoch,
            **{f"compiled window of {w}": (lambda w=w: windows_epoch(w)) for w in args.windows}}
    # Two rounds through every way, interleaved, so a noisy neighbour weighs on all of them alike.
    per_step: dict[str, float] = {}
    for _ in range(2):
        for name, epoch in ways.items():
            started = time.perf_counter()
            epoch()
            seconds = (time.perf_counter() - started) / steps
            per_step[name] = min(per_step.get(name, seconds), seconds)
            print(f"  {name}: {1e3 * seconds:.3f} ms/step", flush=True)

    fit = per_step["model.fit (faster of 2)"]
    print("\n| way | ms / step | / fit |\n|---|---|---|")
    for name, seconds in per_step.items():
        print(f"| {name} | {1e3 * seconds:.3f} | {seconds / fit:.2f} |")
    if not args.skip_trainers:
        trainers_part(args, x_train, y_train, x_test, y_test, model, fit)


def trainers_part(args, x_train, y_train, x_test, y_test, model, fit: float) -> None:
    from zdk import datasets, trainers
    from zdk.driver.session import get_session

    spark = get_session("local[2]")
    df = datasets.to_dataframe(spark, x_train, y_train).cache()
    df.count()
    rows = []
    for name, kwargs in (("SingleTrainer", {}), ("ADAG", {"num_workers": 2})):
        for label, spe in (("train_on_batch per step", 1), ("compiled windows (default)", None)):
            options = dict(kwargs, num_epoch=args.epochs, batch_size=BATCH, progress=False)
            if spe is not None:
                options["steps_per_execution"] = spe
            m = model()
            trainer = getattr(trainers, name)(m, m.optimizer, "sparse_categorical_crossentropy", **options)
            started = time.perf_counter()
            trained = trainer.train(df, shuffle=True)
            wall = time.perf_counter() - started
            accuracy = float((trained.predict(x_test, verbose=0, batch_size=1024).argmax(axis=1) == y_test).mean())
            summaries = trainer.worker_summaries
            worker_steps = len(trainer.history)  # one record per worker step
            busy = sum(s["busy"] or 0.0 for s in summaries) / max(len(summaries), 1)
            per_step = busy / max(worker_steps / max(len(summaries), 1), 1)
            rows.append((name, label, accuracy, wall, per_step))
            print(f"  {name}, {label}: accuracy {accuracy:.4f}, train() {wall:.1f} s, "
                  f"{1e3 * per_step:.3f} ms/step", flush=True)
    print("\n| trainer | steps | test accuracy | train() wall s | worker ms / step | / fit step |\n|---|---|---|---|---|---|")
    for name, label, accuracy, wall, per_step in rows:
        print(f"| {name} | {label} | {accuracy:.4f} | {wall:.1f} | {1e3 * per_step:.3f} | {per_step / fit:.2f} |")
    spark.stop()


if __name__ == "__main__":
    main()
