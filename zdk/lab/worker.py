"""The body of one lab worker process: local numpy SGD with an exchange every λ steps.

A worker trains θ on its rows with plain SGD, θ ← θ − α·∇L(θ; batch), and calls
:meth:`~zdk.ps.exchange.Exchange.end_window` after every λ steps, exactly as a Spark task
does. Processes are spawned (not forked), so each imports the algorithm's plugin modules
itself before it says `hello`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from zdk.algorithms.sources import load_sources
from zdk.errors import ConfigError
from zdk.lab.models import get_model
from zdk.ps.client import PSClient
from zdk.ps.exchange import Exchange

logger = logging.getLogger(__name__)

#: Owed straggler sleep is paid once it reaches this many seconds (sleeps shorter than
#: about a millisecond overshoot by more than they last).
MIN_SLEEP = 1e-3


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Everything a worker process needs besides its rows; pickled to the spawned process.

    Args:
        worker_id: this worker's id, 0 ≤ id < K.
        endpoints: the shards' endpoints (or their lossy proxies'), shard k at index k.
        model: a :data:`zdk.lab.models.MODELS` name.
        epochs: epochs over this worker's rows (≥ 1).
        batch: minibatch size (≥ 1).
        lr: α, the local SGD learning rate (> 0).
        seed: the cell's seed; the worker shuffles with ``default_rng([seed, worker_id])``.
        slowdown: s ≥ 1; each step takes s× its compute time (a straggler when s > 1).
        imports: modules or ``.py`` files to import first, so plugin algorithms are registered.
        timeout: seconds any PS request may take, resends included.
        tries: sends per request (more through a lossy link).
        start_timeout: seconds to wait for every worker to be ready to start.
        codec: the commit codec, and ``codec_args`` its arguments (None: float32).
    """

    worker_id: int
    endpoints: tuple[str, ...]
    model: str
    epochs: int
    batch: int
    lr: float
    seed: int
    slowdown: float = 1.0
    imports: tuple[str, ...] = ()
    timeout: float = 120.0
    tries: int = 3
    start_timeout: float = 300.0
    codec: str | None = None
    codec_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks: list[tuple[str, Any, bool, str]] = [
            ("worker_id", self.worker_id, isinstance(self.worker_id, int) and self.worker_id >= 0, "an int ≥ 0"),
            ("endpoints", self.endpoints, bool(self.endpoints), "a non-empty tuple of endpoints"),
            ("epochs", self.epochs, isinstance(self.epochs, int) and self.epochs >= 1, "≥ 1"),
            ("batch", self.batch, isinstance(self.batch, int) and self.batch >= 1, "≥ 1"),
            ("lr", self.lr, self.lr > 0, "> 0"),
            ("slowdown", self.slowdown, self.slowdown >= 1, "≥ 1"),
            ("timeout", self.timeout, self.timeout > 0, "> 0 seconds"),
            ("tries", self.tries, isinstance(self.tries, int) and self.tries >= 1, "≥ 1"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise ConfigError(f"`{name}` must be {rule}. Received: {name}={value!r}", field=name)
        get_model(self.model)


@dataclass(frozen=True, kw_only=True)
class WorkerResult:
    """What a worker reports when it is done.

    Args:
        worker_id: its id.
        steps: local SGD steps taken.
        exchanges: exchanges with the PS (commits sent).
        staleness: τ of each commit, as the shards reported it.
        curve: (seconds since the start, mean training loss) at the end of every epoch.
        started: wall-clock time (``time.time()``) when every worker started together.
        seconds: from the start to ``bye``.
        step_seconds: time in local steps, straggler sleep included.
        resends: requests the client sent again.
        diverged: whether training stopped on a non-finite loss.
        commit_bytes: payload bytes of its commits, encoded.
    """

    worker_id: int
    steps: int
    exchanges: int
    staleness: tuple[int, ...]
    curve: tuple[tuple[float, float], ...]
    started: float
    seconds: float
    step_seconds: float
    resends: int
    diverged: bool
    commit_bytes: int = 0


@dataclass(frozen=True)
class WorkerFailure:
    """A worker's exception, as text, sent to the parent before the process exits non-zero."""

    worker_id: int
    error: str


class Pacer:
    """Makes each step last ``slowdown``× its compute time: after a step of t seconds it owes
    (s − 1)·t of sleep, and pays the debt once it reaches :data:`MIN_SLEEP` (oversleeping is
    paid back on later steps)."""

    def __init__(self, slowdown: float) -> None:
        self.extra = float(slowdown) - 1.0
        self.owed = 0.0

    def after_step(self, seconds: float) -> None:
        if self.extra <= 0:
            return
        self.owed += self.extra * seconds
        if self.owed >= MIN_SLEEP:
            began = time.perf_counter()
            time.sleep(self.owed)
            self.owed -= time.perf_counter() - began


def _not_main(imports: tuple[str, ...]) -> list[str]:
    """``imports`` without the parent's ``__main__`` script: spawning already ran it here as
    ``__mp_main__``, and importing it again would register its algorithms twice."""
    main_file = getattr(sys.modules.get("__mp_main__"), "__file__", None)
    main_path = os.path.abspath(main_file) if main_file else None
    return [item for item in imports if not (item.endswith(".py") and os.path.abspath(item) == main_path)]


def train(config: WorkerConfig, x: np.ndarray, y: np.ndarray, barrier: Any) -> WorkerResult:
    """Trains on (x, y) through the PS at ``config.endpoints``; returns what it measured.

    Args:
        config: this worker's settings.
        x: its rows' inputs.
        y: its rows' targets.
        barrier: a ``multiprocessing`` barrier of all the cell's workers: they start together,
            so staleness comes from their number, not from their start-up times.
    """
    load_sources(_not_main(config.imports))
    model = get_model(config.model)
    rng = np.random.default_rng([config.seed, config.worker_id])
    pacer = Pacer(config.slowdown)
    lr = np.float32(config.lr)
    staleness: list[int] = []
    curve: list[tuple[float, float]] = []
    steps = 0
    step_seconds = 0.0
    diverged = False
    with PSClient(list(config.endpoints), worker_id=config.worker_id, timeout=config.timeout,
                  tries=config.tries) as client:
        client.hello()
        local = np.zeros(model.size, np.float32)
        grad = np.empty_like(local)
        exchange = Exchange(client, local, codec=config.codec, codec_args=dict(config.codec_args) or None)
        barrier.wait(config.start_timeout)
        started_at = time.time()
        started = time.perf_counter()
        exchange.start()
        in_window = 0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for _ in range(config.epochs):
                order = rng.permutation(len(x))
                total, seen = 0.0, 0
                for first in range(0, len(x), config.batch):
                    began = time.perf_counter()
                    idx = order[first:first + config.batch]
                    loss = model.loss_and_grad(local, x[idx], y[idx], grad)
                    if not np.isfinite(loss):
                        diverged = True
                        break
                    local -= lr * grad
                    pacer.after_step(time.perf_counter() - began)
                    step_seconds += time.perf_counter() - began
                    total += loss * len(idx)
                    seen += len(idx)
                    steps += 1
                    in_window += 1
                    if in_window == exchange.window:
                        staleness.append(exchange.end_window(in_window).staleness)
                        in_window = 0
                if diverged:
                    logger.warning("worker %d: the loss is not finite; it stops training", config.worker_id)
                    break
                curve.append((time.perf_counter() - started, total / max(seen, 1)))
        if in_window and not diverged:
            staleness.append(exchange.end_window(in_window).staleness)
        exchange.finish()
        return WorkerResult(worker_id=config.worker_id, steps=steps, exchanges=exchange.exchanges,
                            staleness=tuple(staleness), curve=tuple(curve), started=started_at,
                            seconds=time.perf_counter() - started, step_seconds=step_seconds,
                            resends=client.resends, diverged=diverged, commit_bytes=exchange.commit_bytes)


def main(config: WorkerConfig, x: np.ndarray, y: np.ndarray, barrier: Any, out: Any) -> None:
    """The process target: puts a :class:`WorkerResult`, or a :class:`WorkerFailure` and exits non-zero."""
    try:
        out.put(train(config, x, y, barrier))
    except BaseException as exc:
        barrier.abort()  # the others stop waiting for this one
        out.put(WorkerFailure(config.worker_id, "".join(traceback.format_exception_only(exc)).strip()))
        logger.debug("worker %d failed", config.worker_id, exc_info=True)
        raise SystemExit(1) from None
