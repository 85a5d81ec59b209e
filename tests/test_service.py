"""The job server (``zdk serve``), its client (``zdk.jobs``) and ``zdk job``, on real Spark and HTTP."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import requests

from conftest import digits_mlp, poll_until
from zdk.errors import ConfigError
from zdk.jobs.spec import JobSpec

pytestmark = pytest.mark.spark


def base_spec(**arguments) -> dict:
    args = {"worker_optimizer": "adam", "loss": "sparse_categorical_crossentropy", "num_workers": 2,
            "num_epoch": 2, "batch_size": 32, **arguments}
    return {"name": "digits", "trainer": {"class": "ADAG", "arguments": args},
            "data": {"format": "parquet", "path": "digits.parquet"},
            "resources": {"num_executors": 1, "num_processes": 2}}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "m.keras"
    digits_mlp().save(path)
    return path.read_bytes()


def post(server, token: str | None, spec, model: bytes | None) -> requests.Response:
    files = {}
    if spec is not None:
        files["spec"] = ("spec.json", spec if isinstance(spec, bytes) else json.dumps(spec).encode())
    if model is not None:
        files["model"] = ("m.keras", model)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{server.url}/api/jobs", files=files, headers=headers, timeout=60)


def get(server, token: str | None, path: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(f"{server.url}{path}", headers=headers, timeout=30)


def wait_state(server, token: str, job_id: str, states: tuple[str, ...], timeout: float = 120.0) -> dict:
    return poll_until(lambda: (j := get(server, token, f"/api/jobs/{job_id}").json())["state"] in states and j,
                      timeout=timeout, interval=0.2, what=f"job {job_id} to reach {states}")


def shard_processes() -> list[int]:
    """Shard processes alive on this machine (the launcher runs ``python -m zdk.ps.server``)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"zdk.ps.server" in fh.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


# ---------------------------------------------------------------------- the spec, without a server

def test_spec_round_trips_and_names_the_wrong_field():
    spec = JobSpec.from_dict(base_spec())
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.slots == 2
    for broken, field in ((dict(base_spec(), name=""), "name"), (dict(base_spec(), trainer="ADAG"), "trainer"),
                          (dict(base_spec(), data={"format": "orc", "path": "x"}), "data.format"),
                          (dict(base_spec(), resources={"num_executors": 0}), "resources.num_executors"),
                          (dict(base_spec(), shuffle="yes"), "shuffle"),
                          (dict(base_spec(), extra=1), "spec.extra"),
                          (base_spec(ps_host="0.0.0.0"), "trainer.arguments.ps_host")):
        with pytest.raises(ConfigError, match=f"`{field}`"):
            JobSpec.from_dict(broken)
    with pytest.raises(ConfigError, match="`spec` must be a JSON object.*malformed JSON"):
        JobSpec.from_json(b"{nope")


def test_data_paths_stay_under_the_roots(tmp_path):
    from zdk.service.build import Policy, resolve_path

    (tmp_path / "ok.parquet").mkdir()
    os.symlink("/etc", tmp_path / "escape")
    policy = Policy(data_roots=(str(tmp_path), "hdfs://nn/data/"))
    # Local paths go to Spark fully qualified: on YARN a path without a scheme is an HDFS path.
    assert resolve_path("ok.parquet", policy) == f"file://{tmp_path / 'ok.parquet'}"
    assert resolve_path(str(tmp_path / "ok.parquet"), policy) == f"file://{tmp_path / 'ok.parquet'}"
    assert resolve_path("hdfs://nn/data/x/y.parquet", policy) == "hdfs://nn/data/x/y.parquet"
    for outside in ("/etc/passwd", "../../etc", "escape/passwd", "hdfs://nn/other", "hdfs://nn/data/../secret",
                    "s3a://bucket/x"):
        with pytest.raises(ConfigError, match="`data.path` must lie under"):
            resolve_path(outside, policy)
    with pytest.raises(ConfigError, match="`data.path` must lie under.*--data-root"):
        resolve_path("x", Policy())


