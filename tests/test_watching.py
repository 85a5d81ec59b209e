"""Watching and steering asynchronous runs on Spark: validation every epoch, Keras callbacks on the
driver (early stopping, stopping, learning-rate schedules, checkpoints, TensorBoard, CSV), and MLflow."""

from __future__ import annotations

import csv
import os
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("pyspark")

from zdk.errors import ConfigError  # noqa: E402
from zdk.trainers import ADAG, AEASGD, DOWNPOUR  # noqa: E402

pytestmark = pytest.mark.spark
LOSS = "sparse_categorical_crossentropy"


def mlp(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


@pytest.fixture(scope="module")
def validation(spark, digits):
    """The digits' test split, as array columns (the training set's are ML vectors: both kinds work)."""
    from zdk.datasets import to_dataframe

    _, x_test, _, y_test = digits
    return to_dataframe(spark, x_test, y_test).cache()


@pytest.mark.parametrize("cls,window", [(ADAG, 2), (DOWNPOUR, 4), (AEASGD, 8)])
def test_every_epoch_has_training_and_validation_figures_of_the_center(cls, window, digits_df, validation, digits):
    _, x_test, _, y_test = digits
    trainer = cls(mlp(), keras.optimizers.Adam(0.005), LOSS, num_workers=2, num_epoch=3,
                  communication_window=window, progress=False)
    model = trainer.train(digits_df, validation_data=validation)
    figures = trainer.keras_history.history
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(figures)
    assert all(len(figures[k]) == 3 for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
    # Training figures: each worker's epoch loss is its steps' losses (each its own batch's) weighted
    # by their rows, as fit's epoch loss; the workers' are then weighted by their samples.
    rows = {s["worker"]: s["rows"] for s in trainer.worker_summaries}
    for epoch in range(3):
        per_worker = {}
        for w in rows:
            losses = [r["loss"] for r in trainer.history if r["epoch"] == epoch and r["worker"] == w]
            sizes = [32] * (len(losses) - 1) + [rows[w] - 32 * (len(losses) - 1)]  # the default batch_size
            per_worker[w] = np.average(losses, weights=sizes)
        expected = sum(per_worker[w] * rows[w] for w in rows) / sum(rows.values())
        assert figures["loss"][epoch] == pytest.approx(expected, rel=1e-5)
    # The last epoch ended after every worker's last commit: its figures are the returned center's.
    again = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert figures["val_loss"][-1] == pytest.approx(again["loss"], rel=1e-4)
    assert figures["val_accuracy"][-1] == pytest.approx(again["accuracy"], abs=1e-6)
    # It learned (chance is 0.1); 3 epochs of AEASGD with a window of 8 land from 0.78 to 0.9 here.
    assert figures["val_accuracy"][-1] > 0.7
    assert trainer.timings["validation_per_epoch"] > 0


def no_spark_job_runs(spark) -> bool:
    return not spark.sparkContext.statusTracker().getActiveJobsIds()


def test_early_stopping_ends_a_long_run_and_returns_the_best_epochs_weights(spark, digits_df, validation, digits):
    _, x_test, _, y_test = digits
    # A min_delta no epoch can beat: epoch 0 is the best, epoch 1 exhausts the patience.
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=100.0, restore_best_weights=True)
    trainer = DOWNPOUR(mlp(), keras.optimizers.Adam(0.005), LOSS, num_workers=2, num_epoch=60, batch_size=8,
                       communication_window=4, progress=False)
    model = trainer.train(digits_df, validation_data=validation, callbacks=[stop])
    figures = trainer.keras_history.history
    assert len(figures["val_loss"]) == 2 and stop.stopped_epoch == 1
    best = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert best["loss"] == pytest.approx(figures["val_loss"][0], rel=1e-4)
    assert max(r["epoch"] for r in trainer.history) < 20  # far from the 60 planned
    assert no_spark_job_runs(spark)


class StopAt(keras.callbacks.Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.at, self.when = epoch, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            self.model.stop_training = True
            self.when = time.time()


def test_a_callback_stops_every_worker_within_a_window(spark, digits_df):
    window = 4
    stop = StopAt(2)
    trainer = DOWNPOUR(mlp(), "adam", LOSS, num_workers=2, num_epoch=500, communication_window=window,
                       progress=False)
    trainer.train(digits_df, callbacks=[stop])
    assert stop.when is not None and len(trainer.keras_history.history["loss"]) == 3
    for worker in (0, 1):
        late = [r for r in trainer.history if r["worker"] == worker and r["timestamp"] > stop.when]
        # The control goes out right after the callbacks return; a worker obeys at its next exchange.
        # If its last exchange was answered just before the control reached the shards, it trains
        # out the window in progress and the next one: at most two windows (plus clock slack).
        assert len(late) <= 2 * window + 2, (worker, len(late))
    assert max(r["epoch"] for r in trainer.history) < 50
    assert no_spark_job_runs(spark)


def test_a_learning_rate_of_zero_from_a_schedule_freezes_the_center(digits_df, validation):
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.0 if epoch >= 2 else rate)
    trainer = DOWNPOUR(mlp(), keras.optimizers.Adam(0.005), LOSS, num_workers=2, num_epoch=8, batch_size=8,
                       communication_window=2, progress=False)
    trainer.train(digits_df, validation_data=validation, callbacks=[schedule])
    figures = trainer.keras_history.history
    assert figures["learning_rate"][:2] == pytest.approx([0.005, 0.005]) and figures["learning_rate"][2:] == [0.0] * 6
    assert figures["val_loss"][-3:] == [figures["val_loss"][-1]] * 3  # the same center, evaluated three times
    assert figures["val_loss"][0] != figures["val_loss"][-1]


def test_checkpoint_tensorboard_and_csv_callbacks_write_their_files(digits_df, validation, tmp_path):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    best = tmp_path / "best.keras"
    callbacks = [keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True),
                 keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb")),
                 keras.callbacks.CSVLogger(str(tmp_path / "epochs.csv"))]
    trainer = ADAG(mlp(), keras.optimizers.Adam(0.005), LOSS, num_workers=2, num_epoch=3, progress=False)
    trainer.train(digits_df, validation_data=validation, callbacks=callbacks)
    figures = trainer.keras_history.history
    saved = keras.saving.load_model(best)
    assert saved.count_params() == mlp().count_params()
    with open(tmp_path / "epochs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(figures["val_loss"], rel=1e-6)
    events = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "tb") for f in fs if "tfevents" in f]
    steps: dict[str, set[int]] = {}
    for record in tf.data.TFRecordDataset(events):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
            steps.setdefault(value.tag, set()).add(event.step)
    assert steps.get("epoch_loss") == {0, 1, 2} and steps.get("epoch_accuracy") == {0, 1, 2}, steps


