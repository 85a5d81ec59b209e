"""A parameter-server demo without Spark: 2 shards, 3 workers fit least squares with ADAG.

Run: python examples/ps_demo.py [--workers 3] [--shards 2] [--steps 400]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from zdk.ps.client import PSClient
from zdk.ps.exchange import Exchange
from zdk.ps.launcher import start_shards


def worker(endpoints, worker_id, x, y, steps, lr, results):
    rng = np.random.default_rng(worker_id)
    with PSClient(endpoints, worker_id=worker_id) as client:
        local = np.zeros(x.shape[1], np.float32)
        exchange = Exchange(client, local)
        exchange.start()
        for step in range(1, steps + 1):
            idx = rng.integers(0, len(x), 32)
            local -= lr * x[idx].T @ (x[idx] @ local - y[idx]) / 32
            if step % exchange.window == 0:
                exchange.end_window(exchange.window)
        exchange.finish()
        results[worker_id] = (exchange.exchanges, client.wait_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3, help="worker threads (default: 3)")
    parser.add_argument("--shards", type=int, default=2, help="shard processes (default: 2)")
    parser.add_argument("--steps", type=int, default=400, help="local SGD steps per worker (default: 400)")
    parser.add_argument("--dim", type=int, default=50_000, help="parameters (default: 50000)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 64)).astype(np.float32)
    w_true = rng.normal(size=64).astype(np.float32)
    y = x @ w_true
    # The model has `dim` parameters; the regression uses the first 64 and the rest ride along,
    # so the PS moves realistically sized vectors.
    dim = max(args.dim, 64)
    pad = np.zeros((x.shape[0], dim - 64), np.float32)
    xs = np.hstack([x, pad])

    with start_shards(num_shards=args.shards, total_size=dim, algorithm="adag",
                      params={"communication_window": 5, "eta": 0.01}) as group:
        print(f"shards: {', '.join(group.endpoints)}")
        parts = np.array_split(np.arange(len(xs)), args.workers)
        results: dict[int, tuple[int, float]] = {}
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(group.endpoints, w, xs[p], y[p], args.steps, 0.02, results))
                   for w, p in enumerate(parts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        with PSClient(group.endpoints) as observer:
            observer.hello(register=False)
            center = observer.pull()
            stats = observer.stats()
    loss = float(np.mean((xs @ center - y) ** 2))
    print(f"trained {args.workers} workers × {args.steps} steps in {elapsed:.2f} s; final MSE {loss:.5f} "
          f"(from {float(np.mean(y ** 2)):.3f})")
    print(f"{'shard':>5} {'version':>8} {'updates':>8} {'MB in':>8} {'MB out':>8} {'mean ADAG scale':>16}")
    for s in stats:
        print(f"{s['shard']:>5} {s['version']:>8} {s['updates']:>8} {s['bytes_in'] / 1e6:>8.1f} "
              f"{s['bytes_out'] / 1e6:>8.1f} {s['info'].get('scale', float('nan')):>16.4f}")
    print(f"{'worker':>6} {'exchanges':>10} {'PS wait s':>10}")
    for w, (n, wait) in sorted(results.items()):
        print(f"{w:>6} {n:>10} {wait:>10.2f}")


if __name__ == "__main__":
    main()