def test_data_paths_refuse_globs_and_file_roots_match(tmp_path):
    from zdk.service.build import Policy, resolve_path

    (tmp_path / "ok.parquet").mkdir()
    policy = Policy(data_roots=(f"file://{tmp_path}/", "hdfs://nn/warehouse/"))
    for path in ("ok.parquet", str(tmp_path / "ok.parquet"), f"file://{tmp_path}/ok.parquet"):
        assert resolve_path(path, policy) == f"file://{tmp_path / 'ok.parquet'}"
    # Spark expands {a,b}, [ab], * and ?: a glob could lead out of a URI root, and into the 400's message.
    for globbed in ("hdfs://nn/warehouse/{x,../user/secret.csv}", "hdfs://nn/warehouse/*", "ok.parq?et",
                    "ok[.]parquet", "hdfs://nn/warehouse/a\\b", "ok.parquet\nx"):
        with pytest.raises(ConfigError, match="`data.path` must name one path.*glob") as caught:
            resolve_path(globbed, policy)
        assert caught.value.field == "data.path"
    for outside in ("file://relative/x", f"file://{tmp_path}/../x", "file:///etc/passwd"):
        with pytest.raises(ConfigError, match="`data.path` must lie under"):
            resolve_path(outside, policy)


def test_tokens_are_stored_hashed_and_revocable(tmp_path):
    from zdk.service.store import Store, hash_token

    store = Store(str(tmp_path / "zdk.db"))
    token = store.create_token("alice")
    other = store.create_token("alice")
    assert store.user_of(token) == "alice" and store.user_of(other) == "alice"
    raw = (tmp_path / "zdk.db").read_bytes() + (tmp_path / "zdk.db-wal").read_bytes()
    assert token.encode() not in raw and hash_token(token).encode() in raw
    assert store.user_of(token + "x") is None and store.user_of("") is None
    assert store.revoke(token=token) == 1
    assert store.user_of(token) is None and store.user_of(other) == "alice"
    assert store.revoke(user="alice") == 1 and store.user_of(other) is None
    with pytest.raises(ConfigError, match="`user`"):
        store.create_token("a b")
    store.close()


def test_a_job_running_when_the_server_died_is_marked_interrupted(tmp_path):
    from zdk.service.build import Policy
    from zdk.service.cluster import Cluster
    from zdk.service.scheduler import Scheduler
    from zdk.service.store import Store

    store = Store(str(tmp_path / "zdk.db"))
    job = store.add_job(owner="alice", name="x", spec=base_spec(), directory=str(tmp_path), job_id="j1")
    store.transition(job.id, ("queued",), "running", progress={"steps": 12})
    scheduler = Scheduler(store, cluster=Cluster(lambda: None), policy=Policy())
    scheduler.start()
    try:
        after = store.job("j1")
        assert after is not None and after.state == "interrupted"
        assert "at step 12" in str(after.error) and "first checkpoint" in str(after.error)
        assert after.finished is not None
    finally:
        scheduler.stop()
        store.close()


def test_trainer_spec_describes_a_trainer_as_json():
    import keras

    from zdk.jobs import trainer_spec
    from zdk.trainers import ADAG

    trainer = ADAG(digits_mlp(), keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"], 2,
                   num_epoch=3)
    spec = trainer_spec(trainer)
    json.dumps(spec)
    assert spec["class"] == "ADAG"
    assert spec["arguments"]["num_workers"] == 2 and spec["arguments"]["metrics"] == ["accuracy"]
    assert spec["arguments"]["worker_optimizer"]["class_name"] == "Adam"
    assert spec["arguments"]["worker_optimizer"]["config"]["learning_rate"] == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="`seed` has no JSON form"):
        trainer_spec(ADAG(digits_mlp(), "adam", "mse", seed=object()))


# ---------------------------------------------------------------------- through the server

