"""The client side of the transport interface: a connector opens links and waits on several at once,
and PSClient does all its I/O through one (here ZeroMQ's, or a subclass injecting faults)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from zdk.errors import DeadlineExceeded
from zdk.ps.client import PSClient
from zdk.transports import ZmqConnector, ZmqDealerTransport

SIZE = 6


@pytest.fixture
def router():
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


def test_wait_names_only_the_links_with_a_message_and_times_out_empty(router):
    sock, endpoint = router
    connector = ZmqConnector(max_message_bytes=1 << 20)
    links = [connector.connect(endpoint) for _ in range(3)]
    try:
        started = time.monotonic()
        assert connector.wait(links, 0.2) == []
        assert time.monotonic() - started >= 0.19
        links[1].send(b"ping")
        peer, message = sock.recv_multipart()
        assert message == b"ping"
        sock.send_multipart([peer, b"pong", b"data"])
        assert connector.wait(links, 10.0) == [1]
        assert links[1].recv_header() == (b"pong", True) and links[1].discard_rest() == 1
        assert connector.wait(links, 0.0) == []
    finally:
        for link in links:
            link.close()


class _Mute(ZmqDealerTransport):
    """A link whose messages are lost on the way out."""

    def send(self, header, frames=()):
        pass


class LosesFirstLinks(ZmqConnector):
    """Every shard's first link loses what it sends; later links work. Counts what it opens."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.opened: list[str] = []
        self.waits = 0

    def connect(self, endpoint):
        first = endpoint not in self.opened
        self.opened.append(endpoint)
        kind = _Mute if first else ZmqDealerTransport
        return kind(endpoint, max_message_bytes=self.max_message_bytes)

    def wait(self, links, timeout):
        self.waits += 1
        return super().wait(links, timeout)


def test_the_client_resends_on_a_fresh_link_from_its_connector(shards):
    group = shards(num_shards=2, total_size=SIZE)
    connector = LosesFirstLinks(max_message_bytes=1 << 20)
    with PSClient(group.endpoints, worker_id=3, timeout=3.0, tries=3, connector=connector) as client:
        client.hello()
        assert connector.opened == group.endpoints * 2 and client.resends == 2
        assert client.commit(np.ones(SIZE, np.float32)).applied
        np.testing.assert_array_equal(client.pull(), np.ones(SIZE))
    assert connector.waits >= 3


def test_a_deadline_through_an_injected_connector_names_the_shard_and_op():
    connector = LosesFirstLinks(max_message_bytes=1 << 20)
    with PSClient(["tcp://127.0.0.1:9"], worker_id=0, timeout=0.6, tries=2, connector=connector) as client:
        with pytest.raises(DeadlineExceeded, match=r"`hello` got no reply .* from shard 0 at tcp://127.0.0.1:9"):
            client.hello()
    assert connector.opened == ["tcp://127.0.0.1:9"] * 2
