"""Fault injection on real processes: a SIGKILLed Spark Python worker under task retries, a
SIGKILLed shard with and without checkpoints, and a driver crash resumed from a checkpoint.

These are the slow tests (each starts its own Spark master where it needs one); they carry
the `fault` marker, which `make test` runs (`-m "not fault"` skips them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("pyspark")

from conftest import pid_alive, poll_until  # noqa: E402
from zdk import trainers  # noqa: E402
from zdk.errors import WorkerFailed  # noqa: E402
from zdk.ps.client import PSClient  # noqa: E402
from zdk.ps.protocol import OBSERVER_TOOL  # noqa: E402

pytestmark = [pytest.mark.spark, pytest.mark.fault]

DRIVER = os.path.join(os.path.dirname(__file__), "fault_driver.py")
BAR = 0.9


def run_driver(*args: str, timeout: float = 400) -> dict:
    result = subprocess.run([sys.executable, DRIVER, *args], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1])


def children(pid: int, pattern: str = "") -> list[int]:
    cmd = ["pgrep", "-P", str(pid)] + (["-f", pattern] if pattern else [])
    return [int(p) for p in subprocess.run(cmd, capture_output=True, text=True).stdout.split()]


@pytest.mark.parametrize("master,conf", [
    ("local[2,4]", []),
    ("local-cluster[2,1,1024]", ["--conf", "spark.task.maxFailures=4"]),
], ids=["local-retries", "local-cluster"])
def test_a_killed_python_worker_is_retried_and_training_completes(master, conf):
    out = run_driver("--master", master, "--epochs", "10", "--kill-worker-at", "40", *conf)
    print(f"{master}: worker pid {out['killed']['pid']} killed at step {out['killed']['step']:.0f}; training "
          f"finished {out['recovered_s']:.1f} s later; attempts {out['attempts']}; accuracy {out['accuracy']:.3f}")
    assert out["killed"], "the worker was never killed"
    assert max(out["attempts"]) >= 1, "the history shows no retried attempt"
    assert out["workers"] == [0, 1]
    assert out["accuracy"] > BAR


def test_a_driver_crash_resumes_from_the_last_checkpoint(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    proc = subprocess.Popen([sys.executable, DRIVER, "--epochs", "40", "--checkpoint-dir", ckpt,
                             "--checkpoint-every", "0.3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def progress() -> int:
            try:
                with np.load(os.path.join(ckpt, "shard-000-of-001.npz")) as data:
                    meta = json.loads(bytes(data["meta"]).decode())
            except (OSError, ValueError, KeyError):
                return -1
            epochs = [int(r.get("epoch", 0)) for r in meta.get("progress", {}).values()]
            return min(epochs) if len(epochs) == 2 else -1

        poll_until(lambda: progress() >= 2, timeout=300, interval=0.05, what="a checkpoint past epoch 2")
        descendants = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        killed_at = time.monotonic()
        shards = [p for p in descendants if "zdk.ps.server" in open(f"/proc/{p}/cmdline").read().replace("\0", " ")] \
            if descendants else []
        poll_until(lambda: not any(pid_alive(p) for p in descendants), timeout=30,
                   what="the crashed driver's JVM and shards to exit")
        print(f"driver crash: {len(descendants)} child processes ({len(shards)} shards) gone "
              f"{time.monotonic() - killed_at:.1f} s after the SIGKILL")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = run_driver("--epochs", "40", "--checkpoint-dir", ckpt, "--resume")
    print(f"resumed from version {out['resumed']['version']} at epoch {out['resumed']['first_epoch']}: "
          f"trained epochs {out['epochs'][:1]}..{out['epochs'][-1:]}, accuracy {out['accuracy']:.3f}")
    assert 2 <= out["resumed"]["first_epoch"] < 40 and out["resumed"]["version"] > 0
    assert out["epochs"] == list(range(out["resumed"]["first_epoch"], 40))
    assert out["accuracy"] > BAR


def mlp():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def kill_a_shard_once_training(trainer, what: dict, pids=None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not trainer.endpoints:
        time.sleep(0.05)
    with PSClient(trainer.endpoints, worker_id=OBSERVER_TOOL, timeout=10) as client:
        client.hello(register=False)
        while time.monotonic() < deadline and client.stats()[0]["updates"] < 20:
            time.sleep(0.05)
    victims = pids() if pids else children(os.getpid(), "zdk.ps.server")
    os.kill(victims[0], signal.SIGKILL)
    what.update(pid=victims[0], at=time.monotonic())


def test_a_killed_shard_without_checkpoints_fails_training_within_the_deadline(digits_df):
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_shards=2,
                                num_epoch=500, timeout=6.0, progress=False)
    killed: dict = {}
    threading.Thread(target=kill_a_shard_once_training, args=(trainer, killed), daemon=True).start()
    with pytest.raises(WorkerFailed, match=r"shard \d at tcp://127\.0\.0\.1:\d+") as info:
        trainer.train(digits_df)
    detected = time.monotonic() - killed["at"]
    print(f"shard killed: train() failed {detected:.1f} s later with: {info.value}"[:400])
    assert detected < 6.0 + 20
    assert not children(os.getpid(), "zdk.ps.server"), "a shard outlived the failed job"


def test_a_killed_shard_with_checkpoints_is_restarted_and_training_completes(digits_df, digits, ps_process, tmp_path):
    proc, endpoints = ps_process("--shards", "2", "--bind", "tcp://127.0.0.1:0", "--size", "4810",
                                 "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "0.3")
    trainer = trainers.DOWNPOUR(mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=12,
                                timeout=12.0, progress=False, parameter_server=endpoints)
    killed: dict = {}
    threading.Thread(target=kill_a_shard_once_training, args=(trainer, killed, lambda: children(proc.pid)),
                     daemon=True).start()
    model = trainer.train(digits_df)
    _, x_test, _, y_test = digits
    acc = float((model.predict(x_test, verbose=0).argmax(axis=1) == y_test).mean())
    print(f"shard {killed['pid']} killed; training completed {time.monotonic() - killed['at']:.1f} s later, "
          f"accuracy {acc:.3f}")
    assert killed and proc.poll() is None
    assert acc > BAR