def test_submit_train_fetch_with_dist_keras_job(job_server, digits):
    import keras

    from zdk.jobs import Job
    from zdk.trainers import ADAG

    _, x_test, _, y_test = digits
    trainer = ADAG(digits_mlp(), keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", num_workers=2,
                   num_epoch=5, batch_size=32)
    job = Job(job_server.tokens["alice"], "digits-adag", "digits.parquet", 1, 2, trainer)
    job_id = job.send(job_server.url)
    record = job.wait_completion(timeout=180)
    assert record["state"] == "finished" and record["error"] is None
    model = job.get_trained_model()
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    assert accuracy >= 0.9, accuracy
    history = job.get_history()
    assert {r["worker"] for r in history} == {0, 1} and all(np.isfinite(r["loss"]) for r in history)
    progress = record["progress"]
    assert set(progress["series"]) == {"0", "1"} and progress["timings"]["total"] > 0
    csv_text = job.client.history(job_id, "csv")
    assert csv_text.splitlines()[0].startswith("worker,attempt,epoch,step") and "accuracy" in csv_text.splitlines()[0]
    assert len(csv_text.splitlines()) == len(history) + 1
    log = job.client.logs(job_id)
    assert f"job {job_id} finished" in log and "started 1 shard(s) of adag" in log
    assert not shard_processes()


def test_a_validated_job_stops_early_and_keeps_its_epoch_history(job_server, model_file, tmp_path, monkeypatch):
    from zdk.cli import main
    from zdk.jobs import Job
    from zdk.trainers import ADAG

    token = job_server.tokens["alice"]
    trainer = ADAG(digits_mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=100, batch_size=32)
    # No epoch improves val_loss by 100: EarlyStopping stops at the end of epoch 1 (patience 1).
    job = Job(token, "early", "digits.parquet", 1, 2, trainer, validation=0.2, callbacks=[
        {"class": "EarlyStopping", "arguments": {"monitor": "val_loss", "patience": 1, "min_delta": 100.0}},
        {"class": "CSVLogger"}])
    job_id = job.send(job_server.url)
    record = job.wait_completion(timeout=120)
    epochs = job.get_epoch_history()
    assert [e["epoch"] for e in epochs] == [0, 1], epochs
    assert all(e["val_loss"] > 0 and e["loss"] > 0 and 0 <= e["val_accuracy"] <= 1 for e in epochs)
    assert record["has_epochs"] and record["has_csv_log"]
    assert record["progress"]["epoch_logs"] == epochs and record["progress"]["val_loss"] == epochs[-1]["val_loss"]
    # The workers run ahead of the driver's decision (an epoch is a few steps here), then stop: not at epoch 99.
    assert max(r["epoch"] for r in job.get_history()) < 99
    table = job.client.epochs(job_id, "csv").splitlines()
    assert table[0].split(",")[0] == "epoch" and "val_loss" in table[0].split(",") and len(table) == 3
    logged = job.client.csv_log(job_id).splitlines()
    assert "val_loss" in logged[0] and len(logged) == 3  # the CSVLogger's own file, from the job's folder
    monkeypatch.setenv("ZDK_TOKEN", token)
    assert main(["job", "fetch", job_id, "--url", job_server.url, "--output", str(tmp_path / "out")]) == 0
    fetched = sorted(os.listdir(tmp_path / "out"))
    assert {f"{job_id}-epochs.json", f"{job_id}-epochs.csv", f"{job_id}-csvlogger.csv"} <= set(fetched), fetched
    assert json.loads((tmp_path / "out" / f"{job_id}-epochs.json").read_text()) == epochs
    unwatched = get(job_server, token, "/api/jobs").json()["jobs"]
    assert all("epoch_logs" not in (j["progress"] or {}) for j in unwatched)  # listings stay small


