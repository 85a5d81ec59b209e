"""The control path and epoch reports through real shard processes and sockets: the driver's
observer client on one side, training workers' clients on the other."""

from __future__ import annotations

import math
import threading

import msgpack
import numpy as np
import pytest
import zmq

from zdk.errors import ProtocolError
from zdk.ps.client import PSClient
from zdk.ps.exchange import Exchange
from zdk.ps.protocol import OBSERVER_DRIVER, PROTOCOL_VERSION, Reply, Request, decode_reply


def driver_client(group) -> PSClient:
    client = PSClient(group.endpoints, worker_id=OBSERVER_DRIVER, timeout=10)
    client.hello(register=False)
    return client


def test_a_worker_sees_the_drivers_control_at_its_next_exchange_and_report(shards):
    group = shards(num_shards=2, total_size=101, initial=np.zeros(101, np.float32))
    with driver_client(group) as driver, PSClient(group.endpoints, worker_id=0, timeout=10) as worker:
        worker.hello()
        worker.pull()
        assert worker.commit(np.ones(101, np.float32)).control == {} and worker.control == {}

        driver.set_control(stop=False, learning_rate=0.01)
        assert worker.control == {} and worker.control_version == 0  # nothing reaches it between exchanges
        receipt = worker.commit(np.ones(101, np.float32))
        assert receipt.control == {"stop": False, "learning_rate": 0.01} and receipt.control_version == 1
        assert worker.control == receipt.control and worker.control_version == 1

        driver.set_control(stop=True)
        worker.report({"epoch": np.int64(0), "samples": np.float32(64), "loss": float("nan"), "accuracy": 0.25})
        assert worker.control == {"stop": True} and worker.control_version == 2

        stats = driver.stats()
        assert [(s["control"], s["control_version"]) for s in stats] == [({"stop": True}, 2)] * 2
        assert tuple(s["version"] for s in stats) == receipt.versions  # the report changed no version
        np.testing.assert_array_equal(driver.pull(), np.full(101, 2.0))


def test_the_newest_control_wins_when_the_shards_disagree(shards, raw_dealer):
    group = shards(num_shards=2, total_size=10)
    with driver_client(group) as driver, PSClient(group.endpoints, worker_id=0, timeout=10) as worker:
        worker.hello()
        driver.set_control(stop=False, learning_rate=0.1)
        # A newer control that reached shard 1 only, as when the driver's request is between shards.
        sock = raw_dealer(group.endpoints[1])
        sock.send(Request(op="control", rid=1, shard=1, args={"role": "observer", "control": {"stop": True}}).encode())
        assert decode_reply(sock.recv()).fields["control_version"] == 2
        worker.pull()
        assert worker.control == {"stop": True} and worker.control_version == 2
        driver.set_control(stop=False)  # shard 0 is at 2 now, shard 1 at 3
        worker.pull()
        assert worker.control == {"stop": False} and worker.control_version == 3


def test_the_driver_reads_every_workers_epochs_from_an_epoch(shards):
    group = shards(num_shards=2, total_size=10)
    with driver_client(group) as driver, \
            PSClient(group.endpoints, worker_id=0, timeout=10) as a, PSClient(group.endpoints, worker_id=1, timeout=10) as b:
        a.hello(), b.hello()
        for epoch in (0.0, 1.0, 2.0):  # an integral float is the epoch's int
            a.report({"epoch": epoch, "samples": 100, "loss": 1.0 + epoch}, report={"step": 10.0 * (epoch + 1)})
        b.report({"epoch": 0, "samples": 50, "loss": float("nan")})

        for shard in driver.stats(epochs_from=1):
            assert shard["workers"]["0"]["epochs"] == {"1": {"epoch": 1, "samples": 100.0, "loss": 2.0},
                                                       "2": {"epoch": 2, "samples": 100.0, "loss": 3.0}}
            assert shard["workers"]["1"]["epochs"] == {}
            assert shard["workers"]["0"]["report"] == {"step": 30.0}
        zero = driver.stats(epochs_from=0)[1]["workers"]["1"]["epochs"]["0"]
        assert zero["epoch"] == 0 and math.isnan(zero["loss"])
        assert all("epochs" not in w for s in driver.stats() for w in s["workers"].values())


