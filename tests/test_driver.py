"""The training engine's pieces on their own: the plan and its rules, the Spark job's cancel token and
failure messages, the result's history and timings, the PS session's keys and resume checks, and one
seam with Spark (a cancel that arrives before training starts)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from zdk import algorithms  # noqa: E402
from zdk.driver import planning  # noqa: E402
from zdk.driver.models import compiled_model, ship_weights  # noqa: E402
from zdk.driver.plan import CENTER, MODEL, MODELS, ServerPlan, TrainingPlan  # noqa: E402
from zdk.driver.ps_session import check_resume, job_keys  # noqa: E402
from zdk.driver.result import Marks, TrainingResult, averaged_history, split_records  # noqa: E402
from zdk.driver.spark_job import CancelToken  # noqa: E402
from zdk.errors import ConfigError, JobCancelled  # noqa: E402
from zdk.ps.checkpoint import CheckpointPolicy, checkpoint_path  # noqa: E402
from zdk.transports.curve import CurveKeys  # noqa: E402


def mlp():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])


def plan(algorithm: str = "downpour", **options) -> TrainingPlan:
    options.setdefault("loss", "sparse_categorical_crossentropy")
    return planning.plan_training(mlp(), algorithm=algorithm, owner="Test", **options)


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize("field,value,message", [
    ("num_epoch", 0, "`num_epoch` must be an int ≥ 1. Received: num_epoch=0"),
    ("batch_size", True, "`batch_size` must be an int ≥ 1. Received: batch_size=True"),
    ("max_prefetch", 0, "`max_prefetch` must be an int ≥ 1"),
    ("on_nan", "ignore", "`on_nan` must be 'raise' or 'warn'. Received: on_nan='ignore'"),
    ("features_col", (), "`features_col` must be a column name or a list of them"),
    ("learning_rate", -1.0, "`learning_rate` must be > 0"),
    ("result", MODEL, "`result` must be 'center'. Received: result='model'"),
    ("reinitialize", True, "`reinitialize` needs an algorithm without a parameter server"),
])
def test_a_plan_refuses_a_bad_field_by_name(field, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        plan().replace(**{field: value})
    assert info.value.field == field


@pytest.mark.parametrize("changes,field,message", [
    ({"num_shards": 0}, "num_shards", "`num_shards` must be an int ≥ 1"),
    ({"port": 70000}, "master_port", "`master_port` must be a port in [0, 65536)"),
    ({"security": "tls"}, "security", "`security` must be 'auto', 'curve' or 'none'"),
    ({"timeout": 0}, "timeout", "`timeout` must be > 0 seconds"),
    ({"endpoints": ("",)}, "parameter_server", "`parameter_server` must be a list of endpoints"),
])
def test_a_server_plan_refuses_a_bad_field_by_name(changes, field, message):
    with pytest.raises(ConfigError) as info:
        ServerPlan(**changes)
    assert message in str(info.value) and info.value.field == field


def test_a_plan_counts_tasks_and_refuses_overlap_for_rounds_and_workers_an_algorithm_fixes():
    assert plan(num_workers=3, parallelism_factor=2).num_tasks == 6
    with pytest.raises(ConfigError, match="`overlap` must be False for the synchronous algorithm 'averaging'"):
        plan("averaging", overlap=True)
    with pytest.raises(ConfigError, match="`num_workers` must be 1 for 'sequential'") as info:
        plan("sequential", num_workers=2)
    assert info.value.field == "num_workers"
    with pytest.raises(ConfigError, match="`params` must be a AveragingParams"):
        plan().replace(algorithm=algorithms.get("averaging"))


# ---------------------------------------------------------------- planning rules


def test_the_window_follows_the_algorithms_rule_for_the_number_of_tasks_unless_given():
    assert plan("adag", num_workers=3, parallelism_factor=2).params.communication_window == 6
    assert plan("adag", num_workers=3, communication_window=9).params.communication_window == 9
    assert plan("downpour", num_workers=4).params.communication_window == 5
    assert plan("averaging").exchange_per_epoch and not plan("averaging", communication_window=4).exchange_per_epoch


def test_job_dependent_params_are_filled_for_the_number_of_tasks():
    assert plan("averaging", num_workers=2, parallelism_factor=2).params.num_workers == 4
    assert plan("averaging", num_workers=2, algorithm_options={"num_workers": 3}).params.num_workers == 3


def test_learning_rate_goes_to_the_algorithm_when_it_has_one_else_to_the_workers_optimizer():
    aeasgd = plan("aeasgd", algorithm_options={"learning_rate": 0.05})
    assert aeasgd.params.learning_rate == 0.05 and aeasgd.learning_rate is None
    downpour = plan("downpour", algorithm_options={"learning_rate": 0.05})
    assert downpour.learning_rate == 0.05
    assert plan("downpour", worker_learning_rate=0.2, algorithm_options={"learning_rate": 0.05}).learning_rate == 0.2


def test_the_workers_optimizer_is_what_the_algorithm_needs():
    eamsgd = keras.optimizers.deserialize(plan("eamsgd", worker_optimizer="sgd").model.optimizer)
    assert isinstance(eamsgd, keras.optimizers.SGD) and eamsgd.get_config()["nesterov"]
    adam = keras.optimizers.deserialize(plan("downpour", worker_optimizer=keras.optimizers.Adam(0.003)).model.optimizer)
    assert isinstance(adam, keras.optimizers.Adam) and adam.get_config()["learning_rate"] == pytest.approx(0.003)


def test_a_checkpoint_directory_without_a_period_checkpoints_every_30_seconds(tmp_path):
    assert plan(checkpoint_dir=str(tmp_path)).server.checkpoint == CheckpointPolicy(str(tmp_path), 30.0)
    assert plan(checkpoint_dir=str(tmp_path), checkpoint_every=2.5).server.checkpoint.every == 2.5
    with pytest.raises(ConfigError, match="`checkpoint_every` must be > 0 seconds and needs `checkpoint_dir`"):
        plan(checkpoint_every=5.0)


@pytest.mark.parametrize("option,value", [("num_shards", 2), ("ps_host", "10.0.0.1"), ("overlap", True),
                                          ("timeout", 30.0), ("communication_window", 4)])
def test_an_option_without_effect_on_an_algorithm_without_a_ps_is_refused_by_name(option, value):
    with pytest.raises(ConfigError, match=f"`{option}` has no effect on Test") as info:
        plan("ensemble", **{option: value})
    assert info.value.field == option
    with pytest.raises(ConfigError, match="`rho` has no effect on Test"):
        plan("ensemble", algorithm_options={"rho": 2.0})


def test_what_train_returns_follows_the_algorithm():
    assert plan("downpour").result == CENTER
    assert plan("ensemble").result == MODELS
    assert plan("sequential", num_workers=1).result == MODEL


def test_a_trainers_algorithm_is_fixed_and_the_generic_one_needs_one():
    assert planning.algorithm_of("ADAG", "adag", None) == "adag"
    assert planning.algorithm_of("Trainer", None, "agn") == "agn"
    with pytest.raises(ConfigError, match="`algorithm` is fixed to 'adag' in ADAG"):
        planning.algorithm_of("ADAG", "adag", "agn")
    with pytest.raises(ConfigError, match="`algorithm` is required for the generic Trainer"):
        planning.algorithm_of("Trainer", None, None)


def test_the_plans_model_knows_its_signature_without_building_it():
    spec = plan().model
    assert spec.inputs == ((None, 4),) and spec.outputs == ((None, 3),) and len(spec.output_names) == 1
    assert spec.layout.total_size == 4 * 3 + 3


# ---------------------------------------------------------------- the Spark job's cancel token


class FakeContext:
    """Records what a SparkContext is asked (the token's only collaborator)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def setJobGroup(self, group: str, description: str, interruptOnCancel: bool) -> None:  # noqa: N802
        self.calls.append(("set", group))

    def cancelJobGroup(self, group: str) -> None:  # noqa: N802
        self.calls.append(("cancel", group))

    def setLocalProperty(self, key: str, value: object) -> None:  # noqa: N802
        self.calls.append(("property", value))


def test_a_cancel_token_cancels_the_running_group_and_a_group_started_after_a_cancel_raises():
    sc, token = FakeContext(), CancelToken()
    with token.job_group(sc, "zdk-test", "test") as group:
        assert group.startswith("zdk-test-") and not token.cancelled
        threading.Thread(target=token.cancel).start()
        deadline = time.monotonic() + 5
        while ("cancel", group) not in sc.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ("cancel", group) in sc.calls
    assert sc.calls[-1] == ("property", None)  # the group is cleared as the block ends
    with pytest.raises(JobCancelled):
        token.check()
    late = FakeContext()
    with pytest.raises(JobCancelled):
        with token.job_group(late, "zdk-test", "test"):
            pytest.fail("a cancelled token must not run its block")
    assert late.calls[-1] == ("property", None)


# ---------------------------------------------------------------- the result


def record(kind: str, worker: int, step: int, **extra):
    base = {"kind": kind, "worker": worker, "attempt": 0, "epoch": 0, "step": step, "timestamp": float(step + worker),
            "loss": 1.0 / step if step else None, "metrics": json.dumps({"accuracy": 0.1 * step}),
            "staleness": 0, "scale": None}
    return {**base, **extra}


def test_records_split_into_a_time_ordered_history_and_summaries_by_worker(caplog):
    records = [record("step", 1, 2), record("summary", 1, 2, rows=10), record("step", 0, 1), record("step", 0, 2),
               record("summary", 0, 2, rows=0)]
    with caplog.at_level("WARNING"):
        history, summaries = split_records(records, num_tasks=2)
    assert [(r["worker"], r["step"]) for r in history] == [(0, 1), (0, 2), (1, 2)]
    assert history[0]["metrics"] == {"accuracy": 0.1} and set(history[0]) == set(
        ("worker", "attempt", "epoch", "step", "timestamp", "loss", "metrics", "staleness", "scale"))
    assert [s["worker"] for s in summaries] == [0, 1]
    assert "worker(s) [0] got no rows" in caplog.text


def test_the_averaged_history_is_the_mean_over_workers_per_step():
    history, _ = split_records([record("step", 0, 1), record("step", 1, 1), record("step", 0, 2)], num_tasks=2)
    assert averaged_history(history) == [{"step": 1, "loss": 1.0, "accuracy": pytest.approx(0.1)},
                                         {"step": 2, "loss": 0.5, "accuracy": pytest.approx(0.2)}]


def test_phase_timings_come_from_the_drivers_marks_and_the_workers_clocks():
    marks = Marks()
    t0 = marks.at["start"]
    marks.at.update(prepared=t0 + 1, shards=t0 + 1.5, submitted=t0 + 2, end=t0 + 10)
    summaries = [{"t_ready": t0 + 3, "t_first": t0 + 4, "t_last": t0 + 8}, {"t_ready": t0 + 3.5, "t_first": t0 + 4.5,
                                                                            "t_last": t0 + 9}]
    t = marks.timings(summaries, session=2.0)
    assert t == {"session": 2.0, "data_preparation": 1.0, "shard_start": 0.5, "worker_start": 1.0, "first_step": 1.0,
                 "steps": 5.0, "teardown": 1.0, "time_to_first_step": 4.0, "total": 10.0}


def test_a_result_hands_back_one_model_or_every_workers_and_its_ps_wait():
    one = TrainingResult(models=("a",), result=CENTER, worker_summaries=[{"busy": 4.0, "wait": 1.0},
                                                                          {"busy": 4.0, "wait": 0.0}])
    assert one.value == "a" and one.ps_wait_fraction == 0.125
    assert TrainingResult(models=("a", "b"), result=MODELS).value == ["a", "b"]
    assert TrainingResult(models=("a",), result=MODELS).value == ["a"]


def test_trained_weights_become_a_compiled_model_with_the_plans_optimizer_and_loss():
    p = plan(worker_optimizer=keras.optimizers.SGD(0.25))
    flat = np.arange(p.model.layout.total_size, dtype=np.float32)
    model = compiled_model(p.model, flat)
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in model.get_weights()]), flat)
    assert isinstance(model.optimizer, keras.optimizers.SGD) and model.optimizer.built
    assert float(model.optimizer.learning_rate) == pytest.approx(0.25)


