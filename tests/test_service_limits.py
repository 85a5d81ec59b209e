"""What a token holder can ask of ``zdk serve`` is bounded, on a real server (Spark, SQLite,
sockets, the loader process): hostile models cost a refused request, admissions are bounded
without holding up sign-in, caps and the queue refuse naming their field or limit, ended jobs
are deleted and expire, and ``zdk job`` takes its token from the environment or a prompt."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import requests

from conftest import digits_mlp, poll_until

pytestmark = pytest.mark.spark

USERS = ("alice", "bob", "carol", "dave")


def spec(**arguments) -> dict:
    data = arguments.pop("data", {"format": "parquet", "path": "digits.parquet"})
    args = {"worker_optimizer": "adam", "loss": "sparse_categorical_crossentropy", "num_workers": 2,
            "num_epoch": 1, "batch_size": 32, **arguments}
    return {"name": "digits", "trainer": {"class": "ADAG", "arguments": args}, "data": data,
            "resources": {"num_executors": 1, "num_processes": 2}}


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    """A data root with a CSV whose schema takes Spark seconds to infer: a slow admission."""
    import pandas as pd

    root = tmp_path_factory.mktemp("slow-data")
    pd.DataFrame(np.random.default_rng(0).random((300_000, 4)), columns=list("abcd")).to_csv(root / "slow.csv",
                                                                                            index=False)
    return root


@pytest.fixture(scope="module")
def server(spark, job_data, slow_data, tmp_path_factory):
    """A ``zdk serve`` with small caps: 2 admissions at once (1 per user), 1 job queued per user,
    a 1 M parameter and 512 MB loading budget."""
    from zdk.service.app import JobServer, ServeConfig
    from zdk.service.policy import Policy

    policy = Policy(data_roots=(str(job_data), str(slow_data)), max_model_bytes=2 * 2**20, max_model_params=1_000_000,
                    model_memory_bytes=512 * 2**20, max_shards=2, max_epochs=50, max_batch_size=256, max_timeout=130)
    config = ServeConfig(state_dir=str(tmp_path_factory.mktemp("limits-state")), port=0, policy=policy,
                         max_admissions=2, max_admissions_per_user=1, max_queued_per_user=1)
    with JobServer(config, spark=lambda: spark) as running:
        running.tokens = {user: running.store.create_token(user) for user in USERS}  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "m.keras"
    digits_mlp().save(path)
    return path.read_bytes()


def post(server, user: str, body: dict, model: bytes) -> requests.Response:
    return requests.post(f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {server.tokens[user]}"},
                         files={"spec": ("spec.json", json.dumps(body)), "model": ("m.keras", model)}, timeout=180)


def call(server, user: str, method: str, path: str) -> requests.Response:
    return requests.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {server.tokens[user]}"},
                            timeout=30)


def wait_state(server, user: str, job_id: str, states: tuple[str, ...], timeout: float = 120.0) -> dict:
    return poll_until(lambda: (j := call(server, user, "GET", f"/api/jobs/{job_id}").json())["state"] in states and j,
                      timeout=timeout, interval=0.2, what=f"job {job_id} to reach {states}")


def rss() -> int:
    """This process's resident memory, in bytes: the server runs in it."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def edited(model: bytes, tmp_path, name: str, edit) -> bytes:
    """``model`` with its config.json changed by ``edit`` (a hostile upload, written by hand)."""
    source = zipfile.ZipFile(_write(tmp_path, "source.keras", model))
    config = json.loads(source.read("config.json"))
    edit(config)
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        for info in source.infolist():
            archive.writestr(info.filename, json.dumps(config) if info.filename == "config.json"
                             else source.read(info.filename))
    return path.read_bytes()


def _write(tmp_path, name: str, data: bytes):
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def test_caps_refuse_a_job_naming_the_field(server, model_file):
    cases = [(dict(num_shards=3), "num_shards", "at most 2"), (dict(num_epoch=51), "num_epoch", "at most 50"),
             (dict(batch_size=257), "batch_size", "at most 256"), (dict(timeout=131.0), "timeout", "at most 130"),
             (dict(num_workers=1, parallelism_factor=4), "parallelism_factor", "num_workers × parallelism_factor = 4")]
    for arguments, field, mention in cases:
        response = post(server, "alice", spec(**arguments), model_file)
        body = response.json()
        assert (response.status_code, body["field"]) == (400, f"trainer.arguments.{field}"), body
        assert mention in body["error"], body["error"]
    assert server.store.jobs() == []


