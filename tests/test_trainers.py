"""Trainers on a real local[2] Spark session with the digits data set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("pyspark")

from zdk import trainers  # noqa: E402
from zdk.errors import ConfigError, WorkerFailed  # noqa: E402
from zdk.ps.launcher import start_shards  # noqa: E402

pytestmark = pytest.mark.spark


def mlp(seed: int = 1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def accuracy(model, digits) -> float:
    _, x_test, _, y_test = digits
    return float((model.predict(x_test, verbose=0).argmax(axis=1) == y_test).mean())


def shard_pids() -> set[int]:
    """The shards this test process started (a trainer's shards are its children)."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "zdk.ps.server"], capture_output=True,
                         text=True).stdout
    return {int(p) for p in out.split()}


CASES = [
    ("SingleTrainer", "adam", {}),
    ("AveragingTrainer", "adam", {"num_workers": 2}),
    ("DOWNPOUR", "adam", {"num_workers": 2, "num_shards": 2}),
    ("AGN", lambda: keras.optimizers.Adam(0.01), {"num_workers": 2, "num_shards": 2}),
    ("ADAG", lambda: keras.optimizers.Adam(0.01), {"num_workers": 2, "num_shards": 2}),
    ("DynSGD", "adam", {"num_workers": 2, "num_shards": 2}),
    ("AEASGD", lambda: keras.optimizers.Adam(0.003), {"num_workers": 2, "num_shards": 2}),
    ("EAMSGD", "sgd", {"num_workers": 2, "num_shards": 2}),
]


@pytest.mark.parametrize("name,optimizer,kwargs", CASES, ids=[c[0] for c in CASES])
def test_every_trainer_learns_digits(name, optimizer, kwargs, digits_df, digits):
    before = shard_pids()
    opt = optimizer() if callable(optimizer) else optimizer
    trainer = getattr(trainers, name)(mlp(), opt, "sparse_categorical_crossentropy", num_epoch=12,
                                      progress=False, **kwargs)
    model = trainer.train(digits_df)
    acc = accuracy(model, digits)
    print(f"{name}: test accuracy {acc:.3f}, PS wait {trainer.ps_wait_fraction:.3f}")
    assert acc >= 0.90, f"{name}: test accuracy {acc:.3f}"
    workers = {r["worker"] for r in trainer.history}
    assert workers == set(range(kwargs.get("num_workers", 1)))
    assert all(r["loss"] is not None and "accuracy" in r["metrics"] for r in trainer.history)
    assert trainer.training_time > 0 and trainer.get_training_time() == trainer.training_time
    assert model.optimizer is not None and model.loss == "sparse_categorical_crossentropy"
    if trainer.algorithm.uses_ps:
        assert any(r["staleness"] is not None for r in trainer.history)
        assert 0 <= trainer.ps_wait_fraction < 1
    assert shard_pids() <= before, "train() left shard processes behind"


def test_ensemble_trainer_returns_every_member(digits_df, digits):
    trainer = trainers.EnsembleTrainer(mlp(), "adam", "sparse_categorical_crossentropy", num_ensembles=2,
                                       num_epoch=15, progress=False)
    models = trainer.train(digits_df)
    assert isinstance(models, list) and len(models) == 2
    accs = [accuracy(m, digits) for m in models]
    assert min(accs) >= 0.85, accs
    assert not np.allclose(models[0].get_weights()[0], models[1].get_weights()[0])


def test_adag_reports_scale_and_history_frame(digits_df):
    trainer = trainers.ADAG(mlp(), keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", num_epoch=2,
                            num_workers=2, communication_window=4, progress=False)
    trainer.train(digits_df, shuffle=True)
    scales = [r["scale"] for r in trainer.history if r["scale"] is not None]
    assert scales and all(0 < s <= 1 for s in scales)
    frame = trainer.history_frame()
    assert {"worker", "epoch", "step", "loss", "accuracy", "staleness", "scale", "timestamp"} <= set(frame.columns)
    assert len(frame) == len(trainer.history)
    assert {r["step"] for r in trainer.get_averaged_history()} == {r["step"] for r in trainer.history}


def test_adag_worker_learns_digits_and_reports_the_scale_its_workers_measure(digits_df, digits):
    trainer = trainers.Trainer(mlp(), keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                               algorithm="adag_worker", num_workers=2, num_shards=2, num_epoch=12, progress=False)
    acc = accuracy(trainer.train(digits_df), digits)
    assert acc >= 0.90, f"adag_worker: test accuracy {acc:.3f}"
    scales = [r["scale"] for r in trainer.history if r["scale"] is not None]
    assert scales and all(0 < s <= 1 for s in scales) and min(scales) < 1  # the centers drifted


def test_shuffle_true_trains(digits_df, digits):
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", num_epoch=10, num_workers=2,
                                progress=False)
    assert accuracy(trainer.train(digits_df, shuffle=True), digits) >= 0.90


def test_multi_input_model_trains_on_two_feature_columns(spark, digits):
    x_train, x_test, y_train, y_test = digits
    df = spark.createDataFrame([(a[:32].tolist(), a[32:].tolist(), int(y)) for a, y in zip(x_train, y_train)],
                               "top array<double>, bottom array<double>, label long")
    keras.utils.set_random_seed(2)
    top, bottom = keras.Input((32,), name="top"), keras.Input((32,), name="bottom")
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Concatenate()([top, bottom]))
    model = keras.Model([top, bottom], keras.layers.Dense(10, activation="softmax")(hidden))
    trainer = trainers.DOWNPOUR(model, "adam", "sparse_categorical_crossentropy", features_col=["top", "bottom"],
                                num_epoch=10, num_workers=2, progress=False)
    trained = trainer.train(df)
    acc = float((trained.predict([x_test[:, :32], x_test[:, 32:]], verbose=0).argmax(1) == y_test).mean())
    assert acc >= 0.85


