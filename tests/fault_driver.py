"""A Spark driver for fault-injection tests, run as its own process (its own Spark master).

Trains DOWNPOUR on sklearn's digits and prints one JSON line with the test accuracy, the
attempts seen in the history and what a resume restored. With ``--kill-worker-at STEP`` a
thread SIGKILLs the Python process of worker 0 once it reports that step to the shards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
                killed.update(pid=int(report["pid"]), step=report["step"], at=time.monotonic())
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
        with PSClient(trainer.endpoints, worker_id=OBSERVER_TOOL, timeout=3.0, tries=1) as client:
            client.hello(register=False)
        result["probe"] = "answered"
    except DeadlineExceeded:
        result["probe"] = "refused"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--master", default="local[2]")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=float, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-worker-at", type=int, default=None)
    p.add_argument("--conf", action="append", default=[], help="extra Spark conf KEY=VALUE")
    p.add_argument("--ps-host", default="127.0.0.1")
    p.add_argument("--probe-without-keys", action="store_true")
    args = p.parse_args()

    import keras

    from zdk.datasets import load_digits_split, to_dataframe
    from zdk.driver.session import get_session
    from zdk.trainers import DOWNPOUR

    spark = get_session(args.master, dict(c.split("=", 1) for c in args.conf))
    x_train, y_train, x_test, y_test = load_digits_split()
    df = to_dataframe(spark, x_train, y_train).cache()
    df.count()
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    trainer = DOWNPOUR(model, "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=args.epochs,
                       progress=False, timeout=30.0, checkpoint_dir=args.checkpoint_dir,
                       checkpoint_every=args.checkpoint_every, ps_host=args.ps_host)
    killed: dict = {}
    probe: dict = {}
    if args.probe_without_keys:
        threading.Thread(target=probe_without_keys, args=(trainer, probe), daemon=True).start()
    if args.kill_worker_at is not None:
        threading.Thread(target=kill_worker_when, args=(trainer, args.kill_worker_at, killed), daemon=True).start()
    started = time.monotonic()
    trained = trainer.train(df, resume=args.resume)
    finished = time.monotonic()
    accuracy = float((trained.predict(x_test, verbose=0).argmax(axis=1) == y_test).mean())
    print(json.dumps({
        "accuracy": accuracy, "attempts": sorted({r["attempt"] for r in trainer.history}),
        "workers": sorted({r["worker"] for r in trainer.history}), "resumed": trainer.resumed,
        "killed": {k: v for k, v in killed.items() if k != "at"},
        "recovered_s": finished - killed["at"] if killed else None, "wall_s": finished - started,
        "epochs": sorted({r["epoch"] for r in trainer.history}), "endpoints": trainer.endpoints,
        "curve": trainer.encrypted, "probe": probe.get("probe"),
    }), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
