"""A Spark driver for fault-injection tests, run as its own process (its own Spark master).

Trains each ``--trainer`` (DOWNPOUR by default; AveragingTrainer and ADAG too) on sklearn's
digits, one after the other in one Spark session, and prints one JSON line for each with the
test accuracy, the attempts seen in the history and what a resume restored (or the error it
failed with). With ``--kill-worker-at STEP`` a thread SIGKILLs the Python process of worker 0
once it reports that step to the shards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: The trainers the fault tests run, with the Adam learning rate each learns digits with (None:
#: Keras's default), as in tests/test_trainers.py.
TRAINERS = {"DOWNPOUR": None, "AveragingTrainer": None, "ADAG": 0.01}


def kill_worker_when(trainer, step: int, killed: dict) -> None:
    from zdk.ps.client import PSClient
    from zdk.ps.protocol import OBSERVER_TOOL

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not trainer.endpoints:
        time.sleep(0.1)
    with PSClient(trainer.endpoints, worker_id=OBSERVER_TOOL, timeout=10) as client:
        client.hello(register=False)
        while time.monotonic() < deadline:
            report = client.stats()[0]["workers"].get("0", {}).get("report", {})
            if report.get("step", 0) >= step and report.get("pid"):
                os.kill(int(report["pid"]), signal.SIGKILL)
                killed.update(pid=int(report["pid"]), step=report["step"], at=time.monotonic(), wall=time.time())
                return
            time.sleep(0.05)


def probe_without_keys(trainer, result: dict) -> None:
    """Connects to the job's shards without its CURVE keys, as an intruder on the network would."""
    from zdk.errors import DeadlineExceeded
    from zdk.ps.client import PSClient
    from zdk.ps.protocol import OBSERVER_TOOL

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not trainer.endpoints:
        time.sleep(0.1)
    try:
        with PSClient(trainer.endpoints, worker_id=OBSERVER_TOOL, timeout=1.5, tries=1) as client:
            client.hello(register=False)
        result["probe"] = "answered"
    except DeadlineExceeded:
        result["probe"] = "refused"


def train_one(name: str, args: argparse.Namespace, data) -> dict:
    """Trains trainer ``name`` with the faults ``args`` ask for; returns what the test checks."""
    import keras

    from zdk import trainers

    df, x_test, y_test = data
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    rate = TRAINERS[name]
    optimizer = "adam" if rate is None else keras.optimizers.Adam(rate)
    trainer = getattr(trainers, name)(
        model, optimizer, "sparse_categorical_crossentropy", num_workers=2, num_epoch=args.epochs,
        batch_size=args.batch_size, progress=False,
        timeout=30.0, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        ps_host=args.ps_host, num_shards=args.num_shards)
    killed: dict = {}
    probe: dict = {}
    prober = threading.Thread(target=probe_without_keys, args=(trainer, probe), daemon=True)
    if args.probe_without_keys:
        prober.start()
    if args.kill_worker_at is not None:
        threading.Thread(target=kill_worker_when, args=(trainer, args.kill_worker_at, killed), daemon=True).start()
    started = time.monotonic()
    trained = trainer.train(df, resume=args.resume)
    finished = time.monotonic()
    if args.probe_without_keys:
        prober.join(timeout=30)  # a short run can end before the probe's deadline
    accuracy = float((trained.predict(x_test, verbose=0).argmax(axis=1) == y_test).mean())
    return {
        "trainer": name, "accuracy": accuracy, "attempts": sorted({r["attempt"] for r in trainer.history}),
        "workers": sorted({r["worker"] for r in trainer.history}), "resumed": trainer.resumed,
        "killed": {k: v for k, v in killed.items() if k != "at"},
        # A retried task's history replaces the dead attempt's: when did the killed worker's start?
        "first_step_after_kill": (min(r["timestamp"] for r in trainer.history if r["worker"] == 0) > killed["wall"]
                                  if killed else None),
        "recovered_s": finished - killed["at"] if killed else None, "wall_s": finished - started,
        "epochs": sorted({r["epoch"] for r in trainer.history}), "endpoints": trainer.endpoints,
        "curve": trainer.encrypted, "probe": probe.get("probe"),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--master", default="local[2]")
    p.add_argument("--trainer", action="append", choices=sorted(TRAINERS),
                   help="repeatable: the trainers run one after the other in this one Spark session "
                        "(default: DOWNPOUR)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32, help="smaller: longer runs, for faults that must land mid-run")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=float, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-worker-at", type=int, default=None)
    p.add_argument("--conf", action="append", default=[], help="extra Spark conf KEY=VALUE")
    p.add_argument("--ps-host", default="127.0.0.1")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--probe-without-keys", action="store_true")
    args = p.parse_args()

    from zdk.datasets import load_digits_split, to_dataframe
    from zdk.driver.session import get_session

    spark = get_session(args.master, dict(c.split("=", 1) for c in args.conf))
    x_train, y_train, x_test, y_test = load_digits_split()
    df = to_dataframe(spark, x_train, y_train).cache()
    df.count()
    failed = False
    for name in args.trainer or ["DOWNPOUR"]:
        # One JSON line per trainer; a failure is reported (its traceback on stderr) and the next runs.
        try:
            out = train_one(name, args, (df, x_test, y_test))
        except Exception as exc:
            traceback.print_exc()
            out, failed = {"trainer": name, "error": f"{type(exc).__name__}: {exc}"}, True
            report = getattr(exc, "report", None)  # WorkerFailed: Spark's own account, whose head says why
            if report:
                with open(report) as fh:
                    out["error"] += "; the report begins: " + fh.read(400)
        print(json.dumps(out), flush=True)
    spark.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
