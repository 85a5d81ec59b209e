"""How zdk's cost grows with the model, the shard count, the workers and the rows.

Axes, each row against a reference measured in the same run:

``model``
    One worker's commit+pull round through 1, 2 and 4 shards, for models of 1 M, 10 M and 100 M
    float32 parameters, against the transport's ceiling: a bare pyzmq DEALER↔ROUTER echo of the
    same bytes in the same 1 MiB frames, one echo process per shard, each adding the received
    slice into its own center with one ``np.add`` before sending the center back. The zdk round
    is what the Exchange does for DOWNPOUR: the pull right behind the commit, one round trip
    (``commit(..., pull_into=...)``); ``--unpipelined`` also times the commit's round trip followed
    by the pull's. The goal is a ratio ≥ 0.8 at 10 M and 100 M.
``memory``
    The shards' peak RSS (``VmHWM``) less an empty shard's (the interpreter, numpy, pyzmq), over
    their slice, for DOWNPOUR, ADAG (which keeps each worker's pulled slice), ``adag_worker``
    (ADAG with the drift measured on the worker) and AEASGD, with 2 and 8 numpy workers
    committing and pulling a 100 M-parameter center through 4 shards. A shard holds the center,
    the buffer the next update goes to, the older centers pulls are still being sent from, the
    commits ZeroMQ has queued and the algorithm's state; the goal is ≤ 2.5× the slice.
``keras``
    A 100 M-parameter Keras model (1024 → 10,000 → 9,000 → 10, 100.3 M weights) trained by
    DOWNPOUR, ADAG and AEASGD with 2 Spark workers through 4 shards: wall time, the shards' peak
    RSS over their slice, and the Python workers' peak RSS over the model's bytes.
``rows`` / ``workers``
    The Spark axes, in :mod:`scaling_spark`.
``window``
    Time to accuracy for ADAG's communication window, which chose its default of max(4, K)
    (:mod:`adag_window`; its options pass through, e.g. ``--windows 2 4 8 --epochs 3``).

Run: python benchmarks/scaling.py --axis model memory keras [--sizes 1e6 1e7 1e8] [--shards 1 2 4] [--unpipelined]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import threading
import time
from typing import Any, Callable, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from zdk.ps.allocator import tune_allocator  # noqa: E402
from zdk.ps.client import PSClient  # noqa: E402
from zdk.ps.launcher import start_shards  # noqa: E402
from zdk.ps.protocol import DEFAULT_CHUNK_BYTES  # noqa: E402

from ps_throughput import _median_seconds as median_seconds  # noqa: E402  (warm-up call, then the median)

MIB = 1 << 20


def peak_rss(pid: int) -> int:
    """A live process's peak resident set (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def slices(size: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous ranges as zdk cuts them: the first ``size % shards`` slices get one more element."""
    base, extra = divmod(size, shards)
    bounds, start = [], 0
    for k in range(shards):
        stop = start + base + (k < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


# ---------------------------------------------------------------------------------------- model axis

def _echo_add_server(port_queue: Any, size: int) -> None:
    """Receives a delta in frames, adds it into its center with one ``np.add``, sends the center back."""
    tune_allocator()  # zdk's allocator settings, so the ceiling is a fair one
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port_queue.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    center = np.zeros(size, dtype=np.float32)
    delta = np.empty(size, dtype=np.float32)
    view = memoryview(delta).cast("B")
    out = memoryview(center).cast("B")
    frames_out = [out[i:i + DEFAULT_CHUNK_BYTES] for i in range(0, len(out), DEFAULT_CHUNK_BYTES)]
    while True:
        parts = sock.recv_multipart(copy=False)
        if len(parts) == 2 and parts[1].bytes == b"stop":
            break
        offset = 0
        for part in parts[1:]:
            n = len(part.buffer)
            view[offset:offset + n] = part.buffer
            offset += n
        np.add(center, delta, out=center)
        sock.send_multipart([parts[0], *frames_out], copy=False)
    sock.close()
    ctx.term()


def echo_add_round(size: int, shards: int, repeats: int) -> float:
    """Seconds per round of the reference: every slice to its echo+add process and back."""
    spawn = mp.get_context("spawn")
    bounds = slices(size, shards)
    queues = [spawn.Queue() for _ in bounds]
    procs = [spawn.Process(target=_echo_add_server, args=(q, stop - start), daemon=True)
             for q, (start, stop) in zip(queues, bounds)]
    for p in procs:
        p.start()
    ctx = zmq.Context()
    socks = []
    try:
        for q in queues:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{q.get(timeout=60)}")
            socks.append(sock)
        delta = np.full(size, 1e-6, dtype=np.float32)
        center = np.empty(size, dtype=np.float32)
        send_views = [memoryview(delta[a:b]).cast("B") for a, b in bounds]
        recv_views = [memoryview(center[a:b]).cast("B") for a, b in bounds]

        def once() -> None:
            for sock, view in zip(socks, send_views):
                sock.send_multipart([view[i:i + DEFAULT_CHUNK_BYTES] for i in range(0, len(view), DEFAULT_CHUNK_BYTES)],
                                    copy=False)
            for sock, view in zip(socks, recv_views):
                offset = 0
                while offset < len(view):
                    offset += sock.recv_into(view[offset:offset + DEFAULT_CHUNK_BYTES])

        return median_seconds(once, repeats)
    finally:
        for sock in socks:
            sock.send(b"stop")
            sock.close()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        ctx.term()


def zdk_rounds(size: int, shards: int, repeats: int, *, unpipelined: bool = False) -> dict[str, float]:
    """Seconds per commit+pull round of one zdk worker through ``shards`` DOWNPOUR shards, under
    ``"pipelined"`` (the pull behind the commit, one round trip, as the Exchange does) and, with
    ``unpipelined``, ``"unpipelined"`` (the commit's round trip, then the pull's)."""
    with start_shards(num_shards=shards, total_size=size, algorithm="downpour") as group:
        with PSClient(group.endpoints, worker_id=0, timeout=120) as client:
            client.hello()
            delta = np.full(size, 1e-6, dtype=np.float32)
            center = np.empty(size, dtype=np.float32)
            rounds: dict[str, Callable[[], object]] = {"pipelined": lambda: client.commit(delta, pull_into=center)}
            if unpipelined:
                rounds["unpipelined"] = lambda: (client.commit(delta), client.pull(center))
            return interleaved_medians(rounds, repeats)


def interleaved_medians(rounds: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The median seconds of each of ``rounds`` over ``repeats`` calls, after a warm-up call of
    each, taking turns so that the machine's drift weighs on all of them alike."""
    for fn in rounds.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in rounds}
    for _ in range(repeats):
        for name, fn in rounds.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(t)) for name, t in times.items()}