def test_multi_output_model_trains_on_two_label_columns(spark, digits):
    x_train, x_test, y_train, y_test = digits
    df = spark.createDataFrame([(x.tolist(), int(y), int(y % 2)) for x, y in zip(x_train, y_train)],
                               "features array<double>, label long, parity long")
    keras.utils.set_random_seed(3)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(hidden)
    parity = keras.layers.Dense(1, activation="sigmoid", name="parity")(hidden)
    model = keras.Model(inputs, [digit, parity])
    trainer = trainers.DOWNPOUR(model, "adam", ["sparse_categorical_crossentropy", "binary_crossentropy"],
                                metrics=[["accuracy"], ["accuracy"]], label_col=["label", "parity"], num_epoch=10,
                                num_workers=2, progress=False)
    trained = trainer.train(df)
    digit_p, parity_p = trained.predict(x_test, verbose=0)
    assert float((digit_p.argmax(1) == y_test).mean()) >= 0.85
    assert float(((parity_p[:, 0] > 0.5) == (y_test % 2 == 1)).mean()) >= 0.85
    assert len(trainer.history[0]["metrics"]) >= 2


def test_worker_error_reaches_the_caller_and_no_shard_is_left(spark):
    before = shard_pids()
    # The first row fits the model (the driver's pre-flight passes); the others do not, which
    # only the workers can see.
    df = spark.createDataFrame([([0.0] * 64, 1)] + [([0.0] * 10, 1)] * 20, "features array<double>, label long")
    trainer = trainers.ADAG(mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_shards=2,
                            progress=False)
    with pytest.raises(WorkerFailed, match=r"column `features` (must hold lists of one length|has 10 values per row)") as info:
        trainer.train(df)
    assert shard_pids() <= before
    report = re.search(r"Spark's full report: (\S+\.log)\)", str(info.value)).group(1)
    assert "PythonException" in open(report).read()  # the Java side's whole story, kept for later


def test_trainer_uses_a_separately_started_parameter_server(digits_df, digits, ps_process):
    model = mlp()
    size = sum(w.size for w in model.get_weights())
    proc, endpoints = ps_process("--shards", "2", "--bind", "tcp://127.0.0.1:0", "--size", str(size),
                                 "--algorithm", "downpour")
    trainer = trainers.DOWNPOUR(model, "adam", "sparse_categorical_crossentropy", num_epoch=10, num_workers=2,
                                parameter_server=endpoints, progress=False)
    trained = trainer.train(digits_df)
    assert proc.poll() is None  # the trainer does not stop shards it did not start
    assert accuracy(trained, digits) >= 0.90


def test_curve_protected_training_and_a_curve_parameter_server(digits_df, digits):
    from zdk.transports.curve import CurveKeys

    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", num_epoch=10, num_workers=2,
                                security="curve", progress=False)
    assert accuracy(trainer.train(digits_df), digits) >= 0.90
    keys = CurveKeys.generate()
    model = mlp()
    with start_shards(num_shards=1, total_size=sum(w.size for w in model.get_weights()), curve=keys) as group:
        trainer = trainers.DOWNPOUR(model, "adam", "sparse_categorical_crossentropy", num_epoch=2, num_workers=2,
                                    parameter_server=group.endpoints, curve_keys=keys, progress=False)
        trainer.train(digits_df)
        assert {r["worker"] for r in trainer.history} == {0, 1}


def test_master_port_picks_the_first_shard_port(digits_df):
    from test_cli import free_port_pair

    port = free_port_pair()
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", num_shards=2, master_port=port,
                                progress=False)
    trainer.train(digits_df)
    assert trainer.endpoints == [f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"]


def test_parameter_server_of_the_wrong_size_is_refused(digits_df):
    with start_shards(num_shards=1, total_size=10, algorithm="downpour") as group:
        trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", parameter_server=group.endpoints)
        with pytest.raises(ConfigError, match="holds 10 parameters; the model has 4810"):
            trainer.train(digits_df)


def test_averaging_with_more_workers_than_slots_fails_fast(digits_df):
    trainer = trainers.AveragingTrainer(mlp(), "adam", "sparse_categorical_crossentropy", num_workers=3,
                                        progress=False)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cluster's 2 task slots"):
        trainer.train(digits_df)
    assert time.monotonic() - started < 10


def test_generic_trainer_takes_any_registered_algorithm(digits_df):
    trainer = trainers.Trainer(mlp(), "adam", "sparse_categorical_crossentropy", algorithm="dynsgd", num_epoch=1,
                               progress=False)
    trainer.train(digits_df)
    assert trainer.algorithm.name == "dynsgd"


@pytest.mark.parametrize("kwargs,message", [
    ({"num_workers": 0}, "`num_workers` must be an int ≥ 1. Received: num_workers=0"),
    ({"features_col": []}, "`features_col` must be a column name or a list"),
    ({"communication_window": 0}, "`communication_window` must be an int ≥ 1"),
    ({"master_port": 70000}, "`master_port` must be a port"),
    ({"algorithm": "agn"}, "`algorithm` is fixed to 'adag' in ADAG"),
    ({"rho": 2.0}, "unknown parameter(s) ['rho']"),
])
def test_constructor_errors_name_the_field(kwargs, message):
    with pytest.raises(ConfigError) as info:
        trainers.ADAG(mlp(), "adam", "sparse_categorical_crossentropy", **kwargs)
    assert message in str(info.value)


def test_missing_column_is_named(digits_df):
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", label_col="target")
    with pytest.raises(ConfigError, match=r"columns \['target'\] are not in the DataFrame"):
        trainer.train(digits_df)
