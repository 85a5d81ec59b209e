"""Time to accuracy: every trainer's whole ``train()`` against plain ``keras.Model.fit``, same run.

Fashion-MNIST (sklearn digits when the Debian package is missing), MLP 784-256-128-10, Adam
1e-3, batch 64. Each configuration runs in a fresh process (a cold start, as a user's first
``train()``), then trains again in the same session (warm). Prints train() wall time, its
ratio to plain fit measured in the same run, accuracy, and ``trainer.timings`` phases.

Run: python benchmarks/time_to_accuracy.py [--epochs 3 10] [--trainers ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TRAINERS = ("SingleTrainer", "DOWNPOUR", "AGN", "ADAG", "DynSGD", "AEASGD", "EAMSGD", "AveragingTrainer",
            "EnsembleTrainer")
PHASES = ("session", "data_preparation", "shard_start", "worker_start", "first_step", "steps", "teardown")


def load(rows: int):
    from zdk import datasets

    source, x_train, y_train, x_test, y_test = datasets.load_images()
    if rows:
        x_train, y_train = x_train[:rows], y_train[:rows]
    return source, x_train.reshape(len(x_train), -1), y_train, x_test.reshape(len(x_test), -1), y_test


def model(inputs: int):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")])


def accuracy(m, x, y) -> float:
    return float((m.predict(x, verbose=0, batch_size=1024).argmax(axis=1) == y).mean())


def child_fit(spec: dict) -> dict:
    import keras

    _, x_train, y_train, x_test, y_test = load(spec["rows"])
    m = model(x_train.shape[1])
    m.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    m.fit(x_train, y_train, batch_size=64, epochs=spec["epochs"], verbose=0, shuffle=True)
    return {"wall": time.perf_counter() - started, "accuracy": accuracy(m, x_test, y_test)}


def child_bare(spec: dict) -> dict:
    """One of the bare processes: train_on_batch over its half of the rows, no Spark, no PS."""
    import keras
    import numpy as np

    _, x_train, y_train, _, _ = load(spec["rows"])
    part = np.array_split(np.arange(len(x_train)), 2)[spec["index"]]
    x, y = x_train[part], y_train[part]
    m = model(x.shape[1])
    m.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    for _ in range(spec["epochs"]):
        for i in range(0, len(x), 64):
            m.train_on_batch(x[i:i + 64], y[i:i + 64])
    return {"wall": time.perf_counter() - started}


def child_trainer(spec: dict) -> dict:
    import keras

    from zdk import datasets, trainers
    from zdk.driver.session import get_session

    started = time.perf_counter()
    spark = get_session(f"local[{max(2, spec['workers'])}]")
    session = time.perf_counter() - started
    _, x_train, y_train, x_test, y_test = load(spec["rows"])
    df = datasets.to_dataframe(spark, x_train, y_train).cache()
    df.count()
    runs = []
    for _ in range(2):
        kwargs: dict = dict(num_epoch=spec["epochs"], batch_size=64, progress=False)
        if spec.get("overlap"):
            kwargs["overlap"] = True
        if spec["trainer"] != "SingleTrainer":
            kwargs["num_workers"] = spec["workers"]
        if spec["trainer"] == "EnsembleTrainer":
            kwargs["num_ensembles"] = kwargs.pop("num_workers")
        optimizer = "sgd" if spec["trainer"] == "EAMSGD" else keras.optimizers.Adam(1e-3)
        trainer = getattr(trainers, spec["trainer"])(model(x_train.shape[1]), optimizer,
                                                     "sparse_categorical_crossentropy", **kwargs)
        t0 = time.perf_counter()
        trained = trainer.train(df, shuffle=True)
        wall = time.perf_counter() - t0
        members = trained if isinstance(trained, list) else [trained]
        acc = sum(accuracy(m, x_test, y_test) for m in members) / len(members)
        runs.append({"wall": wall, "accuracy": acc, "timings": trainer.timings,
                     "ps_wait": trainer.ps_wait_fraction})
    spark.stop()
    return {"session": session, "cold": runs[0], "warm": runs[1]}


def spawn(kind: str, spec: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)], capture_output=True,
                            text=True, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10], help="epoch counts (default: 3 10)")
    parser.add_argument("--workers", type=int, default=2, help="workers of distributed trainers (default: 2)")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), help=f"trainers (default: {' '.join(TRAINERS)})")
    parser.add_argument("--rows", type=int, default=0, help="training rows; 0 = all (default: 0)")
    parser.add_argument("--overlap", choices=["off", "on", "both"], default="off",
                        help="exchange on a background thread (default: off)")
    parser.add_argument("--results", default=None, help="append the table to this Markdown file (default: none)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        print(json.dumps({"fit": child_fit, "bare": child_bare, "trainer": child_trainer}[kind](spec)), flush=True)
        return []

    rows = []
    for epochs in args.epochs:
        fit = spawn("fit", {"rows": args.rows, "epochs": epochs})
        print(f"plain fit, {epochs} epochs: {fit['wall']:.1f} s, accuracy {fit['accuracy']:.4f}", flush=True)
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--child", "bare",
                                   json.dumps({"rows": args.rows, "epochs": epochs, "index": i})],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in range(2)]
        bare = [json.loads([l for l in p.communicate(timeout=1800)[0].splitlines() if l.startswith("{")][-1])
                for p in procs]
        bare_wall = max(b["wall"] for b in bare)
        print(f"two bare processes, {epochs} epochs: {bare_wall:.1f} s (process start {time.perf_counter() - started:.1f} s)")
        rows.append({"config": "plain fit", "epochs": epochs, "cold": fit["wall"], "warm": fit["wall"],
                     "fit": fit["wall"], "accuracy": fit["accuracy"], "timings": {}, "first": None, "first_warm": None})
        rows.append({"config": "two bare processes", "epochs": epochs, "cold": bare_wall, "warm": bare_wall,
                     "fit": fit["wall"], "accuracy": None, "timings": {}, "first": None, "first_warm": None})
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.overlap]
        for name, overlap in [(n, o) for n in args.trainers for o in modes]:
            if overlap and name in ("SingleTrainer", "AveragingTrainer", "EnsembleTrainer"):
                continue
            out = spawn("trainer", {"trainer": name, "epochs": epochs, "workers": args.workers, "rows": args.rows,
                                    "overlap": overlap})
            name = f"{name} + overlap" if overlap else name
            cold, warm = out["cold"], out["warm"]
            timings = dict(cold["timings"], session=out["session"])
            rows.append({"config": name, "epochs": epochs, "cold": cold["wall"], "warm": warm["wall"],
                         "fit": fit["wall"], "accuracy": cold["accuracy"], "timings": timings,
                         "first": cold["timings"].get("time_to_first_step"),
                         "first_warm": warm["timings"].get("time_to_first_step"), "ps_wait": cold["ps_wait"]})
            print(f"{name}, {epochs} epochs: cold {cold['wall']:.1f} s ({cold['wall'] / fit['wall']:.2f}× fit), "
                  f"warm {warm['wall']:.1f} s, accuracy {cold['accuracy']:.4f}, phases {timings}", flush=True)
    table = render(rows, args)
    print(table)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write("\n" + table + "\n")
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    def cell(value, fmt="{:.2f}"):
        return "–" if value is None else fmt.format(value)

    lines = [f"# time to accuracy — {datetime.date.today()} — {platform.node()}, {os.cpu_count()} CPUs, "
             f"{args.workers} workers, train() wall over plain fit's in the same run", "",
             "| configuration | epochs | cold train() / fit | warm train() / fit | first step cold, warm (s) | "
             "accuracy | PS wait | " + " | ".join(PHASES) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(PHASES)]
    for r in rows:
        phases = " | ".join(cell(r["timings"].get(p), "{:.1f}") for p in PHASES)
        first = "–" if r["first"] is None else f"{r['first']:.1f}, {r['first_warm']:.1f}"
        lines.append(f"| {r['config']} | {r['epochs']} | {r['cold'] / r['fit']:.2f} | {r['warm'] / r['fit']:.2f} | "
                     f"{first} | {cell(r['accuracy'], '{:.4f}')} | {cell(r.get('ps_wait'), '{:.1%}')} | {phases} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
