"""Running the lab: one cell (an algorithm, a worker count, a seed) through fresh shards, and the sweep.

A cell starts the shards with θ₀ from its seed, puts a lossy proxy in front of each shard
when the settings ask for one, spawns K worker processes (:mod:`zdk.lab.worker`) that
start together, gathers their results, and pulls the final center θ̃ as an observer to
measure it on the test set. Worker processes are always joined or terminated, and the
shards always stopped, whatever fails.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import queue
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from zdk import algorithms
from zdk.algorithms import codecs
from zdk.algorithms.base import Params
from zdk.algorithms.sources import sources
from zdk.errors import AlgorithmNotFound, ConfigError, DeadlineExceeded, WorkerFailed
from zdk.lab.models import Data, Model, get_model
from zdk.lab.plugins import child_env, load_plugins
from zdk.lab.proxy import LossyProxy
from zdk.lab.settings import LabSettings
from zdk.lab.worker import WorkerConfig, WorkerFailure, WorkerResult, main as worker_main
from zdk.ps.client import PSClient
from zdk.ps.launcher import start_shards
from zdk.ps.protocol import OBSERVER_TOOL

logger = logging.getLogger(__name__)

#: Seconds any request of a worker may take, resends included.
REQUEST_TIMEOUT = 120.0


@dataclass(frozen=True, kw_only=True)
class CellResult:
    """One cell's figures.

    Args:
        algorithm: the algorithm's name.
        workers: K.
        seed: the cell's seed.
        params: the hyperparameters the shards ran with.
        metric: the metric's name (``accuracy``, ``mse``).
        value: the metric of the final center θ̃ on the test set (NaN when θ̃ is not finite).
        loss: the test loss of θ̃.
        staleness_mean: mean τ over every commit of every worker.
        staleness_max: the largest τ.
        commits: commits applied, as counted by the shard that counted fewest.
        updates: each shard's count of applied commits.
        exchanges: exchanges the workers made (commits sent), all workers.
        commit_bytes: payload bytes a commit carried, the mean over every worker's commits.
        wall: seconds from the workers' common start to the last one's ``bye``.
        worker_seconds: each worker's seconds from the start to ``bye``.
        step_seconds: each worker's seconds in local steps (straggler sleep included).
        stragglers: the slow workers' ids.
        curves: per worker, (seconds since the start, mean training loss) after each epoch.
        resends: requests the workers sent again.
        dropped: messages the lossy link dropped.
        delayed: messages it held back.
        diverged: workers that stopped on a non-finite loss.
    """

    algorithm: str
    workers: int
    seed: int
    params: Mapping[str, Any]
    metric: str
    value: float
    loss: float
    staleness_mean: float
    staleness_max: int
    commits: int
    updates: tuple[int, ...]
    exchanges: int
    commit_bytes: float
    wall: float
    worker_seconds: tuple[float, ...]
    step_seconds: tuple[float, ...]
    stragglers: tuple[int, ...]
    curves: tuple[tuple[tuple[float, float], ...], ...]
    resends: int
    dropped: int
    delayed: int
    diverged: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = dict(self.params)
        return out


@dataclass(frozen=True, kw_only=True)
class LabResult:
    """Every cell of a lab run, in run order.

    Args:
        settings: what was run.
        cells: one result per algorithm × worker count × seed.
    """

    settings: LabSettings
    cells: tuple[CellResult, ...]


def algorithm_params(settings: LabSettings, name: str, workers: int) -> Params:
    """The validated hyperparameters of ``name`` in a cell of ``workers``: ``settings.params[name]``,
    λ = ``settings.window`` unless those name one (else the algorithm's default for K workers),
    and the defaults that depend on K (model averaging's quorum)."""
    algo = algorithms.get(name)
    values = dict(settings.params.get(name, {}))
    window = settings.window if settings.window is not None else algo.params.window_for(workers)
    if window is not None:
        values.setdefault("communication_window", window)
    return algo.make_params(values).for_job(workers)


def check_algorithms(settings: LabSettings) -> None:
    """Imports the plugins, then checks that every algorithm exists, uses the PS, and takes its params.

    Raises:
        AlgorithmNotFound: for a name nothing registered.
        ConfigError: for an algorithm without a PS, or invalid hyperparameters.
    """
    load_plugins(settings.plugins)
    if settings.codec is not None:
        try:
            codecs.get_codec(settings.codec).make_args(settings.codec_args)
        except AlgorithmNotFound as exc:
            raise ConfigError(f"`codec` must be a registered codec. {exc}", field="codec") from None
    for name in settings.algorithms:
        algo = algorithms.get(name)
        if not algo.uses_ps:
            raise ConfigError(f"`algorithms` must use the parameter server; {name!r} trains without one. "
                              f"Received: algorithms={list(settings.algorithms)}", field="algorithms")
        if settings.codec is not None and algo.synchronous:
            raise ConfigError(f"`codec` needs asynchronous algorithms; {name!r} commits whole models in rounds. "
                              f"Received: codec={settings.codec!r}", field="codec")
        for workers in settings.workers:
            algorithm_params(settings, name, workers)


def run_cell(settings: LabSettings, *, algorithm: str, workers: int, seed: int, data: Data | None = None) -> CellResult:
    """Trains one cell and measures it.

    Args:
        settings: the run's settings (model, shards, faults, ...).
        algorithm: a registered algorithm name.
        workers: K ≥ 1.
        seed: seeds θ₀, the rows' split among the workers and each worker's shuffling.
        data: the model's data, when already loaded.

    Raises:
        WorkerFailed: when a worker process fails, naming it and its error.
        DeadlineExceeded: when the workers do not finish within ``settings.timeout``.
    """
    model = get_model(settings.model)
    x_train, y_train, x_test, y_test = data if data is not None else model.data()
    params = algorithm_params(settings, algorithm, workers)
    algo = algorithms.get(algorithm)
    initial = model.init(seed)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(x_train)), workers)
    slow = settings.slow_workers(workers)
    imports = tuple(dict.fromkeys([*load_plugins(settings.plugins), *sources(algo)]))
    if settings.lossy:
        per_try = 0.25 + 0.05 * workers  # a loaded machine answers slower; resending too early only adds load
        timeout, tries = REQUEST_TIMEOUT, max(3, int(REQUEST_TIMEOUT / per_try))
    else:
        timeout, tries = REQUEST_TIMEOUT, 3
    with start_shards(num_shards=settings.shards, total_size=model.size, algorithm=algorithm,
                      params=params.to_dict(), initial=initial, startup_timeout=60.0,
                      env=child_env(settings.plugins), codec=settings.codec) as group:
        with contextlib.ExitStack() as links:
            proxies = [links.enter_context(LossyProxy(endpoint, drop=settings.drop, late=settings.late,
                                                      delay=settings.delay, seed=1000 * seed + k))
                       for k, endpoint in enumerate(group.endpoints)] if settings.lossy else []
            endpoints = tuple(p.endpoint for p in proxies) or tuple(group.endpoints)
            configs = [WorkerConfig(worker_id=k, endpoints=endpoints, model=model.name, epochs=settings.epochs,
                                    batch=settings.batch, lr=settings.lr, seed=seed,
                                    slowdown=settings.slowdown if k in slow else 1.0, imports=imports,
                                    timeout=timeout, tries=tries, codec=settings.codec,
                                    codec_args=dict(settings.codec_args)) for k in range(workers)]
            results = _run_workers(configs, [(x_train[p], y_train[p]) for p in parts], settings.timeout)
            dropped = sum(p.counts["dropped"] for p in proxies)
            delayed = sum(p.counts["delayed"] for p in proxies)
        with PSClient(group.endpoints, worker_id=OBSERVER_TOOL, timeout=30) as observer:
            observer.hello(register=False)
            center = observer.pull()
            stats = observer.stats()
    return _measure(model, algorithm, workers, seed, params, center, stats, results, slow, (x_test, y_test),
                    dropped, delayed)


