"""Exactly-once commits across client restarts and re-registrations, quorum-aware rounds,
required header fields, and copy-on-write that rests on explicit leases."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from zdk.errors import RemoteError
from zdk.ps.client import PSClient
from zdk.ps.protocol import PROTOCOL_VERSION, Request, as_frames, decode_reply
from zdk.ps.shard import ShardConfig, ShardCore

SIZE = 12


def make_core(**overrides) -> ShardCore:
    config = dict(shard=0, num_shards=1, total_size=SIZE, algorithm="downpour", max_frame_bytes=1024, chunk_bytes=16)
    config.update(overrides)
    return ShardCore(ShardConfig(**config), initial=np.zeros(SIZE, np.float32))


def call(core: ShardCore, op: str, *, worker: int = 1, session: int = 1, rid: int = 1, data=None, **fields):
    frames = [] if data is None else as_frames(np.ascontiguousarray(data, np.float32), 16)
    if frames:
        fields.update(dtype="<f4", lens=tuple(f.nbytes for f in frames))
    request = Request(op=op, rid=rid, shard=0, worker=worker, session=session, **fields)
    out = core.handle(b"peer", request.encode(), [bytes(f) for f in frames])
    return [decode_reply(o.header) for o in out], out


def commit(core, value, *, base=None, **kw):
    replies, _ = call(core, "commit", data=np.full(SIZE, value, np.float32),
                      base=core.version if base is None else base, **kw)
    return replies[0]


# ---------------------------------------------------------------- sessions


def test_two_client_sessions_with_the_same_ids_both_count():
    """The bug users hit: a second client (same worker id, attempt and request ids) got the
    first one's cached replies, `applied=True`, and nothing was applied."""
    core = make_core()
    for session in (111, 222):
        call(core, "hello", session=session)
        for rid in (1, 2, 3):
            reply = commit(core, 1.0, session=session, rid=rid)
            assert reply.op == "commit" and reply.fields["applied"]
    np.testing.assert_array_equal(core.center, np.full(SIZE, 6.0))
    assert core.stats()["updates"] == 6 and core.stats()["duplicates"] == 0


def test_a_resend_within_a_session_is_applied_once():
    core = make_core()
    call(core, "hello")
    first, again = commit(core, 1.0, rid=9), commit(core, 1.0, rid=9, base=0)
    assert first == again
    np.testing.assert_array_equal(core.center, np.full(SIZE, 1.0))
    assert core.stats()["duplicates"] == 1


def test_the_superseded_session_is_refused():
    core = make_core()
    call(core, "hello", session=111)
    call(core, "hello", session=222)
    reply = commit(core, 1.0, session=111, rid=5)
    assert reply.op == "error" and reply.fields["code"] == "stale_session"
    assert reply.fields["request_op"] == "commit"
    np.testing.assert_array_equal(core.center, np.zeros(SIZE))


def test_hello_again_from_the_same_session_keeps_the_registration():
    core = make_core()
    call(core, "hello")
    commit(core, 1.0, rid=4)
    call(core, "hello", rid=5)  # a resent hello, or a re-sync
    assert commit(core, 1.0, rid=4, base=0).fields["applied"]  # still deduplicated: same registration
    assert core.stats()["duplicates"] == 1


def test_reregistration_drops_the_adag_snapshot_and_plugin_state():
    core = make_core(algorithm="adag", params={"eta": 1.0})
    call(core, "hello")
    call(core, "pull", rid=2)
    slot = core.state.workers[1]
    slot.state["plugin"] = "old attempt's bookkeeping"
    assert slot.pulled is not None
    call(core, "hello", session=2, attempt=1)
    fresh = core.state.workers[1]
    assert fresh.pulled is None and fresh.state == {} and fresh.session == 2 and fresh.attempt == 1


# ---------------------------------------------------------------- averaging rounds


def test_averaging_without_a_quorum_refuses_commits():
    core = make_core(algorithm="averaging")
    call(core, "hello")
    reply = commit(core, 1.0)
    assert reply.fields["code"] == "no_quorum" and "quorum" in reply.fields["message"]
    assert core.version == 0 and core.state.state.get("contributions", {}) == {}


def test_a_round_waits_for_the_quorum_announced_at_hello():
    core = make_core(algorithm="averaging")
    call(core, "hello", worker=0, args={"quorum": 2})
    commit(core, 2.0, worker=0)
    assert core.version == 0, "the round closed with 1 of 2 workers"
    call(core, "hello", worker=1, args={"quorum": 2})
    commit(core, 4.0, worker=1)
    assert core.version == 1
    np.testing.assert_array_equal(core.center, np.full(SIZE, 3.0))


def test_a_retried_attempt_does_not_average_in_the_dead_attempts_weights():
    core = make_core(algorithm="averaging", params={"num_workers": 2})
    call(core, "hello", worker=0)
    call(core, "hello", worker=1)
    commit(core, 100.0, worker=1)  # then this attempt dies
    call(core, "hello", worker=1, session=9, attempt=1)
    assert commit(core, 2.0, worker=1, session=9, attempt=1).fields["applied"], "the retry was refused as bad_round"
    commit(core, 4.0, worker=0)
    assert core.version == 1
    np.testing.assert_array_equal(core.center, np.full(SIZE, 3.0))