def test_a_failing_callback_stops_the_workers_and_is_raised(spark, digits_df):
    class Broken(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("the callback broke at epoch 1")

    trainer = DOWNPOUR(mlp(), "adam", LOSS, num_workers=2, num_epoch=500, progress=False)
    with pytest.raises(RuntimeError, match="the callback broke at epoch 1"):
        trainer.train(digits_df, callbacks=[Broken()])
    assert no_spark_job_runs(spark)


def test_mlflow_records_params_epochs_timings_and_the_model(digits_df, validation, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Artifacts in the test's folder, not ./mlruns.
    experiment = mlflow.create_experiment("zdk", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    client = mlflow.MlflowClient()
    # mlflow=True starts and ends a run of its own.
    trainer = AEASGD(mlp(), "adam", LOSS, num_workers=2, num_epoch=2, progress=False)
    trainer.train(digits_df, validation_data=validation, mlflow=True)
    run = client.search_runs([experiment])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer"] == "AEASGD" and run.data.params["params.rho"] == "5.0"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
    assert run.data.metrics["timing_total"] > 0
    assert "model/model.keras" in [a.path for a in client.list_artifacts(run.info.run_id, "model")]
    # MLflow's own Keras callback, inside the user's run, works as under fit().
    with mlflow.start_run() as active:
        ADAG(mlp(), "adam", LOSS, num_workers=2, num_epoch=2, progress=False).train(
            digits_df, validation_data=validation, callbacks=[mlflow.keras.MlflowCallback()])
    history = client.get_metric_history(active.info.run_id, "val_loss")
    assert len(history) >= 2 and mlflow.active_run() is None


def test_a_large_validation_set_is_evaluated_by_spark_with_the_same_figures(validation, digits):
    from zdk.driver.models import compiled_model
    from zdk.driver.planning import plan_training
    from zdk.driver.validation import DriverValidation, SparkValidation, validation_set

    x_train, x_test, y_train, y_test = digits
    model = mlp(3)
    model.compile("adam", LOSS)
    model.fit(x_train, y_train, epochs=2, verbose=0)  # figures away from chance, where parts differ more
    # Mean IoU is not an average over parts: each part's confusion matrix gives another figure.
    metrics = ["accuracy", keras.metrics.MeanIoU(num_classes=10, sparse_y_pred=False, name="iou")]
    plan = plan_training(model, algorithm="downpour", owner="Test", loss=LOSS, num_workers=1, metrics=metrics)
    compiled = compiled_model(plan.model, plan.model.layout.flatten(model.get_weights()))
    on_driver = validation_set(plan, validation)
    # Two partitions, labels 0-4 and 5-9, whose own figures are far from the whole set's (below).
    in_spark = validation_set(plan, validation.repartitionByRange(2, "label"), max_driver_bytes=1)
    assert isinstance(on_driver, DriverValidation) and isinstance(in_spark, SparkValidation)
    assert on_driver.rows == in_spark.rows == 450
    b = in_spark.evaluate(compiled)  # first: Keras builds the compiled metrics only at their first use
    a = on_driver.evaluate(compiled)
    assert set(a) == set(b) == {"val_loss", "val_accuracy", "val_iou"}
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-6)
    assert b["val_iou"] == pytest.approx(a["val_iou"], abs=1e-6)
    assert in_spark.evaluate(compiled) == pytest.approx(b)  # again, on built metrics
    # Averaging those parts' figures, as the Spark path once did, is far off: 0.33 against 0.52 here.
    parts = [compiled.evaluate(x_test[p], y_test[p], verbose=0, return_dict=True)["iou"] * len(y_test[p])
             for p in (y_test < 5, y_test >= 5)]
    assert abs(sum(parts) / len(y_test) - a["val_iou"]) > 1e-2


@keras.saving.register_keras_serializable(package="zdk_tests")
class Peak(keras.metrics.Metric):
    """The largest prediction seen, kept with aggregation="mean": no merge of parts gives the whole's."""

    def __init__(self, name="peak", **kwargs):
        super().__init__(name=name, **kwargs)
        self.peak = self.add_variable(shape=(), initializer="zeros", aggregation="mean", name="value")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.peak.assign(keras.ops.maximum(self.peak, keras.ops.max(y_pred)))

    def result(self):
        return self.peak


def test_a_metric_whose_state_cannot_be_merged_is_refused_before_training(validation):
    from zdk.driver.planning import plan_training
    from zdk.driver.validation import validation_set

    plan = plan_training(mlp(), algorithm="downpour", owner="Test", loss=LOSS, num_workers=1, metrics=[Peak()])
    validation_set(plan, validation)  # on the driver, Keras evaluates the whole set at once: no merge
    with pytest.raises(ConfigError, match=r"`metrics`: the state variable 'peak/value' has aggregation='mean'"):
        validation_set(plan, validation, max_driver_bytes=1)


def test_asking_whether_an_mlflow_run_is_active_does_not_import_mlflow():
    # Importing MLflow took 1.9 s of every train(); a run can be active only if something imported it.
    import subprocess
    import sys

    code = ("import sys; from zdk.driver.tracking import active; "
            "print(active(), 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    mlflow = pytest.importorskip("mlflow")
    from zdk.driver.tracking import active

    assert active() is (mlflow.active_run() is not None)
