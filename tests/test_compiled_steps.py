"""Compiled multi-step windows (zdk.runtime.steps): the same per-step history and weights as one
``train_on_batch`` per step, in-process (real shards and Keras, Arrow batches, no Spark)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import pytest

keras = pytest.importorskip("keras")

from zdk.errors import ConfigError, NonFiniteError  # noqa: E402
from zdk.ps.client import PSClient  # noqa: E402
from zdk.runtime import models, steps as steps_module  # noqa: E402
from zdk.runtime.models import make_spec  # noqa: E402
from zdk.runtime.steps import CompiledSteps, NotCompilable, compiled_steps, window_steps  # noqa: E402
from zdk.runtime.worker import WorkerConfig, WorkerRun  # noqa: E402

ROWS, BATCH = 200, 16  # 13 steps an epoch, the last of 8 rows


def arrow_batches(rows=ROWS, *, nan_row=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    if nan_row is not None:
        x[nan_row, 3] = np.nan
    for start in range(0, rows, 50):
        part = slice(start, start + 50)
        yield pa.RecordBatch.from_pydict({"features": pa.array(list(x[part]), pa.list_(pa.float32())),
                                          "label": y[part]})


def model(activation="relu"):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation=activation),
                             keras.layers.BatchNormalization(), keras.layers.Dropout(0.2),
                             keras.layers.Dense(3, activation="softmax")])


def flat(m):
    return np.concatenate([w.ravel() for w in m.get_weights()]).astype(np.float32)


def config(endpoints=(), net=None, **kw):
    spec = make_spec(net or model(), optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                     metrics=["accuracy", "sparse_categorical_crossentropy"])
    base = dict(spec=spec.to_json(), algorithm="sequential", params={}, endpoints=tuple(endpoints),
                features=("features",), labels=("label",), batch_size=BATCH, num_epoch=2, shuffle=True, seed=3,
                reinitialize=True)
    base.update(kw)
    return WorkerConfig(**base)


def steps_of(records):
    return [r for r in records if r["kind"] == "step"]


def assert_same_history(old, new):
    assert [(r["epoch"], r["step"]) for r in old] == [(r["epoch"], r["step"]) for r in new]
    np.testing.assert_allclose([r["loss"] for r in new], [r["loss"] for r in old], rtol=1e-6, atol=1e-7)
    for a, b in zip(old, new):
        assert list(eval_metrics(a)) == list(eval_metrics(b))
        np.testing.assert_allclose(list(eval_metrics(b).values()), list(eval_metrics(a).values()), rtol=1e-6,
                                   atol=1e-7)


def eval_metrics(record):
    import json

    return json.loads(record["metrics"])


def spy_on_windows(monkeypatch):
    """The number of steps of every compiled call."""
    sizes: list[int] = []
    run = CompiledSteps.run

    def spy(self, steps):
        sizes.append(len(steps))
        return run(self, steps)

    monkeypatch.setattr(CompiledSteps, "run", spy)
    return sizes


def test_compiled_windows_give_the_per_step_history_and_weights_of_train_on_batch(monkeypatch):
    old = WorkerRun(config(steps_per_execution=1), worker_id=0).run(arrow_batches())
    sizes = spy_on_windows(monkeypatch)
    new = WorkerRun(config(steps_per_execution=5), worker_id=0).run(arrow_batches())
    assert_same_history(steps_of(old), steps_of(new))
    assert len(steps_of(new)) == 2 * 13
    # Windows of 5 end at each epoch's end; the smaller last batch runs as its own group in that window.
    assert sizes == [5, 5, 3, 5, 5, 3]
    np.testing.assert_allclose(np.frombuffer(new[-1]["weights"], "<f4"), np.frombuffer(old[-1]["weights"], "<f4"),
                               rtol=1e-5, atol=1e-6)


def test_compiled_windows_end_at_every_exchange_and_match_the_per_step_path(shards, monkeypatch):
    initial = flat(model())

    def run(steps_per_execution):
        # A fresh model each run: a reused one's dropout seed state goes on from the last run.
        models._reusable.clear()
        keras.utils.set_random_seed(0)
        group = shards(num_shards=1, total_size=initial.size, initial=initial)
        cfg = config(group.endpoints, algorithm="downpour", params={"communication_window": 4},
                     reinitialize=False, steps_per_execution=steps_per_execution)
        records = WorkerRun(cfg, worker_id=0).run(arrow_batches())
        with PSClient(group.endpoints, worker_id=9) as observer:
            observer.hello(register=False)
            return steps_of(records), observer.pull(), observer.stats()[0]["updates"]

    old, old_center, old_updates = run(1)
    sizes = spy_on_windows(monkeypatch)
    new, new_center, new_updates = run(32)
    assert_same_history(old, new)
    exchanged = [r["step"] for r in new if r["staleness"] is not None]
    assert exchanged == [r["step"] for r in old if r["staleness"] is not None]
    # Every 4 steps across the epoch end (13 steps an epoch), and the last, shorter window.
    assert exchanged == [4, 8, 12, 16, 20, 24, 26] and new_updates == old_updates == 7
    assert sizes == [4, 4, 4, 1, 3, 4, 4, 2]  # the window spanning the epoch end is cut there
    np.testing.assert_allclose(new_center, old_center, rtol=1e-5, atol=1e-6)


# A NaN row must reach the loss through tanh: oneDNN's fused ReLU (TensorFlow's default on AVX-512
# CPUs) maps a NaN activation to 0, which leaves the loss finite (the weights' check below).
def test_a_non_finite_loss_names_the_first_bad_step_of_a_window():
    # Row 150 of the unshuffled epoch 0 is in step 10 (rows 144-159), the 5th step of the second window.
    cfg = config(steps_per_execution=5, shuffle=False, net=model("tanh"))
    with pytest.raises(NonFiniteError, match=r"worker 0 \(attempt 0\): the training loss became nan at epoch 0, "
                                             r"step 10\. Check the input data"):
        WorkerRun(cfg, worker_id=0).run(arrow_batches(nan_row=150))


def test_on_nan_warn_trains_on_and_warns_once(caplog):
    cfg = config(steps_per_execution=5, shuffle=False, on_nan="warn", net=model("tanh"))
    with caplog.at_level(logging.WARNING, logger="zdk.runtime.worker"):
        records = WorkerRun(cfg, worker_id=0).run(arrow_batches(nan_row=150))
    warnings = [r.getMessage() for r in caplog.records if "training loss became" in r.getMessage()]
    assert len(warnings) == 1 and "epoch 0, step 10" in warnings[0]
    assert len(steps_of(records)) == 26


@keras.saving.register_keras_serializable(package="zdk_tests")
class ZeroNaN(keras.layers.Layer):
    """NaN activations become 0, as under oneDNN's fused ReLU: the loss stays finite, while the
    gradient, x·δ with x NaN, makes the kernel NaN."""

    def call(self, x):
        return keras.ops.nan_to_num(x, nan=0.0)


def nan_hiding_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), ZeroNaN(),
                             keras.layers.Dense(3, activation="softmax")])


# Without a PS the weights are checked every 32 steps and at each epoch's end. Row 150 is in step 10
# of 13 at 16 rows a step (checked at the epoch's end), and in step 38 of 50 at 4 (checked after
# step 35, and then at the epoch's end).
@pytest.mark.parametrize("steps_per_execution,batch_size,steps", [(5, 16, "1–13"), (1, 16, "1–13"), (5, 4, "36–50"),
                                                                  (1, 4, "33–50")])
def test_non_finite_weights_behind_a_finite_loss_name_the_steps_without_a_ps(steps_per_execution, batch_size, steps):
    cfg = config(steps_per_execution=steps_per_execution, batch_size=batch_size, shuffle=False,
                 net=nan_hiding_model())
    with pytest.raises(NonFiniteError, match=r"worker 0 \(attempt 0\): the weights became non-finite "
                                             r"\('dense(_\d+)?/kernel' holds NaN or infinity\) in steps "
                                             rf"{steps} \(epoch 0\), though the training loss stayed finite"):
        WorkerRun(cfg, worker_id=0).run(arrow_batches(nan_row=150))


def test_non_finite_weights_on_nan_warn_warn_once_and_train_on(caplog):
    cfg = config(steps_per_execution=5, shuffle=False, on_nan="warn", net=nan_hiding_model())
    with caplog.at_level(logging.WARNING, logger="zdk.runtime.worker"):
        records = WorkerRun(cfg, worker_id=0).run(arrow_batches(nan_row=150))
    warnings = [r.getMessage() for r in caplog.records if "weights became non-finite" in r.getMessage()]
    assert len(warnings) == 1 and "steps 1–13 (epoch 0)" in warnings[0]
    steps = steps_of(records)
    assert len(steps) == 26 and all(math.isfinite(r["loss"]) for r in steps)


def test_a_model_that_cannot_run_compiled_falls_back_loudly_with_the_same_results(monkeypatch, caplog):
    old = WorkerRun(config(steps_per_execution=1), worker_id=0).run(arrow_batches())

    def refuse(self, steps):
        raise NotCompilable("its train_step returns keys ['loss', 'lr']")

    monkeypatch.setattr(CompiledSteps, "run", refuse)
    with caplog.at_level(logging.WARNING, logger="zdk.runtime.worker"):
        new = WorkerRun(config(steps_per_execution=8), worker_id=0).run(arrow_batches())
    assert any("cannot run compiled" in r.getMessage() and "['loss', 'lr']" in r.getMessage() for r in caplog.records)
    assert_same_history(steps_of(old), steps_of(new))


class ExtraLogsModel(keras.Model):
    """A model whose train_step returns a figure that is not a metric."""

    def train_step(self, data):
        logs = super().train_step(data)
        return {**logs, "lr": self.optimizer.learning_rate}


def test_a_train_step_returning_other_logs_is_refused_while_tracing_before_any_step():
    inputs = keras.Input((6,))
    m = ExtraLogsModel(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = flat(m)
    x, y = np.ones((4, 6), np.float32), np.zeros(4, np.float32)
    with pytest.raises(NotCompilable, match="lr"):
        compiled_steps(m).run([([x], [y]), ([x], [y])])
    np.testing.assert_array_equal(flat(m), before)
    with pytest.raises(NotCompilable):  # remembered: no second trace
        compiled_steps(m).run([([x], [y])])


def test_two_inputs_and_two_outputs_run_compiled_exactly():
    def two():
        keras.utils.set_random_seed(1)
        a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
        h = keras.layers.Dense(5, activation="tanh")(keras.layers.Concatenate()([a, b]))
        m = keras.Model([a, b], [keras.layers.Dense(1, name="r")(h), keras.layers.Dense(2, name="c")(h)])
        m.compile(optimizer="adam", loss=["mse", "sparse_categorical_crossentropy"], metrics=[["mae"], ["accuracy"]])
        return m

    rng = np.random.default_rng(0)
    steps = [([rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)],
              [rng.normal(size=(n, 1)).astype(np.float32), rng.integers(0, 2, n).astype(np.float32)])
             for n in (8, 8, 8, 5)]
    old, new = two(), two()
    expected = [old.train_on_batch(xs, ys, return_dict=True) for xs, ys in steps]
    got = compiled_steps(new).run(steps)
    assert [sorted(e) for e in expected] == [list(g) for g in got]
    for e, g in zip(expected, got):
        np.testing.assert_allclose([g[k] for k in sorted(e)], [float(e[k]) for k in sorted(e)], rtol=1e-6)
    np.testing.assert_allclose(flat(new), flat(old), rtol=1e-6, atol=1e-7)


def test_window_steps_keeps_to_the_horizon_and_the_memory_cap(monkeypatch):
    batch = ([np.zeros((64, 784), np.float32)], [np.zeros(64, np.float32)])
    assert window_steps(32, None, batch) == 32
    assert window_steps(32, 3, batch) == 3
    monkeypatch.setattr(steps_module, "MAX_WINDOW_BYTES", 10 * (64 * 784 * 4 + 64 * 4))
    assert window_steps(32, None, batch) == 10
    monkeypatch.setattr(steps_module, "MAX_WINDOW_BYTES", 1)
    assert window_steps(32, None, batch) == 1


def test_steps_per_execution_must_be_a_positive_int():
    from zdk.trainers import ADAG, SingleTrainer

    m = model()
    with pytest.raises(ConfigError, match=r"`steps_per_execution` must be an int ≥ 1\. Received: "
                                          r"steps_per_execution=0") as caught:
        SingleTrainer(m, "adam", "mse", steps_per_execution=0)
    assert caught.value.field == "steps_per_execution"
    assert ADAG(m, "adam", "mse", steps_per_execution=4).plan.steps_per_execution == 4
    assert SingleTrainer(m, "adam", "mse").plan.steps_per_execution == steps_module.DEFAULT_STEPS_PER_EXECUTION


def test_the_epoch_figures_are_the_row_weighted_means_of_its_steps_not_its_last_step(monkeypatch):
    from zdk.runtime import worker as worker_module

    seen = []
    monkeypatch.setattr(worker_module._Cadence, "end_epoch",
                        lambda self, record, samples, summary, *, last: seen.append(summary))
    records = steps_of(WorkerRun(config(), worker_id=0).run(arrow_batches()))
    rows = [BATCH] * 12 + [ROWS - 12 * BATCH]  # a step's figures are its own batch's
    assert len(seen) == 2
    for epoch, summary in enumerate(seen):
        mine = [r for r in records if r["epoch"] == epoch]
        assert summary["samples"] == ROWS and len(mine) == len(rows)
        assert summary["loss"] == pytest.approx(np.average([r["loss"] for r in mine], weights=rows), rel=1e-6)
        accuracy = np.average([eval_metrics(r)["accuracy"] for r in mine], weights=rows)
        assert summary["accuracy"] == pytest.approx(accuracy, rel=1e-6)
        assert summary["loss"] != pytest.approx(mine[-1]["loss"], rel=1e-3)


def test_prepare_traces_from_shapes_alone_without_training_and_run_reuses_the_trace():
    spec = make_spec(model(), optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"])
    m = models.build_model(spec)
    before = [w.copy() for w in m.get_weights()]
    compiled = CompiledSteps(m)
    example = ([np.zeros((BATCH, 6), np.float32)], [np.zeros((BATCH,), np.float32)])
    assert compiled.prepare(example) is True
    assert compiled.prepare(example) is False  # traced already
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)  # zeros traced, nothing trained
    assert m.optimizer.iterations.numpy() == 0
    rng = np.random.default_rng(1)
    real = [([rng.normal(size=(BATCH, 6)).astype(np.float32)], [rng.integers(0, 3, BATCH).astype(np.float32)])
            for _ in range(3)]
    logs = compiled.run(real)
    assert len(logs) == 3 and len(compiled._functions) == 1  # the real steps found the prepared trace
    assert m.optimizer.iterations.numpy() == 3


def test_a_worker_traces_its_window_from_the_drivers_row_shapes_before_its_first_rows(monkeypatch):
    plain = WorkerRun(config(steps_per_execution=5), worker_id=0).run(arrow_batches())
    traced: list[bool] = []
    prepare = CompiledSteps.prepare

    def spy(self, example):
        traced.append(prepare(self, example))
        return traced[-1]

    monkeypatch.setattr(CompiledSteps, "prepare", spy)
    traces = []
    trace = CompiledSteps._trace
    monkeypatch.setattr(CompiledSteps, "_trace", lambda self, *a: traces.append(a[0]) or trace(self, *a))
    ahead = WorkerRun(config(steps_per_execution=5, shapes={"features": [6], "label": []}), worker_id=0).run(arrow_batches())
    assert traced == [True]
    assert len(traces) == 1  # the real rows found it (the batch axis is free: the smaller last batch too)
    assert_same_history(steps_of(plain), steps_of(ahead))
    np.testing.assert_array_equal(np.frombuffer(ahead[-1]["weights"], "<f4"), np.frombuffer(plain[-1]["weights"], "<f4"))


def test_row_shapes_that_do_not_fit_the_model_leave_the_trace_to_the_first_window():
    plain = WorkerRun(config(steps_per_execution=5), worker_id=0).run(arrow_batches())
    wrong = WorkerRun(config(steps_per_execution=5, shapes={"features": [7], "label": []}), worker_id=0).run(
        arrow_batches())
    assert_same_history(steps_of(plain), steps_of(wrong))


def test_rows_of_other_shapes_than_the_checked_row_fail_loudly_instead_of_training_with_misbuilt_metrics():
    # (rows, 5) labels against 3 classes: building the metrics from them resolves "accuracy" to
    # the one-hot kind, which silently scores the real (rows,) labels 0. The worker refuses.
    odd = WorkerRun(config(steps_per_execution=5, shapes={"features": [6], "label": [5]}), worker_id=0)
    with pytest.raises(ConfigError, match=r"the rows' values have shapes \{'features': \(6,\), 'label': \(\)\}, "
                                          r"but the row the driver checked had .*'label': \(5,\)"):
        odd.run(arrow_batches())
