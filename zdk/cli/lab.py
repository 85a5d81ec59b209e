"""``zdk lab``: any registered algorithm, plugins included, through the real sharded PS without Spark,
on worker processes training a numpy model; a table per algorithm × worker count (:mod:`zdk.lab`).

    zdk lab --algorithms downpour adag --workers 1 4 16 --epochs 10 --plot lab.png --json lab.json
    zdk lab --plugin my_algorithms --algorithms mine adag --params 'adag={"eta": 1e-3}'
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from zdk.cli.table import print_table
from zdk.errors import ConfigError
from zdk.lab import report
from zdk.lab.models import MODELS
from zdk.lab.plugins import load_plugins
from zdk.lab.run import CellResult, run_lab
from zdk.lab.settings import LabSettings, spread_params


def parse_params(values: Sequence[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--params`` values: ``JSON`` (for every algorithm that has the key) or ``NAME=JSON`` (for NAME);
    returns (shared, per algorithm)."""
    shared: dict[str, Any] = {}
    per: dict[str, dict[str, Any]] = {}
    for value in values:
        text = value.strip()
        name, target = None, shared
        if not text.startswith("{"):
            name, sep, text = text.partition("=")
            if not sep:
                raise ConfigError(f"`--params` must be a JSON object or NAME=JSON. Received: {value!r}",
                                  field="params")
            target = per.setdefault(name.strip(), {})
        loaded = _json(text, "params")
        if not isinstance(loaded, dict):
            raise ConfigError(f"`--params` must hold a JSON object. Received: {value!r}", field="params")
        target.update(loaded)
    return shared, per


def _json(text: str, flag: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"`--{flag}` must be JSON: {exc.msg} at character {exc.pos}. Received: {text!r}",
                          field=flag) from None
    if flag == "codec-args" and not isinstance(value, dict):
        raise ConfigError(f"`--{flag}` must be a JSON object. Received: {text!r}", field=flag)
    return value


def _progress(cell: CellResult) -> None:
    print(f"  {cell.algorithm:12s} {cell.workers:3d} workers, seed {cell.seed}: {cell.metric} {cell.value:.4f}, "
          f"τ mean {cell.staleness_mean:.1f}, {cell.commits} commits, {cell.wall:.1f} s", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    plugins = tuple(args.plugin)
    load_plugins(plugins)
    shared, per = parse_params(args.params)
    settings = LabSettings(
        algorithms=tuple(args.algorithms), model=args.model, workers=tuple(args.workers), shards=args.shards,
        window=args.window or None, lr=args.lr, epochs=args.epochs, batch=args.batch, seeds=tuple(args.seeds),
        stragglers=args.stragglers, slowdown=args.slowdown, drop=args.drop, late=args.late, delay=args.delay,
        params=spread_params(args.algorithms, shared, per), plugins=plugins, timeout=args.timeout,
        codec=args.codec, codec_args=_json(args.codec_args, "codec-args") if args.codec_args else {},
    )
    result = run_lab(settings, progress=_progress)
    cols, rows = report.table(report.summarize(result))
    print_table(cols, rows)
    if args.json:
        report.write_json(result, args.json)
        print(f"json: {args.json}")
    if args.plot:
        report.plot(result, args.plot)
        print(f"plot: {args.plot}")
    return 0


def add_parser(commands: Any) -> None:
    lab = commands.add_parser(
        "lab", help="run algorithms through the real sharded PS on numpy worker processes, without Spark",
        description="Train a numpy model with every algorithm × worker count × seed through fresh shards, and "
                    "report the final metric, staleness, commits applied and wall time.")
    defaults = LabSettings()
    lab.add_argument("--algorithms", nargs="+", default=list(defaults.algorithms),
                     help=f"registered algorithm names, plugins included (default: {' '.join(defaults.algorithms)})")
    lab.add_argument("--model", choices=sorted(MODELS), default=defaults.model,
                     help=f"digits: MLP, metric accuracy; lstsq: least squares, metric MSE (default: {defaults.model})")
    lab.add_argument("--workers", type=int, nargs="+", default=list(defaults.workers),
                     help=f"worker counts to sweep (default: {' '.join(map(str, defaults.workers))})")
    lab.add_argument("--shards", type=int, default=defaults.shards, help=f"PS shards (default: {defaults.shards})")
    lab.add_argument("--window", type=int, default=defaults.window,
                     help=f"communication window λ; 0: each algorithm's default (default: {defaults.window})")
    lab.add_argument("--lr", type=float, default=defaults.lr, help=f"local SGD learning rate (default: {defaults.lr})")
    lab.add_argument("--epochs", type=int, default=defaults.epochs,
                     help=f"epochs over each worker's rows (default: {defaults.epochs})")
    lab.add_argument("--batch", type=int, default=defaults.batch, help=f"minibatch size (default: {defaults.batch})")
    lab.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds),
                     help="one run per seed; the table shows the mean (default: 0)")
    lab.add_argument("--stragglers", type=float, default=defaults.stragglers,
                     help=f"fraction of the workers that are slow (default: {defaults.stragglers})")
    lab.add_argument("--slowdown", type=float, default=defaults.slowdown,
                     help=f"a slow worker's steps take this many times as long (default: {defaults.slowdown})")
    lab.add_argument("--drop", type=float, default=defaults.drop,
                     help=f"lossy link: probability of dropping a message (default: {defaults.drop})")
    lab.add_argument("--late", type=float, default=defaults.late,
                     help=f"lossy link: probability of delaying a message (default: {defaults.late})")
    lab.add_argument("--delay", type=float, default=defaults.delay,
                     help=f"lossy link: seconds a late message is held (default: {defaults.delay})")
    lab.add_argument("--params", action="append", default=[], metavar="JSON|NAME=JSON",
                     help="hyperparameters: a JSON object for every algorithm having the key, or NAME=JSON for "
                          "one; repeatable (default: each algorithm's defaults)")
    lab.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                     help="a module or .py file that registers algorithms, imported here, in the shards and in "
                          "every worker; repeatable (default: none; installed entry points are always found)")
    lab.add_argument("--codec", default=None, metavar="NAME",
                     help="encode every commit: fp16, bf16, int8, topk or a plugin's codec (default: float32)")
    lab.add_argument("--codec-args", default=None, metavar="JSON",
                     help='the codec\'s arguments, e.g. \'{"ratio": 0.01}\' for topk (default: its own)')
    lab.add_argument("--timeout", type=float, default=defaults.timeout,
                     help=f"seconds one cell may train (default: {defaults.timeout:g})")
    lab.add_argument("--json", default=None, metavar="PATH", help="write every figure as JSON here (default: none)")
    lab.add_argument("--plot", default=None, metavar="PATH",
                     help="write a PNG of the metric against workers and the loss against time (default: none)")
    lab.set_defaults(func=_run)