def test_bad_validation_and_callbacks_are_refused_naming_the_field(job_server, model_file):
    alice = job_server.tokens["alice"]
    state = job_server.config.state_dir
    jobs_before = sorted(os.listdir(os.path.join(state, "jobs")))
    single = base_spec(num_workers=1)
    single["trainer"]["class"] = "SingleTrainer"
    cases = [
        (dict(base_spec(), callbacks=[{"class": "CSVLogger", "arguments": {"filename": "/tmp/steal.csv"}}]),
         "callbacks[0].arguments.filename", "chosen by the job server"),
        (dict(base_spec(), callbacks=[{"class": "EarlyStopping", "arguments": {"patiense": 1}}]),
         "callbacks[0].arguments.patiense", "not an argument of keras.callbacks.EarlyStopping"),
        (dict(base_spec(), callbacks=[{"class": "ReduceLROnPlateau", "arguments": {"factor": 2.0}}]),
         "callbacks[0].arguments", "factor"),
        (dict(base_spec(), validation=1.0), "validation", "fraction in (0, 1)"),
        (dict(base_spec(), validation={"path": "/etc/passwd"}), "validation.path", "must lie under"),
        (dict(base_spec(), validation={"path": "missing.parquet"}), "validation.path", "does not exist"),
        (dict(base_spec(), validation={"format": "csv", "path": "small.csv"}), "validation", "features"),
        (dict(single, validation=0.2), "validation", "needs an algorithm with a parameter server"),
    ]
    for spec, field, mention in cases:
        response = post(job_server, alice, spec, model_file)
        body = response.json()
        assert (response.status_code, body["field"]) == (400, field), (field, body)
        assert mention in body["error"], (field, body["error"])
    assert sorted(os.listdir(os.path.join(state, "jobs"))) == jobs_before


def test_a_jobs_shards_answer_only_its_own_workers(job_server, model_file):
    from zdk.errors import DeadlineExceeded
    from zdk.ps.client import PSClient

    alice = job_server.tokens["alice"]
    # Long enough to outlast the probes however fast its steps run; cancelled after them.
    job_id = post(job_server, alice, base_spec(num_epoch=500), model_file).json()["id"]
    poll_until(lambda: (get(job_server, alice, f"/api/jobs/{job_id}").json().get("progress") or {}).get("steps"),
               timeout=120, interval=0.1, what="the job to take steps")
    # The shards' endpoints are no secret (any local user lists listening ports); the job's log names them.
    log = get(job_server, alice, f"/api/jobs/{job_id}/logs").text
    endpoints = re.search(r"started \d+ shard\(s\) of adag: (.+)$", log, re.M).group(1).split(", ")
    assert all(e.startswith("tcp://127.0.0.1:") for e in endpoints), endpoints
    for register in (True, False):  # a worker that would commit, an observer that would pull or stop them
        with PSClient(endpoints, worker_id=7, timeout=0.5, tries=1) as stranger:
            with pytest.raises(DeadlineExceeded):
                stranger.hello(register=register)
    # The shard still listened after the probes, so it got them: CURVE refused the handshake.
    host, port = endpoints[0][len("tcp://"):].rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()
    assert get(job_server, alice, f"/api/jobs/{job_id}").json()["state"] == "running"  # the probes did not end it
    answer = requests.post(f"{job_server.url}/api/jobs/{job_id}/cancel",
                           headers={"Authorization": f"Bearer {alice}"}, timeout=30)
    assert answer.status_code == 200
    job = wait_state(job_server, alice, job_id, ("cancelled", "failed"), timeout=60)
    assert job["state"] == "cancelled", job["error"]


def test_tokens_and_isolation_between_users(job_server, model_file):
    alice, bob = job_server.tokens["alice"], job_server.tokens["bob"]
    created = post(job_server, alice, base_spec(num_epoch=1), model_file)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    answers = []
    for token in (None, "", "zdk_wrong", alice[:-1] + ("A" if alice[-1] != "A" else "B"), "Basic abc"):
        response = get(job_server, token, "/api/jobs")
        answers.append((response.status_code, response.text, response.headers.get("WWW-Authenticate")))
    assert len(set(answers)) == 1 and answers[0][0] == 401 and answers[0][2] == "Bearer"
    assert requests.post(f"{job_server.url}/api/jobs", timeout=10).status_code == 401
    assert get(job_server, bob, "/api/jobs").json()["jobs"] == []
    for path in ("", "/model", "/history", "/logs"):
        response = get(job_server, bob, f"/api/jobs/{job_id}{path}")
        assert response.status_code == 404 and response.json()["field"] == "id", path
    cancel = requests.post(f"{job_server.url}/api/jobs/{job_id}/cancel",
                           headers={"Authorization": f"Bearer {bob}"}, timeout=10)
    assert cancel.status_code == 404
    assert get(job_server, alice, f"/api/jobs/{job_id}").json()["owner"] == "alice"
    assert [j["id"] for j in get(job_server, alice, "/api/jobs").json()["jobs"]].count(job_id) == 1
    wait_state(job_server, alice, job_id, ("finished",))
    assert get(job_server, alice, f"/api/jobs/{job_id}/model").status_code == 200
    # A revoked token stops working at once.
    carol = job_server.store.create_token("carol")
    assert get(job_server, carol, "/api/whoami").json() == {"user": "carol"}
    job_server.store.revoke(user="carol")
    assert get(job_server, carol, "/api/whoami").status_code == 401


