"""Shared fixtures: shard processes that always stop, raw sockets that always close, polling helpers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Callable, Iterator, TypeVar

import numpy as np
import pytest
import zmq

from zdk.ps.launcher import ShardGroup, start_shards

T = TypeVar("T")


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
    from zdk.runtime.session import get_session

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
