"""Hermans's staleness experiment at small scale: accuracy against the number of workers.

Many worker processes (1 to 32 on this 2-core machine) train sklearn's digits MLP
(64-64-10, plain numpy SGD, so a process costs no TensorFlow) through the real sharded
PS, without Spark: a fixed sweep of ``zdk lab`` (:mod:`zdk.lab`). Every run sees the same
data passes in total: K workers each train on 1/K of the rows for the same epochs. With
more workers than cores, every worker's commit lands on a center that K − 1 others have
moved since its pull: staleness grows with K.

Prints accuracy (and mean staleness) per algorithm × worker count and writes a PNG of
accuracy against workers. Run: python benchmarks/staleness.py [--workers 1 2 4 8 16 32]
"""

from __future__ import annotations

import argparse
import os

from zdk.lab import LabSettings, report, run_lab
from zdk.lab.models import HIDDEN
from zdk.lab.run import CellResult


def _progress(cell: CellResult) -> None:
    print(f"  {cell.algorithm:9s} {cell.workers:3d} workers: accuracy {cell.value:.4f}, mean staleness "
          f"{cell.staleness_mean:.1f}, {cell.wall:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                        help="worker counts (default: 1 2 4 8 16 32)")
    parser.add_argument("--algorithms", nargs="+", default=["downpour", "agn", "adag", "dynsgd"],
                        help="algorithms, plugins included (default: downpour agn adag dynsgd)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs over each worker's rows (default: 30)")
    parser.add_argument("--window", type=int, default=4, help="communication window λ (default: 4)")
    parser.add_argument("--lr", type=float, default=0.1, help="local SGD learning rate (default: 0.1)")
    parser.add_argument("--eta", type=float, default=None, help="ADAG's η (default: its own default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, averaged (default: 0)")
    parser.add_argument("--plugin", action="append", default=[], help="a module registering algorithms (default: none)")
    parser.add_argument("--plot", default="benchmarks/staleness.png", help="PNG path (default: benchmarks/staleness.png)")
    parser.add_argument("--json", default=None, help="write every figure as JSON here (default: none)")
    args = parser.parse_args(argv)

    params = {"adag": {"eta": args.eta}} if args.eta is not None and "adag" in args.algorithms else {}
    settings = LabSettings(algorithms=tuple(args.algorithms), model="digits", workers=tuple(args.workers), shards=2,
                           window=args.window, lr=args.lr, epochs=args.epochs, batch=16, seeds=tuple(args.seeds),
                           params=params, plugins=tuple(args.plugin))
    result = run_lab(settings, progress=_progress)
    summaries = report.summarize(result)
    print(f"\n# staleness — digits MLP 64-{HIDDEN}-10, numpy SGD lr {args.lr}, λ = {args.window}, "
          f"{args.epochs} epochs per worker's rows, 2 shards, {os.cpu_count()} CPUs\n")
    print("| algorithm | " + " | ".join(f"{k} workers" for k in args.workers) + " |")
    print("|---" * (len(args.workers) + 1) + "|")
    for algorithm in args.algorithms:
        cells = [f"{s.value:.3f} (τ {s.staleness_mean:.1f})" for s in summaries if s.algorithm == algorithm]
        print(f"| {algorithm} | " + " | ".join(cells) + " |")
    report.plot(result, args.plot, title=f"digits MLP, λ = {args.window}, lr {args.lr}, {args.epochs} epochs")
    print(f"plot: {args.plot}")
    if args.json:
        report.write_json(result, args.json)
        print(f"json: {args.json}")
    return [{"algorithm": s.algorithm, "workers": s.workers, "accuracy": s.value, "wall": s.wall,
             "staleness": s.staleness_mean} for s in summaries]


if __name__ == "__main__":
    main()