def _zip_without_config() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weights.h5", b"x")
    return buffer.getvalue()


def _lambda_model(tmp_path) -> bytes:
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(10)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    return path.read_bytes()


def _narrow_model(tmp_path) -> bytes:
    import keras

    path = tmp_path / "narrow.keras"
    keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, activation="softmax")]).save(path)
    return path.read_bytes()


def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(job_server, model_file, tmp_path):
    alice = job_server.tokens["alice"]
    state = job_server.config.state_dir
    jobs_before = sorted(os.listdir(os.path.join(state, "jobs")))
    records_before = len(job_server.store.jobs())

    def mutated(**changes):
        spec = base_spec()
        for key, value in changes.items():
            spec[key] = value
        return spec

    cases = [
        (mutated(trainer={"class": "Nope", "arguments": {}}), model_file, 400, "trainer.class", "Nope"),
        (mutated(trainer={"class": "Trainer", "arguments": {"algorithm": "nope", "loss": "mse"}}), model_file, 400,
         "trainer.arguments", "nope"),
        (base_spec(num_epoch="3"), model_file, 400, "trainer.arguments", "num_epoch"),
        (base_spec(learning_rate="fast"), model_file, 400, "trainer.arguments", "fast"),
        (base_spec(label_col="target"), model_file, 400, "trainer.arguments.label_col", "target"),
        (base_spec(worker_optimizer={"class_name": "os.system", "config": {}}), model_file, 400,
         "trainer.arguments.worker_optimizer", "os.system"),
        (base_spec(custom_modules=["os"]), model_file, 400, "trainer.arguments.custom_modules", "os"),
        (base_spec(parameter_server=["tcp://10.0.0.1:5000"]), model_file, 400, "trainer.arguments.parameter_server",
         "10.0.0.1"),
        (base_spec(num_workers=4), model_file, 400, "trainer.arguments.num_workers", "4"),
        (mutated(resources={"num_executors": 4, "num_processes": 2}), model_file, 400, "resources", "8 task slots"),
        (base_spec(), _narrow_model(tmp_path), 400, "trainer.arguments", "features"),
        (base_spec(), b"not a zip at all", 400, "model", "not a zip"),
        (base_spec(), _zip_without_config(), 400, "model", "config.json"),
        (base_spec(), _lambda_model(tmp_path), 400, "model", "could not be loaded"),
        (base_spec(), b"\0" * (3 * 2**20), 413, "model", "at most"),
        (base_spec(), None, 400, "model", "missing"),
        (None, model_file, 400, "spec", "missing"),
        (mutated(data={"path": "/etc/passwd"}), model_file, 400, "data.path", "/etc/passwd"),
        (mutated(data={"path": "../../etc"}), model_file, 400, "data.path", "../../etc"),
        (mutated(data={"path": "{digits.parquet,../../etc/passwd}"}), model_file, 400, "data.path", "glob"),
        (mutated(data={"path": "missing.parquet"}), model_file, 400, "data.path", "does not exist"),
        (mutated(data={"path": "not-parquet.parquet"}), model_file, 400, "data.path", "could not be read"),
        (mutated(data={"format": "csv", "path": "small.csv"}), model_file, 400, "trainer.arguments.features_col",
         "features"),
        (mutated(data={"table": "secrets"}), model_file, 400, "data.table", "secrets"),
        (b'{"name": "x", ', model_file, 400, "spec", "malformed JSON"),
        (mutated(transformers=[{"class": "OneHotTransformer", "arguments": {"output_dim": "ten"}}]), model_file,
         400, "transformers[0].arguments", "ten"),
        (mutated(transformers=[{"class": "Evil", "arguments": {}}]), model_file, 400, "transformers[0].class", "Evil"),
    ]
    for spec, model, status, field, mention in cases:
        response = post(job_server, alice, spec, model)
        body = response.json()
        assert (response.status_code, body["field"]) == (status, field), (field, response.status_code, body)
        assert mention in body["error"], (field, body["error"])
    assert requests.post(f"{job_server.url}/api/jobs", data=b"{}", timeout=10,
                         headers={"Authorization": f"Bearer {alice}", "Content-Type": "application/json"}
                         ).json()["field"] == "request"
    assert sorted(os.listdir(os.path.join(state, "jobs"))) == jobs_before
    assert os.listdir(os.path.join(state, "tmp")) == []
    assert len(job_server.store.jobs()) == records_before
    assert get(job_server, None, "/api/health").json() == {"ok": True}


