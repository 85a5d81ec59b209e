"""Predictor, evaluators, model I/O, the Emperor scheme and the pyspark.ml Estimator/Model."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("pyspark")

from pyspark.ml import Pipeline, PipelineModel  # noqa: E402
from pyspark.ml.linalg import DenseVector, Vectors  # noqa: E402

from zdk import io  # noqa: E402
from zdk.errors import ConfigError  # noqa: E402
from zdk.evaluators import AccuracyEvaluator, F1Evaluator, LossEvaluator  # noqa: E402
from zdk.ml import KerasEstimator, KerasModel  # noqa: E402
from zdk.predictors import ModelPredictor  # noqa: E402
from zdk.schemes import Emperor  # noqa: E402
from zdk.transformers import LabelIndexTransformer, MinMaxTransformer  # noqa: E402

pytestmark = pytest.mark.spark


def small_model(seed: int = 0, inputs: int = 3, outputs: int = 2):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(outputs, activation="softmax")])


@pytest.fixture(scope="module")
def rows(spark):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    df = spark.createDataFrame([(i, Vectors.dense(v.tolist()), v.tolist()) for i, v in enumerate(x)],
                               ["id", "vec", "arr"])
    return x, df


def test_predictor_matches_keras_for_vector_and_array_columns(rows):
    x, df = rows
    model = small_model()
    expected = model.predict(x, verbose=0)
    for col in ("vec", "arr"):
        out = ModelPredictor(model, features_col=col, batch_size=64).predict(df).orderBy("id")
        assert out.columns == df.columns + ["prediction"]
        got = np.array([r["prediction"].toArray() for r in out.collect()])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert isinstance(out.first()["prediction"], DenseVector)


def test_predictor_handles_multi_input_models(rows, spark):
    x, _ = rows
    df = spark.createDataFrame([(i, v[:1].tolist(), v[1:].tolist()) for i, v in enumerate(x)], ["id", "a", "b"])
    keras.utils.set_random_seed(3)
    a, b = keras.Input((1,)), keras.Input((2,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    out = ModelPredictor(model, features_col=["a", "b"]).predict(df).orderBy("id")
    got = np.array([r["prediction"].toArray() for r in out.collect()])
    np.testing.assert_allclose(got, model.predict([x[:, :1], x[:, 1:]], verbose=0), rtol=1e-5, atol=1e-6)


def test_predictor_refuses_an_existing_output_column(rows):
    with pytest.raises(ConfigError, match="`output_col` must be a new column"):
        ModelPredictor(small_model(), features_col="vec", output_col="arr").predict(rows[1])


@pytest.fixture(scope="module")
def scored(spark):
    data = [(0, Vectors.dense([0.9, 0.1]), [1.0, 0.0]),   # label 0, predicted 0
            (1, Vectors.dense([0.2, 0.8]), [0.0, 1.0]),   # label 1, predicted 1
            (1, Vectors.dense([0.7, 0.3]), [0.0, 1.0]),   # label 1, predicted 0
            (0, Vectors.dense([0.6, 0.4]), [1.0, 0.0])]   # label 0, predicted 0
    return spark.createDataFrame(data, ["label", "prediction", "onehot"])


def test_accuracy_with_index_or_one_hot_labels(scored):
    assert AccuracyEvaluator("label", "prediction").evaluate(scored) == pytest.approx(0.75)
    assert AccuracyEvaluator("onehot", "prediction").evaluate(scored) == pytest.approx(0.75)
    indexed = LabelIndexTransformer(output_dim=2, activation_threshold=0.5).transform(scored)
    assert AccuracyEvaluator("label", "prediction_index").evaluate(indexed) == pytest.approx(0.75)


def test_f1_macro_and_binary(scored):
    # class 1: tp 1, fp 0, fn 1 → F1 2/3; class 0: tp 2, fp 1, fn 0 → F1 4/5
    assert F1Evaluator("label", "prediction", average="binary").evaluate(scored) == pytest.approx(2 / 3)
    assert F1Evaluator("label", "prediction").evaluate(scored) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_loss_evaluator_is_the_mean_keras_loss(scored):
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    y = np.array([[1, 0], [0, 1], [0, 1], [1, 0]])
    expected = float(np.mean(-np.log((p * y).sum(axis=1))))
    got = LossEvaluator("categorical_crossentropy", label_col="onehot").evaluate(scored)
    assert got == pytest.approx(expected, rel=1e-5)
    assert not LossEvaluator().isLargerBetter()


def test_save_and_load_model_through_a_hadoop_path(spark, tmp_path):
    model = small_model(seed=5)
    path = "file://" + str(tmp_path / "sub" / "m.keras")
    io.save_model(model, path, spark=spark)
    loaded = io.load_model(path, spark=spark)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="`path` must end with .keras"):
        io.save_model(model, "file:///tmp/x.h5", spark=spark)
    with pytest.raises(ConfigError, match="`path` must exist"):
        io.load_model("file://" + str(tmp_path / "missing.keras"), spark=spark)


def test_the_emperor_schedule_divides_the_learning_rate_on_a_plateau():
    """The callback alone, on a compiled model: evaluations every 3 epochs, losses scripted."""
    from zdk.schemes import EmperorSchedule, EmperorStep

    model = small_model(seed=1)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    losses = iter([1.0, 0.5, 0.499, 0.3])
    steps: list[EmperorStep] = []
    schedule = EmperorSchedule(lambda m, v: next(losses), "valid", evaluation_frequency=3, loss_threshold=0.01,
                               steps=steps)
    schedule.set_model(model)
    for epoch in range(12):
        schedule.on_epoch_end(epoch, {})
    assert [s.epochs for s in steps] == [3, 6, 9, 12]
    assert [s.learning_rate for s in steps] == pytest.approx([0.1, 0.1, 0.1, 0.01])
    assert [s.reduced for s in steps] == [False, False, True, False]
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


@pytest.mark.spark
def test_emperor_lowers_the_rate_within_one_run(digits_df, digits):
    from zdk.trainers import DOWNPOUR

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    trainer = DOWNPOUR(model, keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy", num_workers=1,
                       communication_window=1, progress=False)
    _, x_test, _, y_test = digits

    def evaluate(m, _):
        return float(m.evaluate(x_test, y_test, verbose=0)[0])

    emperor = Emperor(trainer, evaluate, num_epoch=4, evaluation_frequency=1, loss_threshold=10.0)
    trained = emperor.optimize(digits_df, None)
    assert [s.learning_rate for s in emperor.steps] == pytest.approx([0.5, 0.5, 0.05, 0.005])
    assert sorted({r["epoch"] for r in trainer.history}) == [0, 1, 2, 3]  # one run, not four
    assert float(trained.optimizer.learning_rate) == pytest.approx(0.0005)


def test_estimator_in_a_pipeline_saves_loads_and_predicts_the_same(digits_df, digits, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    scale = MinMaxTransformer(o_min=0.0, o_max=1.0, n_min=-1.0, n_max=1.0, input_col="features", output_col="scaled")
    estimator = KerasEstimator(keras_model=model, algorithm="downpour", algorithmParams={"communication_window": 4},
                               featuresCols=["scaled"], loss="sparse_categorical_crossentropy", numWorkers=2,
                               numEpoch=5, workerOptimizer=keras.optimizers.Adam(0.003))
    fitted = Pipeline(stages=[scale, estimator]).fit(digits_df)
    assert isinstance(fitted.stages[-1], KerasModel) and fitted.stages[-1].history
    path = "file://" + str(tmp_path / "pipeline")
    fitted.save(path)
    loaded = PipelineModel.load(path)
    before = [r["prediction"] for r in fitted.transform(digits_df).select("prediction").collect()]
    after = [r["prediction"] for r in loaded.transform(digits_df).select("prediction").collect()]
    np.testing.assert_allclose(np.array([v.toArray() for v in after]), np.array([v.toArray() for v in before]),
                               rtol=1e-6)
    accuracy = AccuracyEvaluator("label", "prediction").evaluate(loaded.transform(digits_df))
    assert accuracy > 0.85

    estimator_path = "file://" + str(tmp_path / "estimator")
    estimator.save(estimator_path)
    again = KerasEstimator.load(estimator_path)
    assert again.getOrDefault(again.algorithm) == "downpour" and again.getOrDefault(again.numEpoch) == 5
    assert again.keras_model.count_params() == model.count_params()


def test_estimator_without_loss_is_an_error(digits_df):
    with pytest.raises(ConfigError, match="`loss` must be set"):
        KerasEstimator(keras_model=small_model(inputs=64, outputs=10)).fit(digits_df)


def test_estimator_validates_on_a_fraction_or_on_rows_a_column_marks(digits_df):
    from pyspark.sql import functions as F

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    estimator = KerasEstimator(keras_model=model, algorithm="downpour", loss="sparse_categorical_crossentropy",
                               numWorkers=2, numEpoch=2, workerOptimizer=keras.optimizers.Adam(0.01), validation=0.2)
    fitted = estimator.fit(digits_df)
    assert len(fitted.epoch_history["val_loss"]) == 2 and len(fitted.epoch_history["val_accuracy"]) == 2
    marked = digits_df.withColumn("holdout", F.rand(3) < 0.2)
    by_column = estimator.copy({estimator.validation: "holdout"}).fit(marked)
    assert by_column.epoch_history["val_accuracy"][-1] > 0.5
    with pytest.raises(ConfigError, match="`validation` must be a fraction or a boolean column"):
        estimator.copy({estimator.validation: "label"}).fit(marked)
