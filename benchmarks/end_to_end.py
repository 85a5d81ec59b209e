"""End to end: a whole training script, from `python train.py` to a trained model, phase by phase.

Every configuration runs as a user runs it, in a fresh process: imports, the Spark session,
reading Fashion-MNIST, getting it into Spark, the training call, and the accuracy of the model
it returns on the 10,000 test images. MLP 784-256-128-10, Adam 1e-3, batch 64, ``local[2]``,
2 workers. The peers run in the same invocation:

- plain ``keras.Model.fit`` in one process (twice: the faster fit is the step reference);
- elephas 7.3 (synchronous ``SparkModel`` and ``AsynchronousSparkModel``), in a virtual
  environment of its own that this script builds from the package registry on first use
  (elephas pins an older TensorFlow and pyspark than zdk's).

Prints a table of the median of ``--repeats`` runs per configuration and draws the phases as
stacked bars (``--png``).

    python benchmarks/end_to_end.py --repeats 3 --png benchmarks/end_to_end.png
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ELEPHAS = "elephas==7.3.0"
ELEPHAS_VENV = os.environ.get("ZDK_ELEPHAS_VENV",
                              os.path.join(os.path.expanduser("~"), ".cache", "zdk-benchmarks", "elephas-7.3.0"))
FASHION = "/usr/share/datasets/fashion-mnist"
ZDK_TRAINERS = ("ADAG", "DOWNPOUR", "AEASGD", "AveragingTrainer", "SingleTrainer")
ELEPHAS_MODES = ("elephas async", "elephas sync")
PHASES = ("imports", "session", "load", "data", "before_first_step", "steps", "after_steps", "evaluate", "exit")


# ----------------------------------------------------------------------------------------- child side
# These run in the configuration's own interpreter (zdk's or elephas's venv): standard library and
# numpy only until the script's own imports, which are timed.

def load_fashion() -> tuple:
    import numpy as np

    def idx(name: str, offset: int) -> "np.ndarray":
        with gzip.open(os.path.join(FASHION, name), "rb") as fh:
            return np.frombuffer(fh.read(), np.uint8, offset=offset)

    x_train = (idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype(np.float32) / 255.0)
    x_test = (idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype(np.float32) / 255.0)
    return (x_train, idx("train-labels-idx1-ubyte.gz", 8).astype(np.int64), x_test,
            idx("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64))


def mlp(keras, seed: int):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")])


def accuracy(model, x, y) -> float:
    return float((model.predict(x, verbose=0, batch_size=1024).argmax(axis=1) == y).mean())


def child_zdk(spec: dict, marks: dict) -> dict:
    from zdk import datasets, trainers
    from zdk.driver.session import get_session
    if spec.get("keras_first"):
        import keras
    marks["imports"] = time.time()
    spark = get_session("local[2]")  # before `import keras`, which then loads beside the JVM's start
    import keras
    marks["session"] = time.time()
    x_train, y_train, x_test, y_test = load_fashion()
    marks["load"] = time.time()
    df = datasets.to_dataframe(spark, x_train, y_train)
    if spec.get("cache"):
        df = df.cache()
        df.count()
    marks["data"] = time.time()
    kwargs: dict = dict(num_epoch=spec["epochs"], batch_size=64, progress=False)
    if spec["trainer"] != "SingleTrainer":
        kwargs["num_workers"] = 2
    trainer = getattr(trainers, spec["trainer"])(mlp(keras, spec["seed"]), keras.optimizers.Adam(1e-3),
                                                 "sparse_categorical_crossentropy", **kwargs)
    trained = trainer.train(df, shuffle=True)
    marks["train"] = time.time()
    t = trainer.timings
    out = {"accuracy": accuracy(trained, x_test, y_test), "timings": t}
    marks["evaluate"] = time.time()
    first = marks["data"] + t["time_to_first_step"]
    marks.update(before_first_step=first, steps=first + t["steps"])
    return out


def child_fit(spec: dict, marks: dict) -> dict:
    import keras
    marks["imports"] = marks["session"] = time.time()
    x_train, y_train, x_test, y_test = load_fashion()
    marks["load"] = marks["data"] = time.time()
    fits = []
    out: dict = {}
    for repeat in range(2):  # the faster of two fits is the step reference (fit varies ±30% here)
        model = mlp(keras, spec["seed"])
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        started = time.time()
        model.fit(x_train, y_train, batch_size=64, epochs=spec["epochs"], verbose=0, shuffle=True)
        fits.append(time.time() - started)
        if repeat == 0:
            marks["before_first_step"] = started
            marks["steps"] = marks["train"] = time.time()
            out["accuracy"] = accuracy(model, x_test, y_test)
            marks["evaluate"] = time.time()
    out["fits"] = fits
    out["reference"] = time.time() - marks["evaluate"]  # the second fit is not part of the script
    return out


def child_elephas(spec: dict, marks: dict) -> dict:
    import socket

    import keras
    from elephas.spark_model import AsynchronousSparkModel, SparkModel
    from elephas.utils.rdd_utils import to_simple_rdd
    from pyspark import SparkConf, SparkContext
    marks["imports"] = time.time()
    conf = (SparkConf().setMaster("local[2]").setAppName("elephas").set("spark.driver.host", "127.0.0.1")
            .set("spark.driver.bindAddress", "127.0.0.1").set("spark.ui.enabled", "false")
            .set("spark.driver.memory", "4g").set("spark.ui.showConsoleProgress", "false"))
    for key in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
        conf.set(f"spark.executorEnv.{key}", os.environ[key])
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    marks["session"] = time.time()
    x_train, y_train, x_test, y_test = load_fashion()
    marks["load"] = time.time()
    rdd = to_simple_rdd(sc, x_train, y_train)
    marks["data"] = time.time()
    model = mlp(keras, spec["seed"])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    if spec["mode"] == "async":
        with socket.socket() as s:  # elephas's HTTP parameter server takes a fixed port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        spark_model = AsynchronousSparkModel(model, num_workers=2, mode="asynchronous", frequency="epoch", port=port)
    else:
        spark_model = SparkModel(model, num_workers=2, mode="synchronous", frequency="epoch")
    marks["before_first_step"] = time.time()
    spark_model.fit(rdd, epochs=spec["epochs"], batch_size=64, verbose=0, validation_split=0.0)
    marks["steps"] = marks["train"] = time.time()
    out = {"accuracy": accuracy(spark_model.master_network, x_test, y_test)}
    marks["evaluate"] = time.time()
    return out


def child(kind: str, spec: dict) -> None:
    marks = {"spawn": spec["spawn"]}
    out = {"zdk": child_zdk, "fit": child_fit, "elephas": child_elephas}[kind](spec, marks)
    out["marks"] = marks
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------- parent side

def elephas_python() -> str:
    """The elephas venv's interpreter, building the venv from the package registry on first use."""
    python = os.path.join(ELEPHAS_VENV, "bin", "python")
    if not os.path.exists(os.path.join(ELEPHAS_VENV, ".installed")):
        print(f"building {ELEPHAS_VENV} ({ELEPHAS}; a few minutes, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", ELEPHAS_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", ELEPHAS], check=True)
        open(os.path.join(ELEPHAS_VENV, ".installed"), "w").close()
    return python


def configurations(args: argparse.Namespace) -> list[tuple[str, str, str, dict]]:
    """(name, interpreter, child kind, spec) per configuration."""
    out = [("plain fit", sys.executable, "fit", {})]
    out += [(f"zdk {t}" + (" (cached)" if args.cache else "") + (" (keras first)" if args.keras_first else ""),
             sys.executable, "zdk", {"trainer": t, "cache": args.cache, "keras_first": args.keras_first})
            for t in args.trainers]
    if not args.no_elephas:
        python = elephas_python()
        out += [(f"elephas {m}", python, "elephas", {"mode": m}) for m in ("async", "sync")]
    return out


def spawn(python: str, kind: str, spec: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0", PYSPARK_PYTHON=python,
               PYSPARK_DRIVER_PYTHON=python, SPARK_LOCAL_IP="127.0.0.1", PYTHONPATH=os.path.dirname(HERE))
    spec = dict(spec, spawn=time.time())
    result = subprocess.run([python, __file__, "--child", kind, json.dumps(spec)], capture_output=True, text=True,
                            timeout=1800, env=env, cwd=os.path.dirname(HERE))
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {spec} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    ended = time.time() - out.get("reference", 0.0)
    m = out["marks"]
    m["exit"] = ended
    order = ["spawn", "imports", "session", "load", "data", "before_first_step", "steps", "train", "evaluate", "exit"]
    phases = {}
    for previous, name in zip(order, order[1:]):
        phases["after_steps" if name == "train" else name] = m[name] - m[previous]
    out["phases"] = phases
    out["total"] = ended - spec["spawn"]
    return out


def median_run(runs: list[dict]) -> dict:
    """The run of median script total (phases stay consistent with one real run)."""
    return sorted(runs, key=lambda r: r["total"])[len(runs) // 2]


def render(rows: list[tuple[str, list[dict]]], args: argparse.Namespace, fit_steps: float) -> str:
    lines = [f"# end to end — {datetime.date.today()} — {os.cpu_count()} CPUs, local[2], 2 workers, "
             f"{args.epochs} epochs, median of {args.repeats} fresh processes (seconds)", "",
             "| configuration | " + " | ".join(PHASES) + " | script total | accuracy | steps / fit's |",
             "|---|" + "---|" * (len(PHASES) + 3)]
    for name, runs in rows:
        r = median_run(runs)
        accs = sorted(x["accuracy"] for x in runs)
        acc = f"{accs[0]:.4f}" if accs[0] == accs[-1] else f"{accs[0]:.4f}–{accs[-1]:.4f}"
        steps = statistics.median(x["phases"]["steps"] for x in runs)
        ratio = f"{steps / fit_steps:.2f}" if "elephas" not in name else "–"
        lines.append(f"| {name} | " + " | ".join(f"{r['phases'][p]:.1f}" for p in PHASES) +
                     f" | **{statistics.median(x['total'] for x in runs):.1f}** | {acc} | {ratio} |")
    lines += ["", f"plain fit's steps (the faster of two fits per run, median): {fit_steps:.1f} s. "
              "For elephas, `steps` is its whole training call."]
    return "\n".join(lines)


def plot(rows: list[tuple[str, list[dict]]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in rows]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(names) + 1.5))
    left = [0.0] * len(names)
    colors = plt.get_cmap("tab10").colors
    for i, phase in enumerate(PHASES):
        widths = [median_run(runs)["phases"][phase] for _, runs in rows]
        ax.barh(names, widths, left=left, color=colors[i % len(colors)], label=phase)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds from `python train.py` to exit (median run)")
    ax.legend(loc="lower right", fontsize=8, ncol=3)
    ax.set_title("Fashion-MNIST MLP, 3 epochs, local[2]: where a whole script's time goes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per configuration (median)")
    parser.add_argument("--trainers", nargs="+", default=list(ZDK_TRAINERS))
    parser.add_argument("--cache", action="store_true", help="zdk scripts cache the DataFrame before train()")
    parser.add_argument("--keras-first", action="store_true",
                        help="zdk scripts import keras before get_session() (no overlap with the JVM's start)")
    parser.add_argument("--no-elephas", action="store_true", help="skip elephas (and building its venv)")
    parser.add_argument("--png", default=None, help="draw the phases as stacked bars into this file")
    parser.add_argument("--results", default=None, help="append the table to this Markdown file")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], json.loads(args.child[1]))
        return
    rows: list[tuple[str, list[dict]]] = []
    fits: list[float] = []
    for name, python, kind, spec in configurations(args):
        runs = []
        for seed in range(args.repeats):
            out = spawn(python, kind, dict(spec, epochs=args.epochs, seed=seed))
            runs.append(out)
            if kind == "fit":
                fits.append(min(out["fits"]))
            print(f"{name} #{seed}: total {out['total']:.1f} s, accuracy {out['accuracy']:.4f}, "
                  + ", ".join(f"{k} {v:.1f}" for k, v in out["phases"].items()), flush=True)
        rows.append((name, runs))
    table = render(rows, args, statistics.median(fits))
    print(table)
    if args.png:
        plot(rows, args.png)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
