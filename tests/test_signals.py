"""Ctrl-C (SIGINT) and SIGTERM of a training script: ``train()`` raises, the Spark job group is
cancelled (its Python workers are stopped while the script still runs), and once the script
exits nothing it started is left: no shard, no Spark JVM, no Python daemon or worker.

Each test runs the script as a subprocess with its own Spark (local[2]) and watches its processes
from outside: the training workers' pids come from the reports they send the shards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("keras")
pytest.importorskip("pyspark")

from conftest import pid_alive, poll_until  # noqa: E402
from zdk.ps.client import PSClient  # noqa: E402
from zdk.ps.protocol import OBSERVER_TOOL  # noqa: E402

pytestmark = pytest.mark.spark

SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import keras, numpy as np
    from zdk.driver.session import get_session
    from zdk.trainers import DOWNPOUR
    spark = get_session("local[2]")
    rng = np.random.default_rng(0)
    df = spark.createDataFrame([(rng.random(64).tolist(), int(i % 10)) for i in range(2000)],
                               "features array<double>, label long")
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    trainer = DOWNPOUR(model, "adam", "sparse_categorical_crossentropy", num_epoch=10_000, num_shards=2,
                       progress=False)

    def announce():
        while not trainer.endpoints:
            time.sleep(0.05)
        print("ENDPOINTS " + json.dumps(trainer.endpoints), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        trainer.train(df)
    except BaseException as exc:
        tracker = spark.sparkContext.statusTracker()
        print("RAISED " + json.dumps({"error": repr(exc), "jobs": list(tracker.getActiveJobsIds()),
                                      "stages": list(tracker.getActiveStageIds())}), flush=True)
        sys.stdin.readline()  # the test checks the Spark workers while this process still runs
        raise
""")


class Script:
    """The training script as a subprocess, its stdout collected line by line on a thread."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.signalled = 0.0
        self.lines: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._collect, args=(self.proc.stdout, self.lines), daemon=True),
                         threading.Thread(target=self._collect, args=(self.proc.stderr, self.err), daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def said(self, prefix: str):
        """The JSON after ``prefix`` on the first stdout line starting with it, or None."""
        for line in self.lines:
            if line.startswith(prefix + " "):
                return json.loads(line[len(prefix) + 1:])
        return None

    @property
    def stderr(self) -> str:
        for reader in self._readers:
            reader.join(10)
        return "".join(self.err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root``, by pid, with its command line."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in table.splitlines():
        pid, ppid, *args = line.split(None, 2)
        children.setdefault(int(ppid), []).append((int(pid), args[0] if args else ""))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            found[pid] = args
            todo.append(pid)
    return found


def training_workers(endpoints: list[str]) -> dict[str, int] | None:
    """The pids of both training workers once each has reported a step to the shards, else None."""
    with PSClient(endpoints, worker_id=OBSERVER_TOOL, timeout=10) as client:
        client.hello(register=False)
        workers = client.stats()[0]["workers"]
    reports = [w["report"] for w in workers.values()]
    if len(reports) < 2 or not all(r.get("step", 0) >= 1 and r.get("pid") for r in reports):
        return None
    return {w: int(s["report"]["pid"]) for w, s in workers.items()}


#: Spark's Python daemon and its workers, by command line: the embedded session's own
#: (zdk.runtime.daemon, which imports Keras before forking; in local mode forked from the
#: driver's zygote, whose command line it keeps), or PySpark's.
DAEMONS = "zdk.runtime.daemon|pyspark.daemon|zdk.runtime.zygote"


def interrupt_training(signum: int) -> tuple[Script, dict[str, int], dict[int, str]]:
    """Starts the script, waits until both workers train, and sends ``signum``; returns the script,
    the workers' pids and every process the script had started by then."""
    script = Script()
    try:
        endpoints = poll_until(lambda: script.said("ENDPOINTS") or script.proc.poll() is not None, timeout=180,
                               interval=0.1, what="the trainer's shards to start")
        assert isinstance(endpoints, list), script.stderr[-3000:]
        workers = poll_until(lambda: training_workers(endpoints), timeout=120, interval=0.1,
                             what="both Spark workers to report a training step")
        started = descendants(script.proc.pid)
        kinds = {kind: [p for p, args in started.items() if any(k in args for k in kind.split("|"))]
                 for kind in ("zdk.ps.server", DAEMONS, "java")}
        assert len(kinds["zdk.ps.server"]) == 2 and kinds[DAEMONS] and kinds["java"], started
        assert set(workers.values()) <= set(kinds[DAEMONS]), (workers, started)
    except BaseException:
        # A script left waiting trains on (10,000 epochs) for the rest of the suite: interrupt it,
        # so it cleans up as it would after a Ctrl-C, and kill it if that does not end it.
        script.proc.send_signal(signal.SIGINT)
        try:
            script.proc.stdin.write("exit\n")
            script.proc.stdin.flush()
            script.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        script.close()
        raise
    script.proc.send_signal(signum)
    script.signalled = time.monotonic()
    return script, workers, started


