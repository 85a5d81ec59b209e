"""Checkpoints carry the algorithm's state; shards checkpoint periodically; `zdk ps` restarts a
crashed shard from its checkpoint and workers re-sync instead of failing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import pid_alive, poll_until
from test_algorithms_integration import DIM, LOSS_THRESHOLD, ROWS, make_problem, mse
from zdk.errors import ConfigError
from zdk.ps.client import PSClient
from zdk.ps.exchange import Exchange
from zdk.ps.protocol import OBSERVER_TOOL, Request, as_frames
from zdk.ps.shard import ShardConfig, ShardCore

SIZE = 6


def core_with(tmp_path, **params) -> ShardCore:
    return ShardCore(ShardConfig(shard=0, num_shards=1, total_size=SIZE, algorithm="averaging", params=params,
                                 checkpoint_dir=str(tmp_path)), initial=np.zeros(SIZE, np.float32))


def send(core, op, worker, rid, data=None, **fields):
    frames = [] if data is None else as_frames(np.full(SIZE, data, np.float32), 64)
    if frames:
        fields.update(dtype="<f4", lens=tuple(f.nbytes for f in frames), base=core.version)
    core.handle(b"p", Request(op=op, rid=rid, shard=0, worker=worker, session=worker + 100, **fields).encode(),
                [bytes(f) for f in frames])


def test_a_checkpoint_holds_the_open_round_and_the_quorum(tmp_path):
    core = core_with(tmp_path)
    send(core, "hello", 0, 1, args={"quorum": 2})
    send(core, "hello", 1, 1)
    send(core, "commit", 0, 2, data=4.0)
    assert core.version == 0
    core.write_checkpoint()
    restored = core_with(tmp_path)
    assert restored.state.quorum == 2 and set(restored.state.state["contributions"]) == {0}
    send(restored, "hello", 1, 1)
    send(restored, "commit", 1, 2, data=2.0)
    assert restored.version == 1 and restored.center.tolist() == [3.0] * SIZE


def test_a_checkpoint_of_another_algorithm_is_refused(tmp_path):
    core_with(tmp_path, num_workers=1).write_checkpoint()
    with pytest.raises(ConfigError, match="written by algorithm 'averaging'"):
        ShardCore(ShardConfig(shard=0, num_shards=1, total_size=SIZE, algorithm="downpour",
                              checkpoint_dir=str(tmp_path)))


def test_shards_checkpoint_periodically(shards, tmp_path):
    group = shards(num_shards=2, total_size=SIZE, algorithm="downpour", checkpoint_dir=str(tmp_path),
                   checkpoint_every=0.2)
    with PSClient(group.endpoints, worker_id=0, timeout=10) as client:
        client.hello()
        client.commit(np.ones(SIZE, np.float32))
    paths = [tmp_path / f"shard-{k:03d}-of-002.npz" for k in range(2)]

    def saved_version_one() -> bool:
        try:
            return all(int(np.load(p)["version"][0]) == 1 for p in paths)
        except (OSError, ValueError, KeyError):
            return False

    poll_until(saved_version_one, timeout=10, what="both shards to checkpoint version 1")


def _worker(endpoints, x, y, results, errors, paused: threading.Event, resume: threading.Event, *, pause_at=150,
            steps=400):
    """SGD on least squares through the PS; at step ``pause_at`` it sets ``paused`` and waits for
    ``resume``, so the test kills a shard at a known state."""
    try:
        rng = np.random.default_rng(0)
        with PSClient(endpoints, worker_id=0, timeout=6.0, tries=12) as client:
            client.hello()
            local = np.zeros(DIM, np.float32)
            exchange = Exchange(client, local)
            exchange.start()
            for step in range(steps):
                if step == pause_at:
                    paused.set()
                    if not resume.wait(120):
                        raise TimeoutError("the test never resumed the worker")
                idx = rng.integers(0, len(x), 16)
                local -= 0.02 * x[idx].T @ (x[idx] @ local - y[idx]) / 16
                if (step + 1) % exchange.window == 0:
                    exchange.end_window(exchange.window)
            exchange.finish()
            results["resyncs"] = exchange.resyncs
    except BaseException as exc:
        errors.append(exc)


def _shard_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent), "-f", "zdk.ps.server"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _shard_pid(parent: int, shard: int) -> int | None:
    """The pid of shard ``shard`` among ``parent``'s shard processes, from its command line."""
    for pid in _shard_pids(parent):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().decode().split("\0")
        except FileNotFoundError:
            continue
        if "--shard" in args and args[args.index("--shard") + 1] == str(shard):  # a zombie's is empty
            return pid
    return None


def _saved(path) -> dict | None:
    """The version and center a checkpoint file holds, or None while there is none."""
    try:
        with np.load(path) as data:
            return {"version": int(data["version"][0]), "center": data["center"].copy()}
    except (OSError, ValueError, KeyError):
        return None


