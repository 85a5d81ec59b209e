"""Accuracy parity: every trainer against plain ``keras.Model.fit``, measured in the same run.

Fashion-MNIST (sklearn digits when the Debian package is missing), MLP 784-256-128-10, Adam
1e-3 (each algorithm's defaults otherwise), batch 64, for each epoch count and worker count
asked. Prints a table of test accuracy, the gap to SingleTrainer at equal epochs, and
train() wall time over plain fit's; ``--results`` appends it to a Markdown file.

Run: python benchmarks/accuracy.py [--epochs 3 10] [--workers 2 4] [--trainers ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TRAINERS = ("SingleTrainer", "DOWNPOUR", "AGN", "ADAG", "DynSGD", "AEASGD", "EAMSGD", "AveragingTrainer",
            "EnsembleTrainer")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10], help="epoch counts (default: 3 10)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4], help="worker counts (default: 2 4)")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS,
                        help="trainers (default: all)")
    parser.add_argument("--rows", type=int, default=0, help="training rows; 0 = all (default: 0)")
    parser.add_argument("--params", default="{}", help="JSON {trainer: {argument: value}} overrides (default: {})")
    parser.add_argument("--results", default=None, help="append the table to this Markdown file (default: none)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from zdk import datasets, trainers
    from zdk.driver.session import get_session

    source, x_train, y_train, x_test, y_test = datasets.load_images()
    if args.rows:
        x_train, y_train = x_train[: args.rows], y_train[: args.rows]
    x_train = x_train.reshape(len(x_train), -1)
    x_test = x_test.reshape(len(x_test), -1)
    overrides = json.loads(args.params)
    # One slot per worker, so every asynchronous worker runs at once (and averaging's barrier fits).
    spark = get_session(f"local[{max(args.workers)}]")
    df = datasets.to_dataframe(spark, x_train, y_train).cache()
    df.count()

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((x_train.shape[1],)), keras.layers.Dense(256, activation="relu"),
                                 keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")])

    def accuracy(m) -> float:
        return float((m.predict(x_test, verbose=0, batch_size=1024).argmax(axis=1) == y_test).mean())

    rows: list[dict] = []
    print(f"{source}: {len(x_train)} training rows, {len(x_test)} test rows; trainers {', '.join(args.trainers)}")
    for epochs in args.epochs:
        reference = model()
        reference.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        started = time.perf_counter()
        reference.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
        fit_wall = time.perf_counter() - started
        fit_acc = accuracy(reference)
        rows.append({"trainer": "keras fit", "workers": 1, "epochs": epochs, "accuracy": fit_acc, "wall": fit_wall,
                     "fit_wall": fit_wall})
        print(f"  keras fit, {epochs} epochs: {fit_acc:.4f} in {fit_wall:.1f} s", flush=True)
        for workers in args.workers:
            for name in args.trainers:
                if name == "SingleTrainer" and workers != args.workers[0]:
                    continue
                kwargs = dict(num_epoch=epochs, batch_size=64, progress=False, **overrides.get(name, {}))
                optimizer = kwargs.pop("worker_optimizer", "sgd" if name == "EAMSGD" else keras.optimizers.Adam(1e-3))
                if name == "EnsembleTrainer":
                    kwargs["num_ensembles"] = workers
                elif name != "SingleTrainer":
                    kwargs["num_workers"] = workers
                trainer = getattr(trainers, name)(model(), optimizer, "sparse_categorical_crossentropy", **kwargs)
                started = time.perf_counter()
                trained = trainer.train(df, shuffle=True)
                wall = time.perf_counter() - started
                acc = float(np.mean([accuracy(m) for m in trained])) if isinstance(trained, list) else accuracy(trained)
                rows.append({"trainer": name, "workers": 1 if name == "SingleTrainer" else workers, "epochs": epochs,
                             "accuracy": acc, "wall": wall, "fit_wall": fit_wall})
                print(f"  {name}, {workers} workers, {epochs} epochs: {acc:.4f} in {wall:.1f} s", flush=True)
    table = render(rows, source)
    print(table)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write("\n" + table + "\n")
    spark.stop()
    return rows


def render(rows: list[dict], source: str) -> str:
    single = {r["epochs"]: r["accuracy"] for r in rows if r["trainer"] == "SingleTrainer"}
    lines = [f"# accuracy parity — {datetime.date.today()} — {platform.node()}, {os.cpu_count()} CPUs — {source}",
             "", "| trainer | workers | epochs | test accuracy | − SingleTrainer (points) | train() wall / fit wall |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        gap = f"{100 * (r['accuracy'] - single[r['epochs']]):+.1f}" if r["epochs"] in single else "–"
        lines.append(f"| {r['trainer']} | {r['workers']} | {r['epochs']} | {r['accuracy']:.4f} | {gap} | "
                     f"{r['wall'] / r['fit_wall']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
