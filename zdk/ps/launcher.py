"""Starting and stopping shard processes: the Python API behind ``zdk ps`` and the trainers.

Each shard runs ``python -m zdk.ps.server`` in its own process and prints its endpoint
when ready. Shards watch their parent's pid, so they exit on their own when the
launching process dies, even by SIGKILL; an ``atexit`` hook stops any group still
running when the interpreter exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Mapping

import numpy as np

from zdk import algorithms
from zdk.algorithms.sources import sources
from zdk.errors import ConfigError, LaunchError
from zdk.ps.checkpoint import CheckpointPolicy
from zdk.ps.layout import ShardPlan
from zdk.ps.protocol import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_FRAME_BYTES, OBSERVER_TOOL
from zdk.transports.curve import CurveKeys
from zdk.transports.zmq import check_endpoint

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0  # seconds a shard gets to exit after SIGTERM before SIGKILL

_live_groups: "weakref.WeakSet[ShardGroup]" = weakref.WeakSet()
_live_lock = threading.Lock()


def shard_endpoints(bind: str, num_shards: int) -> list[str]:
    """Endpoints to bind: ``tcp://H:P`` gives P, P+1, ...; port 0 gives each shard a free port;
    ``ipc://PATH`` gives ``PATH-0``, ``PATH-1``, ..."""
    check_endpoint(bind)
    if bind.startswith("tcp://"):
        host, _, port = bind[6:].rpartition(":")
        if port in ("0", "*"):
            return [f"tcp://{host}:0"] * num_shards
        first = int(port)
        if first + num_shards - 1 > 65535:
            raise ConfigError(f"`bind` port {first} + {num_shards} shards exceeds 65535. Received: bind={bind!r}",
                              field="bind")
        return [f"tcp://{host}:{first + k}" for k in range(num_shards)]
    return [bind] if num_shards == 1 else [f"{bind}-{k}" for k in range(num_shards)]


