"""Real shard processes over real loopback sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from zdk.ps.client import PSClient
from zdk.errors import ConfigError, DeadlineExceeded, LaunchError, RemoteError, ShardRestarted
from zdk.ps.protocol import PROTOCOL_VERSION, Request, decode_reply

from conftest import assert_logged, pid_alive, poll_until

SESSION = 0x5E55


def test_pull_commit_round_trip_through_two_shards(shards, rng):
    start = rng.normal(size=1001).astype(np.float32)
    group = shards(num_shards=2, total_size=1001, initial=start)
    with PSClient(group.endpoints, worker_id=3, timeout=10) as client:
        info = client.hello()
        assert info.ranges == ((0, 501), (501, 1001)) and info.algorithm == "downpour"
        np.testing.assert_array_equal(client.pull(), start)
        delta = rng.normal(size=1001).astype(np.float32)
        receipt = client.commit(delta)
        assert receipt.applied and receipt.staleness == 0
        out = np.empty(1001, dtype=np.float32)
        assert client.pull(out) is out
        np.testing.assert_array_equal(out, start + delta)
        stats = client.stats()
        assert [s["updates"] for s in stats] == [1, 1] and all(s["connected"] == 1 for s in stats)


def test_four_shards_equal_one_shard_bit_for_bit(shards, rng):
    size = 10_007
    start = rng.normal(size=size).astype(np.float32)
    deltas = [rng.normal(size=size).astype(np.float32) for _ in range(6)]
    results = []
    for num_shards in (1, 4):
        group = shards(num_shards=num_shards, total_size=size, initial=start, algorithm="adag", chunk_bytes=4096)
        with PSClient(group.endpoints, worker_id=0) as a, PSClient(group.endpoints, worker_id=1) as b:
            a.hello(), b.hello()
            a.pull(), b.pull()
            for i, delta in enumerate(deltas):
                (a if i % 2 else b).commit(delta)
                if i % 3 == 0:
                    a.pull()
            results.append(a.pull())
    assert results[0].tobytes() == results[1].tobytes()


def test_retried_commit_over_the_wire_is_applied_once(shards, raw_dealer):
    group = shards(num_shards=1, total_size=4, initial=np.zeros(4, np.float32))
    sock = raw_dealer(group.endpoints[0])
    sock.send(Request(op="hello", rid=1, shard=0, worker=1, session=SESSION).encode())
    decode_reply(sock.recv())
    commit = Request(op="commit", base=0, rid=7, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(16,)).encode()
    payload = np.ones(4, np.float32).tobytes()
    sock.send_multipart([commit, payload])
    sock.send_multipart([commit, payload])  # the retry, as after a lost reply
    first, second = decode_reply(sock.recv()), decode_reply(sock.recv())
    assert first.op == "commit" and first == second
    with PSClient(group.endpoints, worker_id=2) as client:
        client.hello()
        np.testing.assert_array_equal(client.pull(), np.ones(4))
        assert client.stats()[0]["duplicates"] == 1


def test_malformed_messages_over_the_wire_get_errors_and_the_server_keeps_serving(shards, raw_dealer):
    group = shards(num_shards=1, total_size=8, initial=np.arange(8, dtype=np.float32), max_frame_bytes=64)
    sock = raw_dealer(group.endpoints[0])
    cases = [
        ([b"\xc1garbage"], "bad_header"),
        ([msgpack.packb({"v": PROTOCOL_VERSION, "op": "explode", "rid": 3, "shard": 0})], "unknown_op"),
        ([Request(op="commit", base=0, rid=4, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(32,)).encode(), b"\0" * 32], "unknown_worker"),
        ([Request(op="commit", base=0, rid=5, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(128,)).encode(), b"\0" * 128], "frame_too_large"),
    ]
    for parts, code in cases:
        sock.send_multipart(parts)
        reply = decode_reply(sock.recv())
        assert reply.op == "error" and reply.fields["code"] == code
    sock.send(b"")  # an empty header frame
    assert decode_reply(sock.recv()).fields["code"] == "bad_header"
    with PSClient(group.endpoints, worker_id=1) as client:
        client.hello()
        np.testing.assert_array_equal(client.pull(), np.arange(8))


def test_frames_far_over_the_limit_are_dropped_by_zeromq_and_the_shard_survives(shards, raw_dealer, capfd):
    group = shards(num_shards=1, total_size=8, max_frame_bytes=1024, log_level="INFO")
    hog = raw_dealer(group.endpoints[0])
    hog.send_multipart([Request(op="commit", base=0, rid=1, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(8 << 20,)).encode(),
                        b"\0" * (8 << 20)])
    with PSClient(group.endpoints, worker_id=1, timeout=10) as client:
        client.hello()
        assert client.pull().shape == (8,)
        assert client.stats()[0]["updates"] == 0
    assert all(group.alive())
    assert_logged(capfd, "a peer disconnected")


def test_client_deadline_names_the_endpoint_and_op(shards):
    group = shards(num_shards=2, total_size=10)
    with PSClient(group.endpoints, worker_id=1, timeout=1.0) as client:
        client.hello()
        os.kill(group.pids[1], signal.SIGKILL)
        poll_until(lambda: not group.alive()[1], what="shard 1 to die")
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            client.pull()
        assert time.monotonic() - started < 5
    message = str(info.value)
    assert "`pull`" in message and group.endpoints[1] in message and group.endpoints[0] not in message


def test_deadline_against_an_endpoint_where_nothing_listens():
    with PSClient(["tcp://127.0.0.1:9"], worker_id=1, timeout=0.3) as client:
        with pytest.raises(DeadlineExceeded, match=r"`hello`.*tcp://127.0.0.1:9"):
            client.hello()


def test_restarted_shard_is_noticed_through_its_generation(shards):
    first = shards(num_shards=1, total_size=4, bind="tcp://127.0.0.1:0")
    endpoint = first.endpoints[0]
    with PSClient([endpoint], worker_id=1, timeout=5) as client:
        client.hello()
        first.stop()
        shards(num_shards=1, total_size=4, bind=endpoint)
        with pytest.raises(ShardRestarted, match=endpoint):
            client.pull()


def test_remote_errors_name_endpoint_op_and_code(shards):
    group = shards(num_shards=1, total_size=4)
    with PSClient(group.endpoints, worker_id=1) as client:
        client.hello(register=False)
        with pytest.raises(RemoteError, match=r"refused `commit`: \[unknown_worker\]"):
            client.commit(np.ones(4, np.float32))


def test_endpoints_out_of_order_are_refused(shards):
    group = shards(num_shards=2, total_size=10)
    with PSClient(list(reversed(group.endpoints)), worker_id=1) as client:
        with pytest.raises(RemoteError, match=r"\[wrong_shard\] `shard` must be [01] here"):
            client.hello()


def test_checkpoint_through_the_client(shards, tmp_path):
    group = shards(num_shards=2, total_size=6, checkpoint_dir=str(tmp_path), initial=np.ones(6, np.float32))
    with PSClient(group.endpoints, worker_id=1) as client:
        client.hello()
        paths = client.checkpoint()
    assert sorted(os.path.basename(p) for p in paths) == ["shard-000-of-002.npz", "shard-001-of-002.npz"]
    with np.load(paths[1]) as data:
        np.testing.assert_array_equal(data["center"], np.ones(3))


def test_shutdown_op_stops_the_shards(shards):
    group = shards(num_shards=2, total_size=6)
    with PSClient(group.endpoints, worker_id=1) as client:
        client.hello(register=False)
        client.shutdown()
    poll_until(lambda: not any(group.alive()), what="shards to exit")
    assert [p.returncode for p in group.processes] == [0, 0]


def test_invalid_algorithm_params_fail_before_any_process_starts():
    from zdk.ps.launcher import start_shards

    with pytest.raises(ConfigError, match="eta"):
        start_shards(total_size=4, algorithm="adag", params={"eta": -1.0})


def test_bind_failure_is_a_launch_error(shards):
    group = shards(num_shards=1, total_size=4)
    with pytest.raises(LaunchError, match="shard 0"):
        shards(num_shards=1, total_size=4, bind=group.endpoints[0])


def test_shards_exit_when_their_launcher_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "from zdk.ps.launcher import start_shards\n"
        "g = start_shards(num_shards=2, total_size=10)\n"
        "print(' '.join(map(str, g.pids)), flush=True)\n"
        "time.sleep(60)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in launcher.stdout.readline().split()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        launcher.kill()
        launcher.wait()
        poll_until(lambda: not any(pid_alive(p) for p in pids), timeout=10, what="orphaned shards to exit")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.stdout.close()


def test_idle_shards_exit_by_themselves(shards):
    group = shards(num_shards=1, total_size=4, idle_timeout=0.5)
    poll_until(lambda: not any(group.alive()), timeout=10, what="the idle shard to exit")


def test_ipc_endpoints_work_like_tcp(shards, tmp_path):
    group = shards(num_shards=2, total_size=6, bind=f"ipc://{tmp_path}/zdk", initial=np.ones(6, np.float32))
    assert group.endpoints == [f"ipc://{tmp_path}/zdk-0", f"ipc://{tmp_path}/zdk-1"]
    with PSClient(group.endpoints, worker_id=1) as client:
        client.hello()
        client.pull()
        client.commit(np.ones(6, np.float32))
        np.testing.assert_array_equal(client.pull(), np.full(6, 2.0))
