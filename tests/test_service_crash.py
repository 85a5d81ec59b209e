"""A crash of ``zdk serve`` (SIGKILL, the real command): nothing it started outlives it, and the job
it was running resumes from its shards' last periodic checkpoint when it starts again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import contained_temp_env, digits_mlp, pid_alive, poll_until
from zdk.ps import checkpoint

pytestmark = pytest.mark.spark

#: Seconds between the shards' checkpoints in this test (``zdk serve --checkpoint-every``; 10 by default).
CHECKPOINT_EVERY = 0.2


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children …), from /proc."""
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


class Servers:
    """``zdk serve`` processes on one state directory; whatever is left is killed at the end."""

    def __init__(self, state: Path, data_root: Path, logs: Path) -> None:
        self.state, self.data_root, self.logs = state, data_root, logs
        self.started: list[subprocess.Popen] = []
        # SIGKILLed servers (and their JVMs) leave their temp files: under ``logs``, not in /tmp.
        self.env = contained_temp_env(logs / "tmp")

    def start(self) -> tuple[subprocess.Popen, str]:
        """A new ``zdk serve`` and its URL. Its output goes to files: a full pipe would stall Spark."""
        out = self.logs / f"serve-{len(self.started)}.out"
        with open(out, "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "zdk.cli", "serve", "--state-dir", str(self.state),
                                     "--port", "0", "--data-root", str(self.data_root),
                                     "--checkpoint-every", str(CHECKPOINT_EVERY)], stdout=stdout, stderr=stderr,
                                    env=self.env)
        self.started.append(proc)

        def url() -> str | None:
            if proc.poll() is not None:
                pytest.fail(f"zdk serve exited with {proc.returncode}: {out.with_suffix('.err').read_text()[-2000:]}")
            match = re.search(r"listening on (\S+);", out.read_text())
            return match.group(1) if match else None

        return proc, poll_until(url, timeout=60, interval=0.1, what="zdk serve to listen")

    def kill_all(self) -> None:
        for proc in self.started:
            family = [proc.pid, *_descendants(proc.pid)] if proc.poll() is None else []
            for pid in family:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()


def test_a_job_resumes_after_zdk_serve_is_killed(job_data, tmp_path):
    from zdk.jobs import JobClient

    from zdk.service.artifacts import StateDir
    from zdk.service.store import Store

    state = tmp_path / "state"
    StateDir(directory=str(state)).create_root()  # what `zdk serve token create` does, without a second Python
    store = Store(str(state / "zdk.db"))
    token = store.create_token("erin")
    store.close()
    digits_mlp().save(tmp_path / "m.keras")
    spec = {"name": "crash", "trainer": {"class": "ADAG", "arguments": {
                "worker_optimizer": "adam", "loss": "sparse_categorical_crossentropy", "num_workers": 2,
                # 20 epochs of 8-row steps, a few seconds: the kill below lands mid-run.
                "num_epoch": 20, "batch_size": 8}},
            "data": {"format": "parquet", "path": "digits.parquet"},
            "resources": {"num_executors": 1, "num_processes": 2}}
    servers = Servers(state, job_data, tmp_path)
    try:
        first, url = servers.start()
        client = JobClient(url, token)
        job_id = client.submit(spec, (tmp_path / "m.keras").read_bytes())["id"]
        shard = Path(checkpoint.checkpoint_path(str(state / "jobs" / job_id / "checkpoints"), 0, 1))

        def trained_version() -> int:
            """The version in the shard's latest periodic checkpoint (files are replaced atomically)."""
            return int(checkpoint.read(str(shard))["version"][0]) if shard.exists() else 0

        # A checkpoint of a center that has moved from its start: the workers committed before it.
        poll_until(trained_version, timeout=120, interval=0.05, what="a periodic checkpoint after the first commits")
        assert client.job(job_id)["state"] == "running"
        family = [first.pid, *_descendants(first.pid)]  # the shards, Spark's JVM and its Python workers, the loader
        first.send_signal(signal.SIGKILL)
        first.wait()

        second, url = servers.start()
        poll_until(lambda: not any(pid_alive(p) for p in family), timeout=60, interval=0.2,
                   what="every process of the killed zdk serve to exit")
        client = JobClient(url, token)
        job = client.wait(job_id, timeout=180, interval=0.2, progress=False)
        assert (job["state"], job["resumes"]) == ("finished", 1), job["error"]
        assert job["has_model"] and client.model_bytes(job_id)[:2] == b"PK"
        log = client.logs(job_id)
        assert "resumes from its checkpoint (resume 1)" in log
        version = int(re.search(r"resuming from \S+ at version (\d+)", log).group(1))
        assert version > 0  # the center came from a checkpoint taken while it trained
        assert not shard.parent.exists()  # dropped once the model is saved
    finally:
        servers.kill_all()
