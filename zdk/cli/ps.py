"""``zdk ps``: run a standalone sharded parameter server, and inspect, checkpoint or stop one.

    zdk ps --shards 2 --bind tcp://127.0.0.1:5000 --size 1000000 --algorithm adag
    zdk ps status tcp://127.0.0.1:5000 tcp://127.0.0.1:5001
    zdk ps stop tcp://127.0.0.1:5000 tcp://127.0.0.1:5001
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from zdk.cli.table import print_table
from zdk.ps.protocol import DEFAULT_MAX_FRAME_BYTES, OBSERVER_TOOL

if TYPE_CHECKING:
    from zdk.ps.supervisor import Stopped

logger = logging.getLogger(__name__)


def _model_vector(path: str) -> np.ndarray:
    import keras  # only this option needs Keras

    from zdk.ps.layout import FlatLayout

    weights = keras.saving.load_model(path, compile=False).get_weights()
    return FlatLayout.of(weights).flatten(weights)


def _start(args: argparse.Namespace) -> int:
    from zdk.ps.launcher import start_shards
    from zdk.ps.supervisor import Supervisor

    if (args.model is None) == (args.size is None):
        print("zdk ps: give exactly one of --model FILE.keras or --size N", file=sys.stderr)
        return 2
    if args.max_restarts < 0:
        print(f"zdk ps: --max-restarts must be ≥ 0. Received: {args.max_restarts}", file=sys.stderr)
        return 2
    params = json.loads(args.params)
    curve = _curve_keys(args.curve_keys, create=True)
    initial = _model_vector(args.model) if args.model else None
    size = int(initial.size) if initial is not None else int(args.size)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    group = start_shards(num_shards=args.shards, total_size=size, bind=args.bind, algorithm=args.algorithm,
                         params=params, initial=initial, checkpoint_dir=args.checkpoint_dir,
                         checkpoint_every=args.checkpoint_every, max_frame_bytes=args.max_frame_bytes,
                         idle_timeout=args.idle_timeout, log_level=args.log_level, curve=curve)
    try:
        supervisor = Supervisor(group, max_restarts=args.max_restarts)
        security = f"CURVE, keys in {args.curve_keys}" if curve else "no encryption"
        print(f"zdk ps: {args.shards} shard(s) of {group.algorithm}, {size} parameters, {security}", flush=True)
        for k, endpoint in enumerate(group.endpoints):
            print(f"shard {k}: {endpoint}", flush=True)
        print("zdk ps: serving; Ctrl-C or SIGTERM stops every shard", flush=True)
        while not stop.wait(0.5):
            outcome = supervisor.check()
            for r in outcome.restarted:
                print(f"zdk ps: shard {r.shard} died (code {r.code}); restarting it from {r.checkpoint}",
                      file=sys.stderr, flush=True)
                print(f"shard {r.shard}: {r.endpoint} (restarted)", flush=True)
            if not outcome.whole:
                for s in outcome.stopped:
                    if s.crashed:
                        print(f"zdk ps: {_why_stopped(s, args)}", file=sys.stderr)
                dead = [s.shard for s in outcome.stopped]
                codes = [s.code for s in outcome.stopped]
                print(f"zdk ps: shard(s) {dead} exited (codes {codes}); stopping the rest", file=sys.stderr)
                return 0 if all(c == 0 for c in codes) else 1
        print("zdk ps: stopping", flush=True)
        return 0
    finally:
        group.stop()


def _why_stopped(stopped: Stopped, args: argparse.Namespace) -> str:
    """The supervisor's reason, in terms of this command's flags."""
    k, code = stopped.shard, stopped.code
    if stopped.cause == "no_checkpoint":
        return (f"shard {k} died (code {code}) and has no checkpoint to restart from (use --checkpoint-dir and "
                "--checkpoint-every)")
    if stopped.cause == "out_of_restarts":
        return f"shard {k} died again after {stopped.restarts} restarts (--max-restarts {args.max_restarts})"
    return stopped.message


def _curve_keys(path: str | None, *, create: bool = False) -> Any:
    from zdk.transports.curve import CurveKeys

    if path is None:
        return None
    if create and not os.path.exists(path):
        keys = CurveKeys.generate()
        keys.save(path)
        return keys
    return CurveKeys.load(path)


def _observe(endpoints: Sequence[str], timeout: float, curve_keys: str | None = None) -> Any:
    from zdk.ps.client import PSClient

    client = PSClient(endpoints, worker_id=OBSERVER_TOOL, timeout=timeout, curve=_curve_keys(curve_keys))
    client.hello(register=False)
    return client


def _status(args: argparse.Namespace) -> int:
    with _observe(args.endpoints, args.timeout, args.curve_keys) as client:
        stats = client.stats()
    cols = ("shard", "endpoint", "range", "version", "updates", "dropped", "errors", "workers", "max lag",
            "MB in", "MB out", "uptime s")
    rows = []
    for endpoint, s in zip(args.endpoints, stats):
        lags = [w["lag"] for w in s["workers"].values() if w["active"]]
        rows.append((s["shard"], endpoint, f"{s['range'][0]}:{s['range'][1]}", s["version"], s["updates"],
                     s["dropped"], s["errors"], s["connected"], max(lags, default=0),
                     f"{s['bytes_in'] / 1e6:.1f}", f"{s['bytes_out'] / 1e6:.1f}", f"{s['uptime']:.0f}"))
    print_table(cols, rows)
    infos = {k: v for s in stats for k, v in s["info"].items()}
    if infos:
        print("algorithm reports (mean per commit): " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(infos.items())))
    return 0


def _stop(args: argparse.Namespace) -> int:
    with _observe(args.endpoints, args.timeout, args.curve_keys) as client:
        client.shutdown()
    print(f"zdk ps: asked {len(args.endpoints)} shard(s) to shut down")
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    with _observe(args.endpoints, args.timeout, args.curve_keys) as client:
        for path in client.checkpoint():
            print(path)
    return 0






def add_parser(commands: Any) -> None:
    ps = commands.add_parser("ps", help="run a sharded parameter server, or inspect/stop one",
                             description="Start N shard processes on PORT..PORT+N-1 (without an action), "
                             "or inspect or stop running shards.")
    ps.add_argument("--shards", type=int, default=1, help="number of shard processes (default: 1)")
    ps.add_argument("--bind", default="tcp://127.0.0.1:5000",
                    help="first endpoint; shard k binds PORT+k; port 0 picks free ports (default: tcp://127.0.0.1:5000)")
    ps.add_argument("--model", default=None, help="a .keras file whose weights start the center (default: none)")
    ps.add_argument("--size", type=int, default=None, help="number of parameters, started at zero (default: none)")
    ps.add_argument("--algorithm", default="downpour", help="registered algorithm name (default: downpour)")
    ps.add_argument("--params", default="{}", help="algorithm parameters as JSON (default: {})")
    ps.add_argument("--checkpoint-dir", default=None, help="where `checkpoint` writes; restored at start (default: none)")
    ps.add_argument("--checkpoint-every", type=float, default=None,
                    help="shards write a checkpoint every this many seconds (needs --checkpoint-dir; default: never)")
    ps.add_argument("--max-restarts", type=int, default=3,
                    help="restart a crashed shard from its checkpoint at most this many times (default: 3)")
    ps.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                    help=f"largest data frame accepted (default: {DEFAULT_MAX_FRAME_BYTES})")
    ps.add_argument("--idle-timeout", type=float, default=None, help="shards exit after this many idle seconds "
                    "(default: never)")
    ps.add_argument("--curve-keys", default=None, help="require CURVE with the keys in this file, created "
                    "(mode 0600) when missing; clients need the same file (default: no encryption)")
    ps.set_defaults(func=_start)
    actions = ps.add_subparsers(dest="action")
    for name, func, text in (("status", _status, "print a table of each shard's stats"),
                             ("stop", _stop, "ask shards to shut down"),
                             ("checkpoint", _checkpoint, "ask shards to write their checkpoint")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("endpoints", nargs="+", help="every shard's endpoint, shard 0 first")
        action.add_argument("--timeout", type=float, default=10.0, help="seconds to wait per request (default: 10)")
        action.add_argument("--curve-keys", default=None, help="the server's CURVE key file (default: none)")
        action.set_defaults(func=func)
