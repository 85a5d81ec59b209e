"""Fidelity: training starts from the user's model, every argument takes effect or fails,
dist-keras's positional calls work, and the algorithms are told apart by their numbers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from zdk import trainers  # noqa: E402
from zdk.errors import ConfigError  # noqa: E402
from conftest import registered_client as client_for  # noqa: E402
from zdk.ps.exchange import Exchange  # noqa: E402

# ---------------------------------------------------------------- the exchange, by the numbers

SIZE = 8


def test_end_window_commits_the_accumulated_delta_and_resets_to_the_center(shards):
    start = np.arange(SIZE, dtype=np.float32)
    group = shards(num_shards=2, total_size=SIZE, algorithm="downpour", initial=start)
    with client_for(group, 0) as client:
        local = np.zeros(SIZE, np.float32)
        exchange = Exchange(client, local)
        exchange.start()
        np.testing.assert_array_equal(local, start)
        before = client.versions
        local += 1.0  # three local steps' worth
        receipt = exchange.end_window(3)
        assert receipt.applied and client.versions == tuple(v + 1 for v in before)
        np.testing.assert_array_equal(local, start + 1.0)
        np.testing.assert_array_equal(exchange.pulled, start + 1.0)


def test_a_partial_agn_window_is_normalised_by_the_steps_it_took(shards):
    group = shards(num_shards=1, total_size=SIZE, algorithm="agn", params={"communication_window": 12})
    with client_for(group, 0) as client:
        local = np.zeros(SIZE, np.float32)
        exchange = Exchange(client, local)
        exchange.start()
        local += 6.0
        exchange.end_window(3)  # the last, partial window: Δ/3, not Δ/12
        np.testing.assert_allclose(local, np.full(SIZE, 2.0))


def test_easgd_pulls_before_it_commits_and_moves_towards_the_center(shards):
    group = shards(num_shards=2, total_size=SIZE, algorithm="aeasgd",
                   params={"communication_window": 4, "rho": 2.0, "learning_rate": 0.1})
    with client_for(group, 0) as a, client_for(group, 1) as b:
        local_a, local_b = np.zeros(SIZE, np.float32), np.zeros(SIZE, np.float32)
        ex_a, ex_b = Exchange(a, local_a), Exchange(b, local_b)
        ex_a.start(), ex_b.start()
        local_b += 10.0
        ex_b.end_window(4)  # center: 0 + 0.2·10 = 2; b: 10 − 2 = 8
        np.testing.assert_allclose(local_b, np.full(SIZE, 8.0))
        local_a += 5.0
        ex_a.end_window(4)  # a pulls 2 first: E = 0.2·(5 − 2) = 0.6; a: 4.4; center 2.6
        np.testing.assert_allclose(local_a, np.full(SIZE, 4.4), rtol=1e-6)
        np.testing.assert_allclose(b.pull(), np.full(SIZE, 2.6), rtol=1e-6)


def test_averaging_end_window_waits_for_the_round(shards):
    group = shards(num_shards=1, total_size=SIZE, algorithm="averaging", params={"num_workers": 2})
    results = {}

    def worker(w: int, value: float) -> None:
        with client_for(group, w) as client:
            local = np.zeros(SIZE, np.float32)
            exchange = Exchange(client, local)
            exchange.start()
            local += value
            exchange.end_window(1)  # its pull waits for min_version = base + 1
            results[w] = local.copy()

    threads = [threading.Thread(target=worker, args=(w, v)) for w, v in ((0, 2.0), (1, 6.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    np.testing.assert_array_equal(results[0], np.full(SIZE, 4.0))
    np.testing.assert_array_equal(results[1], np.full(SIZE, 4.0))


def stale_commit(shards, name: str, params: dict) -> np.ndarray:
    """Worker 0 pulls, worker 1 commits 1.0 everywhere, then worker 0 commits Δ = 4.0 (λ = 2) on a
    stale base; returns the center."""
    group = shards(num_shards=2, total_size=SIZE, algorithm=name, params={"communication_window": 2, **params})
    with client_for(group, 0) as a, client_for(group, 1) as b:
        local_a, local_b = np.zeros(SIZE, np.float32), np.zeros(SIZE, np.float32)
        ex_a, ex_b = Exchange(a, local_a), Exchange(b, local_b)
        ex_a.start(), ex_b.start()
        local_b += 2.0
        ex_b.end_window(2)
        local_a += 4.0
        receipt = ex_a.end_window(2)
        # One commit landed since worker 0's pull, unless it pulls again just before committing.
        assert receipt.staleness == (0 if ex_a.algorithm.pull_before_commit else 1)
        return b.pull()


def test_dynsgd_and_downpour_differ_by_the_staleness_scale(shards):
    downpour, dynsgd = stale_commit(shards, "downpour", {}), stale_commit(shards, "dynsgd", {})
    np.testing.assert_allclose(downpour, np.full(SIZE, 2.0 + 4.0))
    np.testing.assert_allclose(dynsgd, np.full(SIZE, 2.0 + 4.0 / 2))


@pytest.mark.parametrize("name", ["adag", "adag_worker"])
def test_adag_and_agn_differ_by_the_elementwise_scale(shards, name):
    agn, adag = stale_commit(shards, "agn", {}), stale_commit(shards, name, {"eta": 0.5})
    np.testing.assert_allclose(agn, np.full(SIZE, 1.0 + 2.0))
    # ADAG: the center moved by 1 since worker 0's pull: scale 1/(1²/0.5 + 1) = 1/3.
    np.testing.assert_allclose(adag, np.full(SIZE, 1.0 + 2.0 / 3), rtol=1e-6)


# ---------------------------------------------------------------- arguments take effect


def mlp():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def workers_optimizer(trainer):
    """The optimizer the trainer's workers build (from the plan they are shipped)."""
    return keras.optimizers.deserialize(trainer.plan.model.optimizer)