def model_axis(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for size in (int(float(s)) for s in args.sizes):
        for shards in args.shards:
            repeats = args.repeats if size <= 10_000_000 else max(3, args.repeats // 2)
            reference = echo_add_round(size, shards, repeats)
            ours = zdk_rounds(size, shards, repeats, unpipelined=args.unpipelined)
            row: dict[str, Any] = {"parameters": f"{size / 1e6:g} M", "MiB": round(size * 4 / MIB), "shards": shards,
                                   "zdk round s": round(ours["pipelined"], 4), "echo+add round s": round(reference, 4),
                                   "zdk / reference": round(reference / ours["pipelined"], 2)}
            if args.unpipelined:
                row["unpipelined round s"] = round(ours["unpipelined"], 4)
                row["unpipelined / reference"] = round(reference / ours["unpipelined"], 2)
            rows.append(row)
            print_row(rows[-1])
    return rows


# --------------------------------------------------------------------------------------- memory axis

def _numpy_worker(endpoints: list[str], worker: int, size: int, rounds: int, barrier: Any, done: Any) -> None:
    with PSClient(endpoints, worker_id=worker, timeout=600) as client:
        client.hello()
        delta = np.full(size, 1e-7, dtype=np.float32)
        center = np.empty(size, dtype=np.float32)
        client.pull(center)
        barrier.wait()
        for _ in range(rounds):
            client.commit(delta)
            client.pull(center)
        done.put(worker)


def shard_memory(algorithm: str, size: int, shards: int, workers: int, rounds: int) -> dict[str, Any]:
    """The shards' peak RSS over their slice after ``workers`` numpy workers ran ``rounds`` rounds each."""
    spawn = mp.get_context("spawn")
    with start_shards(num_shards=shards, total_size=size, algorithm=algorithm,
                      initial=np.zeros(size, dtype=np.float32)) as group:
        barrier, done = spawn.Barrier(workers), spawn.Queue()
        procs = [spawn.Process(target=_numpy_worker, args=(group.endpoints, w, size, rounds, barrier, done))
                 for w in range(workers)]
        started = time.perf_counter()
        for p in procs:
            p.start()
        try:
            for _ in procs:
                done.get(timeout=1800)
            wall = time.perf_counter() - started
            peaks = [peak_rss(p.pid) for p in group.processes]
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
    slice_bytes = max(b - a for a, b in slices(size, shards)) * 4
    base = idle_shard_rss()
    return {"algorithm": algorithm, "workers": workers, "shards": shards, "slice MiB": round(slice_bytes / MIB),
            "max shard peak MiB": round(max(peaks) / MIB), "empty shard MiB": round(base / MIB),
            "(peak − empty) / slice": round((max(peaks) - base) / slice_bytes, 2),
            "rounds per worker": rounds, "wall s": round(wall, 1)}


def idle_shard_rss() -> int:
    """The peak RSS of a shard of one parameter: the interpreter, numpy and pyzmq, no slice."""
    with start_shards(num_shards=1, total_size=1, algorithm="downpour") as group:
        return peak_rss(group.processes[0].pid)


def memory_axis(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for algorithm in args.algorithms:
        for workers in args.memory_workers:
            rows.append(shard_memory(algorithm, args.memory_size, 4, workers, args.rounds))
            print_row(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------- keras axis

class PeakWatcher:
    """Polls ``/proc`` every 0.2 s for processes whose command line contains one of ``needles``
    and keeps each one's peak RSS (read while it lives, so short-lived processes count too)."""

    def __init__(self, needles: dict[str, bytes]) -> None:
        self.needles = needles
        self.peaks: dict[str, dict[int, int]] = {name: {} for name in needles}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        cmdline = fh.read()
                    for name, needle in self.needles.items():
                        if needle in cmdline:
                            self.peaks[name][int(pid)] = max(self.peaks[name].get(int(pid), 0), peak_rss(int(pid)))
                except (OSError, RuntimeError):  # gone between listing and reading
                    continue

    def peak(self, name: str) -> int:
        return max(self.peaks[name].values(), default=0)


def big_model(inputs: int, hidden: Iterable[int], classes: int) -> Any:
    import keras

    keras.utils.set_random_seed(3)
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(classes, activation="softmax"))
    return keras.Sequential(layers)


def keras_axis(args: argparse.Namespace) -> list[dict[str, Any]]:
    import keras

    from zdk import datasets, trainers
    from zdk.driver.session import get_session

    rng = np.random.default_rng(5)
    x = rng.standard_normal((args.keras_rows, 1024), dtype=np.float32)
    teacher = rng.standard_normal((1024, 10), dtype=np.float32)
    y = (x @ teacher).argmax(axis=1)
    spark = get_session("local[2]")
    df = datasets.to_dataframe(spark, x, y).repartition(2).cache()
    df.count()
    size = big_model(1024, (10_000, 9_000), 10).count_params()
    rows = []
    try:
        for name in args.keras_trainers:
            model = big_model(1024, (10_000, 9_000), 10)
            trainer = getattr(trainers, name)(model, keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy",
                                              num_workers=2, num_shards=4, num_epoch=1, batch_size=32,
                                              progress=False, timeout=600.0)
            with PeakWatcher({"shard": b"zdk.ps.server", "worker": b"pyspark.daemon"}) as watch:
                started = time.perf_counter()
                trained = trainer.train(df)
                wall = time.perf_counter() - started
            weights = np.concatenate([w.reshape(-1) for w in trained.get_weights()])
            slice_bytes = max(b - a for a, b in slices(size, 4)) * 4
            rows.append({"trainer": name, "parameters": f"{size / 1e6:.1f} M", "workers": 2, "shards": 4,
                         "train() s": round(wall, 1), "finite": bool(np.isfinite(weights).all()),
                         "steps": len(trainer.history),
                         "max shard peak MiB": round(watch.peak("shard") / MIB),
                         "shard peak / slice": round(watch.peak("shard") / slice_bytes, 2),
                         "max worker peak MiB": round(watch.peak("worker") / MIB),
                         "worker peak / model": round(watch.peak("worker") / (size * 4), 2)})
            print_row(rows[-1])
    finally:
        df.unpersist()
        spark.stop()
    return rows


# --------------------------------------------------------------------------------------------- output

_printed: set[tuple[str, ...]] = set()


def print_row(row: dict[str, Any]) -> None:
    """Prints a markdown table row, with the header before the first row of each column set."""
    keys = tuple(row)
    if keys not in _printed:
        _printed.add(keys)
        print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    print("| " + " | ".join(str(row[k]) for k in keys) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axis", nargs="+", default=["model", "memory", "keras"],
                        choices=["model", "memory", "keras", "rows", "workers", "window"])
    parser.add_argument("--sizes", nargs="+", default=["1e6", "1e7", "1e8"], help="model axis: parameters")
    parser.add_argument("--shards", nargs="+", type=int, default=[1, 2, 4], help="model axis: shard counts")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--unpipelined", action="store_true", default=False,
                        help="model axis: also time the round as a commit's round trip followed by a pull's")
    parser.add_argument("--memory-size", type=int, default=100_000_000, help="memory axis: parameters")
    parser.add_argument("--algorithms", nargs="+", default=["downpour", "adag", "adag_worker", "aeasgd"])
    parser.add_argument("--memory-workers", nargs="+", type=int, default=[2, 8], help="memory axis: numpy workers")
    parser.add_argument("--rounds", type=int, default=3, help="memory axis: commit+pull rounds per worker")
    parser.add_argument("--keras-rows", type=int, default=1280)
    parser.add_argument("--keras-trainers", nargs="+", default=["DOWNPOUR", "ADAG", "AEASGD"])
    parser.add_argument("--png", metavar="DIR", help="draw each axis into DIR/scaling_<axis>.png "
                        "(scaling_plots.py draws them again from RESULTS.md)")
    args, rest = parser.parse_known_args(argv)
    tune_allocator()
    print(f"# scaling: {platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    for axis in args.axis:
        if axis in ("model", "memory", "keras"):
            rows = {"model": model_axis, "memory": memory_axis, "keras": keras_axis}[axis](args)
            if args.png:
                import scaling_plots

                print(scaling_plots.plot_axis(axis, rows, args.png))
        elif axis == "window":  # time to accuracy, to choose ADAG's default window
            import adag_window

            adag_window.main(rest)
        else:
            import scaling_spark

            scaling_spark.main(["--axis", axis, *rest, *(["--png", args.png] if args.png else [])])


if __name__ == "__main__":
    main()