def test_cancel_stops_the_spark_tasks_and_the_shards(job_server, model_file, spark):
    alice = job_server.tokens["alice"]
    response = post(job_server, alice, base_spec(num_epoch=500), model_file)
    job_id = response.json()["id"]
    poll_until(lambda: (get(job_server, alice, f"/api/jobs/{job_id}").json().get("progress") or {}).get("steps"),
               timeout=120, interval=0.2, what="the job to take steps")
    assert shard_processes()
    cancelled_at = time.monotonic()
    answer = requests.post(f"{job_server.url}/api/jobs/{job_id}/cancel",
                           headers={"Authorization": f"Bearer {alice}"}, timeout=30)
    assert answer.status_code == 200
    job = wait_state(job_server, alice, job_id, ("cancelled",), timeout=60)
    assert job["error"] == "cancelled by its owner"
    took = time.monotonic() - cancelled_at
    tracker = spark.sparkContext.statusTracker()
    assert tracker.getActiveStageIds() == [] and tracker.getActiveJobsIds() == [], took
    poll_until(lambda: not shard_processes(), timeout=10, what="the job's shards to exit")
    again = requests.post(f"{job_server.url}/api/jobs/{job_id}/cancel",
                          headers={"Authorization": f"Bearer {alice}"}, timeout=30)
    assert again.status_code == 409 and "cancelled" in again.json()["error"]


def test_a_restart_keeps_finished_jobs_runs_queued_ones_and_resumes_running_ones(spark, job_data, model_file,
                                                                                 tmp_path):
    from zdk.jobs import JobClient, load_model_bytes
    from zdk.service.app import JobServer, ServeConfig
    from zdk.service.build import Policy

    config = ServeConfig(state_dir=str(tmp_path / "state"), port=0, policy=Policy(data_roots=(str(job_data),)))
    with JobServer(config, spark=lambda: spark) as first:
        token = first.store.create_token("alice")
        client = JobClient(first.url, token)
        done = client.submit(base_spec(num_epoch=3), model_file)["id"]
        assert client.wait(done, timeout=120)["state"] == "finished"
        trained = client.model_bytes(done)
        # 30 epochs of 8-row steps: about 8 s, so the stop below lands mid-run (at 32 rows, a CI
        # run once finished every epoch before it, leaving the resumed run nothing to train).
        running = client.submit(base_spec(num_epoch=30, batch_size=8), model_file)["id"]
        queued = client.submit(base_spec(num_epoch=1), model_file)["id"]
        poll_until(lambda: (client.job(running).get("progress") or {}).get("steps"), timeout=120, interval=0.2,
                   what="the long job to take steps")
        assert client.job(queued)["state"] == "queued"
    assert not shard_processes()
    with JobServer(config, spark=lambda: spark) as second:
        client = JobClient(second.url, token)
        assert client.model_bytes(done) == trained
        model, initial = load_model_bytes(trained), load_model_bytes(model_file)
        assert not np.allclose(model.get_weights()[0], initial.get_weights()[0])
        assert len(client.history(done)) > 0
        resumed = client.wait(running, timeout=180)
        assert resumed["state"] == "finished" and resumed["resumes"] == 1, resumed["error"]
        assert "resumes from its checkpoint" in client.logs(running)
        assert client.wait(queued, timeout=120)["state"] == "finished"
        # Resumed, it trained only the epochs not finished before the stop.
        epochs = {r["epoch"] for r in client.history(running)}
        assert epochs, f"the resumed run trained no epoch: {resumed}"
        assert min(epochs) > 0 and max(epochs) == 29
        assert [j["id"] for j in client.jobs()] == [done, running, queued]