def test_eamsgd_momentum_is_on_whatever_the_optimizer_is_given_as():
    sgd = workers_optimizer(trainers.EAMSGD(mlp(), loss="mse", momentum=0.7))
    assert isinstance(sgd, keras.optimizers.SGD)
    assert sgd.get_config()["momentum"] == 0.7 and sgd.get_config()["nesterov"]
    kept = workers_optimizer(trainers.EAMSGD(mlp(), keras.optimizers.SGD(0.03), "mse", momentum=0.8))
    assert kept.get_config()["momentum"] == 0.8 and kept.get_config()["nesterov"]
    assert kept.get_config()["learning_rate"] == pytest.approx(0.03)
    generic = workers_optimizer(trainers.Trainer(mlp(), "sgd", "mse", algorithm="eamsgd"))
    assert generic.get_config()["momentum"] == 0.9


@pytest.mark.parametrize("optimizer,match", [
    ("adam", "must be 'sgd' or a keras.optimizers.SGD for EAMSGD"),
    (lambda: keras.optimizers.SGD(0.1, momentum=0.5), "has momentum=0.5"),
])
def test_eamsgd_refuses_an_optimizer_it_cannot_combine_with(optimizer, match):
    opt = optimizer() if callable(optimizer) else optimizer
    with pytest.raises(ConfigError, match=match):
        trainers.Trainer(mlp(), opt, "mse", algorithm="eamsgd")


@pytest.mark.parametrize("cls,kwargs,name", [
    (trainers.SingleTrainer, {"num_shards": 2}, "num_shards"),
    (trainers.SingleTrainer, {"communication_window": 5}, "communication_window"),
    (trainers.SingleTrainer, {"num_workers": 4}, "num_workers"),
    (trainers.EnsembleTrainer, {"parameter_server": ["tcp://127.0.0.1:5000"]}, "parameter_server"),
    (trainers.EnsembleTrainer, {"rho": 5.0}, "rho"),
    (trainers.EnsembleTrainer, {"num_workers": 3}, "num_workers"),
])
def test_arguments_without_effect_are_refused(cls, kwargs, name):
    with pytest.raises(ConfigError, match=f"`{name}`"):
        cls(mlp(), "adam", "sparse_categorical_crossentropy", **kwargs)


# ---------------------------------------------------------------- dist-keras's positional calls


def test_trainers_take_dist_keras_positional_arguments():
    down = trainers.DOWNPOUR(mlp(), "adam", "mse", ["mae"], 3, 16, "x", "y", 4, 7, 5123)
    assert (down.metrics, down.num_workers, down.batch_size, down.features_col, down.label_col, down.num_epoch,
            down.params.communication_window, down.master_port) == (["mae"], 3, 16, ("x",), ("y",), 4, 7, 5123)
    single = trainers.SingleTrainer(mlp(), "adam", "mse", ["mae"], "x", "y", 3, 8)
    assert (single.features_col, single.num_epoch, single.batch_size, single.num_workers) == (("x",), 3, 8, 1)
    eam = trainers.EAMSGD(mlp(), "sgd", "mse", ["mae"], 2, 32, "f", "l", 1, 16, 4.0, 0.05, 0.8)
    assert (eam.params.rho, eam.params.learning_rate, eam.params.momentum) == (4.0, 0.05, 0.8)
    ens = trainers.EnsembleTrainer(mlp(), "adam", "mse", ["mae"], "f", "l", 16, 3)
    assert ens.num_workers == 3 and ens.batch_size == 16


