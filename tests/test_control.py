"""Wire protocol 2 in ShardCore alone: epoch reports, the driver's control state, and the version check."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from test_shard_core import SESSION, SIZE, commit, hello, make_core, pull, send
from zdk.errors import ConfigError, ProtocolError
from zdk.ps.client import PSClient
from zdk.ps.protocol import (
    OBSERVER_DRIVER, PROTOCOL_VERSION, Control, Reply, Request, check_epoch_end, decode_reply,
)
from zdk.ps.shard import MAX_EPOCHS_KEPT, MAX_EPOCHS_PER_STATS


def report(core, epoch_end, *, rid=30, worker=1, session=SESSION, **args):
    return send(core, Request(op="report", rid=rid, shard=0, worker=worker, session=session,
                              args={"epoch_end": epoch_end, **args}))


def control(core, state, *, rid=40, role="observer"):
    return send(core, Request(op="control", rid=rid, shard=0, worker=OBSERVER_DRIVER,
                              args={"role": role, "control": state}))


def stats(core, **args):
    (_, reply, _), = send(core, Request(op="stats", rid=50, shard=0, args=args))
    assert reply.op == "stats", reply.fields
    return reply.fields["stats"]


def only(out):
    (_, reply, _), = out
    return reply


# ---------------------------------------------------------------- epoch reports


def test_a_report_is_stored_by_epoch_and_listed_by_stats_from_an_epoch():
    core = make_core()
    hello(core)
    before = core.center.copy()
    for epoch in range(3):
        reply = only(report(core, {"epoch": epoch, "samples": 64, "loss": 1.0 / (epoch + 1), "accuracy": 0.5},
                            rid=30 + epoch, report={"step": 10.0 * (epoch + 1)}))
        assert reply.op == "report" and reply.version == 0 and "control" not in reply.fields
    np.testing.assert_array_equal(core.center, before)
    assert core.version == 0

    listed = stats(core, epochs_from=1)["workers"]["1"]
    assert listed["epochs"] == {"1": {"epoch": 1, "samples": 64.0, "loss": 0.5, "accuracy": 0.5},
                                "2": {"epoch": 2, "samples": 64.0, "loss": pytest.approx(1 / 3), "accuracy": 0.5}}
    assert listed["report"] == {"step": 30.0}
    assert "epochs" not in stats(core)["workers"]["1"]  # stats stays small unless asked
    assert core.stats(epochs_from=0)["reports"] == 3

    only(report(core, {"epoch": 1, "samples": 32, "loss": 9.0}, rid=99))  # a resend overwrites its epoch
    assert stats(core, epochs_from=1)["workers"]["1"]["epochs"]["1"] == {"epoch": 1, "samples": 32.0, "loss": 9.0}


def test_a_diverged_loss_is_accepted_so_the_driver_sees_it():
    core = make_core()
    hello(core)
    assert only(report(core, {"epoch": 0, "samples": 8, "loss": math.nan, "mse": math.inf})).op == "report"
    summary = stats(core, epochs_from=0)["workers"]["1"]["epochs"]["0"]
    assert math.isnan(summary["loss"]) and summary["mse"] == math.inf


@pytest.mark.parametrize("args,text", [
    ({}, "`args.epoch_end` is required for `report`"),
    ({"epoch_end": [0, 1]}, "`args.epoch_end` must map ≤ 16 names"),
    ({"epoch_end": {"epoch": 0, "samples": 1, **{f"m{i}": 0.0 for i in range(15)}}}, "`args.epoch_end` must map ≤ 16"),
    ({"epoch_end": {"epoch": 0, "samples": 1, "loss": "low"}}, "Received: {'epoch': 0, 'samples': 1, 'loss': 'low'}"),
    ({"epoch_end": {"epoch": 0, "samples": 1, "x" * 129: 1.0}}, "1 to 128 characters"),
    ({"epoch_end": {"samples": 1, "loss": 0.1}}, "must contain `epoch` and `samples`. Received: keys ['loss', 'samples']"),
    ({"epoch_end": {"epoch": 0}}, "must contain `epoch` and `samples`"),
    ({"epoch_end": {"epoch": -1, "samples": 1}}, "`args.epoch_end.epoch` must be an int in [0, 4294967295]"),
    ({"epoch_end": {"epoch": 1.5, "samples": 1}}, "Received: epoch=1.5"),
    ({"epoch_end": {"epoch": True, "samples": 1}}, "`args.epoch_end` must map"),
    ({"epoch_end": {"epoch": 0, "samples": -3}}, "`args.epoch_end.samples` must be a finite number ≥ 0"),
    ({"epoch_end": {"epoch": 0, "samples": math.nan}}, "Received: samples=nan"),
    ({"epoch_end": {"epoch": 0, "samples": 1}, "report": {"loss": None}}, "`args.report` must map"),
])
def test_a_bad_report_gets_an_error_naming_the_field_and_changes_nothing(args, text):
    core = make_core()
    hello(core)
    before = core.center.copy()
    reply = only(send(core, Request(op="report", rid=7, shard=0, worker=1, session=SESSION, args=args)))
    assert reply.op == "error" and reply.fields["code"] == "bad_header" and reply.rid == 7
    assert text in reply.fields["message"], reply.fields["message"]
    np.testing.assert_array_equal(core.center, before)
    assert core.version == 0 and core.stats(epochs_from=0)["workers"]["1"]["epochs"] == {}
    assert core.stats()["workers"]["1"]["report"] == {}


def test_report_is_a_registered_workers_op_without_data():
    core = make_core()
    good = {"epoch": 0, "samples": 1}
    assert only(report(core, good, worker=3)).fields["code"] == "unknown_worker"
    hello(core)
    as_observer = Request(op="report", rid=8, shard=0, args={"role": "observer", "epoch_end": good})
    assert "`report` is a registered worker's op" in only(send(core, as_observer)).fields["message"]
    with_data = Request(op="report", rid=9, shard=0, worker=1, session=SESSION, dtype="<f4", lens=(4,),
                        args={"epoch_end": good})
    assert only(send(core, with_data, [b"\0" * 4])).fields["code"] == "extra_frame"
    send(core, Request(op="bye", rid=10, shard=0, worker=1, session=SESSION))
    assert only(report(core, good, rid=11)).fields["code"] == "left"


def test_a_shard_keeps_the_latest_epochs_and_lists_a_bounded_number_per_stats():
    core = make_core()
    hello(core)
    extra = 5
    for epoch in range(MAX_EPOCHS_KEPT + extra):
        report(core, {"epoch": epoch, "samples": 1}, rid=100 + epoch)
    listed = core.stats(epochs_from=0)["workers"]["1"]["epochs"]
    assert list(listed) == [str(e) for e in range(extra, extra + MAX_EPOCHS_PER_STATS)]
    last = MAX_EPOCHS_KEPT + extra - 1
    assert list(core.stats(epochs_from=last)["workers"]["1"]["epochs"]) == [str(last)]


def test_a_worker_that_registers_again_keeps_its_epochs_only_within_its_session():
    """Chosen: a new registration (a new client session or a later attempt: a retried task or
    another job) starts with no epochs, like its dedupe window and its progress report; the same
    session saying `hello` again (a resend, a re-sync) keeps them."""
    core = make_core()
    hello(core)
    report(core, {"epoch": 0, "samples": 4})
    hello(core)  # the same session again
    assert list(core.stats(epochs_from=0)["workers"]["1"]["epochs"]) == ["0"]
    send(core, Request(op="hello", rid=2, shard=0, worker=1, session=SESSION + 1))
    assert core.stats(epochs_from=0)["workers"]["1"]["epochs"] == {}
    assert only(report(core, {"epoch": 1, "samples": 4})).fields["code"] == "stale_session"


@pytest.mark.parametrize("bad", [-1, 1.0, True, "0"])
def test_stats_refuses_a_bad_epochs_from(bad):
    core = make_core()
    (_, reply, _), = send(core, Request(op="stats", rid=5, shard=0, args={"epochs_from": bad}))
    assert reply.op == "error" and f"`args.epochs_from` must be an int in [0, 4294967295]. Received: " \
        f"args.epochs_from={bad!r}" in reply.fields["message"]


# ---------------------------------------------------------------- control


def test_control_replaces_the_state_bumps_its_version_and_reaches_every_worker_reply():
    core = make_core()
    assert all("control" not in r.fields for r in (hello(core), only(pull(core))))  # none set yet
    assert core.stats()["control"] == {} and core.stats()["control_version"] == 0

    first = only(control(core, {"stop": False, "learning_rate": 0.01}))
    assert first.op == "control" and first.fields["control"] == {"stop": False, "learning_rate": 0.01}
    assert first.fields["control_version"] == 1
    second = only(control(core, {"stop": True}, rid=41))  # the whole state: the learning rate is gone
    assert second.fields == {"control": {"stop": True}, "control_version": 2}
    assert core.control == Control(stop=True) and core.control_version == 2

    replies = {
        "hello": hello(core, worker=2),
        "pull": only(pull(core, worker=2)),
        "commit": only(commit(core, np.ones(SIZE), worker=2)),
        "report": only(report(core, {"epoch": 0, "samples": 1}, worker=2)),
        "observer hello": only(send(core, Request(op="hello", rid=3, shard=0, args={"role": "observer"}))),
    }
    for name, reply in replies.items():
        assert reply.fields["control"] == {"stop": True} and reply.fields["control_version"] == 2, name
    assert core.stats()["control"] == {"stop": True} and core.stats()["control_version"] == 2
    stats_reply = only(send(core, Request(op="stats", rid=4, shard=0)))
    assert "control" not in stats_reply.fields  # beside `stats`, only the replies a worker reads carry it
    np.testing.assert_array_equal(core.center, np.arange(SIZE) + 1)  # only the commit changed it


def test_a_parked_pull_is_answered_with_the_control_of_its_release():
    core = make_core(algorithm="averaging", params={"num_workers": 2})
    hello(core, worker=1)
    hello(core, worker=2)
    commit(core, np.ones(SIZE), worker=1, rid=1)
    assert pull(core, worker=1, rid=2, min_version=1, wait=5.0) == []
    control(core, {"stop": True})
    released = next(r for _, r, _ in commit(core, np.ones(SIZE), worker=2, rid=3) if r.op == "pull")
    assert released.fields["control"] == {"stop": True} and released.fields["control_version"] == 1


@pytest.mark.parametrize("state,text", [
    ({}, "`args.control` must be a map with `stop`"),
    ([True], "`args.control` must be a map with `stop`"),
    ({"stop": True, "patience": 3}, "Received: {'stop': True, 'patience': 3}"),
    ({"stop": 1}, "`args.control.stop` must be a bool. Received: stop=1"),
    ({"stop": False, "learning_rate": float("nan")}, "`args.control.learning_rate` must be a finite float ≥ 0"),
    ({"stop": False, "learning_rate": -0.1}, "Received: learning_rate=-0.1"),
    ({"stop": False, "learning_rate": math.nan}, "Received: learning_rate=nan"),
    ({"stop": False, "learning_rate": math.inf}, "Received: learning_rate=inf"),
    ({"stop": False, "learning_rate": "1e-3"}, "Received: learning_rate='1e-3'"),
])
def test_a_bad_control_is_refused_and_the_state_stays(state, text):
    core = make_core()
    control(core, {"stop": False, "learning_rate": 0.5})
    reply = only(control(core, state, rid=77))
    assert reply.op == "error" and reply.fields["code"] == "bad_header" and reply.rid == 77
    assert text in reply.fields["message"], reply.fields["message"]
    assert core.control == Control(stop=False, learning_rate=0.5) and core.control_version == 1


def test_control_is_sent_as_an_observer_and_needs_its_state():
    core = make_core()
    hello(core)
    as_worker = only(send(core, Request(op="control", rid=5, shard=0, worker=1, session=SESSION,
                                        args={"control": {"stop": True}})))
    assert "`control` is sent as an observer: `args.role` must be 'observer'. Received: role='worker'" \
        in as_worker.fields["message"]
    missing = only(send(core, Request(op="control", rid=6, shard=0, args={"role": "observer"})))
    assert "`args.control` is required for `control`" in missing.fields["message"]
    assert core.control is None and core.control_version == 0


def test_init_starts_a_new_job_without_the_last_jobs_control_or_epochs():
    core = make_core()
    hello(core)
    report(core, {"epoch": 0, "samples": 1})
    control(core, {"stop": True})
    send(core, Request(op="bye", rid=3, shard=0, worker=1, session=SESSION))
    init = Request(op="init", rid=4, shard=0, dtype="<f4", lens=(4 * SIZE,))
    assert only(send(core, init, [np.zeros(SIZE, np.float32).tobytes()])).op == "init"
    assert core.control is None and core.control_version == 0
    assert core.stats()["control"] == {} and core.stats(epochs_from=0)["workers"]["1"]["epochs"] == {}
    fresh = only(send(core, Request(op="hello", rid=5, shard=0, worker=2, session=SESSION)))
    assert "control" not in fresh.fields


def test_control_is_not_checkpointed(tmp_path):
    core = make_core(checkpoint_dir=str(tmp_path))
    control(core, {"stop": True})
    core.write_checkpoint()
    restored = make_core(checkpoint_dir=str(tmp_path), initial=None)
    assert restored.control is None and restored.control_version == 0


def test_control_values_validate_on_construction_and_on_the_wire():
    assert Control(stop=False, learning_rate=1).to_wire() == {"stop": False, "learning_rate": 1.0}
    assert Control(stop=False, learning_rate=0).to_wire() == {"stop": False, "learning_rate": 0.0}  # freezes
    assert Control.decode({"stop": True}) == Control(stop=True)
    with pytest.raises(ConfigError, match=r"`learning_rate` must be a finite float ≥ 0") as info:
        Control(stop=False, learning_rate=-1.0)
    assert info.value.field == "learning_rate"
    with pytest.raises(ConfigError, match=r"`stop` must be a bool\. Received: stop='yes'"):
        Control(stop="yes")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"`control.stop` must be a bool"):
        Control.decode({"stop": None}, name="control")


def test_check_epoch_end_keeps_the_epoch_an_int():
    assert check_epoch_end({"epoch": 3, "samples": 10, "loss": 1}) == {"epoch": 3, "samples": 10.0, "loss": 1.0}
    assert isinstance(check_epoch_end({"epoch": 3, "samples": 10})["epoch"], int)


def test_the_client_checks_its_arguments_before_sending():
    with PSClient(["tcp://127.0.0.1:9"], worker_id=1, timeout=0.3) as client:
        with pytest.raises(ConfigError, match=r"`learning_rate` must be a finite float ≥ 0") as info:
            client.set_control(stop=False, learning_rate=-1.0)
        assert info.value.field == "learning_rate"
        with pytest.raises(ConfigError, match=r"`stop` must be a bool"):
            client.set_control(stop=None)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"`epoch_end.epoch` must be an int in \[0, 4294967295\]") as info:
            client.report({"epoch": 1.5, "samples": 3})
        assert info.value.field == "epoch_end"
        with pytest.raises(ConfigError, match=r"`epoch_end` must contain `epoch` and `samples`"):
            client.report({"loss": 0.3})
        with pytest.raises(ConfigError, match=r"`report` must map ≤ 16 names"):
            client.report({"epoch": 0, "samples": 3}, report={"phase": "train"})
        with pytest.raises(ConfigError, match=r"`epochs_from` must be an int in \[0, 4294967295\]"):
            client.stats(epochs_from=-1)
        assert client.resends == 0 and client.control == {} and client.control_version == 0


# ---------------------------------------------------------------- protocol version


def test_a_request_of_another_version_is_refused_in_its_own_version_so_an_old_client_reads_why():
    core = make_core()
    hello(core)
    before = core.center.copy()
    old = msgpack.packb({"v": 1, "op": "commit", "rid": 31, "shard": 0, "worker": 1, "session": SESSION, "base": 0,
                         "dtype": "<f4", "lens": [4 * SIZE]})
    (out,) = core.handle(b"w", old, [np.ones(SIZE, np.float32).tobytes()])
    header = msgpack.unpackb(out.header)
    assert header["v"] == 1 and header["op"] == "error" and header["rid"] == 31
    assert header["code"] == "bad_version" and header["request_op"] == "commit"
    assert ("this shard speaks zdk wire protocol 3, the client v=1: run the same zdk version on the driver, "
            "the workers and the shards") in header["message"]
    np.testing.assert_array_equal(core.center, before)
    assert core.version == 0


@pytest.mark.parametrize("v", [None, "2", -1, 2**40])
def test_an_unreadable_version_is_answered_in_this_one(v):
    core = make_core()
    (out,) = core.handle(b"w", msgpack.packb({"v": v, "op": "pull", "rid": 3, "shard": 0}), [])
    reply = decode_reply(out.header)
    assert reply.fields["code"] == "bad_version" and f"the client v={v!r}" in reply.fields["message"]


def test_a_reply_of_another_version_is_refused_with_what_to_do():
    old = Reply(op="error", rid=1, shard=0, gen=1, version=0, protocol=1,
                fields={"code": "bad_version", "message": "`v` must be 1. Received: v=2"}).encode()
    with pytest.raises(ProtocolError) as info:
        decode_reply(old)
    assert info.value.code == "bad_version"
    assert info.value.message.startswith(
        "`v` must be 3: this client speaks zdk wire protocol 3, the shard replied with v=1: run the same zdk "
        "version on the driver, the workers and the shards")
    assert "(the shard's error: `v` must be 1. Received: v=2)" in info.value.message
    assert PROTOCOL_VERSION == 3
