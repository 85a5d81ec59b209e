"""Large commits are admitted one at a time per shard (`admit`), so a shard holds one queued
slice rather than one per worker; a waiting worker is never stuck behind a dead one."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from zdk.errors import ConfigError
from zdk.ps.client import PSClient
from zdk.ps.protocol import ADMIT_WAIT, Request, as_frames, decode_reply
from zdk.ps.shard import ADMIT_HOLD, ShardConfig, ShardCore

SIZE = 8


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_core(clock: Clock) -> ShardCore:
    core = ShardCore(ShardConfig(shard=0, num_shards=1, total_size=SIZE, chunk_bytes=16), clock=clock)
    for worker in (1, 2, 3):
        call(core, "hello", worker)
    return core


def call(core: ShardCore, op: str, worker: int, *, rid: int = 1, peer: bytes = b"p", data=None) -> list:
    fields = {}
    frames = [] if data is None else as_frames(np.full(SIZE, data, np.float32), 16)
    if frames:
        fields.update(dtype="<f4", lens=tuple(f.nbytes for f in frames), base=core.version)
    request = Request(op=op, rid=rid, shard=0, worker=worker, session=worker, **fields)
    return core.handle(peer, request.encode(), [bytes(f) for f in frames])


def answered(out: list) -> list[tuple[bytes, str, int, bool | None]]:
    replies = [(o.peer, decode_reply(o.header)) for o in out]
    return [(peer, r.op, r.rid, r.fields.get("admitted")) for peer, r in replies]


def test_one_worker_at_a_time_is_admitted_and_its_commit_passes_the_turn_on():
    clock = Clock()
    core = make_core(clock)
    assert answered(call(core, "admit", 1, rid=5, peer=b"w1")) == [(b"w1", "admit", 5, True)]
    assert call(core, "admit", 2, rid=6, peer=b"w2") == []  # waits
    assert call(core, "admit", 3, rid=7, peer=b"w3") == []
    assert core.stats()["admitted"] == [1] and core.stats()["admit_waiting"] == 2
    out = answered(call(core, "commit", 1, rid=8, peer=b"w1", data=1.0))
    assert out == [(b"w1", "commit", 8, None), (b"w2", "admit", 6, True)]  # oldest waiting first
    assert answered(call(core, "admit", 1, rid=9, peer=b"w1")) == []  # back of the queue
    assert answered(call(core, "commit", 2, rid=10, peer=b"w2", data=1.0))[1] == (b"w3", "admit", 7, True)
    np.testing.assert_array_equal(core.center, np.full(SIZE, 2.0))


def test_a_resent_admit_replaces_its_wait_and_an_admitted_worker_is_answered_again():
    clock = Clock()
    core = make_core(clock)
    call(core, "admit", 1, rid=1)
    assert answered(call(core, "admit", 1, rid=2, peer=b"again")) == [(b"again", "admit", 2, True)]
    call(core, "admit", 2, rid=3, peer=b"old-socket")
    call(core, "admit", 2, rid=3, peer=b"new-socket")  # the client's resend, from a fresh socket
    assert core.stats()["admit_waiting"] == 1
    assert answered(call(core, "bye", 1, rid=4))[1] == (b"new-socket", "admit", 3, True)  # `bye` frees the turn


def test_a_worker_is_never_stuck_behind_a_dead_one():
    clock = Clock()
    core = make_core(clock)
    call(core, "admit", 1)  # and then it dies
    call(core, "admit", 2, rid=2, peer=b"w2")
    assert core.next_deadline() == pytest.approx(clock.now + ADMIT_WAIT)
    clock.now += min(ADMIT_HOLD, ADMIT_WAIT) - 0.1
    assert core.expire() == []
    clock.now += 0.2
    # The dead worker's turn lapsed, or the waiting one's wait ran out: either way it may commit.
    assert [(peer, op) for peer, op, _, _ in answered(core.expire())] == [(b"w2", "admit")]


def test_a_commit_without_admission_is_applied_and_ends_its_wait():
    clock = Clock()
    core = make_core(clock)
    call(core, "admit", 1)
    call(core, "admit", 2, rid=2)
    call(core, "commit", 2, rid=3, data=1.0)  # a client that stopped waiting commits anyway
    assert core.stats()["admit_waiting"] == 0 and core.version == 1


def test_admit_bytes_is_validated():
    with pytest.raises(ConfigError, match="`admit_bytes` must be an int ≥ 0 or None. Received: admit_bytes=-1"):
        PSClient(["tcp://127.0.0.1:1"], admit_bytes=-1)


def test_workers_committing_large_slices_at_once_are_each_applied_exactly_once(shards):
    size = 50_000
    group = shards(num_shards=2, total_size=size, initial=np.zeros(size, np.float32))
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            with PSClient(group.endpoints, worker_id=w, timeout=30, admit_bytes=0) as client:
                client.hello()
                for _ in range(10):
                    assert client.commit(np.full(size, 1.0, np.float32)).applied
                    client.pull()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with PSClient(group.endpoints, worker_id=99) as observer:
        observer.hello(register=False)
        np.testing.assert_array_equal(observer.pull(), np.full(size, 40.0, np.float32))
        stats = observer.stats()
    assert all(s["updates"] == 40 and s["admitted"] == [] and s["admit_waiting"] == 0 for s in stats)