def test_hostile_models_cost_a_refused_request_never_the_server(server, model_file, tmp_path):
    import keras

    assert post(server, "bob", spec(num_epoch=0), model_file).status_code == 400  # warm: loader started, Keras used
    before = rss()

    def forty_gigabytes(config):  # Dense(100000) on a 100000-wide input, in 1 KB of JSON
        input_layer, dense = config["config"]["layers"][0], config["config"]["layers"][1]
        input_layer["config"]["batch_shape"] = [None, 100_000]
        dense["config"]["units"] = 100_000
        dense["build_config"] = {"input_shape": [None, 100_000]}

    refused = post(server, "bob", spec(), edited(model_file, tmp_path, "huge.keras", forty_gigabytes))
    assert (refused.status_code, refused.json()["field"]) == (400, "model"), refused.text
    assert re.search(r"about 10,000,1\d\d,\d{3} parameters \(estimated from its config.json, before loading\); "
                     r"the server allows 1,000,000", refused.json()["error"]), refused.json()["error"]

    # A width no config field states (RepeatVector of 1000, flattened, into Dense(200): 800 MB)
    # passes the estimate; the loader box's memory limit stops it.
    small = keras.Sequential([keras.Input((10,)), keras.layers.RepeatVector(10), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    small.save(tmp_path / "small.keras")

    def hidden_width(config):
        layers = config["config"]["layers"]
        layers[0]["config"]["batch_shape"] = [None, 1000]
        layers[1]["config"]["n"] = 1000
        layers[3]["config"]["units"] = 200
        config["config"].pop("build_input_shape", None)
        for layer in layers[1:]:
            layer.pop("build_config", None)

    hidden = edited((tmp_path / "small.keras").read_bytes(), tmp_path, "hidden.keras", hidden_width)
    refused = post(server, "bob", spec(), hidden)
    assert (refused.status_code, refused.json()["field"]) == (400, "model"), refused.text
    assert "needs more memory to load than the server allows (512 MB" in refused.json()["error"]

    bomb = tmp_path / "bomb.keras"  # 200 members of 1 MB of zeros: 0.2 MB zipped, 200 MB unpacked
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", zipfile.ZipFile(_write(tmp_path, "m.keras", model_file)).read("config.json"))
        for k in range(200):
            archive.writestr(f"assets/zeros-{k}", bytes(2**20))
    refused = post(server, "bob", spec(), bomb.read_bytes())
    assert (refused.status_code, refused.json()["field"]) == (413, "model"), refused.text
    assert "must unpack to at most 8388608 bytes" in refused.json()["error"]

    assert rss() - before < 64 * 2**20, (before, rss())
    assert call(server, "bob", "GET", "/api/whoami").json() == {"user": "bob"}
    assert os.listdir(os.path.join(server.config.state_dir, "tmp")) == []

    # A normal model is still admitted, trains, and its owner deletes it with zdk job delete.
    admitted = post(server, "bob", spec(), model_file)
    assert admitted.status_code == 201, admitted.text
    job = wait_state(server, "bob", admitted.json()["id"], ("finished",))
    folder = server.store.job(job["id"]).directory
    assert os.path.isdir(folder)
    env = {**os.environ, "ZDK_URL": server.url, "ZDK_TOKEN": server.tokens["bob"]}
    result = subprocess.run([sys.executable, "-m", "zdk.cli", "job", "delete", job["id"]], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"id": job["id"], "deleted": True}
    assert call(server, "bob", "GET", f"/api/jobs/{job['id']}").status_code == 404 and not os.path.exists(folder)


def test_an_admission_flood_is_bounded_and_never_holds_up_sign_in(server, model_file, slow_data):
    slow = spec(data={"format": "csv", "path": str(slow_data / "slow.csv")})  # a schema scan of seconds, then a 400
    answers: list[requests.Response] = []
    submitters = [threading.Thread(target=lambda u=user: answers.append(post(server, u, slow, model_file)))
                  for user in ("alice", "bob", "carol") for _ in range(3)]
    done = threading.Event()
    probes: list[tuple[float, int]] = []

    def flood() -> None:
        for thread in submitters:
            thread.start()
        for thread in submitters:
            thread.join()
        done.set()

    threading.Thread(target=flood).start()
    while not done.is_set():
        started = time.monotonic()
        assert call(server, "dave", "GET", "/api/whoami").json() == {"user": "dave"}
        probes.append((time.monotonic() - started, server.api.gate.in_flight()))
        done.wait(0.05)
    statuses = sorted(a.status_code for a in answers)
    assert len(statuses) == 9 and set(statuses) <= {400, 429, 503}, statuses
    assert 429 in statuses and 503 in statuses, statuses
    for answer in answers:
        if answer.status_code in (429, 503):
            assert answer.headers["Retry-After"] == "5" and answer.json()["error"]
        else:
            assert answer.json()["field"] == "trainer.arguments.features_col", answer.text
    assert any(flying == 2 for _, flying in probes), probes  # sign-in was asked while both places were taken
    assert max(took for took, _ in probes) < 1.0, max(probes)
    assert server.api.gate.in_flight() == 0


def test_the_queue_per_user_and_deleting_a_job(server, model_file):
    first = post(server, "carol", spec(num_epoch=50, batch_size=4), model_file)  # still running when cancelled
    assert first.status_code == 201, first.text
    job_id = first.json()["id"]
    second = post(server, "carol", spec(), model_file)
    assert second.status_code == 429 and second.headers["Retry-After"] == "5"
    assert "1 jobs queued or running" in second.json()["error"] and "--max-queued-per-user" in second.json()["error"]
    running = call(server, "carol", "DELETE", f"/api/jobs/{job_id}")
    assert running.status_code == 409 and running.json()["field"] == "id" and "cancel it first" in running.text
    assert call(server, "alice", "DELETE", f"/api/jobs/{job_id}").status_code == 404  # not hers
    assert call(server, "carol", "POST", f"/api/jobs/{job_id}/cancel").status_code == 200
    wait_state(server, "carol", job_id, ("cancelled",))
    folder = server.store.job(job_id).directory
    deleted = call(server, "carol", "DELETE", f"/api/jobs/{job_id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": job_id, "deleted": True}
    assert not os.path.exists(folder) and server.store.job(job_id) is None
    assert call(server, "carol", "GET", f"/api/jobs/{job_id}").status_code == 404
    assert call(server, "carol", "DELETE", f"/api/jobs/{job_id}").status_code == 404


def _zdk_on_a_terminal(env: dict, answer: str, *args: str) -> tuple[int, str]:
    """Runs ``zdk`` on a pseudo-terminal, typing ``answer`` once it asks for the token."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "zdk.cli", *args], env)
    seen, typed, deadline = b"", False, time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal: it exited
            break
        if not chunk:
            break
        seen += chunk
        if not typed and b"token: " in seen:
            os.write(fd, answer.encode() + b"\n")
            typed = True
    os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), seen.decode(errors="replace")


def test_zdk_job_takes_the_token_from_the_environment_or_a_prompt_never_a_flag(server):
    env = {k: v for k, v in os.environ.items() if k != "ZDK_TOKEN"}
    env["ZDK_URL"] = server.url
    flag = subprocess.run([sys.executable, "-m", "zdk.cli", "job", "list", "--token", server.tokens["dave"]],
                          capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert flag.returncode == 1 and "`--token` was removed" in flag.stderr and "/proc" in flag.stderr
    missing = subprocess.run([sys.executable, "-m", "zdk.cli", "job", "list"], capture_output=True, text=True,
                             env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert missing.returncode == 1 and "`token` is required: set ZDK_TOKEN" in missing.stderr
    code, screen = _zdk_on_a_terminal(env, server.tokens["dave"], "job", "list")
    assert code == 0, screen
    assert "zdk job: token:" in screen and server.tokens["dave"] not in screen  # asked, and not echoed
    assert "id" in screen and "state" in screen


def test_ended_jobs_expire_after_the_retention(tmp_path):
    from zdk.service.app import JobServer, ServeConfig
    from zdk.service.artifacts import StateDir
    from zdk.service.retention import Retention
    from zdk.service.store import Store

    state = StateDir(directory=str(tmp_path / "state"))
    state.create()
    store = Store(state.database)
    now = time.time()

    def ended(job_id: str, days_ago: float, final: str = "finished") -> str:
        folder = state.job(job_id)
        os.makedirs(folder.directory)
        with open(folder.log, "w") as fh:
            fh.write("trained\n")
        store.add_job(owner="alice", name=job_id, spec=spec(), directory=folder.directory, job_id=job_id)
        store.transition(job_id, ("queued",), final, finished=now - days_ago * 86400)
        return folder.directory

    old, old_failed, recent = ended("old", 3), ended("oldfailed", 2.5, "failed"), ended("recent", 0.5)
    store.close()
    config = ServeConfig(state_dir=state.directory, port=0, retention_days=1)
    with JobServer(config, spark=lambda: None) as server:
        poll_until(lambda: server.store.job("old") is None and server.store.job("oldfailed") is None,
                   what="the expired jobs to be removed at start")
        assert not os.path.exists(old) and not os.path.exists(old_failed)
        assert server.store.job("recent") is not None and os.path.exists(recent)
        # Checked periodically: a sweep every 0.05 s removes what expires later.
        sweeper = Retention(server.store, state, days=0.25, every=0.05)
        sweeper.start()
        try:
            poll_until(lambda: server.store.job("recent") is None, what="the periodic sweep")
        finally:
            sweeper.stop()
        assert not os.path.exists(recent)
