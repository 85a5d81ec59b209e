"""The executor runtime in-process: real shards and Keras, Arrow batches, no Spark."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

keras = pytest.importorskip("keras")

from zdk.ps.client import PSClient  # noqa: E402
from zdk.runtime.models import make_spec  # noqa: E402
from zdk.runtime.worker import WorkerConfig, WorkerRun  # noqa: E402


def regression_batches(rows=256, per_batch=64, seed=0):
    rng = np.random.default_rng(seed)
    w = np.arange(1, 5, dtype=np.float32)
    for _ in range(rows // per_batch):
        x = rng.normal(size=(per_batch, 4)).astype(np.float32)
        y = x @ w
        yield pa.RecordBatch.from_pydict({"features": pa.array(list(x), pa.list_(pa.float32())), "label": y})


def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])


def config(endpoints, **kw):
    m = model()
    spec = make_spec(m, optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    base = dict(spec=spec.to_json(), algorithm="downpour", params={"communication_window": 3},
                endpoints=tuple(endpoints), features=("features",), labels=("label",), batch_size=16, num_epoch=2)
    base.update(kw)
    return WorkerConfig(**base), m


def test_worker_trains_through_the_ps_and_records_history(shards):
    m = model()
    initial = np.concatenate([w.ravel() for w in m.get_weights()]).astype(np.float32)
    group = shards(num_shards=2, total_size=initial.size, initial=initial)
    cfg, _ = config(group.endpoints)
    records = WorkerRun(cfg, worker_id=0).run(regression_batches())
    steps = [r for r in records if r["kind"] == "step"]
    summary = records[-1]
    assert len(steps) == 2 * 256 // 16 and summary["kind"] == "summary" and summary["rows"] == 256
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert "mean_absolute_error" in steps[0]["metrics"] or "mae" in steps[0]["metrics"]
    exchanged = [r for r in steps if r["staleness"] is not None]
    assert len(exchanged) == -(-len(steps) // 3)  # every 3 steps, and the last partial window
    assert 0 <= summary["wait"] < summary["busy"]
    with PSClient(group.endpoints, worker_id=9) as observer:
        observer.hello(register=False)
        stats = observer.stats()
        center = observer.pull()
    assert stats[0]["updates"] == len(exchanged)
    assert stats[0]["workers"]["0"]["report"]["samples"] == 512
    assert not np.allclose(center, initial)


def test_a_retried_attempt_reregisters_and_its_commits_all_apply(shards):
    m = model()
    initial = np.concatenate([w.ravel() for w in m.get_weights()]).astype(np.float32)
    group = shards(num_shards=1, total_size=initial.size, initial=initial)
    cfg, _ = config(group.endpoints, num_epoch=1)
    WorkerRun(cfg, worker_id=5, attempt=0).run(regression_batches(rows=64))
    WorkerRun(cfg, worker_id=5, attempt=1).run(regression_batches(rows=64))
    with PSClient(group.endpoints, worker_id=9) as observer:
        observer.hello(register=False)
        stats = observer.stats()[0]
    per_attempt = -(-64 // 16 // 3)  # ⌈4 steps / window 3⌉ exchanges
    assert stats["updates"] == 2 * per_attempt and stats["duplicates"] == 0
    assert stats["workers"]["5"]["attempt"] == 1


def test_worker_without_ps_returns_its_weights():
    cfg, m = config((), algorithm="sequential", params={})
    records = WorkerRun(cfg, worker_id=0).run(regression_batches(rows=128))
    weights = np.frombuffer(records[-1]["weights"], "<f4")
    assert weights.size == sum(w.size for w in m.get_weights())
    assert records[-1]["wait"] == 0.0


def test_non_finite_weights_refused_by_the_ps_name_worker_epoch_and_step(shards):
    from zdk.errors import NonFiniteError

    m = model()
    initial = np.concatenate([w.ravel() for w in m.get_weights()]).astype(np.float32)
    group = shards(num_shards=1, total_size=initial.size, initial=initial)
    cfg, _ = config(group.endpoints, on_nan="warn")  # train on past the NaN loss, so the commit carries NaN

    def poisoned():
        for batch in regression_batches():
            x = np.array(batch.column("features").to_pylist(), dtype=np.float32)
            x[0, 0] = np.nan
            yield pa.RecordBatch.from_pydict({"features": pa.array(list(x), pa.list_(pa.float32())),
                                              "label": batch.column("label")})

    with pytest.raises(NonFiniteError, match=r"worker 0: its weights became non-finite by epoch 0, step 3.*"
                                             r"refused them.*Check the input data"):
        WorkerRun(cfg, worker_id=0).run(poisoned())


def test_flat_weights_round_trip_every_variable_in_get_weights_order():
    from zdk.errors import ConfigError
    from zdk.ps.layout import FlatLayout
    from zdk.runtime.models import get_flat_weights, set_flat_weights

    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                              keras.layers.Dense(3)])
    model(np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32), training=True)
    layout = FlatLayout.of(model.get_weights())
    flat = get_flat_weights(model, layout, layout.empty())
    np.testing.assert_array_equal(flat, layout.flatten(model.get_weights()))  # moving statistics included
    set_flat_weights(model, layout, flat * 2)
    np.testing.assert_allclose(get_flat_weights(model, layout, layout.empty()), flat * 2)
    other = FlatLayout.of(model.get_weights()[:-1])
    with pytest.raises(ConfigError, match="must have the 7 weights its layout was made from. Received: a model with 8"):
        get_flat_weights(model, other, other.empty())


def test_non_finite_weight_names_the_first_variable_holding_nan_or_infinity():
    import os
    import tempfile

    from zdk.runtime.models import non_finite_weight

    def autograph_files() -> set[str]:
        return {e for e in os.listdir(tempfile.gettempdir()) if e.startswith("__autograph_generated")}

    before = autograph_files()
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                              keras.layers.Dense(3)])
    assert non_finite_weight(model) is None
    moving_var = model.layers[1].moving_variance  # not trainable: a NaN there ruins predictions too
    moving_var.assign(np.array([1.0, np.inf, 1.0, 1.0], np.float32))
    assert non_finite_weight(model) == moving_var.path
    model.layers[2].kernel.assign(np.full((4, 3), np.nan, np.float32))
    assert non_finite_weight(model) == moving_var.path  # the first, in model.weights order
    moving_var.assign(np.ones(4, np.float32))
    assert non_finite_weight(model) == model.layers[2].kernel.path
    model.layers[2].kernel.assign(np.zeros((4, 3), np.float32))
    assert non_finite_weight(model) is None  # the traced check reads the variables' current values
    assert autograph_files() == before  # traced without autograph, which leaves a source file per function