def test_shipped_weights_reach_every_task_and_leave_no_file_after_the_process(spark, tmp_path):
    import subprocess
    import sys

    flat = np.arange(5, dtype=np.float32)
    name = ship_weights(spark, flat)
    assert ship_weights(spark, flat.copy()) == name  # the same weights are shipped once

    def read(batches):
        import pyarrow as pa
        from pyspark import SparkFiles

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict({"total": [float(np.load(SparkFiles.get(name)).sum())]})

    assert {r.total for r in spark.range(2, numPartitions=2).mapInArrow(read, "total double").collect()} == {10.0}
    script = ("import numpy as np, os; from zdk.driver import models; from zdk.driver.session import get_session; "
              "s = get_session('local[1]'); models.ship_weights(s, np.ones(3, np.float32)); "
              "print(models.shipping_directory()); s.stop()")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    directory = out.stdout.strip().splitlines()[-1]
    assert directory.startswith(tempfile.gettempdir()) and not os.path.exists(directory)


# ---------------------------------------------------------------- the PS session


def test_a_run_gets_fresh_curve_keys_off_loopback_or_on_request_and_a_running_ps_keeps_its_own():
    assert job_keys(ServerPlan()) is None
    assert isinstance(job_keys(ServerPlan(host="10.1.2.3")), CurveKeys)
    assert isinstance(job_keys(ServerPlan(security="curve")), CurveKeys)
    assert job_keys(ServerPlan(host="10.1.2.3", security="none")) is None
    keys = CurveKeys.generate()
    assert job_keys(ServerPlan(endpoints=("tcp://127.0.0.1:5000",), curve_keys=keys)) is keys


