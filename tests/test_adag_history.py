"""ADAG's kept centers are bounded per shard (``history``): the bound itself, the shard's use of
it, and a real shard whose memory stays the same from 2 to 8 workers."""

from __future__ import annotations

import os
from contextlib import ExitStack

import numpy as np
import pytest

from zdk import algorithms
from zdk.algorithms.base import WorkerSlot
from zdk.errors import ConfigError
from zdk.ps.client import PSClient
from zdk.ps.protocol import Request, as_frames, decode_reply
from zdk.ps.pulled import bound_pulled, history_of, kept
from zdk.ps.shard import ShardConfig, ShardCore

SIZE = 6


def centers(*values: float) -> list[np.ndarray]:
    return [np.full(SIZE, v, np.float32) for v in values]


def slots_holding(*pulls: tuple[np.ndarray, int]) -> list[WorkerSlot]:
    return [WorkerSlot(worker=w, pulled=c, base_version=v) for w, (c, v) in enumerate(pulls)]


# ---------------------------------------------------------------- the bound


def test_within_the_bound_every_slot_keeps_its_own_center():
    c0, c1 = centers(0, 1)
    slots = slots_holding((c0, 0), (c1, 1), (c1, 1), (c0, 0))
    assert bound_pulled(slots, 2) == 0
    assert [s.pulled for s in slots] == [c0, c1, c1, c0]
    assert all(a is b for a, b in zip((s.pulled for s in slots), (c0, c1, c1, c0)))


def test_past_the_bound_the_oldest_are_released_to_the_oldest_kept_center():
    c3, c1, c4, c2 = centers(3, 1, 4, 2)
    slots = slots_holding((c3, 3), (c1, 1), (c4, 4), (c2, 2), (c1, 1), (None, 0))
    assert bound_pulled(slots, 2) == 2
    assert [s.pulled is c for s, c in zip(slots, (c3, c3, c4, c3, c3))] == [True] * 5
    assert slots[5].pulled is None
    assert kept(slots) == [c3, c4] and [s.base_version for s in slots] == [3, 1, 4, 2, 1, 0]


def test_a_center_holding_only_moved_slots_stays_the_oldest_and_goes_first():
    c1, c2, c3, c4 = centers(1, 2, 3, 4)
    slots = slots_holding((c1, 1), (c2, 2), (c3, 3))
    bound_pulled(slots, 2)
    slots[1].pulled, slots[1].base_version = c4, 4  # worker 1 pulls again: c2 now holds only worker 0
    assert kept(slots) == [c2, c3, c4]
    assert bound_pulled(slots, 2) == 1
    assert [s.pulled for s in slots] == [c3, c4, c3]


def test_a_bound_of_one_keeps_the_newest_center_for_everyone():
    c0, c1, c2 = centers(0, 1, 2)
    slots = slots_holding((c0, 0), (c1, 1), (c2, 2))
    assert bound_pulled(slots, 1) == 2 and all(s.pulled is c2 for s in slots)


@pytest.mark.parametrize("history", [0, -1, 2.0, True])
def test_the_bound_must_be_a_positive_int(history):
    with pytest.raises(ConfigError, match=f"`history` must be an int ≥ 1. Received: history={history!r}"):
        bound_pulled([], history)
    with pytest.raises(ConfigError, match=f"`history` must be an int ≥ 1. Received: history={history!r}"):
        algorithms.get("adag").make_params(history=history)


def test_only_params_with_a_history_bound_the_shard():
    assert history_of(algorithms.get("adag").make_params(history=3)) == 3
    assert history_of(algorithms.get("agn").make_params()) is None


# ---------------------------------------------------------------- in the shard


def make_core(history: int) -> ShardCore:
    config = ShardConfig(shard=0, num_shards=1, total_size=SIZE, algorithm="adag",
                         params={"eta": 0.01, "history": history}, chunk_bytes=8)
    return ShardCore(config, initial=np.zeros(SIZE, np.float32))


def call(core: ShardCore, op: str, worker: int, rid: int, data: np.ndarray | None = None, **fields) -> dict:
    frames = [] if data is None else as_frames(data, 8)
    if frames:
        fields.update(dtype="<f4", lens=tuple(f.nbytes for f in frames))
    request = Request(op=op, rid=rid, shard=0, worker=worker, session=1, **fields)
    out = core.handle(b"peer", request.encode(), [bytes(f) for f in frames])
    for o in out:
        if o.lease is not None:
            o.lease.release()  # sent
    reply = decode_reply(out[0].header)
    assert reply.op == op, reply.fields
    return reply.fields