def test_a_job_with_a_checkpoint_is_requeued_to_resume(tmp_path):
    from zdk.service.artifacts import JobFolder
    from zdk.service.build import Policy
    from zdk.service.cluster import Cluster
    from zdk.service.scheduler import Scheduler
    from zdk.service.store import Store

    store = Store(str(tmp_path / "zdk.db"))
    job = store.add_job(owner="alice", name="x", spec=base_spec(num_shards=2), directory=str(tmp_path), job_id="j2")
    store.transition(job.id, ("queued",), "running")
    os.makedirs(JobFolder(directory=job.directory).checkpoints)
    (tmp_path / "checkpoints" / "shard-000-of-002.npz").write_bytes(b"")
    scheduler = Scheduler(store, cluster=Cluster(lambda: None), policy=Policy(), max_jobs=1)
    scheduler.recover()
    assert store.job("j2").state == "interrupted"  # one shard of two has a checkpoint: cannot resume
    store.transition("j2", ("interrupted",), "running")
    (tmp_path / "checkpoints" / "shard-001-of-002.npz").write_bytes(b"")
    scheduler.recover()
    after = store.job("j2")
    assert after.state == "queued" and after.resumes == 1
    store.close()


def test_zdk_job_and_zdk_serve_token_commands(job_server, model_file, tmp_path):
    env = {**os.environ, "ZDK_URL": job_server.url, "ZDK_TOKEN": job_server.tokens["alice"]}

    def zdk(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "zdk.cli", *args], capture_output=True, text=True, env=env,
                                timeout=180)
        assert not check or result.returncode == 0, result.stderr
        return result

    (tmp_path / "spec.json").write_text(json.dumps(base_spec(num_epoch=1)))
    (tmp_path / "m.keras").write_bytes(model_file)
    # On a terminal (a pseudo-terminal from util-linux `script`), --wait shows a progress bar.
    command = shlex.join([sys.executable, "-m", "zdk.cli", "job", "submit", str(tmp_path / "spec.json"),
                          str(tmp_path / "m.keras"), "--wait"])
    screen = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, env=env,
                            timeout=180)
    assert screen.returncode == 0, screen.stdout[-2000:]
    job_id = screen.stdout.split()[0]
    assert f"zdk job {job_id}" in screen.stdout and "steps" in screen.stdout and "samples/s" in screen.stdout
    assert f"zdk job {job_id}: finished" in screen.stdout
    assert job_id in zdk("job", "list").stdout
    assert json.loads(zdk("job", "status", job_id).stdout)["state"] == "finished"
    files = zdk("job", "fetch", job_id, "--output", str(tmp_path / "out")).stdout.split()
    assert sorted(os.path.basename(f) for f in files) == sorted(
        [f"{job_id}.keras", f"{job_id}-history.json", f"{job_id}-history.csv", f"{job_id}.log"])
    assert zipfile.is_zipfile(tmp_path / "out" / f"{job_id}.keras")
    refused = zdk("job", "status", "nosuchjob", check=False)
    assert refused.returncode == 1 and "404" in refused.stderr and "`id`" in refused.stderr
    (tmp_path / "bad.json").write_text(json.dumps(base_spec(num_epoch=0)))
    bad = zdk("job", "submit", str(tmp_path / "bad.json"), str(tmp_path / "m.keras"), check=False)
    assert bad.returncode == 1 and "num_epoch" in bad.stderr

    state = str(tmp_path / "state")
    token = zdk("serve", "token", "create", "--user", "dave", "--state-dir", state).stdout.strip()
    assert token.startswith("zdk_")
    listing = zdk("serve", "token", "list", "--state-dir", state).stdout
    assert "dave" in listing and token not in listing
    assert "revoked 1 token" in zdk("serve", "token", "revoke", "--user", "dave", "--state-dir", state).stdout
    assert zdk("serve", "token", "revoke", "--user", "dave", "--state-dir", state, check=False).returncode == 1


