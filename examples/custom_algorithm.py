"""Register a distributed optimizer in a few lines and train with it on Spark.

The algorithm below is DOWNPOUR with momentum on the server: v ← μ·v + Δ, θ̃ ← θ̃ + v.
It is defined at module level, so shard processes and Spark executors import this file
to find it. Run: python examples/custom_algorithm.py [--epochs 10] [--momentum 0.5]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np

from zdk.algorithms import APPLIED, Params, accumulated_delta, check, register, reset_to_center

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@dataclass(frozen=True)
class MomentumParams(Params):
    server_momentum: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.server_momentum < 1, "server_momentum", self.server_momentum, "in [0, 1)")


@register("momentum-downpour")
class MomentumDownpour:
    """DOWNPOUR with server-side momentum: v ← μ·v + Δ, θ̃ ← θ̃ + v (v is per shard slice)."""

    Params = MomentumParams
    worker_delta = staticmethod(accumulated_delta)
    worker_reset = staticmethod(reset_to_center)

    @staticmethod
    def server_update(shard, worker, delta, params):
        velocity = shard.state.setdefault("velocity", np.zeros_like(shard.center))
        velocity *= np.float32(params.server_momentum)
        velocity += delta
        shard.center += velocity
        return APPLIED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    parser.add_argument("--momentum", type=float, default=0.5, help="server momentum μ (default: 0.5)")
    parser.add_argument("--workers", type=int, default=2, help="workers (default: 2)")
    args = parser.parse_args()

    import keras

    from zdk import datasets
    from zdk.evaluators import AccuracyEvaluator
    from zdk.predictors import ModelPredictor
    from zdk.driver.session import get_session
    from zdk.trainers import Trainer

    spark = get_session()
    x_train, y_train, x_test, y_test = datasets.load_digits_split()
    train_df = datasets.to_dataframe(spark, x_train, y_train)
    test_df = datasets.to_dataframe(spark, x_test, y_test)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    trainer = Trainer(model, "adam", "sparse_categorical_crossentropy", algorithm="momentum-downpour",
                      server_momentum=args.momentum, communication_window=5, num_workers=args.workers,
                      num_epoch=args.epochs, progress=False)
    trained = trainer.train(train_df)
    predicted = ModelPredictor(trained).predict(test_df)
    accuracy = AccuracyEvaluator("label", "prediction").evaluate(predicted)
    print(f"momentum-downpour (μ={args.momentum}): test accuracy {accuracy:.4f} in {trainer.training_time:.1f} s")
    spark.stop()


if __name__ == "__main__":
    main()
