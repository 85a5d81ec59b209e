"""Metric states of parts of a data set, merged into the figures of the whole (zdk.runtime.evaluation)."""

from __future__ import annotations

import numpy as np
import pytest

from zdk.errors import ConfigError
from zdk.runtime.evaluation import (MetricVariable, merge_metric_states, metric_state, set_metric_state,
                                    state_from_json, state_to_json)

keras = pytest.importorskip("keras")


def var(path: str, aggregation: str, *values: float) -> MetricVariable:
    return MetricVariable(path=path, aggregation=aggregation, values=tuple(values))


def test_states_merge_by_each_variables_aggregation():
    parts = [[var("m/total", "sum", 1.0, 2.0), var("m/avg", "mean", 4.0), var("m/first", "only_first_replica", 7.0)],
             [var("m_1/total", "sum", 10.0, 20.0), var("m_1/avg", "mean", 8.0), var("m_1/first", "only_first_replica", 9.0)]]
    total, avg, first = merge_metric_states(parts)
    np.testing.assert_array_equal(total, [11.0, 22.0])
    np.testing.assert_array_equal(avg, [6.0])
    np.testing.assert_array_equal(first, [7.0])


def test_a_state_that_cannot_be_merged_is_refused_naming_it():
    parts = [[var("mine/peak", "none", 1.0)], [var("mine/peak", "none", 3.0)]]
    with pytest.raises(ConfigError, match=r"'mine/peak' has aggregation='none'"):
        merge_metric_states(parts)


def test_states_of_different_metrics_are_refused():
    with pytest.raises(ValueError, match="different metrics"):
        merge_metric_states([[var("a/total", "sum", 1.0)], [var("a/total", "sum", 1.0, 2.0)]])
    with pytest.raises(ValueError, match="no metric states"):
        merge_metric_states([])


def test_a_state_survives_json():
    state = [var("auc/true_positives", "sum", 0.5, 3.0), var("loss/count", "sum", 12.0)]
    assert state_from_json(state_to_json(state)) == state


def binary_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc"),
                                                          keras.metrics.Precision(name="precision")])
    return model


def test_parts_merged_give_the_whole_sets_figures_where_averaging_would_not():
    rng = np.random.default_rng(0)
    x = rng.random((1000, 8), dtype=np.float32)
    y = (rng.random(1000) > 0.5).astype(np.float32)
    model = binary_model()
    whole = model.evaluate(x, y, batch_size=128, verbose=0, return_dict=True)
    states, averaged = [], {}
    for part in (slice(0, 100), slice(100, 1000)):
        figures = model.evaluate(x[part], y[part], batch_size=128, verbose=0, return_dict=True)
        states.append(metric_state(model))
        for k, v in figures.items():
            averaged[k] = averaged.get(k, 0.0) + float(v) * len(y[part]) / len(y)
    other = binary_model()  # another model of the same metrics, built by one evaluation
    other.evaluate(x[:1], y[:1], verbose=0)
    merged = set_metric_state(other, states[0], merge_metric_states(states))
    assert merged == pytest.approx({k: float(v) for k, v in whole.items()}, abs=1e-6)
    assert abs(averaged["auc"] - float(whole["auc"])) > 1e-3


def test_a_state_is_not_put_into_a_model_of_other_metrics():
    model = binary_model()
    model.evaluate(np.zeros((1, 8), np.float32), np.zeros(1, np.float32), verbose=0)
    with pytest.raises(ValueError, match="not the evaluated ones"):
        set_metric_state(model, [var("loss/total", "sum", 1.0)], [np.ones(1)])
