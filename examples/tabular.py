"""Binary classification of tabular data (sklearn's breast cancer set, offline) with zdk.

StandardTransformer normalizes the 30 feature columns, BinaryLabelTransformer encodes the
label, DOWNPOUR trains on 2 workers, and F1 and accuracy are computed on Spark.
Run: python examples/tabular.py [--epochs 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default: 20)")
    parser.add_argument("--workers", type=int, default=2, help="workers (default: 2)")
    args = parser.parse_args(argv)

    import keras
    from pyspark.ml.feature import VectorAssembler
    from sklearn.datasets import load_breast_cancer

    from zdk.evaluators import AccuracyEvaluator, F1Evaluator
    from zdk.predictors import ModelPredictor
    from zdk.driver.session import get_session
    from zdk.trainers import DOWNPOUR
    from zdk.transformers import BinaryLabelTransformer, StandardTransformer

    spark = get_session()
    data = load_breast_cancer(as_frame=True).frame
    data.columns = [c.replace(" ", "_") for c in data.columns]
    features = [c for c in data.columns if c != "target"]
    df = spark.createDataFrame(data)
    train, test = df.randomSplit([0.75, 0.25], seed=7)

    def prepare(frame):
        frame = StandardTransformer(columns=features, suffix="_z").transform(frame)
        frame = VectorAssembler(inputCols=[c + "_z" for c in features], outputCol="features").transform(frame)
        # target 1 means benign here; the positive class (index 0 of the pair) is malignant (0).
        return BinaryLabelTransformer(input_column="target", output_column="label", label=0).transform(frame)

    train, test = prepare(train).cache(), prepare(test).cache()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((len(features),)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    trainer = DOWNPOUR(keras_model=model, worker_optimizer="adam", loss="categorical_crossentropy",
                       num_workers=args.workers, num_epoch=args.epochs, batch_size=16, communication_window=4,
                       progress=False)
    trained = trainer.train(train, shuffle=True)
    predicted = ModelPredictor(trained).predict(test)
    # Index 0 of the [malignant, benign] pair is the positive class.
    f1 = F1Evaluator("label", "prediction", average="binary", positive_label=0).evaluate(predicted)
    accuracy = AccuracyEvaluator("label", "prediction").evaluate(predicted)
    print(f"breast cancer: {train.count()} training and {test.count()} test rows, {len(features)} features")
    print(f"F1 (malignant) {f1:.4f}, accuracy {accuracy:.4f}, training {trainer.training_time:.1f} s")
    spark.stop()
    return {"f1": f1, "accuracy": accuracy}


if __name__ == "__main__":
    main()