def test_resuming_needs_a_ps_and_a_checkpoint_of_every_shard(tmp_path):
    with pytest.raises(ConfigError, match="`resume` needs an algorithm with a parameter server"):
        check_resume(plan("ensemble"))
    with pytest.raises(ConfigError, match="`resume=True` needs the `checkpoint_dir`"):
        check_resume(plan())
    two = plan(num_shards=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="needs a checkpoint of each of the 2 shards") as info:
        check_resume(two)
    assert "shard-000-of-002.npz" in str(info.value) and "shard-001-of-002.npz" in str(info.value)
    for k in range(2):
        open(checkpoint_path(str(tmp_path), k, 2), "wb").close()
    check_resume(two)
    check_resume(plan(parameter_server=["tcp://127.0.0.1:5000"]))  # a running zdk ps resumes from its state


# ---------------------------------------------------------------- one seam with Spark


@pytest.mark.spark
def test_a_cancel_before_train_starts_stops_it_before_any_shard_or_task(digits_df):
    from zdk import trainers
    from zdk.driver import engine

    trainer = trainers.DOWNPOUR(keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")]),
                                "adam", "sparse_categorical_crossentropy", progress=False)
    trainer.cancel()
    with pytest.raises(JobCancelled):
        trainer.train(digits_df)
    assert trainer.endpoints == []  # no shard was started
    with pytest.raises(ConfigError, match="`weights` must be a flat vector of the model's 650 parameters"):
        engine.train(trainer.plan, digits_df, weights=np.zeros(3, np.float32))
    # The token served one run: the next train() is not cancelled.
    assert isinstance(trainer.train(digits_df), keras.Model) and len(trainer.endpoints) == 1