class ShardGroup:
    """Running shard processes; a context manager that always stops them.

    Use :func:`start_shards` to make one, and :class:`~zdk.ps.supervisor.Supervisor` to restart
    the shards that crash.
    """

    def __init__(self, processes: list[subprocess.Popen], endpoints: list[str], plan: ShardPlan,
                 algorithm: str, curve: CurveKeys | None = None, checkpoints: CheckpointPolicy | None = None) -> None:
        self.processes = processes
        self.endpoints = endpoints
        self.curve = curve
        self.plan = plan
        self.algorithm = algorithm
        self.checkpoints = checkpoints or CheckpointPolicy()
        self.commands: list[list[str]] = []
        self.env: dict[str, str] = {}
        self.startup_timeout = 30.0
        self.restarts = [0] * plan.num_shards
        with _live_lock:
            _live_groups.add(self)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def alive(self) -> list[bool]:
        return [p.poll() is None for p in self.processes]

    def restart(self, shard: int) -> str:
        """Starts shard ``shard`` again on the endpoint it had; it restores its checkpoint, if
        its group has a checkpoint directory, and announces a new generation, so workers re-sync.

        Raises:
            LaunchError: when it does not come up.
        """
        old = self.processes[shard]
        if old.poll() is None:
            raise LaunchError(f"shard {shard} (pid {old.pid}) is still running")
        if old.stdout is not None:
            old.stdout.close()
        cmd = list(self.commands[shard])
        cmd[cmd.index("--bind") + 1] = self.endpoints[shard]
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self.env,
                                   start_new_session=True)
        self.processes[shard] = process
        try:
            endpoint = _await_ready(process, shard, self.startup_timeout)
        except BaseException:
            if process.poll() is None:
                process.kill()
            process.wait()
            raise
        self.restarts[shard] += 1
        logger.warning("shard %d restarted at %s (pid %d, restart %d)", shard, endpoint, process.pid,
                       self.restarts[shard])
        return endpoint

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every shard, wait up to ``timeout`` seconds, then SIGKILL the rest. Idempotent.

        A shard exits within milliseconds of SIGTERM, after writing its last checkpoint when it
        keeps them; the generous default lets that write finish on a busy disk, since a killed
        shard loses everything since its previous checkpoint."""
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.processes:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("shard pid %d ignored SIGTERM for %.1f s; killing it", p.pid, timeout)
                p.kill()
                p.wait()
        for p in self.processes:
            if p.stdout is not None:
                p.stdout.close()
        with _live_lock:
            _live_groups.discard(self)

    def __enter__(self) -> "ShardGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ShardGroup({self.algorithm!r}, endpoints={self.endpoints})"


def start_shards(*, num_shards: int = 1, total_size: int, bind: str = "tcp://127.0.0.1:0",
                 algorithm: str = "downpour", params: Mapping[str, Any] | None = None,
                 initial: np.ndarray | None = None, checkpoint_dir: str | None = None,
                 checkpoint_every: float | None = None,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 idle_timeout: float | None = None, startup_timeout: float = 30.0, log_level: str = "WARNING",
                 env: Mapping[str, str] | None = None, curve: CurveKeys | None = None,
                 codec: str | None = None) -> ShardGroup:
    """Starts ``num_shards`` shard processes and waits until each has bound its endpoint.

    Args:
        num_shards: N ≥ 1.
        total_size: length of the flat parameter vector.
        bind: ``tcp://HOST:PORT`` (shard k gets PORT+k; port 0 picks free ports) or ``ipc://PATH``.
        algorithm: a registered algorithm name; checked here before anything starts.
        params: its hyperparameters; validated here before anything starts.
        initial: the starting center (full flat vector); zeros when omitted.
        checkpoint_dir: enables `checkpoint`, and restores from it at start.
        checkpoint_every: shards write a checkpoint every this many seconds (needs ``checkpoint_dir``).
        idle_timeout: shards exit after this many seconds without a request.
        startup_timeout: seconds to wait for every shard to report ready.
        log_level: the shards' stderr logging level.
        env: the shards' environment (default: this process's).
        curve: require CURVE with these keys (secrets go through the environment, not argv).
        codec: the commit codec workers will use; a plugin's module is imported by the shards
            (built-in and installed plugins' codecs need nothing).

    Raises:
        LaunchError: when a shard fails to start; already started ones are stopped first.
    """
    plan = ShardPlan(total_size, num_shards)
    algo = algorithms.get(algorithm)
    params_obj = algo.make_params(dict(params or {}))
    checkpoints = CheckpointPolicy(directory=checkpoint_dir, every=checkpoint_every)
    if initial is not None and (initial.ndim != 1 or initial.size != total_size):
        raise ConfigError(f"`initial` must be a flat vector of size {total_size}. Received: shape={initial.shape}",
                          field="initial")
    endpoints = shard_endpoints(bind, num_shards)
    child_env = dict(os.environ if env is None else env)
    # Shards must import this very zdk, even when it is not installed (tests, Spark drivers).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    if curve is not None:
        child_env.update(curve.server_env())
    processes: list[subprocess.Popen] = []
    group = ShardGroup(processes, [], plan, algo.name, curve, checkpoints)
    group.env = child_env
    group.startup_timeout = startup_timeout
    try:
        for k, endpoint in enumerate(endpoints):
            cmd = [sys.executable, "-m", "zdk.ps.server", "--shard", str(k), "--num-shards", str(num_shards),
                   "--size", str(total_size), "--bind", endpoint, "--algorithm", algo.name,
                   "--params", json.dumps(params_obj.to_dict()), "--max-frame-bytes", str(max_frame_bytes),
                   "--chunk-bytes", str(chunk_bytes), "--parent-pid", str(os.getpid()), "--log-level", log_level]
            if checkpoints.directory is not None:
                cmd += ["--checkpoint-dir", checkpoints.directory]
            if checkpoints.every is not None:
                cmd += ["--checkpoint-every", str(checkpoints.every)]
            if idle_timeout is not None:
                cmd += ["--idle-timeout", str(idle_timeout)]
            for source in sources(algo, codec):
                cmd += ["--import", source]
            group.commands.append(cmd)
            processes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=child_env,
                                              start_new_session=True))
        group.endpoints = [_await_ready(p, k, startup_timeout) for k, p in enumerate(processes)]
        if initial is not None:
            from zdk.ps.client import PSClient

            with PSClient(group.endpoints, worker_id=OBSERVER_TOOL, timeout=startup_timeout, curve=curve) as client:
                client.hello(register=False)
                client.init(np.ascontiguousarray(initial, dtype=np.float32))
    except BaseException:
        group.stop()
        raise
    logger.info("started %d shard(s) of %s: %s", num_shards, algo.name, ", ".join(group.endpoints))
    return group


def _await_ready(process: subprocess.Popen, shard: int, timeout: float) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    try:
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LaunchError(f"shard {shard} (pid {process.pid}) did not report ready within {timeout:.0f} s")
            if not selector.select(remaining):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                code = process.wait()
                raise LaunchError(f"shard {shard} (pid {process.pid}) exited with code {code} before it was ready; "
                                  "its stderr above says why")
            line += chunk
    finally:
        selector.close()
    message = json.loads(line.decode())
    if "error" in message:
        raise LaunchError(f"shard {shard} refused to start: {message['error']}")
    return str(message["endpoint"])


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        groups = list(_live_groups)
    for group in groups:
        group.stop(timeout=2.0)
