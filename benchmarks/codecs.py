"""Compressed commits: bytes per commit, round time and accuracy of each codec against float32.

Two parts, each measured against float32 in the same run:

- **round**: one client commits a delta and pulls the center through 4 real shards (no Spark), for
  models of 10 M and 100 M parameters; the codec's encode (and error feedback) is part of the round.
- **fashion**: DOWNPOUR on Fashion-MNIST with Spark, 2 workers, MLP 784-256-128-10, Adam 1e-3,
  batch 64, the same epochs and seeds for every codec; test accuracy, and commit bytes per
  exchange from the workers' summaries.

Run: python benchmarks/codecs.py [--parts round fashion] [--sizes 10e6 100e6] [--epochs 5] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

#: (label, codec, codec_args)
CODECS = (("float32", None, None), ("bf16", "bf16", None), ("fp16", "fp16", None), ("int8", "int8", None),
          ("topk 1%", "topk", {"ratio": 0.01}))


def round_times(size: int, shards: int, rounds: int) -> list[dict]:
    import numpy as np

    from zdk.ps.client import PSClient
    from zdk.ps.exchange import Exchange
    from zdk.ps.launcher import start_shards

    rows = []
    rng = np.random.default_rng(0)
    step = (rng.standard_normal(size, dtype=np.float32) * 1e-3).astype(np.float32)
    with start_shards(num_shards=shards, total_size=size, algorithm="downpour") as group:
        for label, codec, args in CODECS:
            with PSClient(group.endpoints, worker_id=0, timeout=300) as client:
                client.hello()
                local = np.zeros(size, np.float32)
                exchange = Exchange(client, local, codec=codec, codec_args=args)
                exchange.start()
                times = []
                for _ in range(rounds + 1):  # the first round warms the buffers up
                    local += step
                    started = time.perf_counter()
                    exchange.end_window(1)
                    times.append(time.perf_counter() - started)
                exchange.finish()
            rows.append({"codec": label, "params": size, "round_s": statistics.median(times[1:]),
                         "bytes": exchange.commit_bytes / (rounds + 1)})
            print(f"  {size / 1e6:.0f} M, {label}: {rows[-1]['round_s']:.3f} s a round, "
                  f"{rows[-1]['bytes'] / 1e6:.1f} MB a commit", flush=True)
    return rows


def fashion(epochs: int, seeds: list[int], window: int) -> list[dict]:
    import keras

    from zdk import datasets, trainers
    from zdk.driver.session import get_session

    source, x_train, y_train, x_test, y_test = datasets.load_images()
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    spark = get_session("local[2]")
    df = datasets.to_dataframe(spark, x_train, y_train).cache()
    df.count()
    rows = []
    for label, codec, args in CODECS:
        for seed in seeds:
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([keras.Input((x_train.shape[1],)), keras.layers.Dense(256, activation="relu"),
                                      keras.layers.Dense(128, activation="relu"),
                                      keras.layers.Dense(10, activation="softmax")])
            trainer = trainers.DOWNPOUR(model, keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                                        num_workers=2, num_epoch=epochs, batch_size=64, communication_window=window,
                                        codec=codec, codec_args=args, seed=seed, progress=False)
            started = time.perf_counter()
            trained = trainer.train(df, shuffle=True)
            wall = time.perf_counter() - started
            acc = float((trained.predict(x_test, verbose=0, batch_size=1024).argmax(1) == y_test).mean())
            steps = len(trainer.history)
            commits = sum(-(-sum(1 for r in trainer.history if r["worker"] == w) // window) for w in (0, 1))
            sent = sum(s["commit_bytes"] for s in trainer.worker_summaries)
            rows.append({"codec": label, "seed": seed, "accuracy": acc, "bytes": sent / max(1, commits),
                         "wall": wall, "steps": steps})
            print(f"  {source} {label}, seed {seed}: accuracy {acc:.4f}, {sent / max(1, commits) / 1e3:.1f} kB a "
                  f"commit, {wall:.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["round", "fashion"], choices=["round", "fashion"])
    parser.add_argument("--sizes", type=float, nargs="+", default=[10e6, 100e6], help="parameters (default: 10e6 100e6)")
    parser.add_argument("--shards", type=int, default=4, help="shards for the round part (default: 4)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per codec (default: 5)")
    parser.add_argument("--epochs", type=int, default=5, help="Fashion-MNIST epochs (default: 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Fashion-MNIST seeds (default: 0 1)")
    parser.add_argument("--window", type=int, default=4, help="DOWNPOUR's window (default: 4)")
    args = parser.parse_args(argv)

    if "round" in args.parts:
        rows = [r for size in args.sizes for r in round_times(int(size), args.shards, args.rounds)]
        print(f"\n# commit + pull round, 1 client, {args.shards} shards, median of {args.rounds} rounds, "
              f"{os.cpu_count()} CPUs\n")
        print("| parameters | codec | MB a commit | bytes vs float32 | round | round vs float32 |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            ref = next(r for r in rows if r["params"] == row["params"] and r["codec"] == "float32")
            print(f"| {row['params'] / 1e6:.0f} M | {row['codec']} | {row['bytes'] / 1e6:.2f} | "
                  f"{ref['bytes'] / row['bytes']:.1f}× fewer | {row['round_s']:.3f} s | {row['round_s'] / ref['round_s']:.2f} |")
    if "fashion" in args.parts:
        rows = fashion(args.epochs, args.seeds, args.window)
        print(f"\n# DOWNPOUR on Fashion-MNIST, 2 workers, λ = {args.window}, {args.epochs} epochs, seeds "
              f"{args.seeds}, mean accuracy\n")
        print("| codec | accuracy | vs float32 | kB a commit | bytes vs float32 | train() |")
        print("|---|---|---|---|---|---|")
        ref = [r for r in rows if r["codec"] == "float32"]
        ref_acc = statistics.mean(r["accuracy"] for r in ref)
        ref_bytes = statistics.mean(r["bytes"] for r in ref)
        for label, _, _ in CODECS:
            mine = [r for r in rows if r["codec"] == label]
            acc = statistics.mean(r["accuracy"] for r in mine)
            sent = statistics.mean(r["bytes"] for r in mine)
            print(f"| {label} | {acc:.4f} | {100 * (acc - ref_acc):+.2f} points | {sent / 1e3:.1f} | "
                  f"{ref_bytes / sent:.1f}× fewer | {statistics.mean(r['wall'] for r in mine):.1f} s |")


if __name__ == "__main__":
    main()