def test_value_shape_is_the_shape_a_worker_reads_one_row_as():
    from pyspark.ml.linalg import Vectors

    from zdk.driver.preflight import value_shape

    assert value_shape(3.0) == () and value_shape(7) == ()
    assert value_shape([1.0, 2.0, 3.0]) == (3,)
    assert value_shape([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]) == (3, 2)
    assert value_shape(Vectors.dense([1.0, 2.0])) == (2,)
    assert value_shape(Vectors.sparse(5, [1], [2.0])) == (5,)


def test_prepared_data_carries_the_checked_rows_shapes_and_workers_are_told_them(spark, digits_df):
    from zdk.driver import data
    from zdk.driver.engine import worker_config

    digits_plan = planning.plan_training(
        keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]),
        algorithm="downpour", owner="Test", loss="sparse_categorical_crossentropy", num_workers=2)
    prepared = data.prepare(digits_plan, digits_df, shuffle=True)
    assert prepared.shapes == {"features": (64,), "label": ()}  # as read, before the reshape to the input's (8, 8)
    config = worker_config(digits_plan, shuffle=True, shapes=prepared.shapes)
    assert json.loads(config.to_json())["shapes"] == {"features": [64], "label": []}


def _shard_children() -> list[int]:
    import subprocess

    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "zdk.ps.server"], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_shards_begun_on_a_thread_serve_once_waited_for_and_stop_even_while_starting():
    from zdk.driver.ps_session import PSSession

    trained = plan(num_workers=2)
    weights = np.zeros(trained.model.layout.total_size, np.float32)
    session = PSSession(trained, initial=weights).begin()
    assert session.wait() is session and len(session.endpoints) == 1
    np.testing.assert_array_equal(session.center(), weights)
    session.close()
    assert _shard_children() == []
    leaving = PSSession(trained, initial=weights).begin()
    leaving.close()  # before it served: the caller leaves (a data error, Ctrl-C)
    assert _shard_children() == [] and leaving.endpoints and leaving._group is None


def test_a_shard_start_that_fails_is_raised_by_wait():
    import socket

    from zdk.driver.ps_session import PSSession
    from zdk.errors import LaunchError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        session = PSSession(plan(num_workers=2, master_port=port), initial=np.zeros(plan().model.layout.total_size,
                                                                               np.float32)).begin()
        with pytest.raises(LaunchError, match="shard 0 .*exited with code 1 before it was ready"):
            session.wait()
    session.close()


def test_shards_start_while_the_data_is_checked_and_stop_when_the_data_is_wrong(digits_df, monkeypatch):
    from zdk import trainers
    from zdk.driver import data, engine
    from zdk.driver.ps_session import PSSession

    order: list[str] = []
    begin, prepare = PSSession.begin, data.prepare
    monkeypatch.setattr(PSSession, "begin", lambda self: order.append("shards begin") or begin(self))
    monkeypatch.setattr(engine.data, "prepare", lambda *a, **k: order.append("data prepared") or prepare(*a, **k))
    trainer = trainers.DOWNPOUR(keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")]),
                                "adam", "sparse_categorical_crossentropy", num_epoch=1, progress=False)
    trainer.train(digits_df)
    assert order == ["shards begin", "data prepared"]
    wrong = trainers.DOWNPOUR(keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")]),
                              "adam", "sparse_categorical_crossentropy", features_col="pixels", progress=False)
    with pytest.raises(ConfigError, match="pixels"):
        wrong.train(digits_df)
    assert _shard_children() == []