def round_robin(core: ShardCore, workers: int, rounds: int) -> list[float]:
    """Every worker pulls, then each in turn commits and pulls again; the commits' mean scales."""
    rid = iter(range(1, 10_000))
    for w in range(workers):
        call(core, "hello", w, next(rid))
        call(core, "pull", w, next(rid))
    scales = []
    for r in range(rounds):
        for w in range(workers):
            step = np.linspace(0.01, 0.06, SIZE, dtype=np.float32) * (1 + w + r)
            scales.append(call(core, "commit", w, next(rid), step, base=core.version)["info"]["scale"])
            call(core, "pull", w, next(rid))
            assert core.stats()["pulled_kept"] <= core._history
    return scales


def test_with_no_more_workers_than_the_bound_the_shard_is_exact():
    bounded, exact = make_core(history=2), make_core(history=64)
    assert round_robin(bounded, 2, 3) == round_robin(exact, 2, 3)
    assert bounded.center.tobytes() == exact.center.tobytes()
    assert bounded.stats()["pulled_released"] == 0


def test_with_more_workers_the_shard_keeps_the_bound_and_damps_stale_commits_less():
    bounded, exact = make_core(history=2), make_core(history=64)
    bounded_scales, exact_scales = round_robin(bounded, 8, 2), round_robin(exact, 8, 2)
    assert exact.stats()["pulled_kept"] == 8 and bounded.stats()["pulled_kept"] == 2
    assert len({id(s.pulled) for s in bounded.state.workers.values()}) == 2
    # From worker 1's pull on, each pull releases the oldest center: 7 in the first round, 8 in the second.
    assert bounded.stats()["pulled_released"] == 7 + 8
    # Workers 0 and 1 commit on the center they pulled, as in the exact rule; the later, stale
    # commits see a more recent center, so less drift, and are damped less.
    assert bounded_scales[:2] == exact_scales[:2]
    assert sum(bounded_scales[2:]) > sum(exact_scales[2:])


def test_a_worker_that_said_bye_keeps_no_center():
    core = make_core(history=4)
    round_robin(core, 3, 1)
    assert core.stats()["pulled_kept"] == 3
    call(core, "bye", 0, 100)
    assert core.state.workers[0].pulled is None and core.stats()["pulled_kept"] == 2


# ---------------------------------------------------------------- a real shard's memory

SLICE = 4 * 2**20  # floats: a 16 MiB slice, far above the interpreter's noise; commits go through `admit`


def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def peak_after_round_robin(shards, workers: int, history: int, commits: int = 8) -> tuple[int, dict]:
    """A real shard's peak RSS, and its stats, after ``workers`` clients committed and pulled in
    turn, ``commits`` in all: each holds a version of its own."""
    group = shards(total_size=SLICE, algorithm="adag", params={"history": history})
    delta = np.full(SLICE, 1e-6, np.float32)
    center = np.empty(SLICE, np.float32)
    with ExitStack() as stack:
        clients = [stack.enter_context(PSClient(group.endpoints, worker_id=w, timeout=30)) for w in range(workers)]
        for client in clients:
            client.hello()
        for i in range(commits):
            clients[i % workers].commit(delta)
            clients[i % workers].pull(center)
        stats = clients[0].stats()[0]
    peak = vm_hwm(group.pids[0])
    group.stop()
    return peak, stats


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc on this system")
def test_a_shards_memory_is_the_same_at_2_and_8_workers(shards):
    slice_bytes = SLICE * 4
    peak2, stats2 = peak_after_round_robin(shards, 2, history=2)
    peak8, stats8 = peak_after_round_robin(shards, 8, history=2)
    exact8, stats_exact = peak_after_round_robin(shards, 8, history=8)
    assert stats2["pulled_kept"] == 2 and stats8["pulled_kept"] == 2 and stats_exact["pulled_kept"] == 8
    assert stats2["updates"] == stats8["updates"] == 8 and stats8["pulled_released"] == 6
    assert peak8 - peak2 < 1.0 * slice_bytes, (peak2 / slice_bytes, peak8 / slice_bytes)
    # The exact rule keeps a slice per worker, 6 more than the bound at 8 workers; the bound's
    # released slice becomes the spare the next update goes to, so the peaks differ by about 5.
    assert exact8 - peak8 > 4.5 * slice_bytes, (peak8 / slice_bytes, exact8 / slice_bytes)


def test_adag_worker_refuses_a_history_it_would_not_use():
    # adag_worker keeps no pulled centers on the shard: a `history` would be silently ignored.
    from zdk.algorithms.registry import get

    with pytest.raises(ConfigError, match="history"):
        get("adag_worker").make_params({"history": 4})
    assert get("adag").make_params({"history": 4}).history == 4