def test_tls(spark, job_data, tmp_path):
    from zdk.errors import JobError
    from zdk.jobs import JobClient
    from zdk.service.app import JobServer, ServeConfig
    from zdk.service.build import Policy

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    config = ServeConfig(state_dir=str(tmp_path / "state"), port=0, policy=Policy(data_roots=(str(job_data),)),
                         tls_cert=str(cert), tls_key=str(key))
    with JobServer(config, spark=lambda: spark) as server:
        assert server.url.startswith("https://")
        token = server.store.create_token("alice")
        assert JobClient(server.url, token, verify=str(cert)).jobs() == []
        with pytest.raises(JobError, match="cannot reach"):
            JobClient(server.url, token).jobs()  # an unknown CA is refused
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url.replace("https", "http") + "/api/health", timeout=10)


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _stopped(server: subprocess.Popen, errors) -> int:
    """``server``'s exit code once it stops. Its stop may wait 60 s for a Spark start under way
    (Cluster.stop) and its exit 60 s for the JVM's class archive (cds.DUMP_WAIT); past those, its
    threads' stacks (SIGUSR1) go into the failure."""
    try:
        return server.wait(150)
    except subprocess.TimeoutExpired:
        server.send_signal(signal.SIGUSR1)
        time.sleep(2)
        server.kill()
        server.wait()
        pytest.fail(f"zdk serve did not stop within 150 s of SIGTERM; its stderr:\n{errors.read_text()[-12000:]}")


def test_zdk_serve_starts_answers_and_stops_on_sigterm_leaving_no_process(job_data, tmp_path):
    from conftest import contained_temp_env, pid_alive

    state = tmp_path / "state"
    token = subprocess.run([sys.executable, "-m", "zdk.cli", "serve", "token", "create", "--user", "erin",
                            "--state-dir", str(state)], capture_output=True, text=True, check=True).stdout.strip()
    errors = tmp_path / "serve.err"
    with errors.open("w") as err:  # the child writes to its own copy
        server = subprocess.Popen([sys.executable, "-m", "zdk.cli", "serve", "--state-dir", str(state), "--port", "0",
                                   "--data-root", str(job_data)], stdout=subprocess.PIPE, stderr=err,
                                  text=True, env=contained_temp_env(tmp_path / "tmp"))  # SIGTERM may come mid-start
    try:
        url = None
        for line in server.stdout:
            if line.startswith("zdk serve: listening on "):
                url = line.split()[4].rstrip(";")
                break
        assert url, errors.read_text()
        assert requests.get(f"{url}/api/health", timeout=10).json() == {"ok": True}
        assert requests.get(f"{url}/api/whoami", headers={"Authorization": f"Bearer {token}"},
                            timeout=10).json() == {"user": "erin"}
        assert "<title>zdk jobs</title>" in requests.get(url + "/", timeout=10).text
        # Spark (a JVM child) starts in the background; wait for it so the test sees it stop too.
        children = poll_until(lambda: _children(server.pid), timeout=60, what="the Spark JVM to start")
    finally:
        server.terminate()
        code = _stopped(server, errors)
    assert code == 0, errors.read_text()[-4000:]
    poll_until(lambda: not any(pid_alive(p) for p in children), timeout=30, what="Spark's JVM to exit")
    # The server stopped the session it started: pyspark's connection folder (the gateway's
    # secret), Spark's directories and the zygote's are gone with it.
    left = poll_until(lambda: not [e for e in os.listdir(tmp_path / "tmp")
                                   if e.startswith(("tmp", "spark-", "blockmgr-", "zdk-zygote-"))],
                      timeout=30, what="the server's temporary files to be removed")
    assert left
