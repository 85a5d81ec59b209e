"""Hermans's staleness experiment at small scale: accuracy against the number of workers.

Many worker processes (1 to 32 on this 2-core machine) train sklearn's digits MLP
(64-64-10, plain numpy SGD, so a process costs no TensorFlow) through the real sharded
PS, without Spark. Every run sees the same data passes in total: K workers each train on
1/K of the rows for the same epochs. With more workers than cores, every worker's commit
lands on a center that K − 1 others have moved since its pull: staleness grows with K.

Prints accuracy (and mean staleness) per algorithm × worker count and writes a PNG of
accuracy against workers. Run: python benchmarks/staleness.py [--workers 1 2 4 8 16 32]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np

HIDDEN = 64


def layout(inputs: int, classes: int) -> list[tuple[int, ...]]:
    return [(inputs, HIDDEN), (HIDDEN,), (HIDDEN, classes), (classes,)]


def views(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    out, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[offset:offset + size].reshape(shape))
        offset += size
    return out


def init(shapes: list[tuple[int, ...]], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flat = np.zeros(sum(int(np.prod(s)) for s in shapes), np.float32)
    w1, _, w2, _ = views(flat, shapes)
    w1[:] = rng.normal(scale=np.sqrt(2.0 / w1.shape[0]), size=w1.shape)
    w2[:] = rng.normal(scale=np.sqrt(1.0 / w2.shape[0]), size=w2.shape)
    return flat


def gradient(flat: np.ndarray, shapes, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    """Cross-entropy of a ReLU MLP and its gradient (into ``out``), by hand."""
    w1, b1, w2, b2 = views(flat, shapes)
    g1, gb1, g2, gb2 = views(out, shapes)
    pre = x @ w1 + b1
    h = np.maximum(pre, 0.0)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    g2[:] = h.T @ p
    gb2[:] = p.sum(axis=0)
    dh = (p @ w2.T) * (pre > 0)
    g1[:] = x.T @ dh
    gb1[:] = dh.sum(axis=0)
    return loss


def accuracy(flat: np.ndarray, shapes, x: np.ndarray, y: np.ndarray) -> float:
    w1, b1, w2, b2 = views(flat, shapes)
    return float(((np.maximum(x @ w1 + b1, 0) @ w2 + b2).argmax(axis=1) == y).mean())


def worker(endpoints: list[str], worker_id: int, x: np.ndarray, y: np.ndarray, shapes, epochs: int, batch: int,
           lr: float, barrier, out) -> None:
    from zdk.ps.client import PSClient
    from zdk.ps.exchange import Exchange

    rng = np.random.default_rng(worker_id)
    staleness = []
    with PSClient(endpoints, worker_id=worker_id, timeout=120) as client:
        client.hello()
        local = np.zeros(sum(int(np.prod(s)) for s in shapes), np.float32)
        grad = np.empty_like(local)
        exchange = Exchange(client, local)
        barrier.wait()  # every worker starts together, so staleness comes from their number
        exchange.start()
        in_window = 0
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(x), batch):
                idx = order[start:start + batch]
                gradient(local, shapes, x[idx], y[idx], grad)
                local -= np.float32(lr) * grad
                in_window += 1
                if in_window == exchange.window:
                    staleness.append(exchange.end_window(in_window).staleness)
                    in_window = 0
        if in_window:
            staleness.append(exchange.end_window(in_window).staleness)
        exchange.finish()
    out.put((worker_id, float(np.mean(staleness)) if staleness else 0.0))


def run(algorithm: str, params: dict, workers: int, data, shapes, epochs: int, batch: int, lr: float) -> dict:
    from zdk.ps.client import PSClient
    from zdk.ps.protocol import OBSERVER_TOOL
    from zdk.ps.launcher import start_shards

    x_train, y_train, x_test, y_test = data
    initial = init(shapes)
    ctx = mp.get_context("spawn")
    with start_shards(num_shards=2, total_size=initial.size, algorithm=algorithm, params=params,
                      initial=initial) as group:
        barrier, out = ctx.Barrier(workers), ctx.Queue()
        parts = np.array_split(np.arange(len(x_train)), workers)
        procs = [ctx.Process(target=worker, args=(group.endpoints, k, x_train[p], y_train[p], shapes, epochs, batch,
                                                  lr, barrier, out)) for k, p in enumerate(parts)]
        started = time.perf_counter()
        for proc in procs:
            proc.start()
        results = [out.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join(60)
        wall = time.perf_counter() - started
        with PSClient(group.endpoints, worker_id=OBSERVER_TOOL, timeout=30) as observer:
            observer.hello(register=False)
            center = observer.pull()
    acc = accuracy(center, shapes, x_test, y_test) if np.isfinite(center).all() else float("nan")
    return {"algorithm": algorithm, "workers": workers, "accuracy": acc, "wall": wall,
            "staleness": float(np.mean([s for _, s in results]))}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                        help="worker counts (default: 1 2 4 8 16 32)")
    parser.add_argument("--algorithms", nargs="+", default=["downpour", "agn", "adag", "dynsgd"],
                        help="algorithms (default: downpour agn adag dynsgd)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs over each worker's rows (default: 30)")
    parser.add_argument("--window", type=int, default=4, help="communication window λ (default: 4)")
    parser.add_argument("--lr", type=float, default=0.1, help="local SGD learning rate (default: 0.1)")
    parser.add_argument("--eta", type=float, default=None, help="ADAG's η (default: its own default)")
    parser.add_argument("--plot", default="benchmarks/staleness.png", help="PNG path (default: benchmarks/staleness.png)")
    args = parser.parse_args(argv)

    from zdk.datasets import load_digits_split

    x_train, y_train, x_test, y_test = load_digits_split()
    shapes = layout(x_train.shape[1], 10)
    rows = []
    for algorithm in args.algorithms:
        params = {"communication_window": args.window}
        if algorithm == "adag" and args.eta is not None:
            params["eta"] = args.eta
        for workers in args.workers:
            row = run(algorithm, params, workers, (x_train, y_train, x_test, y_test), shapes, args.epochs, 16, args.lr)
            rows.append(row)
            print(f"  {algorithm:9s} {workers:3d} workers: accuracy {row['accuracy']:.4f}, mean staleness "
                  f"{row['staleness']:.1f}, {row['wall']:.1f} s", flush=True)
    print(f"\n# staleness — digits MLP 64-{HIDDEN}-10, numpy SGD lr {args.lr}, λ = {args.window}, "
          f"{args.epochs} epochs per worker's rows, 2 shards, {os.cpu_count()} CPUs\n")
    header = "| algorithm | " + " | ".join(f"{k} workers" for k in args.workers) + " |"
    print(header)
    print("|---" * (len(args.workers) + 1) + "|")
    for algorithm in args.algorithms:
        cells = [f"{r['accuracy']:.3f} (τ {r['staleness']:.1f})" for r in rows if r["algorithm"] == algorithm]
        print(f"| {algorithm} | " + " | ".join(cells) + " |")
    plot(rows, args)
    return rows


def plot(rows: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algorithm in args.algorithms:
        points = [(r["workers"], r["accuracy"]) for r in rows if r["algorithm"] == algorithm]
        ax.plot(*zip(*points), marker="o", label=algorithm)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("workers (staleness grows with them)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"digits MLP, λ = {args.window}, lr {args.lr}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