def test_init_gives_a_new_job_on_a_running_server_a_clean_control_state(shards):
    group = shards(num_shards=2, total_size=6)
    with driver_client(group) as driver:
        with PSClient(group.endpoints, worker_id=0, timeout=10) as worker:
            worker.hello()
            worker.report({"epoch": 0, "samples": 6})
            driver.set_control(stop=True)
            worker.bye()
        driver.init(np.ones(6, np.float32))
        assert all(s["control"] == {} and s["control_version"] == 0 for s in driver.stats())
        assert all(s["workers"]["0"]["epochs"] == {} for s in driver.stats(epochs_from=0))
        with PSClient(group.endpoints, worker_id=0, timeout=10) as next_job:
            next_job.hello()
            assert next_job.control == {} and next_job.control_version == 0


def test_an_overlapped_exchange_is_collected_before_the_report(shards):
    group = shards(num_shards=2, total_size=20, initial=np.zeros(20, np.float32))
    with driver_client(group) as driver, PSClient(group.endpoints, worker_id=0, timeout=10) as client:
        local = np.zeros(20, np.float32)
        exchange = Exchange(client, local)
        exchange.start()
        driver.set_control(stop=False, learning_rate=0.5)
        local += 1.0
        exchange.begin_window(5)
        exchange.report({"epoch": 0, "samples": 20, "loss": 0.7})
        assert not exchange.in_flight and exchange.exchanges == 1
        assert client.control == {"stop": False, "learning_rate": 0.5}
        assert driver.stats(epochs_from=0)[0]["workers"]["0"]["epochs"]["0"]["loss"] == pytest.approx(0.7)
        np.testing.assert_array_equal(driver.pull(), np.ones(20))
        exchange.finish()


def test_an_old_client_reads_why_a_shard_refuses_it(shards, raw_dealer):
    group = shards(num_shards=1, total_size=4)
    sock = raw_dealer(group.endpoints[0])
    sock.send(msgpack.packb({"v": 1, "op": "hello", "rid": 12, "shard": 0, "worker": 0, "session": 1}))
    header = msgpack.unpackb(sock.recv())
    assert (header["v"], header["op"], header["rid"], header["code"]) == (1, "error", 12, "bad_version")
    assert "this shard speaks zdk wire protocol 3, the client v=1: run the same zdk version" in header["message"]


def test_the_client_refuses_a_shard_of_another_version_naming_it():
    """A stand-in for a shard of zdk's wire protocol 1, which answers every request with its error."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"

    def old_shard() -> None:
        if router.poll(10_000):
            peer, raw = router.recv_multipart()
            rid = msgpack.unpackb(raw)["rid"]
            router.send_multipart([peer, Reply(op="error", rid=rid, shard=0, gen=1, version=0, protocol=1, fields={
                "code": "bad_version", "message": f"`v` must be 1. Received: v={PROTOCOL_VERSION}",
                "request_op": "hello"}).encode()])

    thread = threading.Thread(target=old_shard, daemon=True)
    thread.start()
    try:
        with PSClient([endpoint], worker_id=0, timeout=10) as client:
            with pytest.raises(ProtocolError) as info:
                client.hello()
    finally:
        thread.join(timeout=15)
        router.close(linger=0)
    assert info.value.code == "bad_version"
    assert info.value.message.startswith(f"{endpoint}: `v` must be 3: this client speaks zdk wire protocol 3, the "
                                         f"shard replied with v=1: run the same zdk version")
    assert f"the shard's error: `v` must be 1. Received: v={PROTOCOL_VERSION}" in info.value.message
