"""A commit with the pull behind it (``PSClient.commit(..., pull_into=...)``): one round trip, and the
center it pulls holds the commit, even when the link answers the pull first."""

from __future__ import annotations

import logging
from typing import Sequence

import msgpack
import numpy as np
import pytest

from conftest import registered_client as client_for
from zdk.errors import ConfigError, DeadlineExceeded
from zdk.ps.client import PSClient
from zdk.ps.exchange import Exchange
from zdk.transports.base import Buffer
from zdk.transports.zmq import ZmqConnector, ZmqDealerTransport

SIZE = 65  # shards of 33 and 32


@pytest.mark.parametrize("admit_bytes", [None, 0], ids=["plain", "admitted"])
def test_the_pulled_center_holds_the_commit_and_sets_the_base_versions(shards, admit_bytes):
    group = shards(num_shards=2, total_size=SIZE, algorithm="downpour")
    with client_for(group, 0) as other, \
            PSClient(group.endpoints, worker_id=1, timeout=10, admit_bytes=admit_bytes) as client:
        client.hello()
        other.commit(np.ones(SIZE, np.float32))       # the center moved on since `client` pulled
        center = np.full(SIZE, np.nan, np.float32)
        receipt = client.commit(np.arange(SIZE, dtype=np.float32), pull_into=center)
        assert receipt.applied and receipt.staleness == 1
        np.testing.assert_array_equal(center, 1.0 + np.arange(SIZE, dtype=np.float32))
        assert client.versions == receipt.versions == tuple(s["version"] for s in other.stats())
        again = client.commit(np.ones(SIZE, np.float32), pull_into=center)
        assert again.staleness == 0, "the next commit's base must be the pull's version"
        np.testing.assert_array_equal(center, 2.0 + np.arange(SIZE, dtype=np.float32))
        assert client.resends == 0 and client.wait_seconds > 0
        stats = other.stats()
        assert [s["updates"] for s in stats] == [3, 3] and [s["duplicates"] for s in stats] == [0, 0]


def test_encoded_commits_pipeline_too(shards):
    group = shards(num_shards=2, total_size=SIZE, algorithm="downpour")
    with client_for(group, 0) as client:
        center = np.empty(SIZE, np.float32)
        parts = [(np.full(n, 0.5, np.float16),) for n in (33, 32)]
        assert client.commit_encoded("fp16", parts, pull_into=center).applied
        np.testing.assert_array_equal(center, np.full(SIZE, 0.5))


def test_pull_into_must_be_a_full_float32_vector(shards):
    group = shards(num_shards=1, total_size=SIZE, algorithm="downpour")
    with client_for(group, 0) as client:
        with pytest.raises(ConfigError, match=r"`pull_into` must be a C-contiguous float32 vector of size 65"):
            client.commit(np.ones(SIZE, np.float32), pull_into=np.empty(SIZE, np.float64))
        assert client.stats()[0]["updates"] == 0, "nothing may be sent before the check"


class _CommitsLast(ZmqDealerTransport):
    """Holds each commit back until the next message has gone: the link reorders, as a lossy one can."""

    def __init__(self, endpoint: str, *, connector: "_ReorderingConnector") -> None:
        super().__init__(endpoint, max_message_bytes=connector.max_message_bytes)
        self.connector = connector
        self.held: tuple[bytes, Sequence[Buffer]] | None = None

    def send(self, header: bytes, frames: Sequence[Buffer] = ()) -> None:
        if msgpack.unpackb(header)["op"] == "commit":
            self.held = (header, frames)
            return
        super().send(header, frames)
        if self.held is not None:
            super().send(*self.held)
            self.held = None
            self.connector.reordered += 1


class _ReorderingConnector(ZmqConnector):
    reordered = 0

    def connect(self, endpoint: str) -> ZmqDealerTransport:
        return _CommitsLast(endpoint, connector=self)


def test_a_pull_answered_before_its_commit_is_sent_again(shards, caplog):
    group = shards(num_shards=2, total_size=SIZE, algorithm="downpour")
    connector = _ReorderingConnector(max_message_bytes=1 << 24)
    with PSClient(group.endpoints, worker_id=0, timeout=10, connector=connector) as client:
        client.hello()
        center = np.empty(SIZE, np.float32)
        with caplog.at_level(logging.DEBUG, logger="zdk.ps.client"):
            for i in range(1, 4):
                assert client.commit(np.ones(SIZE, np.float32), pull_into=center).applied
                np.testing.assert_array_equal(center, np.full(SIZE, float(i)))
        assert connector.reordered == 6  # 3 commits × 2 shards, each answered after its pull
        assert sum("was answered before the commit" in r.getMessage() for r in caplog.records) == 6
        assert client.versions == tuple(s["version"] for s in client.stats())
        assert [s["updates"] for s in client.stats()] == [3, 3]


def test_an_unanswered_commit_and_pull_fail_after_the_tries_naming_the_shard(shards):
    group = shards(num_shards=1, total_size=SIZE, algorithm="downpour")
    with PSClient(group.endpoints, worker_id=0, timeout=0.6, tries=3) as client:
        client.hello()
        group.stop()
        with pytest.raises(DeadlineExceeded, match=rf"`commit` with its `pull` got no reply within 0\.6 s from "
                                                   rf"shard 0 at {group.endpoints[0]} \(`commit` and `pull`\)"):
            client.commit(np.ones(SIZE, np.float32), pull_into=np.empty(SIZE, np.float32))
        assert client.resends == 2
        assert client.wait_seconds >= 0.6


@pytest.mark.parametrize("algorithm, separate_pulls", [("downpour", 0), ("aeasgd", 1)])
def test_the_exchange_pulls_behind_the_commit_unless_the_algorithm_pulls_first(shards, monkeypatch, algorithm,
                                                                               separate_pulls):
    group = shards(num_shards=2, total_size=SIZE, algorithm=algorithm, params={"communication_window": 1})
    with client_for(group, 0) as client:
        local = np.zeros(SIZE, np.float32)
        exchange = Exchange(client, local)
        exchange.start()
        pulls: list[object] = []
        pull = client.pull
        monkeypatch.setattr(client, "pull", lambda *a, **kw: pulls.append(a) or pull(*a, **kw))
        local += 1.0
        assert exchange.end_window(1).applied
        assert len(pulls) == separate_pulls
        stats = client.stats()
        assert [s["updates"] for s in stats] == [1, 1]
        if algorithm == "downpour":     # θ ← θ̃ = Δ, pulled behind the commit
            assert client.versions == tuple(s["version"] for s in stats)
            np.testing.assert_array_equal(exchange.center, np.ones(SIZE))
            np.testing.assert_array_equal(local, np.ones(SIZE))
