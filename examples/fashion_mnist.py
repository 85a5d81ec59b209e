"""dist-keras's MNIST workflow on Fashion-MNIST: preprocess, train five ways, predict, evaluate, compare.

Preprocessing uses zdk's transformers (MinMax, OneHot, Dense); training runs SingleTrainer,
ADAG, DOWNPOUR, AEASGD and AveragingTrainer; ModelPredictor, LabelIndexTransformer and
AccuracyEvaluator score each model; a table and a PNG of the training loss compare them.
Falls back to sklearn digits when the Debian package dataset-fashion-mnist is missing.

Run: python examples/fashion_mnist.py [--rows 60000] [--epochs 3] [--plot loss.png]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ALL_TRAINERS = ("SingleTrainer", "ADAG", "DOWNPOUR", "AEASGD", "AveragingTrainer")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=0, help="training rows to use; 0 = all (default: 0)")
    parser.add_argument("--test-rows", type=int, default=0, help="test rows to use; 0 = all (default: 0)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trainer (default: 3)")
    parser.add_argument("--workers", type=int, default=2, help="workers for distributed trainers (default: 2)")
    parser.add_argument("--trainers", nargs="+", default=list(ALL_TRAINERS), choices=ALL_TRAINERS,
                        help="trainers to compare (default: all five)")
    parser.add_argument("--plot", default="fashion_mnist_loss.png", help="PNG of the training loss "
                        "(default: fashion_mnist_loss.png)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from zdk import datasets, trainers
    from zdk.evaluators import AccuracyEvaluator
    from zdk.predictors import ModelPredictor
    from zdk.driver.session import get_session
    from zdk.transformers import DenseTransformer, LabelIndexTransformer, MinMaxTransformer, OneHotTransformer

    source, x_train, y_train, x_test, y_test = datasets.load_images()
    if args.rows:
        x_train, y_train = x_train[: args.rows], y_train[: args.rows]
    if args.test_rows:
        x_test, y_test = x_test[: args.test_rows], y_test[: args.test_rows]
    print(f"{source}: {len(x_train)} training rows, {len(x_test)} test rows")
    spark = get_session()

    def raw_frame(x, y):
        # Pixels as 0..255 vectors, like the CSV + VectorAssembler of dist-keras's workflow.
        df = datasets.to_dataframe(spark, np.rint(x * 255.0), y, features_col="pixels")
        return df.withColumn("pixels", array_to_vector(F.col("pixels")))

    preprocess = [
        DenseTransformer(input_col="pixels", output_col="dense"),
        MinMaxTransformer(o_min=0.0, o_max=255.0, n_min=0.0, n_max=1.0, input_col="dense", output_col="features"),
        OneHotTransformer(output_dim=10, input_col="label", output_col="label_encoded"),
    ]
    train_df, test_df = raw_frame(x_train, y_train), raw_frame(x_test, y_test)
    for stage in preprocess:
        train_df, test_df = stage.transform(train_df), stage.transform(test_df)
    train_df = train_df.select("features", "label_encoded").cache()
    test_df = test_df.select("features", "label").cache()
    train_df.count()
    inputs = int(x_train[0].size)

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(256, activation="relu"),
                                 keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")])

    common = dict(loss="categorical_crossentropy", metrics=["accuracy"], features_col="features",
                  label_col="label_encoded", num_epoch=args.epochs, batch_size=64, progress=False)
    setups = {
        "SingleTrainer": lambda: trainers.SingleTrainer(keras_model=model(), worker_optimizer="adam", **common),
        "ADAG": lambda: trainers.ADAG(keras_model=model(), worker_optimizer=keras.optimizers.Adam(0.004),
                                      num_workers=args.workers, num_shards=2, communication_window=8, **common),
        "DOWNPOUR": lambda: trainers.DOWNPOUR(keras_model=model(), worker_optimizer="adam", num_workers=args.workers,
                                              communication_window=5, **common),
        "AEASGD": lambda: trainers.AEASGD(keras_model=model(), worker_optimizer="adam", num_workers=args.workers,
                                          communication_window=8, rho=5.0, learning_rate=0.1, **common),
        "AveragingTrainer": lambda: trainers.AveragingTrainer(keras_model=model(), worker_optimizer="adam",
                                                              num_workers=args.workers, **common),
    }
    results = []
    for name in args.trainers:
        trainer = setups[name]()
        started = time.perf_counter()
        trained = trainer.train(train_df, shuffle=True)
        predicted = ModelPredictor(trained, features_col="features").predict(test_df)
        indexed = LabelIndexTransformer(output_dim=10).transform(predicted)
        accuracy = AccuracyEvaluator(label_col="label", prediction_col="prediction_index").evaluate(indexed)
        results.append({"trainer": name, "accuracy": accuracy, "training_time": trainer.training_time,
                        "wall_time": time.perf_counter() - started, "ps_wait": trainer.ps_wait_fraction,
                        "history": trainer.history})
        print(f"  {name:<17} accuracy {accuracy:.4f}  training {trainer.training_time:6.1f} s", flush=True)

    print()
    print(f"| {'trainer':<17} | accuracy | training s | train+eval s | PS wait |")
    print(f"|{'-' * 19}|----------|------------|--------------|---------|")
    for r in results:
        print(f"| {r['trainer']:<17} | {r['accuracy']:.4f}   | {r['training_time']:10.1f} | {r['wall_time']:12.1f} "
              f"| {100 * r['ps_wait']:6.1f}% |")
    if args.plot:
        plot_losses(results, args.plot)
        print(f"\nloss plot: {os.path.abspath(args.plot)}")
    spark.stop()
    return results


def plot_losses(results: list[dict], path: str, window: int = 20) -> None:
    """Minibatch training loss per worker step, averaged over workers, smoothed over ``window`` steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        by_step: dict[int, list[float]] = {}
        for h in r["history"]:
            by_step.setdefault(h["step"], []).append(h["loss"])
        if not by_step:
            continue
        steps = np.array(sorted(by_step))
        loss = np.array([np.mean(by_step[s]) for s in steps])
        k = max(1, min(window, len(loss) // 5))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, label=f"{r['trainer']} (test accuracy {r['accuracy']:.3f})")
    ax.set_xlabel("worker step")
    ax.set_ylabel(f"training loss (mean over workers, {window}-step moving average)")
    ax.set_title("zdk trainers on Fashion-MNIST")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
