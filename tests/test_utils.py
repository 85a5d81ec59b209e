from __future__ import annotations

import numpy as np
import pytest

from zdk.errors import ConfigError
from zdk.utils import (
    deserialize_keras_model, precache, serialize_keras_model, shuffle, to_one_hot_encoded_dense, uniform_weights,
)


def test_one_hot():
    assert to_one_hot_encoded_dense(2, 4).tolist() == [0.0, 0.0, 1.0, 0.0]
    assert to_one_hot_encoded_dense(1.0, 2).tolist() == [0.0, 1.0]
    with pytest.raises(ConfigError, match=r"`value` must be an integer in \[0, 3\). Received: value=3"):
        to_one_hot_encoded_dense(3, 3)


def test_model_serialization_and_uniform_weights():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    uniform_weights(model, (-0.1, 0.1), seed=0)
    assert all(np.all((w >= -0.1) & (w < 0.1)) for w in model.get_weights())
    again = deserialize_keras_model(serialize_keras_model(model))
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(ConfigError, match="low < high"):
        uniform_weights(model, (1.0, 1.0))


@pytest.mark.spark
def test_shuffle_and_precache(spark):
    df = spark.range(200)
    shuffled = shuffle(df, seed=3)
    ids = [r.id for r in shuffled.collect()]
    assert sorted(ids) == list(range(200)) and ids != list(range(200))
    cached = precache(df, 3)
    assert cached.rdd.getNumPartitions() == 3 and cached.is_cached
