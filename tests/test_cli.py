"""The `zdk` console script, run as a user would run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import pid_alive, poll_until


def zdk(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zdk.cli", *args], capture_output=True, text=True, timeout=60,
                          **kwargs)


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    pytest.skip("no two consecutive free loopback ports")


def shard_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "zdk.ps.server"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_ps_start_status_and_sigint_stop_leave_no_process(ps_process):
    before = shard_pids()
    port = free_port_pair()
    proc, endpoints = ps_process("--shards", "2", "--bind", f"tcp://127.0.0.1:{port}", "--size", "1000",
                                 "--algorithm", "adag", "--params", '{"eta": 0.001}')
    assert endpoints == [f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"]
    spawned = shard_pids() - before
    assert len(spawned) == 2

    status = zdk("ps", "status", *endpoints)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split()[:4] == ["shard", "endpoint", "range", "version"]
    assert lines[2].split()[:3] == ["0", endpoints[0], "0:500"]
    assert lines[3].split()[:3] == ["1", endpoints[1], "500:1000"]

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    poll_until(lambda: not any(pid_alive(p) for p in spawned), what="shards to stop")


def test_ps_sigterm_stops_every_shard(ps_process):
    before = shard_pids()
    proc, endpoints = ps_process("--shards", "3", "--bind", "tcp://127.0.0.1:0", "--size", "30")
    assert len(endpoints) == 3
    spawned = shard_pids() - before
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    poll_until(lambda: not any(pid_alive(p) for p in spawned), what="shards to stop")


def test_ps_stop_action_shuts_shards_down(ps_process):
    proc, endpoints = ps_process("--shards", "2", "--bind", "tcp://127.0.0.1:0", "--size", "30")
    result = zdk("ps", "stop", *endpoints)
    assert result.returncode == 0, result.stderr
    assert proc.wait(timeout=20) == 0  # the launcher notices its shards exited


def test_ps_requires_model_or_size():
    result = zdk("ps", "--shards", "1")
    assert result.returncode == 2 and "--model FILE.keras or --size N" in result.stderr


def test_ps_rejects_unknown_algorithm_listing_the_available_ones():
    result = zdk("ps", "--size", "10", "--algorithm", "nope", "--bind", "tcp://127.0.0.1:0")
    assert result.returncode == 1
    assert "Could not interpret algorithm: 'nope'" in result.stderr and "downpour" in result.stderr


def test_status_of_a_dead_endpoint_fails_with_a_deadline_naming_it():
    result = zdk("ps", "status", "tcp://127.0.0.1:9", "--timeout", "0.5")
    assert result.returncode == 1 and "tcp://127.0.0.1:9" in result.stderr and "`hello`" in result.stderr


def test_algorithms_lists_every_builtin():
    result = zdk("algorithms")
    names = {line.split()[0] for line in result.stdout.splitlines()[2:]}
    assert {"downpour", "agn", "adag", "dynsgd", "aeasgd", "eamsgd", "averaging", "ensemble", "sequential"} <= names


def test_every_flag_has_help_with_a_default():
    result = zdk("ps", "--help")
    for flag in ("--shards", "--bind", "--model", "--size", "--algorithm", "--checkpoint-dir"):
        assert flag in result.stdout
    assert result.stdout.count("(default:") >= 8


def test_ps_model_option_starts_the_center_at_the_model_weights(ps_process, tmp_path):
    import numpy as np

    keras = pytest.importorskip("keras")
    from zdk.ps.client import PSClient
    from zdk.ps.layout import FlatLayout

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    weights = model.get_weights()
    proc, endpoints = ps_process("--shards", "2", "--bind", "tcp://127.0.0.1:0", "--model", path)
    with PSClient(endpoints, worker_id=1) as client:
        client.hello()
        np.testing.assert_array_equal(client.pull(), FlatLayout.of(weights).flatten(weights))


def test_ps_with_curve_keys_serves_only_clients_holding_them(ps_process, tmp_path):
    keys = str(tmp_path / "keys.json")
    proc, endpoints = ps_process("--shards", "2", "--bind", "tcp://127.0.0.1:0", "--size", "10", "--curve-keys", keys)
    assert oct(os.stat(keys).st_mode & 0o777) == "0o600"
    ok = zdk("ps", "status", *endpoints, "--curve-keys", keys)
    assert ok.returncode == 0 and ok.stdout.splitlines()[2].split()[0] == "0", ok.stderr
    refused = zdk("ps", "status", *endpoints, "--timeout", "1")
    assert refused.returncode == 1 and "`hello` got no reply" in refused.stderr
    assert zdk("ps", "stop", *endpoints, "--curve-keys", keys).returncode == 0
    assert proc.wait(timeout=20) == 0