def _run_workers(configs: Sequence[WorkerConfig], rows: Sequence[tuple[np.ndarray, np.ndarray]],
                 timeout: float) -> list[WorkerResult]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(configs)), ctx.Queue()
    procs = [ctx.Process(target=worker_main, args=(c, x, y, barrier, out), name=f"zdk-lab-worker-{c.worker_id}",
                         daemon=True) for c, (x, y) in zip(configs, rows)]
    ok = False
    try:
        for proc in procs:
            proc.start()
        results = _gather(procs, out, timeout)
        ok = True
        return results
    finally:
        for proc in procs:
            if proc.pid is None:
                continue
            proc.join(10.0 if ok else 0.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        out.close()
        out.cancel_join_thread()


def _gather(procs: Sequence[Any], out: Any, timeout: float) -> list[WorkerResult]:
    """Each worker's result, failing on the first failure, a silent death or the deadline."""
    results: dict[int, WorkerResult] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(procs):
        try:
            item = out.get(timeout=0.2)
        except queue.Empty:
            dead = [k for k, p in enumerate(procs) if k not in results and p.exitcode not in (None, 0)]
            if dead:
                try:  # its failure message may still be on its way
                    item = out.get(timeout=2.0)
                except queue.Empty:
                    raise WorkerFailed(f"lab worker {dead[0]} exited with code {procs[dead[0]].exitcode} "
                                       "before reporting") from None
            elif time.monotonic() > deadline:
                missing = sorted(set(range(len(procs))) - set(results))
                raise DeadlineExceeded(f"lab workers {missing} did not finish within {timeout:g} s; "
                                       "raise `timeout` or shrink the cell (epochs, workers)")
            else:
                continue
        if isinstance(item, WorkerFailure):
            raise WorkerFailed(f"lab worker {item.worker_id} failed: {item.error}")
        results[item.worker_id] = item
    return [results[k] for k in range(len(procs))]


def _measure(model: Model, algorithm: str, workers: int, seed: int, params: Params, center: np.ndarray,
             stats: list[dict[str, Any]], results: list[WorkerResult], slow: tuple[int, ...],
             test: tuple[np.ndarray, np.ndarray], dropped: int, delayed: int) -> CellResult:
    if np.isfinite(center).all():
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, value = model.evaluate(center, *test)
    else:
        loss = value = math.nan
    taus = [t for r in results for t in r.staleness]
    updates = tuple(int(s["updates"]) for s in stats)
    first = min(r.started for r in results)
    return CellResult(
        algorithm=algorithm, workers=workers, seed=seed, params=params.to_dict(), metric=model.metric,
        value=float(value), loss=float(loss), staleness_mean=float(np.mean(taus)) if taus else 0.0,
        staleness_max=max(taus, default=0), commits=min(updates), updates=updates,
        exchanges=sum(r.exchanges for r in results),
        commit_bytes=sum(r.commit_bytes for r in results) / max(1, sum(r.exchanges for r in results)),
        wall=max(r.started + r.seconds for r in results) - first,
        worker_seconds=tuple(r.seconds for r in results), step_seconds=tuple(r.step_seconds for r in results),
        stragglers=slow, curves=tuple(r.curve for r in results), resends=sum(r.resends for r in results),
        dropped=dropped, delayed=delayed, diverged=sum(r.diverged for r in results),
    )


def run_lab(settings: LabSettings, *, progress: Callable[[CellResult], None] | None = None) -> LabResult:
    """Runs every algorithm × worker count × seed of ``settings``, one cell at a time.

    Args:
        settings: what to run.
        progress: called with each cell's result as soon as it is done.

    Raises:
        AlgorithmNotFound, ConfigError: before any cell starts, for a bad algorithm or params.
        WorkerFailed, DeadlineExceeded: when a cell fails.
    """
    check_algorithms(settings)
    data = get_model(settings.model).data()
    cells = []
    for algorithm in settings.algorithms:
        for workers in settings.workers:
            for seed in settings.seeds:
                cell = run_cell(settings, algorithm=algorithm, workers=workers, seed=seed, data=data)
                logger.info("%s, %d workers, seed %d: %s %.4f in %.1f s", algorithm, workers, seed, cell.metric,
                            cell.value, cell.wall)
                cells.append(cell)
                if progress is not None:
                    progress(cell)
    return LabResult(settings=settings, cells=tuple(cells))