def assert_nothing_left(started: dict[int, str]) -> None:
    poll_until(lambda: not [p for p in started if pid_alive(p)], timeout=60, interval=0.1,
               what=f"every process the script started to exit: {started}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_training_cancels_the_spark_job_and_leaves_no_process(signum):
    script, workers, started = interrupt_training(signum)
    try:
        raised = poll_until(lambda: script.said("RAISED") or script.proc.poll() is not None, timeout=120,
                            interval=0.1, what="train() to raise after the signal")
        if not isinstance(raised, dict):
            # The process died without train() raising: see what it left before failing.
            assert_nothing_left(started)
            print(f"{signal.Signals(signum).name}: exit code {script.proc.returncode}; all {len(started)} processes "
                  f"it started gone {time.monotonic() - script.signalled:.1f} s after the signal")
            pytest.fail(f"{signal.Signals(signum).name} ended the training script (exit code {script.proc.returncode}) "
                        "without train() raising, so the Spark job group was never cancelled and no cleanup ran; "
                        "its processes went away only because their parents died")
        assert raised["jobs"] == [] and raised["stages"] == [], raised
        took = {"raised": time.monotonic() - script.signalled}
        # Cancelling the job group stopped the tasks: their Python workers are gone though the
        # driver, its JVM and the pyspark daemon still run.
        poll_until(lambda: not any(pid_alive(p) for p in workers.values()), timeout=30, interval=0.1,
                   what=f"the training workers {workers} to stop once the job was cancelled")
        shards = [p for p, args in started.items() if "zdk.ps.server" in args]
        poll_until(lambda: not any(pid_alive(p) for p in shards), timeout=30, interval=0.1,
                   what="train() to stop its shards")
        took["workers and shards gone"] = time.monotonic() - script.signalled
        assert script.proc.poll() is None, "the script exited before the test let it"
        script.proc.stdin.write("exit\n")
        script.proc.stdin.flush()
        exited = time.monotonic()
        assert script.proc.wait(timeout=60) != 0
        assert_nothing_left(started)
        took["everything gone after the exit"] = time.monotonic() - exited
        print(f"{signal.Signals(signum).name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))
        err = script.stderr
        # One traceback of ours (the script's own KeyboardInterrupt), none of py4j's re-entrant ones;
        # PySpark's daemon may still print its own (BrokenPipeError, ConnectionResetError) when its
        # killed workers' pipes close.
        blocks = err.split("Traceback (most recent call last):")[1:]
        ours = sum("pyspark/daemon.py" not in block.split("Error")[0] for block in blocks)
        assert ours <= 1 and "Py4J" not in err and "ERROR:root" not in err, err[-3000:]
        if signum == signal.SIGINT:
            assert "KeyboardInterrupt: zdk training interrupted" in err
    finally:
        script.close()