def test_too_many_or_doubled_positional_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match=r"takes at most 9 positional arguments"):
        trainers.SingleTrainer(mlp(), "adam", "mse", ["mae"], "x", "y", 3, 8, None, "extra")
    with pytest.raises(ConfigError, match="`num_workers` was given both by position and by name"):
        trainers.DOWNPOUR(mlp(), "adam", "mse", ["mae"], 3, num_workers=2)


# ---------------------------------------------------------------- starting from the user's model (Spark)


def frozen_mlp(value: float):
    """An MLP whose first layer is frozen at ``value``: training must leave it as the user set it."""
    model = mlp()
    model.layers[0].trainable = False
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([np.full_like(kernel, value), np.full_like(bias, value)])
    return model


@pytest.mark.spark
def test_single_trainer_starts_from_the_users_weights(digits_df):
    model = frozen_mlp(0.0125)
    trained = trainers.SingleTrainer(model, "adam", "sparse_categorical_crossentropy", num_epoch=1,
                                     progress=False).train(digits_df)
    np.testing.assert_array_equal(trained.layers[0].get_weights()[0], model.layers[0].get_weights()[0])
    assert not np.array_equal(trained.layers[1].get_weights()[0], model.layers[1].get_weights()[0])


@pytest.mark.spark
def test_ensemble_members_start_from_the_users_weights_and_differ_by_their_data(digits_df):
    model = frozen_mlp(0.0125)
    members = trainers.EnsembleTrainer(model, "adam", "sparse_categorical_crossentropy", num_ensembles=2,
                                       num_epoch=1, progress=False).train(digits_df)
    for member in members:
        np.testing.assert_array_equal(member.layers[0].get_weights()[0], model.layers[0].get_weights()[0])
    assert not np.allclose(members[0].layers[1].get_weights()[0], members[1].layers[1].get_weights()[0])
    fresh = trainers.EnsembleTrainer(model, "adam", "sparse_categorical_crossentropy", num_ensembles=2,
                                     num_epoch=1, progress=False, reinitialize=True).train(digits_df)
    assert not np.array_equal(fresh[0].layers[0].get_weights()[0], model.layers[0].get_weights()[0])
    assert not np.array_equal(fresh[0].layers[0].get_weights()[0], fresh[1].layers[0].get_weights()[0])


def test_transformers_predictor_and_evaluators_take_dist_keras_positional_arguments():
    pytest.importorskip("pyspark")
    from zdk.evaluators import AccuracyEvaluator
    from zdk.predictors import ModelPredictor
    from zdk.transformers import (
        BinaryLabelTransformer, DenseTransformer, LabelIndexTransformer, MinMaxTransformer, OneHotTransformer,
        ReshapeTransformer, StandardTransformer,
    )

    def params(stage):
        return {p.name: stage.getOrDefault(p) for p in stage.params if stage.isDefined(p)}

    assert params(MinMaxTransformer(0.0, 255.0, 0.0, 1.0, "features", "features_norm")) == {
        "o_min": 0.0, "o_max": 255.0, "n_min": 0.0, "n_max": 1.0, "input_col": "features",
        "output_col": "features_norm", "is_vector": True}
    assert params(OneHotTransformer(10, "label", "onehot")) == {"output_dim": 10, "input_col": "label",
                                                               "output_col": "onehot"}
    assert params(BinaryLabelTransformer("y", "y_pair", 1))["label"] == 1
    assert params(StandardTransformer(["a", "b"], "_z")) == {"columns": ["a", "b"], "suffix": "_z"}
    assert params(DenseTransformer("s", "d")) == {"input_col": "s", "output_col": "d"}
    assert params(ReshapeTransformer("v", "img", [8, 8]))["shape"] == [8, 8]
    assert params(LabelIndexTransformer(10, "p", "i", 3, 0.7)) == {
        "output_dim": 10, "input_col": "p", "output_col": "i", "default_index": 3, "activation_threshold": 0.7}
    with pytest.raises(ConfigError, match=r"OneHotTransformer\(output_dim, input_col, output_col\)"):
        OneHotTransformer(10, "label", "onehot", "extra")
    predictor = ModelPredictor(mlp(), "pixels", "scores")
    assert predictor.features_col == ("pixels",) and predictor.output_col == "scores"
    evaluator = AccuracyEvaluator("y", "p")
    assert (evaluator.label_col, evaluator.prediction_col) == ("y", "p")


def test_agn_and_adag_default_their_window_to_the_number_of_workers():
    assert trainers.ADAG(mlp(), "adam", "mse", num_workers=4).params.communication_window == 4
    assert trainers.AGN(mlp(), "adam", "mse", num_workers=3, parallelism_factor=2).params.communication_window == 6
    assert trainers.ADAG(mlp(), "adam", "mse", num_workers=4, communication_window=12).params.communication_window == 12
    assert trainers.DOWNPOUR(mlp(), "adam", "mse", num_workers=4).params.communication_window == 5
