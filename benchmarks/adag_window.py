"""ADAG's communication window: time to accuracy for each window, to choose the default.

One Spark session (``local[2]``), Fashion-MNIST, MLP 784-256-128-10, Adam 1e-3, batch 64, 2
workers; each window trains ``--epochs`` epochs for every seed (a warm ``train()``, after one
throw-away run that pays the cold start). Plain ``fit`` runs in the same process as the time
reference. Prints train() wall over fit's, and the test accuracy, per window.

    python benchmarks/adag_window.py --windows 2 4 8 16 32 --seeds 0 1 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from end_to_end import accuracy, load_fashion, mlp  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", default=None, help="append the table to this Markdown file")
    args = parser.parse_args(argv)

    import keras

    from zdk import datasets
    from zdk.driver.session import get_session
    from zdk.trainers import ADAG

    spark = get_session(f"local[{args.workers}]")
    x_train, y_train, x_test, y_test = load_fashion()
    df = datasets.to_dataframe(spark, x_train, y_train).cache()
    df.count()

    def adag(window: int, seed: int) -> tuple[float, float]:
        trainer = ADAG(mlp(keras, seed), keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                       num_workers=args.workers, num_epoch=args.epochs, batch_size=64, communication_window=window,
                       progress=False)
        started = time.perf_counter()
        trained = trainer.train(df, shuffle=True)
        return time.perf_counter() - started, accuracy(trained, x_test, y_test)

    def fit(seed: int) -> tuple[float, float]:
        model = mlp(keras, seed)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        started = time.perf_counter()
        model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=0, shuffle=True)
        return time.perf_counter() - started, accuracy(model, x_test, y_test)

    adag(args.windows[0], 99)  # the cold start, not measured
    fits = [fit(seed) for seed in args.seeds]
    fit_wall = min(w for w, _ in fits)
    rows = []
    for window in args.windows:
        runs = [adag(window, seed) for seed in args.seeds]
        rows.append((window, statistics.median(w for w, _ in runs), statistics.mean(a for _, a in runs)))
        print(f"window {window}: {rows[-1][1]:.1f} s, accuracy {rows[-1][2]:.4f}", flush=True)
    lines = [f"# ADAG window — {args.workers} workers, {args.epochs} epochs, seeds {args.seeds}, warm train()", "",
             "| window | train() s | train() / fit | accuracy (mean) | vs fit's accuracy |", "|---|---|---|---|---|"]
    fit_acc = statistics.mean(a for _, a in fits)
    lines.append(f"| plain fit | {fit_wall:.1f} | 1.00 | {fit_acc:.4f} | — |")
    for window, wall, acc in rows:
        lines.append(f"| {window} | {wall:.1f} | {wall / fit_wall:.2f} | {acc:.4f} | {acc - fit_acc:+.4f} |")
    table = "\n".join(lines)
    print(table)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write("\n" + table + "\n")
    spark.stop()


if __name__ == "__main__":
    main()