def test_zdk_ps_restarts_a_killed_shard_from_its_checkpoint_and_training_completes(tmp_path, ps_process):
    x, y = make_problem()
    proc, endpoints = ps_process("--shards", "2", "--bind", "tcp://127.0.0.1:0", "--size", str(DIM),
                                 "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "0.2")
    path = tmp_path / "shard-000-of-002.npz"
    results: dict = {}
    errors: list[BaseException] = []
    paused, resume = threading.Event(), threading.Event()
    thread = threading.Thread(target=_worker, args=(endpoints, x[: ROWS // 2], y[: ROWS // 2], results, errors,
                                                    paused, resume))
    try:
        victim = poll_until(lambda: _shard_pid(proc.pid, 0), timeout=10, what="shard 0's pid")
        thread.start()
        poll_until(lambda: paused.is_set() or errors, timeout=60, what="the worker to pause halfway")
        assert not errors, errors
        with PSClient(endpoints, worker_id=OBSERVER_TOOL, timeout=10) as observer:
            before = observer.hello(register=False)
        start, stop = before.ranges[0]
        # The worker waits, so the shard's state holds still: once a checkpoint has it, that is
        # exactly what a restart must bring back.
        saved = poll_until(lambda: (c := _saved(path)) and c["version"] == before.versions[0] and c, timeout=10,
                           what="shard 0 to checkpoint the paused worker's state")
        assert saved["version"] > 0 and np.any(saved["center"] != 0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        restarted = poll_until(lambda: (p := _shard_pid(proc.pid, 0)) not in (None, victim) and p, timeout=30,
                               what="zdk ps to restart shard 0")
        with PSClient(endpoints, worker_id=OBSERVER_TOOL, timeout=10) as observer:
            after = observer.hello(register=False)
            center = observer.pull()
            stats = observer.stats()
        print(f"shard 0 (pid {victim}) killed at version {saved['version']}; pid {restarted} restored it "
              f"{time.monotonic() - killed_at:.1f} s later")
        assert after.versions == before.versions, "the restarted shard is not at its checkpoint's version"
        assert after.generations[0] != before.generations[0], "the restarted shard kept its old generation"
        assert after.generations[1] == before.generations[1]
        np.testing.assert_array_equal(center[start:stop], saved["center"])
        assert stats[0]["restored_from"] == str(path) and stats[1]["restored_from"] is None

        resume.set()
        thread.join(120)
        assert not thread.is_alive(), "the worker hung after the shard was restarted"
        if errors:
            raise errors[0]
        print(f"worker finished {time.monotonic() - killed_at:.1f} s after the kill, {results['resyncs']} re-sync(s)")
        assert results["resyncs"] >= 1
        with PSClient(endpoints, worker_id=99, timeout=10) as observer:
            observer.hello(register=False)
            final = mse(observer.pull(), x, y)
        assert final < LOSS_THRESHOLD
        assert proc.poll() is None, "zdk ps stopped instead of restarting the shard"
    finally:
        resume.set()
        if thread.is_alive():
            thread.join(30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    err = proc.stderr.read()
    assert "restarting it from" in err, err[-2000:]


def test_zdk_ps_without_a_checkpoint_stops_when_a_shard_dies(ps_process):
    proc, endpoints = ps_process("--shards", "2", "--bind", "tcp://127.0.0.1:0", "--size", str(DIM))
    pids = poll_until(lambda: _shard_pids(proc.pid), timeout=10, what="shard pids")
    os.kill(pids[0], signal.SIGKILL)
    assert proc.wait(20) == 1
    assert "has no checkpoint to restart from" in proc.stderr.read()
    poll_until(lambda: not any(pid_alive(p) for p in pids), timeout=10, what="every shard to exit")


@pytest.mark.parametrize("every,directory", [(0, "dir"), (-1.0, "dir"), (1.0, None), ("1", "dir")])
def test_checkpoint_every_is_checked_the_same_way_by_shard_configs_and_the_launcher(every, directory, tmp_path):
    from zdk.ps.launcher import start_shards

    directory = None if directory is None else str(tmp_path)
    message = "`checkpoint_every` must be > 0 seconds and needs `checkpoint_dir`"
    with pytest.raises(ConfigError, match=message) as config_error:
        ShardConfig(shard=0, num_shards=1, total_size=SIZE, checkpoint_dir=directory, checkpoint_every=every)
    with pytest.raises(ConfigError, match=message) as launcher_error:
        start_shards(total_size=SIZE, checkpoint_dir=directory, checkpoint_every=every)
    assert config_error.value.field == launcher_error.value.field == "checkpoint_every"


def test_a_shard_process_refuses_a_bad_checkpoint_period(python):
    result = subprocess.run([python, "-m", "zdk.ps.server", "--size", str(SIZE), "--checkpoint-every", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "`checkpoint_every` must be > 0 seconds and needs `checkpoint_dir`" in result.stdout


def test_a_shard_checkpoints_to_the_file_the_checkpoint_module_names(tmp_path):
    from zdk.ps.checkpoint import checkpoint_path, read

    core = ShardCore(ShardConfig(shard=1, num_shards=3, total_size=SIZE, checkpoint_dir=str(tmp_path)))
    written = core.write_checkpoint()
    assert written == core.config.checkpoint_path == checkpoint_path(str(tmp_path), 1, 3)
    assert read(written)["range"].tolist() == [2, 4, SIZE]
