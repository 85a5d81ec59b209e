"""Zero-copy pull replies over real sockets: a shard sends the center straight from its buffer,
so that buffer must not be written until ZeroMQ has let go of it (pyzmq's MessageTracker).

A reader holds a large pull reply back in flight, commits from another client advance the center
meanwhile, and the bytes the reader finally gets must be the center at the version its reply
states, bit for bit. The test keeps its own model of the center (the initial vector plus known
deltas, replayed with the shard's own float32 operations), so the center at every version is known.
"""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from conftest import registered_client
from zdk.ps.client import PSClient
from zdk.ps.protocol import OBSERVER_TOOL, Request, decode_reply

SIZE = 8 << 20  # floats: a 32 MiB center, far more than the sockets' kernel buffers hold
HELD = 6  # commits applied while the reply is held back
DURING = 2  # commits applied while the reader takes the reply frame by frame


def replay(algorithm: str, initial: np.ndarray, commits: list[tuple[float, int]], version: int) -> np.ndarray:
    """The center at ``version``: `init` made version 1, and each commit (Δ filled with ``value``,
    applied at staleness τ) advanced it by one: DOWNPOUR adds Δ, DynSGD Δ·1/(τ + 1), in float32
    as the shard computes them."""
    center = initial.copy()
    for value, staleness in commits[: version - 1]:
        delta = np.full(SIZE, value, np.float32)
        center += delta * np.float32(1.0 / (staleness + 1)) if algorithm == "dynsgd" else delta
    return center


@pytest.fixture
def slow_reader():
    """A DEALER that takes in one message at a time (RCVHWM=1) through a small kernel buffer: while
    an unread reply sits in its queue, the next reply stays at the shard, mid-send."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 64 << 10)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    yield sock
    sock.close(linger=0)


@pytest.mark.parametrize("algorithm", ["downpour", "dynsgd"])
def test_a_held_zero_copy_pull_is_the_center_at_its_version_despite_later_commits(shards, slow_reader, algorithm):
    # downpour adds each commit into a free buffer; dynsgd updates the center in place after a
    # copy-on-write. Either way the buffer a reply is still being sent from must not be written.
    initial = (np.arange(SIZE, dtype=np.float32) % 997) - 498
    group = shards(num_shards=1, total_size=SIZE, algorithm=algorithm, initial=initial)
    slow_reader.connect(group.endpoints[0])
    with registered_client(group, 0) as writer:
        # A small reply fills the reader's one-message queue; it stays unread until the end.
        slow_reader.send(Request(op="stats", rid=1, shard=0, worker=OBSERVER_TOOL).encode())
        # The pull waits at the shard until the center reaches `target`, then is answered from the
        # buffer holding that version.
        target = 1 + 3
        slow_reader.send(Request(op="pull", rid=2, shard=0, worker=OBSERVER_TOOL, min_version=target, wait=60.0,
                                 args={"role": "observer"}).encode())
        commits: list[tuple[float, int]] = []

        def commit() -> None:
            value = float(len(commits) + 1)
            receipt = writer.commit(np.full(SIZE, value, np.float32))
            assert receipt.applied and receipt.versions == (len(commits) + 2,)
            commits.append((value, receipt.staleness))

        for _ in range(target - 1 + HELD):
            commit()
        stats = decode_reply(slow_reader.recv())
        assert stats.op == "stats" and stats.rid == 1 and not slow_reader.getsockopt(zmq.RCVMORE)

        header = decode_reply(slow_reader.recv())
        assert header.op == "pull" and header.rid == 2, header
        assert header.version == target
        assert sum(header.lens) == SIZE * 4 and max(header.lens) < SIZE * 4  # many zero-copy frames
        received = np.empty(SIZE, np.float32)
        view = received.data.cast("B")
        offset = 0
        for n in header.lens:
            assert slow_reader.getsockopt(zmq.RCVMORE)
            assert slow_reader.recv_into(view[offset : offset + n]) == n
            offset += n
            if len(commits) < target - 1 + HELD + DURING:
                commit()
        assert not slow_reader.getsockopt(zmq.RCVMORE)

        with PSClient(group.endpoints, worker_id=OBSERVER_TOOL, timeout=30) as observer:
            observer.hello(register=False)
            now = observer.pull()
    assert writer.versions == (1,)  # the writer never pulled: dynsgd's τ grew with every commit
    expected = replay(algorithm, initial, commits, target)
    latest = replay(algorithm, initial, commits, len(commits) + 1)
    wrong = np.flatnonzero(received != expected)
    assert wrong.size == 0, (
        f"{wrong.size} of {SIZE} values of the version-{target} reply were overwritten while it was sent, from "
        f"byte {wrong[0] * 4}: got {received[wrong[0]]}, expected {expected[wrong[0]]} (the latest center has "
        f"{latest[wrong[0]]})")
    np.testing.assert_array_equal(now, latest)
    assert len(commits) == target - 1 + HELD + DURING
