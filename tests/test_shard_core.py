"""ShardCore alone: the server's request handling with no sockets and no event loop."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest

from zdk.errors import ConfigError
from zdk.ps.protocol import PROTOCOL_VERSION, Request, as_frames, decode_reply
from zdk.ps.shard import ShardConfig, ShardCore

SIZE = 12

SESSION = 0x5E55


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_core(**overrides) -> ShardCore:
    config = dict(shard=0, num_shards=1, total_size=SIZE, algorithm="downpour", max_frame_bytes=1024, chunk_bytes=16)
    config.update(overrides)
    clock = config.pop("clock", None)
    initial = config.pop("initial", np.arange(SIZE, dtype=np.float32))
    kwargs = {"clock": clock} if clock else {}
    return ShardCore(ShardConfig(**config), initial=initial, **kwargs)


def send(core: ShardCore, request: Request | bytes, frames=(), peer=b"w"):
    header = request.encode() if isinstance(request, Request) else request
    out = core.handle(peer, header, [bytes(f) for f in frames])
    return [(o.peer, decode_reply(o.header), [bytes(f) for f in o.frames]) for o in out]


def hello(core: ShardCore, worker: int = 1, attempt: int = 0):
    (_, reply, _), = send(core, Request(op="hello", rid=1, shard=core.config.shard, worker=worker, session=SESSION, attempt=attempt))
    return reply


def commit(core, delta, *, rid=10, worker=1, base=None, attempt=0):
    frames = as_frames(np.ascontiguousarray(delta, dtype=np.float32), 16)
    req = Request(op="commit", rid=rid, shard=core.config.shard, worker=worker, session=SESSION, attempt=attempt,
                  base=core.version if base is None else base, dtype="<f4", lens=tuple(f.nbytes for f in frames))
    return send(core, req, frames)


def pull(core, *, rid=20, worker=1, **kw):
    return send(core, Request(op="pull", rid=rid, shard=core.config.shard, worker=worker, session=SESSION, **kw))


def test_hello_reports_range_algorithm_and_params():
    core = make_core(shard=1, num_shards=3, total_size=10, initial=None)
    reply = hello(core)
    assert reply.op == "hello" and reply.fields["range"] == [4, 7] and reply.fields["total"] == 10
    assert reply.fields["algorithm"] == "downpour" and reply.fields["params"] == {"communication_window": 5}
    assert reply.fields["dtype"] == "<f4"


def test_pull_returns_the_center_in_chunks():
    core = make_core()
    hello(core)
    (_, reply, frames), = pull(core)
    assert reply.lens == (16, 16, 16)
    np.testing.assert_array_equal(np.frombuffer(b"".join(frames), "<f4"), np.arange(SIZE))


def test_commit_adds_delta_and_bumps_version():
    core = make_core()
    hello(core)
    (_, reply, _), = commit(core, np.ones(SIZE))
    assert reply.op == "commit" and reply.fields["applied"] and reply.version == 1
    np.testing.assert_array_equal(core.center, np.arange(SIZE) + 1)


def test_retried_commit_is_applied_once():
    core = make_core()
    hello(core)
    first = commit(core, np.ones(SIZE), rid=77)
    second = commit(core, np.ones(SIZE), rid=77)
    assert first[0][1] == second[0][1]
    np.testing.assert_array_equal(core.center, np.arange(SIZE) + 1)
    assert core.stats()["duplicates"] == 1 and core.stats()["updates"] == 1


def test_staleness_is_version_minus_base():
    core = make_core()
    hello(core, worker=1)
    hello(core, worker=2)
    commit(core, np.ones(SIZE), worker=1, rid=1)
    commit(core, np.ones(SIZE), worker=1, rid=2)
    (_, reply, _), = commit(core, np.ones(SIZE), worker=2, rid=3, base=0)
    assert reply.fields["staleness"] == 2
    assert core.stats()["workers"]["2"]["staleness"] == 2


def test_pull_reply_is_not_changed_by_a_later_commit():
    core = make_core()
    hello(core)
    out = core.handle(b"w", Request(op="pull", rid=5, shard=0, worker=1, session=SESSION).encode(), [])
    in_flight = out[0].frames  # what ZeroMQ would still be sending
    commit(core, np.full(SIZE, 100.0))
    np.testing.assert_array_equal(np.frombuffer(b"".join(bytes(f) for f in in_flight), "<f4"), np.arange(SIZE))
    np.testing.assert_array_equal(core.center, np.arange(SIZE) + 100)


def bad_commit_cases():
    good = np.ones(SIZE, dtype=np.float32)
    nan = good.copy()
    nan[3] = np.nan
    yield "garbage header", b"\x92\xc1\xff", [], "bad_header"
    yield "not a map", msgpack.packb([1, 2, 3]), [], "bad_header"
    yield "unknown op", msgpack.packb({"v": PROTOCOL_VERSION, "op": "drop_table", "rid": 1, "shard": 0}), [], "unknown_op"
    yield "wrong shard", Request(op="commit", base=0, rid=1, shard=5, worker=1, session=SESSION, dtype="<f4", lens=(48,)).encode(), [good.tobytes()], "wrong_shard"
    yield "truncated", Request(op="commit", base=0, rid=1, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(16, 32)).encode(), [good[:4].tobytes()], "truncated"
    yield "extra frame", Request(op="commit", base=0, rid=1, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(48,)).encode(), [good.tobytes(), b"x"], "extra_frame"
    yield "wrong dtype", Request(op="commit", base=0, rid=1, shard=0, worker=1, session=SESSION, dtype="<f8", lens=(96,)).encode(), [good.astype("<f8").tobytes()], "bad_dtype"
    yield "wrong length", Request(op="commit", base=0, rid=1, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(44,)).encode(), [good[:11].tobytes()], "bad_length"
    yield "frame over maximum", Request(op="commit", base=0, rid=1, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(2048,)).encode(), [b"\0" * 2048], "frame_too_large"
    yield "unknown worker", Request(op="commit", base=0, rid=1, shard=0, worker=9, session=SESSION, dtype="<f4", lens=(48,)).encode(), [good.tobytes()], "unknown_worker"
    yield "non-finite", Request(op="commit", base=0, rid=1, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(48,)).encode(), [nan.tobytes()], "non_finite"
    yield "future base", Request(op="commit", rid=1, shard=0, worker=1, session=SESSION, base=99, dtype="<f4", lens=(48,)).encode(), [good.tobytes()], "bad_base"
    yield "wrong generation", Request(op="commit", base=0, rid=1, shard=0, worker=1, session=SESSION, gen=1, dtype="<f4", lens=(48,)).encode(), [good.tobytes()], "restarted"


@pytest.mark.parametrize("name,header,frames,code", list(bad_commit_cases()), ids=[c[0] for c in bad_commit_cases()])
def test_malformed_input_gets_an_error_reply_and_leaves_the_center(name, header, frames, code):
    core = make_core()
    hello(core)
    before, version = core.center.copy(), core.version
    (peer, reply, data), = send(core, header, frames)
    assert reply.op == "error" and reply.fields["code"] == code, reply.fields
    assert reply.fields["message"]
    assert peer == b"w" and data == []
    np.testing.assert_array_equal(core.center, before)
    assert core.version == version
    # ...and the shard keeps serving.
    (_, ok, _), = commit(core, np.ones(SIZE), rid=999)
    assert ok.op == "commit" and ok.fields["applied"]


def test_error_reply_echoes_the_request_id_when_it_can():
    core = make_core()
    (_, reply, _), = send(core, msgpack.packb({"v": PROTOCOL_VERSION, "op": "nope", "rid": 4242, "shard": 0}))
    assert reply.op == "error" and reply.rid == 4242


def test_older_attempt_is_refused_after_reregistration():
    core = make_core()
    hello(core, attempt=0)
    hello(core, attempt=1)
    (_, reply, _), = commit(core, np.ones(SIZE), attempt=0)
    assert reply.fields["code"] == "stale_attempt"
    (_, ok, _), = commit(core, np.ones(SIZE), attempt=1, rid=(1 << 40) + 1)
    assert ok.fields["applied"]
    np.testing.assert_array_equal(core.center, np.arange(SIZE) + 1)


def test_observer_hello_does_not_register_and_init_needs_no_active_workers():
    core = make_core()
    send(core, Request(op="hello", rid=1, shard=0, worker=5, args={"role": "observer"}))
    assert core.stats()["connected"] == 0
    init = Request(op="init", rid=2, shard=0, dtype="<f4", lens=(48,))
    (_, reply, _), = send(core, init, [np.full(SIZE, 3, np.float32).tobytes()])
    assert reply.op == "init" and core.center.tolist() == [3.0] * SIZE
    hello(core, worker=1)
    (_, refused, _), = send(core, init, [np.zeros(SIZE, np.float32).tobytes()])
    assert refused.fields["code"] == "busy"
    assert core.center.tolist() == [3.0] * SIZE


def test_observer_pull_needs_no_registration_and_changes_no_worker_state():
    core = make_core()
    (_, reply, frames), = pull(core, worker=77, args={"role": "observer"})
    assert reply.op == "pull" and np.frombuffer(b"".join(frames), "<f4").tolist() == list(range(SIZE))
    assert core.stats()["workers"] == {}


def test_bye_marks_worker_inactive_and_refuses_its_commits():
    core = make_core()
    hello(core)
    send(core, Request(op="bye", rid=3, shard=0, worker=1, session=SESSION))
    assert core.stats()["workers"]["1"]["active"] is False
    (_, reply, _), = commit(core, np.ones(SIZE))
    assert reply.fields["code"] == "left"


def test_parked_pull_is_released_by_the_version_it_waits_for():
    core = make_core(algorithm="averaging", params={"num_workers": 2})
    hello(core, worker=1)
    hello(core, worker=2)
    assert commit(core, np.full(SIZE, 2.0), worker=1, rid=1)[0][1].fields["applied"]
    assert pull(core, worker=1, rid=2, min_version=1, wait=5.0) == []  # parked
    out = commit(core, np.full(SIZE, 4.0), worker=2, rid=3)
    ops = sorted(r.op for _, r, _ in out)
    assert ops == ["commit", "pull"]
    released = next(d for _, r, d in out if r.op == "pull")
    np.testing.assert_array_equal(np.frombuffer(b"".join(released), "<f4"), np.full(SIZE, 3.0))


def test_parked_pull_expires_with_an_error_naming_the_missing_worker():
    clock = FakeClock()
    core = make_core(algorithm="averaging", params={"num_workers": 2}, clock=clock)
    hello(core, worker=1)
    hello(core, worker=2)
    commit(core, np.ones(SIZE), worker=1, rid=1)
    assert pull(core, worker=1, rid=2, min_version=1, wait=3.0) == []
    assert core.next_deadline() == pytest.approx(103.0)
    assert core.expire() == []
    clock.now = 103.5
    (out,) = core.expire()
    reply = decode_reply(out.header)
    assert reply.op == "error" and reply.fields["code"] == "deadline" and "[2]" in reply.fields["message"]


def test_checkpoint_is_atomic_and_restored_at_start(tmp_path):
    core = make_core(checkpoint_dir=str(tmp_path))
    hello(core)
    commit(core, np.ones(SIZE))
    (_, reply, _), = send(core, Request(op="checkpoint", rid=4, shard=0))
    path = reply.fields["path"]
    assert os.path.dirname(path) == str(tmp_path) and os.listdir(tmp_path) == [os.path.basename(path)]
    restored = make_core(checkpoint_dir=str(tmp_path), initial=None)
    assert restored.version == 1
    np.testing.assert_array_equal(restored.center, np.arange(SIZE) + 1)


def test_checkpoint_without_directory_is_an_error():
    core = make_core()
    (_, reply, _), = send(core, Request(op="checkpoint", rid=4, shard=0))
    assert reply.fields["code"] == "no_checkpoint_dir"


def test_checkpoint_of_another_layout_is_refused(tmp_path):
    core = make_core(checkpoint_dir=str(tmp_path))
    core.write_checkpoint(core.config.checkpoint_path)
    os.rename(core.config.checkpoint_path, str(tmp_path / "shard-000-of-001.npz"))
    with pytest.raises(ConfigError, match="holds range"):
        make_core(checkpoint_dir=str(tmp_path), total_size=SIZE + 1, initial=None)


def test_shutdown_sets_stopping():
    core = make_core()
    send(core, Request(op="shutdown", rid=1, shard=0))
    assert core.stopping


def test_stats_counts_bytes_updates_and_workers():
    core = make_core()
    hello(core)
    commit(core, np.ones(SIZE))
    pull(core)
    stats = core.stats()
    assert stats["updates"] == 1 and stats["version"] == 1 and stats["connected"] == 1
    assert stats["bytes_in"] > 48 and stats["bytes_out"] > 48


def test_algorithm_without_ps_is_refused():
    with pytest.raises(ConfigError, match="must use the parameter server"):
        make_core(algorithm="ensemble")


def test_an_algorithm_bug_is_an_error_reply_not_a_crash():
    from zdk import algorithms
    from zdk.algorithms import Algorithm, Params

    def broken(shard, worker, delta, params):
        raise RuntimeError("boom")

    algorithms.register(Algorithm(name="test-broken", params=Params, server_update=broken,
                                  worker_delta=lambda w, p: w.local, worker_reset=lambda w, p: None))
    try:
        core = make_core(algorithm="test-broken")
        hello(core)
        (_, reply, _), = commit(core, np.ones(SIZE))
        assert reply.fields["code"] == "internal" and "boom" in reply.fields["message"]
        assert core.version == 0
    finally:
        algorithms.unregister("test-broken")


def test_a_non_finite_value_in_a_later_frame_leaves_the_center_untouched():
    """Additive commits are applied frame by frame: every frame is checked before the first is applied."""
    core = make_core()
    hello(core)
    delta = np.ones(SIZE, np.float32)
    delta[-1] = np.inf  # in the last of three 16-byte frames
    (_, reply, _), = commit(core, delta)
    assert reply.fields["code"] == "non_finite" and "index 11" in reply.fields["message"]
    np.testing.assert_array_equal(core.center, np.arange(SIZE))
    assert core.version == 0
