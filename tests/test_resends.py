"""The client resends on a fresh socket when a reply does not come; shards apply each commit once.

A lossy proxy between clients and shards drops 20% of the messages in each direction
and delays another 10%, which reorders them: a pull sent right behind a commit can be
answered first."""

from __future__ import annotations

import numpy as np
import pytest

from test_algorithms_integration import DIM, LOSS_THRESHOLD, make_problem, mse, train_two_workers
from zdk.errors import DeadlineExceeded
from zdk.lab.proxy import LossyProxy
from zdk.ps.client import PSClient

SIZE = 64


@pytest.mark.parametrize("pipelined", [False, True], ids=["then-pull", "pipelined"])
@pytest.mark.parametrize("admit_bytes", [None, 0], ids=["plain", "admitted"])
def test_every_commit_is_applied_exactly_once_through_a_lossy_network(shards, admit_bytes, pipelined):
    group = shards(num_shards=2, total_size=SIZE, algorithm="downpour")
    commits = 25
    center = np.empty(SIZE, np.float32)
    with LossyProxy(group.endpoints[0], drop=0.2, late=0.1, seed=1) as p0, \
            LossyProxy(group.endpoints[1], drop=0.2, late=0.1, seed=2) as p1:
        # Tries of 0.1 s: a held message (0.05 s) mostly arrives within its try.
        with PSClient([p0.endpoint, p1.endpoint], worker_id=0, timeout=3.0, tries=30,
                      admit_bytes=admit_bytes) as client:
            client.hello()
            for i in range(1, commits + 1):
                if pipelined:
                    assert client.commit(np.ones(SIZE, np.float32), pull_into=center).applied
                else:
                    assert client.commit(np.ones(SIZE, np.float32)).applied
                    client.pull(center)
                # The only worker: the center pulled after commit i holds exactly i of them.
                np.testing.assert_array_equal(center, np.full(SIZE, float(i)))
            resends = client.resends
        dropped = p0.counts["dropped"] + p1.counts["dropped"]
        delayed = p0.counts["delayed"] + p1.counts["delayed"]
    with PSClient(group.endpoints, worker_id=99, timeout=10) as observer:
        observer.hello(register=False)
        center = observer.pull()
        stats = observer.stats()
    print(f"{commits} commits: {dropped} messages dropped, {delayed} delayed, {resends} resends, "
          f"{sum(s['duplicates'] for s in stats)} duplicates answered from the cache")
    assert dropped > 0 and delayed > 0 and resends > 0
    assert sum(s["duplicates"] for s in stats) > 0, "no commit was resent after it was applied: nothing was tested"
    np.testing.assert_array_equal(center, np.full(SIZE, float(commits)))
    assert [s["updates"] for s in stats] == [commits, commits]


def test_training_converges_through_a_lossy_network(shards):
    x, y = make_problem()
    group = shards(num_shards=2, total_size=DIM, algorithm="downpour", params={"communication_window": 5})
    with LossyProxy(group.endpoints[0], drop=0.15, late=0.1, seed=3) as p0, \
            LossyProxy(group.endpoints[1], drop=0.15, late=0.1, seed=4) as p1:
        train_two_workers([p0.endpoint, p1.endpoint], x, y, steps=150, timeout=4.0, tries=16)
    with PSClient(group.endpoints, worker_id=99, timeout=10) as observer:
        observer.hello(register=False)
        final = mse(observer.pull(), x, y)
        stats = observer.stats()
    sent = 2 * (150 // 5)
    assert [s["updates"] for s in stats] == [sent, sent], "a commit was lost or applied twice"
    assert final < LOSS_THRESHOLD


def test_an_unreachable_shard_fails_after_the_tries_naming_it():
    with PSClient(["tcp://127.0.0.1:9"], worker_id=0, timeout=0.6, tries=3) as client:
        with pytest.raises(DeadlineExceeded, match=r"3 tries.*tcp://127.0.0.1:9.*zdk ps status"):
            client.hello()
        assert client.resends == 2
