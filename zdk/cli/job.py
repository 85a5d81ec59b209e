"""``zdk job``: a client of a ``zdk serve`` job server.

    export ZDK_URL=http://127.0.0.1:8470 ZDK_TOKEN=…        # or type the token at the prompt
    zdk job submit spec.json model.keras --wait
    zdk job list | status ID | cancel ID | fetch ID --output DIR | delete ID

The token comes from ``$ZDK_TOKEN`` or, on a terminal, a prompt that does not echo it; never
from the command line, where every local user reads it in ``/proc/PID/cmdline`` (and the shell
keeps it in its history).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from zdk.cli.table import print_table, timestamp


def token(args: argparse.Namespace) -> str:
    """The user's token: ``$ZDK_TOKEN``, else typed at a prompt on a terminal.

    Raises:
        ConfigError: naming ``token`` when ``--token`` was given (it was removed), or there is
            neither the variable nor a terminal to ask on.
    """
    from zdk.errors import ConfigError

    if args.token is not None:
        raise ConfigError("`--token` was removed: a token on the command line is visible to every local user "
                          "(/proc/PID/cmdline) and stays in your shell's history. Set ZDK_TOKEN, or leave it "
                          "unset and type the token at the prompt; then revoke this one "
                          "(zdk serve token revoke) and use a new one", field="token")
    value = os.environ.get("ZDK_TOKEN", "")
    if not value and sys.stdin.isatty():
        value = getpass.getpass("zdk job: token: ").strip()
    if not value:
        raise ConfigError("`token` is required: set ZDK_TOKEN (zdk serve token create --user NAME makes one), or "
                          "run on a terminal to be asked for it", field="token")
    return value


def _client(args: argparse.Namespace) -> Any:
    from zdk.jobs import JobClient

    verify: bool | str = args.ca_cert if args.ca_cert else True
    return JobClient(args.url, token(args), verify=verify)


def _job_submit(args: argparse.Namespace) -> int:
    from zdk.jobs.states import FINISHED

    with open(args.spec, "rb") as fh:
        spec = json.loads(fh.read())
    with open(args.model, "rb") as fh:
        model = fh.read()
    client = _client(args)
    job = client.submit(spec, model)
    print(job["id"])
    if args.wait:
        job = client.wait(job["id"])
        print(f"zdk job {job['id']}: {job['state']}" + (f": {job['error']}" if job.get("error") else ""),
              file=sys.stderr)
        return 0 if job["state"] == FINISHED else 1
    return 0


def _job_list(args: argparse.Namespace) -> int:
    rows = []
    for job in _client(args).jobs():
        p = job.get("progress") or {}
        rows.append((job["id"], job["name"], job["spec"]["trainer"]["class"], job["state"], p.get("steps", "-"),
                     timestamp(job["created"])))
    print_table(("id", "name", "trainer", "state", "steps", "submitted"), rows)
    return 0


def _job_status(args: argparse.Namespace) -> int:
    job = _client(args).job(args.id)
    progress = job.get("progress") or {}
    job["progress"] = {k: v for k, v in progress.items() if k != "series"}
    print(json.dumps(job, indent=2))
    return 0


def _job_cancel(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).cancel(args.id)))
    return 0


def _job_delete(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).delete(args.id)))
    return 0


def _job_fetch(args: argparse.Namespace) -> int:
    client = _client(args)
    record = client.job(args.id)
    os.makedirs(args.output, exist_ok=True)
    files = [(f"{args.id}.keras", client.model_bytes(args.id)),
             (f"{args.id}-history.json", json.dumps(client.history(args.id)).encode()),
             (f"{args.id}-history.csv", client.history(args.id, "csv").encode())]
    if record.get("has_epochs"):
        files += [(f"{args.id}-epochs.json", json.dumps(client.epochs(args.id)).encode()),
                  (f"{args.id}-epochs.csv", client.epochs(args.id, "csv").encode())]
    if record.get("has_csv_log"):
        files.append((f"{args.id}-csvlogger.csv", client.csv_log(args.id).encode()))
    files.append((f"{args.id}.log", client.logs(args.id).encode()))
    written = []
    for name, data in files:
        path = os.path.join(args.output, name)
        with open(path, "wb") as fh:
            fh.write(data)
        written.append(path)
    print("\n".join(written))
    return 0


def add_parser(commands: Any) -> None:
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", default=os.environ.get("ZDK_URL", "http://127.0.0.1:8470"),
                        help="the job server (default: $ZDK_URL or http://127.0.0.1:8470)")
    remote.add_argument("--token", default=None, help=argparse.SUPPRESS)  # removed: refused with the reason
    remote.add_argument("--ca-cert", default=None, help="CA bundle for a server with a self-signed certificate")
    job = commands.add_parser("job", help="submit and follow jobs on a zdk serve job server",
                              description="The token comes from $ZDK_TOKEN, or a prompt on a terminal.")
    job_actions = job.add_subparsers(dest="job_action", required=True)
    submit = job_actions.add_parser("submit", parents=[remote], help="submit SPEC.json with MODEL.keras")
    submit.add_argument("spec", help="the job spec (JSON; see docs/jobs.md)")
    submit.add_argument("model", help="the .keras model file")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end, with a progress bar")
    submit.set_defaults(func=_job_submit)
    job_actions.add_parser("list", parents=[remote], help="your jobs").set_defaults(func=_job_list)
    for name, func, text in (("status", _job_status, "a job's record as JSON"), ("cancel", _job_cancel, "cancel a job"),
                             ("fetch", _job_fetch, "download the model, history (JSON, CSV), per-epoch figures and "
                              "CSVLogger file (when the job has them) and log"),
                             ("delete", _job_delete, "remove an ended job: its record, model, history and log")):
        action = job_actions.add_parser(name, parents=[remote], help=text)
        action.add_argument("id", help="the job id")
        if name == "fetch":
            action.add_argument("--output", default=".", help="directory to write into (default: .)")
        action.set_defaults(func=func)
