"""``zdk serve``: the job server, and its users' tokens.

    zdk serve --state-dir /srv/zdk --data-root /data --port 8470
    zdk serve token create --user alice --state-dir /srv/zdk
    zdk serve token revoke --user alice | list

``kill -USR1 <pid>`` writes every thread's stack to the server's stderr (a stop or a job that hangs).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import threading
from typing import Any

from zdk.cli.table import print_table, timestamp
from zdk.service.shards import CHECKPOINT_EVERY

DEFAULT_STATE_DIR = os.path.join(os.path.expanduser("~"), ".zdk", "serve")

#: ``zdk serve``'s limits: flag, type, default, help (docs/jobs.md, "Operating it", has the table).
LIMITS: tuple[tuple[str, type, Any, str], ...] = (
    ("--max-jobs", int, 1, "jobs running at once (default: 1)"),
    ("--max-model-mb", float, 64.0, "largest .keras upload (default: 64)"),
    ("--max-unpacked-mb", float, None, "largest total size of a .keras archive's members (default: 4 × --max-model-mb)"),
    ("--max-model-params", int, 50_000_000, "most parameters a model may have, estimated before loading (default: "
                                            "50000000)"),
    ("--model-memory-mb", float, 2048.0, "memory the model loader may add loading one model (default: 2048)"),
    ("--model-load-seconds", float, 60.0, "CPU and wall-clock seconds loading one model may take (default: 60)"),
    ("--max-admissions", int, 2, "submissions checked at once; more get 503 (default: 2)"),
    ("--max-admissions-per-user", int, 1, "submissions of one user checked at once; more get 429 (default: 1)"),
    ("--max-queued-per-user", int, 20, "a user's jobs queued or running at once; more get 429 (default: 20)"),
    ("--max-shards", int, 4, "largest num_shards of a job; each is a process on this host (default: 4)"),
    ("--max-epochs", int, 1000, "largest num_epoch of a job (default: 1000)"),
    ("--max-batch-size", int, 8192, "largest batch_size of a job (default: 8192)"),
    ("--max-timeout", float, 600.0, "largest timeout (seconds per parameter-server request) of a job (default: 600)"),
    ("--retention", float, None, "days after which an ended job (record and files) is removed (default: kept "
                                 "until deleted)"),
)


def _serve(args: argparse.Namespace) -> int:
    from zdk.service import versions

    versions.require_safe()  # before the heavy imports: an unsafe Keras or aiohttp is refused at once
    from zdk.service.app import JobServer, ServeConfig
    from zdk.service.policy import Policy

    policy = Policy(data_roots=tuple(args.data_root or [os.path.join(args.state_dir, "data")]),
                    tables=tuple(args.table or []), custom_modules=tuple(args.custom_module or []),
                    max_model_bytes=int(args.max_model_mb * 2**20),
                    max_unpacked_bytes=int(args.max_unpacked_mb * 2**20) if args.max_unpacked_mb else None,
                    max_model_params=args.max_model_params, model_memory_bytes=int(args.model_memory_mb * 2**20),
                    model_load_seconds=args.model_load_seconds, max_shards=args.max_shards,
                    max_epochs=args.max_epochs, max_batch_size=args.max_batch_size, max_timeout=args.max_timeout)
    config = ServeConfig(state_dir=args.state_dir, host=args.host, port=args.port, master=args.master,
                         policy=policy, max_jobs=args.max_jobs, max_admissions=args.max_admissions,
                         max_admissions_per_user=args.max_admissions_per_user,
                         max_queued_per_user=args.max_queued_per_user, retention_days=args.retention,
                         tls_cert=args.tls_cert, tls_key=args.tls_key, ps_host=args.ps_host,
                         checkpoint_every=args.checkpoint_every)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if not args.data_root:
        os.makedirs(policy.data_roots[0], exist_ok=True)
    with JobServer(config) as server:
        # Spark and a model loader start in the background now, so the first submission does not wait.
        server.sandbox.warm()
        threading.Thread(target=server.cluster.warm, name="zdk-serve-spark", daemon=True).start()
        print(f"zdk serve: listening on {server.url}; state in {args.state_dir}; data roots: "
              f"{', '.join(policy.data_roots)}", flush=True)
        if not server.url.startswith("https") and args.host not in ("127.0.0.1", "localhost", "::1"):
            print("zdk serve: WARNING: tokens travel in the clear; give --tls-cert and --tls-key off loopback",
                  file=sys.stderr, flush=True)
        print(f"zdk serve: dashboard at {server.url}/ ; Ctrl-C stops (running jobs resume at the next start)",
              flush=True)
        # Waits in slices: the kernel may deliver SIGTERM to any thread (Spark's, aiohttp's), and
        # then the main thread, asleep in an untimed wait, never runs the handler (seen: a SIGTERM
        # during Spark's start left the server serving).
        while not stop.wait(0.5):
            pass
        print("zdk serve: stopping", flush=True)
    return 0


def _store(args: argparse.Namespace) -> Any:
    from zdk.service.artifacts import StateDir
    from zdk.service.store import Store

    state = StateDir(directory=args.state_dir)
    state.create_root()
    return Store(state.database)


def _token_create(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        token = store.create_token(args.user)
    finally:
        store.close()
    print(token)
    print(f"zdk serve: token for {args.user} created; it is shown only now (the server keeps its hash)",
          file=sys.stderr)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        count = store.revoke(user=args.user, token=args.token)
    finally:
        store.close()
    print(f"zdk serve: revoked {count} token(s)")
    return 0 if count else 1


def _token_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = [(t["id"], t["user"], timestamp(t["created"]), timestamp(t["revoked"]) if t["revoked"] else "")
                for t in store.tokens()]
    finally:
        store.close()
    print_table(("id", "user", "created", "revoked"), rows)
    return 0


def add_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the job server, or manage its tokens",
                                description="An HTTP job server that trains submitted .keras models on its Spark "
                                "cluster, with a dashboard at its root URL.")
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                       help=f"database, job folders and uploads (default: {DEFAULT_STATE_DIR})")
    serve.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                       help=f"database, job folders and uploads (default: {DEFAULT_STATE_DIR})")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8470, help="port; 0 picks a free one (default: 8470)")
    serve.add_argument("--master", default=None, help="Spark master (default: the embedded local[*])")
    serve.add_argument("--ps-host", default="127.0.0.1", help="address jobs' parameter-server shards bind, with "
                       "CURVE; an address of this host the executors reach when they run elsewhere (default: "
                       "127.0.0.1)")
    serve.add_argument("--checkpoint-every", type=float, default=CHECKPOINT_EVERY,
                       help=f"seconds between a running job's shard checkpoints, which it resumes from after a "
                       f"restart (default: {CHECKPOINT_EVERY:g})")
    serve.add_argument("--data-root", action="append", help="a directory or URI prefix jobs may read data "
                       "under; repeatable (default: STATE_DIR/data)")
    serve.add_argument("--table", action="append", help="a catalog table jobs may read; repeatable")
    serve.add_argument("--custom-module", action="append", help="a module with custom Keras classes or "
                       "algorithms, imported at start, that jobs may name; repeatable")
    for flag, kind, default, text in LIMITS:
        serve.add_argument(flag, type=kind, default=default, help=text)
    serve.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS (use it off loopback)")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    serve.set_defaults(func=_serve)
    serve_actions = serve.add_subparsers(dest="serve_action")
    token = serve_actions.add_parser("token", help="create, revoke or list users' tokens")
    token_actions = token.add_subparsers(dest="token_action", required=True)
    create = token_actions.add_parser("create", parents=[state], help="print a new token for a user (shown once)")
    create.add_argument("--user", required=True, help="the user the token identifies")
    create.set_defaults(func=_token_create)
    revoke = token_actions.add_parser("revoke", parents=[state], help="revoke a user's tokens, or one token")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", default=None, help="revoke every token of this user")
    which.add_argument("--token", default=None, help="revoke this token")
    revoke.set_defaults(func=_token_revoke)
    listing = token_actions.add_parser("list", parents=[state], help="list tokens (ids and users, never tokens)")
    listing.set_defaults(func=_token_list)

