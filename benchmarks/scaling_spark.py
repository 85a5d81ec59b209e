"""Scaling of zdk's Spark side: training time and worker memory against rows, speed against workers.

Two axes (the parameter-server axes are in ``benchmarks/scaling.py``, which calls these):

- **rows**: a synthetic task shaped like the ATLAS Higgs data (28 N(0, 1) float features, a
  binary label from a fixed random 2-layer tanh teacher plus noise: about 0.88 accuracy is
  the best any model can do, a linear model gets about 0.82). For each row count it is written
  to Parquet in 250,000-row chunks, read back by Spark (``features`` array<float>,
  ``label`` float) and trained on by each trainer (2 workers; SingleTrainer 1) with an MLP
  28-64-64-1, Adam, binary cross-entropy, no shuffle. Per run: ``train()`` wall seconds, its
  steps phase (``trainer.timings["steps"]``), samples/s, seconds per million rows and that
  against the smallest row count's (1.0 = time linear in rows; below 1 as fixed costs
  amortize), F1 on 20,000 held-out rows of the same teacher, and the peak RSS (``VmHWM``,
  reset before each run through ``/proc/PID/clear_refs``) of the largest Spark Python worker
  of this process, polled every 0.2 s. Flat memory is the goal. Before measuring, every
  trainer trains once on a few thousand rows (untimed), so the first measured run pays no
  tracing or first-use cost the later ones skip.
- **workers**: the same task at ``--workers-rows`` rows, on a fresh ``local[N]`` session per
  worker count N (the active session is stopped first), DOWNPOUR (or ``--trainers``) with
  ``num_workers=N``. Per run: steps per worker, each worker's steps/s over the second half of
  its steps (past tracing; from the per-step history's timestamps; the median and the range
  over workers), all workers' steps/s together, and test accuracy against SingleTrainer's,
  trained once in the same invocation. Each session first trains every trainer once on a
  few rows, untimed, as the rows axis does. On 2 cores, N workers share 2 CPUs.

Run (each command that starts Spark should hold the machine's heavy-job lock):

    flock /tmp/zdk-heavy.lock python benchmarks/scaling_spark.py --axis rows [--rows 500000,2000000,8000000]
        [--trainers SingleTrainer,DOWNPOUR,AEASGD,ADAG] [--batch-size 256] [--epochs 1]
    flock /tmp/zdk-heavy.lock python benchmarks/scaling_spark.py --axis workers [--workers 2,4,8,16]
        [--workers-rows 200000] [--trainers DOWNPOUR]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402  (after the TensorFlow environment above)

FEATURES = 28
SEED = 7
TEST_ROWS = 20_000
CHUNK_ROWS = 250_000
#: The teacher: hidden units, the scale of its first layer's weights (larger is less linear),
#: and its label noise as a fraction of its score's spread (0.4: about 0.88 accuracy at best).
TEACHER_HIDDEN, TEACHER_SCALE, TEACHER_NOISE = 16, 3.0, 0.4
RSS_INTERVAL = 0.2

#: Every option of both axes and its default; ``None`` trainers means the axis's own default.
DEFAULTS: dict[str, Any] = {"rows": "500000,2000000,8000000", "trainers": None, "batch_size": 256, "epochs": 1,
                            "workers": "2,4,8,16", "workers_rows": 200_000, "warmup_rows": 8192}
AXIS_TRAINERS = {"rows": "SingleTrainer,DOWNPOUR,AEASGD,ADAG", "workers": "DOWNPOUR"}


# ---------------------------------------------------------------------------------- options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds this module's options (every one with a default) to ``parser``."""
    parser.add_argument("--rows", default=DEFAULTS["rows"],
                        help=f"rows axis: row counts (default: {DEFAULTS['rows']})")
    parser.add_argument("--trainers", default=DEFAULTS["trainers"],
                        help=f"trainer classes (default: {AXIS_TRAINERS['rows']} for rows, "
                             f"{AXIS_TRAINERS['workers']} for workers)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help=f"rows per step (default: {DEFAULTS['batch_size']})")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                        help=f"epochs (default: {DEFAULTS['epochs']})")
    parser.add_argument("--workers", default=DEFAULTS["workers"],
                        help=f"workers axis: worker counts, a local[N] session each "
                             f"(default: {DEFAULTS['workers']})")
    parser.add_argument("--workers-rows", type=int, default=DEFAULTS["workers_rows"],
                        help=f"workers axis: training rows (default: {DEFAULTS['workers_rows']})")
    parser.add_argument("--warmup-rows", type=int, default=DEFAULTS["warmup_rows"],
                        help=f"rows axis: rows of each trainer's untimed first run; 0: none "
                             f"(default: {DEFAULTS['warmup_rows']})")


def _option(args: Any, name: str) -> Any:
    """``args.name``, or its default when the caller's namespace lacks it (``scaling.py``'s own)."""
    return getattr(args, name, DEFAULTS[name])


def _ints(value: str | Sequence[int]) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()] if isinstance(value, str) else [int(v) for v in value]


