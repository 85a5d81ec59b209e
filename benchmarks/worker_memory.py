"""A worker's memory and epoch time with its partition in memory or spilled past ``cache_memory``.

Each configuration runs in a fresh Python process: a ``MinibatchStream`` (what a Spark task of
zdk runs) is fed a partition of Arrow record batches, as Spark hands them over, and serves
``--epochs`` shuffled epochs of minibatches. The table shows the process's peak RSS over the
baseline of the process before the data existed, and seconds per later epoch, against the
in-memory run of the same partition in the same invocation.

    python benchmarks/worker_memory.py --rows 1000000 --width 256 --cache 64m,256m
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def run_one(rows: int, width: int, batch: int, epochs: int, cache: str | None, spill_dir: str) -> dict:
    import numpy as np
    import pyarrow as pa

    from zdk.driver.memory import parse_bytes
    from zdk.runtime.minibatches import MinibatchStream

    def record_batches():
        rng = np.random.default_rng(0)
        for start in range(0, rows, 10_000):  # Spark's default Arrow batch size
            n = min(10_000, rows - start)
            x = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * width, dtype=np.float32)), width)
            yield pa.RecordBatch.from_pydict({"x": x, "y": pa.array(rng.integers(0, 10, n))})

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stream = MinibatchStream(record_batches(), features=["x"], labels=["y"], batch_size=batch, shuffle=True,
                             cache_memory=None if cache is None else parse_bytes(cache, "cache"), spill_dir=spill_dir)
    times = []
    try:
        for _ in range(epochs):
            started = time.perf_counter()
            steps = sum(1 for _ in stream.epoch())
            times.append(time.perf_counter() - started)
        return {"cache": cache or "all", "data_mb": rows * (width + 1) * 4 / 2**20,
                "cached_mb": stream.cached_bytes / 2**20, "spilled_mb": stream.spilled_bytes / 2**20,
                "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
                "first_s": times[0], "later_s": sum(times[1:]) / max(1, len(times) - 1), "steps": steps}
    finally:
        stream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=256, help="floats per row")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache", default="64m,256m", help="cache_memory values to compare with all in memory")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        with tempfile.TemporaryDirectory() as spill_dir:
            print(json.dumps(run_one(args.rows, args.width, args.batch, args.epochs,
                                     None if args.one == "all" else args.one, spill_dir)))
        return
    results = []
    for cache in ["all", *args.cache.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--width", str(args.width),
                              "--batch", str(args.batch), "--epochs", str(args.epochs), "--one", cache],
                             capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    ref = results[0]
    print(f"partition: {args.rows} rows × {args.width} floats = {ref['data_mb']:.0f} MiB; batch {args.batch}; "
          f"{args.epochs} epochs, shuffled")
    print("| cache_memory | in memory | spilled | peak RSS over baseline | × in-memory | first epoch | later epoch "
          "| × in-memory |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['cache']} | {r['cached_mb']:.0f} MiB | {r['spilled_mb']:.0f} MiB | {r['peak_mb']:.0f} MiB | "
              f"{r['peak_mb'] / ref['peak_mb']:.2f} | {r['first_s']:.1f} s | {r['later_s']:.1f} s | "
              f"{r['later_s'] / ref['later_s']:.2f} |")


if __name__ == "__main__":
    main()
