"""The supervisor restarts a crashed shard process from its checkpoint, and refuses plainly when it
cannot: no checkpoint, out of restarts, or a shard that stopped on purpose."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from conftest import poll_until
from zdk.errors import ConfigError, LaunchError
from zdk.ps.checkpoint import checkpoint_path
from zdk.ps.client import PSClient
from zdk.ps.protocol import OBSERVER_TOOL
from zdk.errors import ShardLost
from zdk.ps.supervisor import Restarted, Stopped, Supervisor

SIZE = 8


def commit_once(group) -> None:
    with PSClient(group.endpoints, worker_id=0, timeout=10) as client:
        client.hello()
        client.commit(np.full(SIZE, 2.0, np.float32))


def until_checked(supervisor: Supervisor):
    """Polls ``check()`` until it restarted or stopped something; returns that outcome."""

    def acted():
        outcome = supervisor.check()
        return outcome if outcome.restarted or outcome.stopped else None

    return poll_until(acted, timeout=20, what="the supervisor to see the dead shard")


def kill(group, shard: int) -> None:
    os.kill(group.pids[shard], signal.SIGKILL)
    group.processes[shard].wait(10)


def test_a_killed_shard_is_restarted_from_its_checkpoint_with_its_version(shards, tmp_path):
    group = shards(num_shards=2, total_size=SIZE, checkpoint_dir=str(tmp_path), checkpoint_every=0.1)
    supervisor = Supervisor(group, max_restarts=1)
    commit_once(group)
    path = checkpoint_path(str(tmp_path), 0, 2)
    poll_until(lambda: os.path.exists(path) and int(np.load(path)["version"][0]) == 1, timeout=10,
               what="shard 0 to checkpoint version 1")
    old_pid, endpoint = group.pids[0], group.endpoints[0]
    kill(group, 0)

    outcome = until_checked(supervisor)
    assert outcome.whole and outcome.stopped == ()
    assert outcome.restarted == (Restarted(shard=0, code=-signal.SIGKILL, checkpoint=path, endpoint=endpoint,
                                           restarts=1),)
    assert group.pids[0] != old_pid and group.alive() == [True, True]
    with PSClient(group.endpoints, worker_id=OBSERVER_TOOL, timeout=10) as observer:
        info = observer.hello(register=False)
        stats = observer.stats()
        center = observer.pull()
    assert info.versions == (1, 1)
    assert stats[0]["restored_from"] == path and stats[1]["restored_from"] is None
    np.testing.assert_array_equal(center, np.full(SIZE, 2.0))
    assert supervisor.check().restarted == ()

    kill(group, 0)  # a second crash is over the budget of one restart
    (lost,) = until_checked(supervisor).stopped
    assert lost == Stopped(shard=0, code=-signal.SIGKILL, cause="out_of_restarts", restarts=1)
    assert "shard 0 exited with code -9" in lost.message and "1 restart(s)" in lost.message


def test_a_shard_without_a_checkpoint_is_not_restarted_and_the_loss_names_it(shards):
    group = shards(num_shards=2, total_size=SIZE)
    supervisor = Supervisor(group)
    commit_once(group)
    old_pid = group.pids[1]
    kill(group, 1)

    outcome = until_checked(supervisor)
    assert outcome.restarted == () and not outcome.whole
    (lost,) = outcome.stopped
    assert (lost.shard, lost.code, lost.cause, lost.crashed) == (1, -signal.SIGKILL, "no_checkpoint", True)
    with pytest.raises(ShardLost) as info:
        outcome.raise_for_stopped()
    assert info.value.stopped == (lost,) and isinstance(info.value, LaunchError)
    assert str(info.value).startswith("shard 1 exited with code -9 and has no checkpoint to restart from")
    assert "zeros" in str(info.value)
    assert group.pids[1] == old_pid and group.alive() == [True, False]
    assert supervisor.check().stopped == ()  # reported once


def test_a_shard_that_was_shut_down_stays_stopped(shards, tmp_path):
    group = shards(num_shards=1, total_size=SIZE, checkpoint_dir=str(tmp_path), checkpoint_every=0.1)
    supervisor = Supervisor(group)
    with PSClient(group.endpoints, worker_id=OBSERVER_TOOL, timeout=10) as observer:
        observer.hello(register=False)
        observer.checkpoint()
        observer.shutdown()
    (stopped,) = until_checked(supervisor).stopped
    assert stopped == Stopped(shard=0, code=0, cause="clean_exit") and not stopped.crashed
    assert group.restarts == [0]


def test_max_restarts_is_validated(shards):
    group = shards(num_shards=1, total_size=SIZE)
    for value in (-1, 1.5, True):
        with pytest.raises(ConfigError, match=f"`max_restarts` must be an int ≥ 0. Received: max_restarts={value!r}"):
            Supervisor(group, max_restarts=value)
