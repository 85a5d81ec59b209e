"""Metric states of parts of a data set, merged into the figures of the whole (zdk.runtime.evaluation)."""

from __future__ import annotations

import numpy as np
import pytest

from zdk.errors import ConfigError
from zdk.runtime.evaluation import MetricLayout, merge_states, metric_layout, read_state, write_state

keras = pytest.importorskip("keras")


def test_states_merge_by_each_variables_aggregation():
    layout = MetricLayout(names=("m/total", "m/seen"), sizes=(2, 1), aggregations=("sum", "only_first_replica"))
    merged = merge_states(layout, [np.array([1.0, 2.0, 7.0]), np.array([10.0, 20.0, 9.0]), np.array([0.5, 0, 3])])
    np.testing.assert_array_equal(merged, [11.5, 22.0, 7.0])


@pytest.mark.parametrize("aggregation", ["mean", "none"])
def test_a_state_that_cannot_be_merged_is_refused_naming_it(aggregation):
    # "mean" is an unweighted mean over replicas of equal size; Arrow batches and partitions are not.
    layout = MetricLayout(names=("loss/total", "mine/peak"), sizes=(1, 1), aggregations=("sum", aggregation))
    with pytest.raises(ConfigError, match=rf"'mine/peak' has aggregation='{aggregation}'"):
        layout.check_mergeable()
    with pytest.raises(ConfigError, match="cannot be merged"):
        merge_states(layout, [np.ones(2), np.ones(2)])


def test_states_of_another_layout_or_none_are_refused():
    layout = MetricLayout(names=("a/total",), sizes=(1,), aggregations=("sum",))
    with pytest.raises(ValueError, match="has 2 values; the layout"):
        merge_states(layout, [np.ones(1), np.ones(2)])
    with pytest.raises(ValueError, match="no metric states"):
        merge_states(layout, [])


def binary_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc"),
                                                          keras.metrics.Precision(name="precision")])
    return model


def data(rows=1000):
    rng = np.random.default_rng(0)
    return rng.random((rows, 8), dtype=np.float32), (rng.random(rows) > 0.5).astype(np.float32)


def test_a_layout_names_metrics_by_their_own_names_in_every_process():
    x, y = data(4)
    first, second = binary_model(), binary_model()  # the second's variables are "auc_1/...", "precision_1/..."
    for model in (first, second):
        model.evaluate(x, y, verbose=0)
    assert metric_layout(first) == metric_layout(second)
    layout = metric_layout(first)
    assert layout.names[:4] == ("loss/total", "loss/count", "accuracy/total", "accuracy/count")
    assert "auc/true_positives" in layout.names and set(layout.aggregations) == {"sum"}
    assert sum(layout.sizes) == read_state(first).size == 2 + 2 + 4 * 200 + 2


def test_parts_merged_give_the_whole_sets_figures_where_averaging_would_not():
    x, y = data()
    model = binary_model()
    whole = model.evaluate(x, y, batch_size=128, verbose=0, return_dict=True)
    states, averaged = [], {}
    for part in (slice(0, 100), slice(100, 1000)):
        figures = model.evaluate(x[part], y[part], batch_size=128, verbose=0, return_dict=True)
        states.append(read_state(model))
        for k, v in figures.items():
            averaged[k] = averaged.get(k, 0.0) + float(v) * len(y[part]) / len(y)
    layout = metric_layout(model)
    other = binary_model()  # another model of the same metrics, built by one evaluation
    other.evaluate(x[:1], y[:1], verbose=0)
    merged = write_state(other, layout, merge_states(layout, states))
    assert merged == pytest.approx({k: float(v) for k, v in whole.items()}, abs=1e-6)
    assert abs(averaged["auc"] - float(whole["auc"])) > 1e-3


def test_a_multi_output_models_states_merge_to_its_whole_figures():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, {"a": keras.layers.Dense(1, activation="sigmoid", name="a")(hidden),
                                 "b": keras.layers.Dense(1, name="b")(hidden)})
    model.compile("adam", {"a": "binary_crossentropy", "b": "mse"},
                  metrics={"a": [keras.metrics.AUC(name="auc")], "b": ["mae"]})
    x, y = data()
    ys = {"a": y, "b": x[:, 0]}
    whole = model.evaluate(x, ys, batch_size=100, verbose=0, return_dict=True)
    states = []
    for part in (slice(0, 300), slice(300, 1000)):  # batch edges where the whole set's are
        model.evaluate(x[part], {k: v[part] for k, v in ys.items()}, batch_size=100, verbose=0)
        states.append(read_state(model))
    layout = metric_layout(model)
    merged = write_state(model, layout, merge_states(layout, states))
    assert set(merged) == set(whole)
    assert merged == pytest.approx({k: float(v) for k, v in whole.items()}, abs=1e-6)


def test_a_state_is_not_put_into_a_model_of_other_metrics():
    x, y = data(4)
    model = binary_model()
    model.evaluate(x, y, verbose=0)
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    other.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    other.evaluate(x, y, verbose=0)
    with pytest.raises(ValueError, match="is not the evaluated one"):
        write_state(other, metric_layout(model), read_state(model))
