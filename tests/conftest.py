"""Shared fixtures: shard processes that always stop, raw sockets that always close, polling helpers."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator, TypeVar

import numpy as np
import pytest
import zmq

from zdk.ps.launcher import ShardGroup, start_shards

T = TypeVar("T")


@pytest.fixture(scope="session", autouse=True)
def no_failure_reports_left() -> Iterator[None]:
    """Removes the failure reports (``zdk-report-*`` folders) that the tests' deliberately failed
    ``train()`` calls, in this process and in the scripts tests run, leave in the temp directory."""
    pattern = os.path.join(tempfile.gettempdir(), "zdk-report-*")
    before = set(glob.glob(pattern))
    yield
    for path in set(glob.glob(pattern)) - before:
        shutil.rmtree(path, ignore_errors=True)

# Every JVM of a test session (the shared Spark, and those of the scripts tests run) lives seconds to
# minutes on 2 cores: C1-compiled code and the serial collector cost less CPU there than the server
# JIT warming up (about 15% of a whole example script, measured). Semantics do not change.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


def contained_temp_env(directory, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process a test kills on purpose (or may stop mid-start): the temp files of
    it and of the JVMs below it go to ``directory`` (a test's ``tmp_path``) instead of /tmp.

    A SIGKILLed process runs no exit handler, so what it put in the temp directory stays: Python's
    (``TMPDIR``: pyspark's ``tmpXXXXXXXX`` connection folder, zdk's ``zdk-zygote-*``) and the JVM's
    (``java.io.tmpdir``: Spark's ``spark-*``, ``blockmgr-*`` and ``artifacts-*`` folders, and the
    native libraries snappy-java and lz4-java extract there, ``snappy-*-libsnappyjava.so`` and
    ``liblz4-java-*.so(.lck)``, which only a clean JVM exit deletes). Under ``tmp_path`` they are
    pytest's to remove, also when the test fails or is interrupted."""
    path = os.fspath(directory)
    os.makedirs(path, exist_ok=True)
    env = dict(os.environ if base is None else base)
    env["TMPDIR"] = path
    env["JAVA_TOOL_OPTIONS"] = f"{env.get('JAVA_TOOL_OPTIONS', '')} -Djava.io.tmpdir={path}".strip()
    return env


def poll_until(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Returns the first truthy value of ``predicate()``, failing the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def assert_logged(capfd, text: str, timeout: float = 10.0) -> None:
    """Polls the shards' stderr (inherited from the test process) until ``text`` appears."""
    seen: list[str] = []

    def logged() -> bool:
        seen.append(capfd.readouterr().err)
        return text in "".join(seen)

    poll_until(logged, timeout=timeout, what=f"a shard to log {text!r}")


def registered_client(group: ShardGroup, worker: int):
    """A PSClient of ``group`` that has said hello as ``worker`` (close it, or use ``with``)."""
    from zdk.ps.client import PSClient

    client = PSClient(group.endpoints, worker_id=worker, timeout=10)
    client.hello()
    return client


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def shards() -> Iterator[Callable[..., ShardGroup]]:
    """A factory of shard groups; every group it made is stopped at teardown."""
    groups: list[ShardGroup] = []

    def make(**kwargs) -> ShardGroup:
        kwargs.setdefault("startup_timeout", 30.0)
        group = start_shards(**kwargs)
        groups.append(group)
        return group

    yield make
    for group in groups:
        group.stop()
    for group in groups:
        for pid in group.pids:
            assert not pid_alive(pid), f"shard pid {pid} outlived its group"


@pytest.fixture
def raw_dealer() -> Iterator[Callable[[str], zmq.Socket]]:
    """Plain DEALER sockets for speaking (bad) protocol by hand; closed at teardown."""
    sockets: list[zmq.Socket] = []

    def make(endpoint: str) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close(linger=0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session for the whole test session."""
    pytest.importorskip("pyspark")
    from zdk.driver.session import get_session

    session = get_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def digits():
    """sklearn's 8×8 digits (offline), scaled to [0, 1], with a held-out test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return train_test_split(x, data.target.astype(np.int64), test_size=0.25, random_state=0)


@pytest.fixture(scope="session")
def digits_df(spark, digits):
    from pyspark.ml.linalg import Vectors

    x_train, _, y_train, _ = digits
    df = spark.createDataFrame([(Vectors.dense(x.tolist()), int(y)) for x, y in zip(x_train, y_train)],
                               ["features", "label"]).cache()
    df.count()
    return df


@pytest.fixture
def ps_process():
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[subprocess.Popen, list[str]]:
        proc = subprocess.Popen([sys.executable, "-m", "zdk.cli", "ps", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        endpoints = []
        for line in proc.stdout:
            match = re.match(r"shard \d+: (\S+)", line)
            if match:
                endpoints.append(match.group(1))
            if line.startswith("zdk ps: serving"):
                return proc, endpoints
        pytest.fail(f"zdk ps exited early: {proc.wait()} {proc.stderr.read()}")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture(scope="session")
def job_data(spark, digits, tmp_path_factory):
    """A data root for the job server holding the digits training split as Parquet and CSV."""
    import pandas as pd

    x_train, _, y_train, _ = digits
    root = tmp_path_factory.mktemp("job-data")
    frame = pd.DataFrame({"features": list(x_train), "label": y_train})
    spark.createDataFrame(frame).coalesce(2).write.parquet(str(root / "digits.parquet"))
    pd.DataFrame({"a": [1.0, 2.0], "b": [0, 1]}).to_csv(root / "small.csv", index=False)
    (root / "not-parquet.parquet").write_text("this is not parquet")
    return root


@pytest.fixture(scope="module")
def job_server(spark, job_data, tmp_path_factory):
    """A ``zdk serve`` on a free loopback port with two users; stopped at the module's end."""
    from zdk.service.app import JobServer, ServeConfig
    from zdk.service.build import Policy

    state = tmp_path_factory.mktemp("serve-state")
    config = ServeConfig(state_dir=str(state), port=0,
                         policy=Policy(data_roots=(str(job_data),), max_model_bytes=2 * 2**20))
    server = JobServer(config, spark=lambda: spark)
    server.start()
    server.tokens = {user: server.store.create_token(user) for user in ("alice", "bob")}  # type: ignore[attr-defined]
    yield server
    server.stop()


def digits_mlp():
    """A small softmax MLP for the 8×8 digits."""
    import keras

    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])