def _names(value: str | Sequence[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def _trainer_names(args: Any, axis: str) -> list[str]:
    return _names(_option(args, "trainers") or AXIS_TRAINERS[axis])


# ---------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Teacher:
    """A fixed random 2-layer tanh net; a row's label is its centred score plus noise, > 0."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    centre: float
    noise: float

    @classmethod
    def make(cls, seed: int = SEED) -> Teacher:
        rng = np.random.default_rng(seed)
        w1 = rng.normal(size=(FEATURES, TEACHER_HIDDEN)) * (TEACHER_SCALE / math.sqrt(FEATURES))
        b1 = rng.normal(size=TEACHER_HIDDEN) * 0.5
        w2 = rng.normal(size=TEACHER_HIDDEN) / math.sqrt(TEACHER_HIDDEN)
        # Centring at the median balances the classes (the Higgs set is about half signal).
        scores = np.tanh(rng.standard_normal((100_000, FEATURES)) @ w1 + b1) @ w2
        return cls(w1, b1, w2, float(np.median(scores)), TEACHER_NOISE * float(scores.std()))

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rows: features (n, 28) float32 and labels (n,) float32 in {0, 1}."""
        x = rng.standard_normal((n, FEATURES), dtype=np.float32)
        score = np.tanh(x @ self.w1 + self.b1) @ self.w2 - self.centre
        y = (score + self.noise * rng.standard_normal(n)) > 0
        return x, y.astype(np.float32)


def held_out(teacher: Teacher) -> tuple[np.ndarray, np.ndarray]:
    """The held-out rows, from their own stream of the seed."""
    return teacher.sample(np.random.default_rng([SEED, 2]), TEST_ROWS)


def write_parquet(directory: str, rows: int, teacher: Teacher) -> str:
    """Writes ``rows`` training rows to ``directory`` as Parquet, one file per chunk, so the
    driver holds one chunk at a time; chunk i is the same for every row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        x, y = teacher.sample(np.random.default_rng([SEED, 1, index]), min(CHUNK_ROWS, rows - start))
        features = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), FEATURES).cast(pa.list_(pa.float32()))
        pq.write_table(pa.table({"features": features, "label": pa.array(y)}),
                       os.path.join(directory, f"part-{index:05d}.parquet"))
    return directory


# ---------------------------------------------------------------------------------- worker memory


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:  # the process exited meanwhile
        return None


def _status_kb(pid: int, field: str) -> int | None:
    status = _read(f"/proc/{pid}/status")
    for line in (status or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _parent(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else None


def _descends_from(pid: int, root: int) -> bool:
    for _ in range(64):
        parent = _parent(pid)
        if parent is None or parent <= 1:
            return False
        if parent == root:
            return True
        pid = parent
    return False


def spark_python_workers(root: int | None = None) -> list[int]:
    """PIDs of the Spark Python workers (``python -m pyspark.daemon`` and its forks) started
    under ``root`` (default: this process), so another session's workers never count."""
    root = os.getpid() if root is None else root
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        argv = (_read(f"/proc/{name}/cmdline") or "").split("\0")
        if "python" in os.path.basename(argv[0]) and any("pyspark" in a for a in argv[1:]) \
                and _descends_from(int(name), root):
            found.append(int(name))
    return found


class WorkerPeakRss:
    """The largest ``VmHWM`` of any Spark Python worker of this process while the block runs.

    Entering resets the workers' high-water marks to their current RSS (``clear_refs`` 5), so
    a reused worker's earlier runs do not count; a thread polls ``/proc`` every ``interval``.
    """

    def __init__(self, interval: float = RSS_INTERVAL) -> None:
        self.interval = interval
        self.peak_kb = 0
        self.pids: set[int] = set()
        self.reset_failed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-rss", daemon=True)

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    def __enter__(self) -> WorkerPeakRss:
        for pid in spark_python_workers():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                self.reset_failed = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def _poll(self) -> None:
        for pid in spark_python_workers():
            hwm = _status_kb(pid, "VmHWM")
            if hwm is not None:
                self.pids.add(pid)
                self.peak_kb = max(self.peak_kb, hwm)


# ---------------------------------------------------------------------------------- Spark and training


def fresh_session(cores: int) -> Any:
    """A new embedded ``local[cores]`` session (zdk's own settings; the active one is stopped
    first), its Python workers started and Keras imported in them before it is returned."""
    from pyspark.sql import SparkSession

    from zdk.driver.session import get_session, warm_workers

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    spark = get_session(f"local[{cores}]", extra_conf={"spark.python.worker.reuse": "true"})
    # get_session warms in the background; a second warm-up queues behind the first, so when
    # it is done both are, and no measured run pays for TensorFlow's import.
    thread = warm_workers(spark, force=True)
    if thread is not None:
        thread.join()
    return spark


def higgs_mlp() -> Any:
    """28-64-64-1 MLP with a sigmoid output, seeded."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])


def make_trainer(name: str, model: Any, workers: int, args: Any) -> Any:
    """Trainer ``name`` on ``workers`` workers (SingleTrainer: one), without a progress bar."""
    from zdk.trainers import TRAINERS, SingleTrainer

    cls = TRAINERS[name]
    options: dict[str, Any] = {"num_epoch": _option(args, "epochs"), "batch_size": _option(args, "batch_size"),
                               "progress": False}
    if not issubclass(cls, SingleTrainer):
        options["num_workers"] = workers
    return cls(model, "adam", "binary_crossentropy", **options)


@dataclass(frozen=True)
class Run:
    """One timed ``train()``: the trainer after it, its wall seconds, the model's test
    probabilities and its workers' peak RSS."""

    trainer: Any
    wall: float
    probabilities: np.ndarray
    peak_mb: float


def timed_train(name: str, df: Any, workers: int, args: Any, x_test: np.ndarray) -> Run:
    trainer = make_trainer(name, higgs_mlp(), workers, args)
    with WorkerPeakRss() as rss:
        started = time.perf_counter()
        trained = trainer.train(df)
        wall = time.perf_counter() - started
    if rss.reset_failed:
        print("  (could not reset a worker's VmHWM: its peak may be an earlier run's)", flush=True)
    probabilities = np.asarray(trained.predict(x_test, batch_size=4096, verbose=0)).ravel()
    return Run(trainer, wall, probabilities, rss.peak_mb)


def f1_score(y_true: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    predicted, actual = probabilities >= threshold, y_true > 0.5
    tp = float(np.sum(predicted & actual))
    fp, fn = float(np.sum(predicted & ~actual)), float(np.sum(~predicted & actual))
    return 2 * tp / max(2 * tp + fp + fn, 1.0)


def accuracy(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    return float(np.mean((probabilities >= 0.5) == (y_true > 0.5)))


def warm_up_trainers(spark: Any, names: Sequence[str], workers: int, args: Any, teacher: Teacher) -> None:
    """Trains each trainer once on a few rows read from Parquet, untimed: the first Parquet
    read, tracing and each algorithm's first use then fall on no measured run."""
    rows = _option(args, "warmup_rows")
    if rows <= 0:
        return

    def train_each(path: str) -> list[dict[str, Any]]:
        df = spark.read.parquet(path)
        for name in names:
            started = time.perf_counter()
            make_trainer(name, higgs_mlp(), workers, args).train(df)
            print(f"  warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
        return []

    _with_data(rows, teacher, train_each)


def _with_data(rows: int, teacher: Teacher, use: Callable[[str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Calls ``use`` with a Parquet directory of ``rows`` rows, deleted afterwards."""
    directory = tempfile.mkdtemp(prefix="zdk-scaling-")
    try:
        started = time.perf_counter()
        path = write_parquet(os.path.join(directory, "data.parquet"), rows, teacher)
        print(f"{rows} rows written to Parquet in {time.perf_counter() - started:.1f} s", flush=True)
        return use(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------- rows axis


def rows_axis(args: Any) -> list[dict[str, Any]]:
    """Time, speed, F1 and worker peak RSS per (row count, trainer); see the module's docstring.

    Uses the active Spark session if there is one (it needs 2 task slots), else starts a
    ``local[2]`` one and stops it at the end.
    """
    from pyspark.sql import SparkSession

    teacher, workers = Teacher.make(), 2
    names = _trainer_names(args, "rows")
    x_test, y_test = held_out(teacher)
    active = SparkSession.getActiveSession()
    spark = fresh_session(workers) if active is None else active
    try:
        warm_up_trainers(spark, names, workers, args, teacher)
        results: list[dict[str, Any]] = []
        for rows in _ints(_option(args, "rows")):
            def measure(path: str, rows: int = rows) -> list[dict[str, Any]]:
                df = spark.read.parquet(path)
                return [_rows_record(rows, name, timed_train(name, df, workers, args, x_test), y_test, args)
                        for name in names]
            results.extend(_with_data(rows, teacher, measure))
        return _relative_to_smallest(results)
    finally:
        if active is None:
            spark.stop()


def _rows_record(rows: int, name: str, run: Run, y_test: np.ndarray, args: Any) -> dict[str, Any]:
    samples = rows * _option(args, "epochs")
    record: dict[str, Any] = {"rows": rows, "trainer": name, "workers": run.trainer.num_workers, "train() s": run.wall,
              "steps s": run.trainer.timings.get("steps"), "samples/s": samples / run.wall,
              "s per M rows": run.wall / (rows / 1e6), "vs smallest": None,
              "F1": f1_score(y_test, run.probabilities), "worker peak RSS MB": run.peak_mb}
    print(f"  {rows} rows, {name}: {run.wall:.1f} s, F1 {record['F1']:.3f}, worker peak {run.peak_mb:.0f} MB, "
          f"timings {run.trainer.timings}", flush=True)
    return record


def _relative_to_smallest(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fills ``vs smallest``: s per M rows over that of the trainer's smallest row count."""
    smallest: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["trainer"] not in smallest or r["rows"] < smallest[r["trainer"]]["rows"]:
            smallest[r["trainer"]] = r
    for r in results:
        r["vs smallest"] = r["s per M rows"] / smallest[r["trainer"]]["s per M rows"]
    return results


# ---------------------------------------------------------------------------------- workers axis


def worker_rates(history: Sequence[dict[str, Any]]) -> tuple[dict[int, int], dict[int, float]]:
    """Each worker's steps, and its steps/s over the second half of its steps (the first half
    holds the tracing of the first compiled window); from the per-step history's timestamps."""
    stamps: dict[int, list[float]] = {}
    for record in history:
        stamps.setdefault(record["worker"], []).append(record["timestamp"])
    steps: dict[int, int] = {}
    rates: dict[int, float] = {}
    for worker, times in stamps.items():
        times.sort()
        steps[worker] = len(times)
        half = len(times) // 2
        span = times[-1] - times[half]
        if span > 0:
            rates[worker] = (len(times) - 1 - half) / span
    return steps, rates


def _workers_record(name: str, workers: int, cores: int, run: Run, y_test: np.ndarray) -> dict[str, Any]:
    steps, rates = worker_rates(run.trainer.history)
    values = sorted(rates.values())
    record: dict[str, Any] = {
        "trainer": name, "workers": workers, "local[N]": cores, "train() s": run.wall,
        "steps / worker": statistics.median_low(steps.values()) if steps else 0,
        "worker steps/s (median)": statistics.median(values) if values else None,
        "worker steps/s (min–max)": f"{values[0]:.1f}–{values[-1]:.1f}" if values else "–",
        "all workers steps/s": sum(values) if values else None,
        "test accuracy": accuracy(y_test, run.probabilities), "vs SingleTrainer": None}
    print(f"  local[{cores}], {name}: {run.wall:.1f} s, accuracy {record['test accuracy']:.3f}, "
          f"steps/s per worker {[round(rates[w], 1) for w in sorted(rates)]}, timings {run.trainer.timings}",
          flush=True)
    return record


def workers_axis(args: Any) -> list[dict[str, Any]]:
    """Steps/s per worker and accuracy against SingleTrainer's, per worker count; see the
    module's docstring. Stops the active Spark session, and each one it starts."""
    teacher = Teacher.make()
    names = [n for n in _trainer_names(args, "workers") if n != "SingleTrainer"]
    x_test, y_test = held_out(teacher)

    def measure(path: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for cores in _ints(_option(args, "workers")):
            spark = fresh_session(cores)
            try:
                df = spark.read.parquet(path)
                if not results:  # the reference, once, in the first session
                    warm_up_trainers(spark, ["SingleTrainer"], 1, args, teacher)
                    run = timed_train("SingleTrainer", df, 1, args, x_test)
                    results.append(_workers_record("SingleTrainer", 1, cores, run, y_test))
                warm_up_trainers(spark, names, cores, args, teacher)
                for name in names:
                    run = timed_train(name, df, cores, args, x_test)
                    results.append(_workers_record(name, cores, cores, run, y_test))
            finally:
                spark.stop()
        reference = results[0]["test accuracy"] if results else None
        for r in results:
            r["vs SingleTrainer"] = r["test accuracy"] / reference if reference else None
        return results

    return _with_data(_option(args, "workers_rows"), teacher, measure)


# ---------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 1000 else f"{value:.1f}" if magnitude >= 10 else f"{value:.3f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    """Prints ``rows`` as a markdown table, one column per key (in first-seen order)."""
    if not rows:
        print("(no rows)")
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axis", choices=("rows", "workers"), default="rows", help="what to vary (default: rows)")
    parser.add_argument("--png", metavar="DIR", help="draw the axis into DIR/scaling_<axis>.png")
    add_arguments(parser)
    args = parser.parse_args(argv)
    rows = rows_axis(args) if args.axis == "rows" else workers_axis(args)
    print(f"\n{args.axis} axis: batch {args.batch_size}, {args.epochs} epoch(s), {os.cpu_count()} CPUs")
    print_table(rows)
    if args.png:
        import scaling_plots

        print(scaling_plots.plot_axis(args.axis, rows, args.png))
    return rows


if __name__ == "__main__":
    main()