def test_bye_counts_towards_the_quorum():
    core = make_core(algorithm="averaging", params={"num_workers": 2})
    call(core, "hello", worker=0)
    call(core, "hello", worker=1)
    commit(core, 2.0, worker=0)
    call(core, "bye", worker=1, rid=7)
    assert core.version == 1
    np.testing.assert_array_equal(core.center, np.full(SIZE, 2.0))
    replies, _ = call(core, "bye", worker=1, rid=7)  # resent
    assert replies[0].op == "bye"


# ---------------------------------------------------------------- required fields


@pytest.mark.parametrize("header,missing", [
    ({"op": "commit", "worker": 1, "session": 1, "dtype": "<f4", "lens": [48]}, "`base`"),
    ({"op": "commit", "session": 1, "base": 0, "dtype": "<f4", "lens": [48]}, "`worker`"),
    ({"op": "commit", "worker": 1, "base": 0, "dtype": "<f4", "lens": [48]}, "`session`"),
    ({"op": "pull", "session": 1}, "`worker`"),
    ({"op": "bye", "worker": 1}, "`session`"),
    ({"op": "hello", "session": 1}, "`worker`"),
])
def test_required_fields_are_required_and_errors_name_the_op(header, missing):
    core = make_core()
    call(core, "hello")
    frames = [np.ones(SIZE, np.float32).tobytes()] if header["op"] == "commit" else []
    (out,) = core.handle(b"peer", msgpack.packb({"v": PROTOCOL_VERSION, "rid": 5, "shard": 0, **header}), frames)
    reply = decode_reply(out.header)
    assert reply.op == "error" and reply.fields["code"] == "bad_header" and missing in reply.fields["message"]
    assert reply.fields["request_op"] == header["op"] and reply.rid == 5
    np.testing.assert_array_equal(core.center, np.zeros(SIZE))


def test_an_observer_pull_needs_neither_worker_nor_session():
    core = make_core()
    out = core.handle(b"peer", msgpack.packb({"v": PROTOCOL_VERSION, "rid": 5, "shard": 0, "op": "pull",
                                              "args": {"role": "observer"}}), [])
    assert decode_reply(out[0].header).op == "pull"


# ---------------------------------------------------------------- copy-on-write by lease


def test_held_pull_frames_and_an_adag_snapshot_survive_many_commits_bit_for_bit():
    core = make_core(algorithm="adag", params={"eta": 1.0})
    call(core, "hello", worker=1)
    call(core, "hello", worker=2)
    commit(core, 0.5, worker=2, rid=1)
    _, out = call(core, "pull", worker=1, rid=2)
    held = out[0].frames  # what ZeroMQ would still be sending
    expected = np.frombuffer(b"".join(bytes(f) for f in held), "<f4").copy()
    snapshot = core.state.workers[1].pulled
    assert snapshot is not None
    for rid in range(10, 60):
        commit(core, 0.25, worker=2, rid=rid)
    assert np.frombuffer(b"".join(bytes(f) for f in held), "<f4").tobytes() == expected.tobytes()
    assert snapshot.tobytes() == expected.tobytes() and core.state.workers[1].pulled is snapshot
    assert not np.array_equal(core.center, expected)


def test_additive_updates_never_write_a_lent_buffer_and_reuse_released_ones():
    core = make_core()
    call(core, "hello")
    _, out = call(core, "pull", rid=2)
    lent = core.center
    commit(core, 1.0, rid=3)
    assert core.center is not lent and lent.tolist() == [0.0] * SIZE, "a lent center was written"
    out[0].lease.release()
    _, out = call(core, "pull", rid=4)
    out[0].lease.release()
    commit(core, 1.0, rid=5)
    # θ̃ + Δ goes to a free buffer: the released one comes back instead of a new allocation.
    assert core.center is lent and core.center.tolist() == [2.0] * SIZE
    assert len(core._pool) == 2


class _Tracker:
    done = False


def test_a_tracked_lease_holds_until_the_transport_is_done():
    core = make_core()
    call(core, "hello")
    _, out = call(core, "pull", rid=2)
    tracker = _Tracker()
    out[0].lease.track(tracker)
    lent = core.center
    for rid in (3, 4, 5):
        commit(core, 1.0, rid=rid)
        assert core.center is not lent and lent.tolist() == [0.0] * SIZE
    tracker.done = True
    commit(core, 1.0, rid=6)
    assert core.center is lent, "the buffer of a finished send is reused"
    assert core.center.tolist() == [4.0] * SIZE


# ---------------------------------------------------------------- through real shard processes


def test_two_client_sessions_against_one_running_ps_apply_every_commit(shards):
    group = shards(num_shards=2, total_size=SIZE, algorithm="downpour")
    for _ in range(2):
        with PSClient(group.endpoints, worker_id=0, attempt=0, timeout=10) as client:
            client.hello()
            for _ in range(3):
                assert client.commit(np.ones(SIZE, np.float32)).applied
                client.pull()
    with PSClient(group.endpoints, worker_id=99, timeout=10) as observer:
        observer.hello(register=False)
        np.testing.assert_array_equal(observer.pull(), np.full(SIZE, 6.0))
        assert sum(s["updates"] for s in observer.stats()) == 12


def test_the_superseded_client_gets_a_clear_error(shards):
    group = shards(num_shards=1, total_size=SIZE, algorithm="downpour")
    with PSClient(group.endpoints, worker_id=3, timeout=10) as old, \
            PSClient(group.endpoints, worker_id=3, timeout=10) as new:
        old.hello()
        new.hello()
        with pytest.raises(RemoteError, match="stale_session"):
            old.commit(np.ones(SIZE, np.float32))
        assert new.commit(np.ones(SIZE, np.float32)).applied
