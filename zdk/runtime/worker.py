"""The executor side of training: one Spark task per worker, run through ``mapInArrow``.

A task rebuilds the model from its JSON config, streams its partition into
minibatches (:class:`~zdk.runtime.minibatches.MinibatchStream`), runs Keras training steps and, every
communication window, the algorithm's exchange with the parameter server. It yields
its history as Arrow rows, and its weights when the algorithm has no PS.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from zdk import algorithms
from zdk.algorithms.sources import load_sources
from zdk.ps.client import PSClient
from zdk.runtime.minibatches import Batch, MinibatchStream, fit_to_shapes
from zdk.runtime.rss import RssSampler
from zdk.runtime.steps import DEFAULT_STEPS_PER_EXECUTION, NotCompilable, compiled_steps, window_steps
from zdk.runtime.threads import size_tf_threads
from zdk.errors import ConfigError, NonFiniteError, RemoteError
from zdk.ps.exchange import Exchange
from zdk.transports.curve import ClientKeys
from zdk.runtime.models import (ModelSpec, build_model, get_flat_weights, non_finite_weight, reusable_model,
                                set_flat_weights)

logger = logging.getLogger(__name__)

#: Figures of an epoch sent to the driver (loss and metrics; with ``epoch`` and ``samples``, the
#: 16 numbers a report may hold).
MAX_EPOCH_FIGURES = 14

HISTORY_SCHEMA = (
    "kind string, worker int, attempt int, epoch int, step int, timestamp double, loss double, metrics string, "
    "staleness long, scale double, wait double, busy double, rows long, samples long, weights binary, "
    "t_start double, t_ready double, t_first double, t_last double, reused boolean, cached_bytes long, "
    "spilled_bytes long, spill_path string, commit_bytes long, rss_start_bytes long, rss_peak_bytes long"
)


@dataclass(frozen=True)
class WorkerConfig:
    """What every task needs, shipped as JSON.

    Args:
        spec: the model, optimizer, loss and metrics (JSON of :class:`ModelSpec`).
        algorithm: registered algorithm name.
        params: its hyperparameters.
        endpoints: the shards; empty without a PS.
        features: feature columns, one per model input.
        labels: label columns, one per model output.
        batch_size: rows per training step.
        num_epoch: passes over the partition.
        exchange_per_epoch: exchange at the end of each epoch instead of every λ steps.
        shuffle: shuffle the partition's rows every epoch after the first.
        seed: base seed for the shuffles (plus the worker id).
        learning_rate: overrides the worker optimizer's learning rate.
        timeout: seconds for every PS request.
        prefetch: minibatches prepared ahead.
        cache_memory: bytes of the partition's rows kept in memory between epochs; the rest is
            spilled to Spark's local directory (None: every row stays in memory).
        algorithm_sources: modules or files to import so a run-time-registered algorithm exists.
        curve: the client side of the job's CURVE keys (:class:`zdk.transports.curve.ClientKeys`: never the
            shards' secret) when shards require it.
        quorum: the number of workers (tasks) of the job, announced at `hello` for synchronous rounds.
        initial_file: the name (for ``SparkFiles.get``) of the raw float32 ``.npy`` holding the
            user's weights, for algorithms without a PS; None: keep the rebuilt model's weights.
        reinitialize: draw fresh initial weights per worker, seeded by ``seed`` + worker id.
        overlap: run exchanges on a background thread while training goes on (asynchronous
            algorithms exchanging every λ steps; see ``Exchange.begin_window``).
        on_nan: ``"raise"`` stops the worker at the first non-finite loss with an error naming
            the worker, epoch and step; ``"warn"`` logs it once and trains on.
        codec: the commit codec, and ``codec_args`` its arguments (None: the algorithm's, or float32).
        steps_per_execution: the most training steps one compiled call runs (a window ends earlier at
            an exchange or an epoch's end; :mod:`zdk.runtime.steps`); 1: one ``train_on_batch`` per step.
        shapes: the shape one row of each feature and label column is read as, from the row the
            driver checked: the compiled window is traced from it while the first rows are on
            their way (None: traced at the first window).
        first_epoch: the epoch to start at (a resumed job skips those already done); epochs are
            numbered from 0 to ``num_epoch - 1`` in records and progress reports either way.
    """

    spec: str
    algorithm: str
    params: dict[str, Any]
    endpoints: tuple[str, ...]
    features: tuple[str, ...]
    labels: tuple[str, ...]
    batch_size: int
    num_epoch: int
    exchange_per_epoch: bool = False
    shuffle: bool = False
    seed: int = 0
    learning_rate: float | None = None
    timeout: float = 60.0
    prefetch: int = 8
    cache_memory: int | None = None
    algorithm_sources: tuple[str, ...] = ()
    curve: dict[str, str] | None = None
    quorum: int | None = None
    first_epoch: int = 0
    initial_file: str | None = None
    reinitialize: bool = False
    on_nan: str = "raise"
    overlap: bool = False
    codec: str | None = None
    codec_args: dict[str, Any] | None = None
    steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION
    shapes: dict[str, list[int]] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerConfig":
        d = json.loads(text)
        for key in ("endpoints", "features", "labels", "algorithm_sources"):
            d[key] = tuple(d[key])
        return cls(**d)


def _shapes(tensors: Iterable[Any]) -> list[tuple[int | None, ...]]:
    return [tuple(t.shape) for t in tensors]


def _trailing(step: Batch) -> list[tuple[int, ...]]:
    """Each input's and label's shape without its rows axis."""
    return [tuple(a.shape[1:]) for a in (*step[0], *step[1])]


def _unwrap(arrays: list[np.ndarray]) -> Any:
    return arrays[0] if len(arrays) == 1 else arrays


class WorkerRun:
    """One worker's training on one partition.

    Args:
        config: the job's :class:`WorkerConfig`.
        worker_id: this worker's id (the Spark partition id).
        attempt: the Spark task attempt number.
    """

    def __init__(self, config: WorkerConfig, *, worker_id: int, attempt: int = 0) -> None:
        self.config = config
        self.worker_id = worker_id
        self.attempt = attempt
        load_sources(config.algorithm_sources)
        self.algorithm = algorithms.get(config.algorithm)
        self.spec = ModelSpec.from_json(config.spec)
        self.layout = self.spec.layout
        self.records: list[dict[str, Any]] = []
        self.epoch_steps = 0
        self.reused = False
        self._warned_nan = False
        self._unchecked_from: int | None = None  #: the first step since the weights were last checked
        self._compiled: Any = None
        self._traced_from: list[tuple[int, ...]] | None = None

    def run(self, batches: Iterable, *, initial: np.ndarray | None = None, t_start: float | None = None,
            memory: RssSampler | None = None) -> list[dict[str, Any]]:
        """Trains on ``batches`` (Arrow record batches) and returns the history records.

        Args:
            batches: the partition's Arrow record batches.
            initial: the flat weights to start from when the algorithm has no PS (the PS's
                center is the start otherwise).
            t_start: wall-clock time the task started (for the trainer's phase timings).
            memory: the task's RSS sampler, started with the task, for the summary's
                ``rss_start_bytes`` and ``rss_peak_bytes`` (None: one sampling this call only).
        """
        if memory is None:
            with RssSampler() as own:
                return self.run(batches, initial=initial, t_start=t_start, memory=own)
        cfg = self.config
        t_start = time.time() if t_start is None else t_start
        model, local = self._model(initial)
        stream = MinibatchStream(batches, features=cfg.features, labels=cfg.labels, batch_size=cfg.batch_size,
                                 shuffle=cfg.shuffle, seed=cfg.seed + self.worker_id, prefetch=cfg.prefetch,
                                 cache_memory=cfg.cache_memory, keep=cfg.num_epoch - cfg.first_epoch > 1)
        try:
            if cfg.first_epoch < cfg.num_epoch:
                stream.start()  # rows arrive while the worker meets the shards and traces its step
            return self._train(model, local, stream, t_start, memory)
        finally:
            stream.close()  # the spilled rows go with the task, whether it succeeded or not

    def _train(self, model: Any, local: np.ndarray, stream: MinibatchStream, t_start: float,
               memory: RssSampler) -> list[dict[str, Any]]:
        cfg = self.config
        started = time.perf_counter()
        clocks: dict[str, float | None] = {"t_start": t_start, "t_first": None}
        with self._cadence(model, local) as cadence:
            clocks["t_ready"] = time.time()
            step = samples = 0
            self._compiled = self._compiler(model)
            self._trace_ahead(model)
            for epoch in range(cfg.first_epoch, cfg.num_epoch):
                if cadence.stopping:
                    break
                model.reset_metrics()
                before = samples
                sums: dict[str, float] = {}
                for window in _windows(stream.epoch(), lambda first: self._window_steps(cadence, first)):
                    records = self._steps(model, window, epoch, step + 1)
                    clocks["t_first"] = clocks["t_first"] or time.time()
                    for record, (xs, _) in zip(records, window):
                        step += 1
                        samples += len(xs[0])
                        _accumulate(sums, record, len(xs[0]))
                        cadence.after_step(record, samples)
                        self.records.append(record)
                    if cadence.stopping:  # a control arrives at an exchange, which ends a window
                        break
                if cadence.stopping:  # the driver stopped the run: this epoch is not complete
                    logger.info("worker %d: stopped by the driver in epoch %d, step %d", self.worker_id, epoch, step)
                    break
                self.epoch_steps = self.epoch_steps or step
                self._check_weights(model, self._last())
                cadence.end_epoch(self._last(), samples, self._epoch_summary(epoch, samples - before, sums),
                                  last=epoch == cfg.num_epoch - 1)
            cadence.finish(self._last(), samples)
        busy = time.perf_counter() - started
        memory.sample()  # the cached rows are still held: the peak so far is the task's
        summary = self._record("summary", cfg.num_epoch - 1, step, {})
        summary.update(wait=cadence.blocked, busy=busy, rows=stream.rows, samples=samples, t_last=time.time(),
                       reused=self.reused, cached_bytes=stream.cached_bytes, spilled_bytes=stream.spilled_bytes,
                       spill_path=stream.spill_path, commit_bytes=cadence.commit_bytes,
                       rss_start_bytes=memory.start_bytes, rss_peak_bytes=memory.peak_bytes, **clocks)
        if not self.algorithm.uses_ps:
            summary["weights"] = get_flat_weights(model, self.layout, local).tobytes()
        self.records.append(summary)
        logger.info("worker %d: %d steps, %d rows in %.1f s (%.0f%% waiting on the PS)", self.worker_id, step,
                    stream.rows, busy, 100 * cadence.blocked / max(busy, 1e-9))
        return self.records

    def _model(self, initial: np.ndarray | None) -> tuple[Any, np.ndarray]:
        """The compiled model (kept from an earlier run in this process when possible) and the
        worker's one flat weight buffer, holding the starting weights."""
        cfg = self.config
        if cfg.reinitialize:
            import keras

            keras.utils.set_random_seed(cfg.seed + self.worker_id)
            model, self.reused = build_model(self.spec, learning_rate=cfg.learning_rate), False
        else:
            model, self.reused = reusable_model(self.spec, learning_rate=cfg.learning_rate)
        local = self.layout.empty()
        if initial is not None:
            np.copyto(local, initial)
            set_flat_weights(model, self.layout, local)
        get_flat_weights(model, self.layout, local)
        return model, local

    def _cadence(self, model: Any, local: np.ndarray) -> "_Cadence":
        """How this worker exchanges with the parameter server, chosen once: never (no PS), every
        window, every epoch (synchronous rounds without a window), or every window overlapped."""
        cfg = self.config
        if not self.algorithm.uses_ps:
            return _Cadence()
        kinds = {(False, False): _EveryWindow, (True, False): _EveryEpoch, (False, True): _Overlapped}
        overlapped = cfg.overlap and not self.algorithm.synchronous and not cfg.exchange_per_epoch
        return kinds[(cfg.exchange_per_epoch, overlapped)](self, model, local)

    def _compiler(self, model: Any) -> Any:
        """The model's :class:`~zdk.runtime.steps.CompiledSteps`, or None for one ``train_on_batch``
        per step (``steps_per_execution=1``, or a model whose steps cannot run compiled)."""
        if self.config.steps_per_execution <= 1:
            return None
        compiled = compiled_steps(model)
        if compiled.disabled is not None:
            self._fall_back(compiled.disabled)
            return None
        return compiled

    def _trace_ahead(self, model: Any) -> None:
        """Traces the compiled window from the driver's row shapes (zeros of one batch), before the
        first rows have arrived: the trace, a second or so of Python, overlaps their transfer
        instead of following it. Shapes that do not fit the model leave the trace to the first
        window, where the real rows raise the error that names the column."""
        cfg = self.config
        if self._compiled is None or not cfg.shapes or cfg.first_epoch >= cfg.num_epoch:
            return
        try:
            xs = [np.zeros((cfg.batch_size, *cfg.shapes[name]), np.float32) for name in cfg.features]
            ys = [np.zeros((cfg.batch_size, *cfg.shapes[name]), np.float32) for name in cfg.labels]
            example = (fit_to_shapes(xs, _shapes(model.inputs), cfg.features),
                       fit_to_shapes(ys, _shapes(model.outputs), cfg.labels, strict=False))
        except (KeyError, ConfigError) as exc:
            logger.debug("worker %d: not tracing ahead (%s)", self.worker_id, exc)
            return
        # Building the training state resolves metrics such as "accuracy" from the label shapes:
        # the first real rows must have the shapes traced from (checked in _steps).
        self._traced_from = _trailing(example)
        try:
            self._compiled.prepare(example)
        except NotCompilable as exc:  # the first window decides, on real rows, whether to fall back
            logger.debug("worker %d: not tracing ahead (%s)", self.worker_id, exc.reason)
            self._compiled.disabled = None

    def _check_traced_shapes(self, step: Batch) -> None:
        """The first rows have the shapes of the driver's checked row, which the window was traced
        (and the metrics built) from; else the model's metrics may not fit them: fail, naming them."""
        expected, self._traced_from = self._traced_from or [], None
        got = _trailing(step)
        if got != expected:
            columns = [*self.config.features, *self.config.labels]
            raise ConfigError(f"worker {self.worker_id}: the rows' values have shapes "
                              f"{dict(zip(columns, got))}, but the row the driver checked had "
                              f"{dict(zip(columns, expected))}: every row of a column must hold values of one shape")

    def _fall_back(self, reason: str) -> None:
        logger.warning("worker %d: training steps cannot run compiled, %d per call: %s; running one "
                       "train_on_batch call per step instead (same results, slower)", self.worker_id,
                       self.config.steps_per_execution, reason)
        self._compiled = None

    def _window_steps(self, cadence: "_Cadence", first: Batch) -> int:
        """Steps of the next window: up to ``steps_per_execution``, ending at the cadence's next
        exchange (a window never spans one) and within the memory a compiled call may stack."""
        if self._compiled is None:
            return 1
        return window_steps(self.config.steps_per_execution, cadence.horizon(), first)

    def _steps(self, model: Any, window: list[Batch], epoch: int, first: int) -> list[dict[str, Any]]:
        """Trains on ``window``'s minibatches, in one compiled call when possible, and returns one
        record per step (numbered from ``first``), its loss and metrics those of its own batch.
        A non-finite loss is reported at the first step that had one."""
        shaped = [(fit_to_shapes(xs, _shapes(model.inputs), self.config.features),
                   fit_to_shapes(ys, _shapes(model.outputs), self.config.labels, strict=False)) for xs, ys in window]
        if self._traced_from is not None:
            self._check_traced_shapes(shaped[0])
        started = time.time()
        logs: list[dict[str, Any]] = []
        if self._compiled is not None:
            try:
                logs = self._compiled.run(shaped)
            except NotCompilable as exc:
                logs = exc.completed
                self._fall_back(exc.reason)
        for xs, ys in shaped[len(logs):]:
            logs.append(model.train_on_batch(_unwrap(xs), _unwrap(ys), return_dict=True))
        ended = time.time()
        records = []
        finite = True
        for i, step_logs in enumerate(logs):
            record = self._record("step", epoch, first + i, step_logs)
            record["timestamp"] = started + (ended - started) * (i + 1) / len(logs)  # the steps share the call
            if record["loss"] is not None and not math.isfinite(record["loss"]):
                finite = False
                self._non_finite(record)
            records.append(record)
        # A finite loss does not prove finite weights: oneDNN's fused ReLU (TensorFlow's default on
        # AVX-512 CPUs) maps a NaN activation to 0, so a NaN row leaves the loss finite and the kernel
        # NaN. With a PS the shards refuse such a commit; without one, nothing else would notice.
        if finite and records and not self.algorithm.uses_ps:
            self._unchecked_from = self._unchecked_from or int(records[0]["step"])
            if int(records[-1]["step"]) - self._unchecked_from + 1 >= DEFAULT_STEPS_PER_EXECUTION:
                self._check_weights(model, records[-1])
        return records

    def _check_weights(self, model: Any, record: dict[str, Any]) -> None:
        """Without a PS: the weights are finite after the steps since the last check, up to
        ``record``'s; checked every ``DEFAULT_STEPS_PER_EXECUTION`` steps and at every epoch's end."""
        if self._unchecked_from is None:
            return
        first, self._unchecked_from = self._unchecked_from, None
        if (path := non_finite_weight(model)) is not None:
            self._non_finite(record, weight=path, first=first)

    def _last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}

    def _epoch_summary(self, epoch: int, samples: int, sums: dict[str, float]) -> dict[str, float]:
        """The epoch's figures for the driver: its samples, and the loss and each metric averaged over
        its steps weighted by their rows, Σ nᵢ·vᵢ / Σ nᵢ. A step's figures are its own batch's (Keras
        resets the metrics before every ``train_on_batch`` and every compiled step), so for the loss
        and mean metrics (accuracy, MAE) this is the epoch's value, as ``fit`` reports it; for a metric
        that is not a mean of per-row values (AUC, precision) it is the mean of the batches' values."""
        summary: dict[str, float] = {"epoch": float(epoch), "samples": float(samples)}
        if samples and sums:
            figures = {name: total / samples for name, total in sums.items()}
            kept = list(figures.items())[:MAX_EPOCH_FIGURES]
            if len(figures) > len(kept):
                logger.warning("worker %d: only the loss and the first %d metrics reach the driver per epoch",
                               self.worker_id, MAX_EPOCH_FIGURES - 1)
            summary.update({k: float(v) for k, v in kept if v is not None})
        return summary

    def report(self, record: dict[str, Any], samples: int) -> dict[str, float]:
        """The progress numbers sent with a commit (the shards show them in `stats`)."""
        report = {"step": float(record.get("step", 0)), "samples": float(samples), "epoch": float(record.get("epoch", 0)),
                  "pid": float(os.getpid())}
        if self.epoch_steps:
            report["epoch_steps"] = float(self.epoch_steps)
        if record.get("loss") is not None:
            report["loss"] = float(record["loss"])
        return report

    def _non_finite(self, record: dict[str, Any], *, weight: str | None = None, first: int = 0) -> None:
        """Raises (``on_nan="raise"``) or warns once about a non-finite loss at ``record``'s step, or
        about the non-finite ``weight`` found after steps ``first`` to ``record``'s."""
        what = (f"the training loss became {record['loss']} at epoch {record['epoch']}, step {record['step']}"
                if weight is None else
                f"the weights became non-finite ({weight!r} holds NaN or infinity) in steps {first}–{record['step']} "
                f"(epoch {record['epoch']}), though the training loss stayed finite")
        message = (f"worker {self.worker_id} (attempt {self.attempt}): {what}. Check the input data for NaN or "
                   "infinite values, and try a lower learning rate")
        if self.config.on_nan == "raise":
            raise NonFiniteError(message + "; on_nan='warn' trains on regardless.")
        if not self._warned_nan:
            logger.warning("%s (on_nan='warn': training goes on)", message)
            self._warned_nan = True

    def _record(self, kind: str, epoch: int, step: int, logs: dict[str, Any]) -> dict[str, Any]:
        values = {k: float(np.asarray(v)) for k, v in logs.items()}
        loss = values.pop("loss", None)
        return {"kind": kind, "worker": self.worker_id, "attempt": self.attempt, "epoch": epoch, "step": step,
                "timestamp": time.time(), "loss": loss, "metrics": json.dumps(values), "staleness": None,
                "scale": None, "wait": None, "busy": None, "rows": None, "samples": None, "weights": None,
                "t_start": None, "t_ready": None, "t_first": None, "t_last": None, "reused": None,
                "cached_bytes": None, "spilled_bytes": None, "spill_path": None, "commit_bytes": None,
                "rss_start_bytes": None, "rss_peak_bytes": None}


class _Cadence:
    """No parameter server: nothing to exchange. Subclasses exchange at their own points; every
    one is a context manager that closes its connection to the shards."""

    blocked = 0.0  #: seconds the worker waited on the parameter server
    stopping = False  #: the driver asked the workers to stop (they finish at once)

    @property
    def commit_bytes(self) -> int | None:
        """Payload bytes this worker's commits carried (None without a PS)."""
        return None

    def __enter__(self) -> "_Cadence":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def after_step(self, record: dict[str, Any], samples: int) -> None:
        pass

    def horizon(self) -> int | None:
        """Steps the worker may take before this cadence acts at a step's end (exchanges); None:
        only at epoch ends. A compiled window of steps never runs past it."""
        return None

    def end_epoch(self, record: dict[str, Any], samples: int, summary: dict[str, float], *, last: bool) -> None:
        """The end of an epoch: the driver learns of it (and its figures) through the shards. After
        the last epoch, the worker first commits what it has left, so the figures the driver reads
        then are of the final center."""

    def finish(self, record: dict[str, Any], samples: int) -> None:
        pass


class _EveryWindow(_Cadence):
    """An exchange every λ steps (and one for a last, shorter window), the worker waiting for it."""

    def __init__(self, run: WorkerRun, model: Any, local: np.ndarray) -> None:
        cfg = run.config
        self.run, self.model, self.local, self.layout = run, model, local, run.layout
        curve = ClientKeys(**cfg.curve) if cfg.curve else None
        # Resend every ~10 s: long enough for a large pull, short enough to recover quickly from a
        # lost message or a restarted shard.
        self.client = PSClient(cfg.endpoints, worker_id=run.worker_id, attempt=run.attempt, timeout=cfg.timeout,
                               tries=max(3, int(cfg.timeout // 10)), curve=curve)
        self.in_window = 0
        self.blocked = 0.0
        self.stopping = False
        self._control_seen = 0
        try:
            self.client.hello(quorum=cfg.quorum)
            self.exchange = Exchange(self.client, local, params=run.algorithm.make_params(cfg.params),
                                     codec=cfg.codec, codec_args=cfg.codec_args)
            self.exchange.start()
            set_flat_weights(model, self.layout, local)
            self._obey()  # a run the driver stopped, or a learning rate it set, before this task started
        except BaseException:
            self.client.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    @property
    def commit_bytes(self) -> int | None:
        return self.exchange.commit_bytes

    def after_step(self, record: dict[str, Any], samples: int) -> None:
        self.in_window += 1
        if self.in_window == self.exchange.window:
            self._exchange(record, samples)

    def horizon(self) -> int | None:
        return max(1, self.exchange.window - self.in_window)

    def end_epoch(self, record: dict[str, Any], samples: int, summary: dict[str, float], *, last: bool) -> None:
        if last and self.in_window:
            self._exchange(record, samples)
        self._report(record, samples, summary)

    def finish(self, record: dict[str, Any], samples: int) -> None:
        if self.in_window:
            self._exchange(record, samples)
        self.exchange.finish()

    def _exchange(self, record: dict[str, Any], samples: int) -> None:
        get_flat_weights(self.model, self.layout, self.local)
        with self._waiting(record):
            receipt = self.exchange.end_window(self.in_window, report=self.run.report(record, samples))
        set_flat_weights(self.model, self.layout, self.local)
        self.in_window = 0
        _note(record, receipt)
        self._obey()

    def _report(self, record: dict[str, Any], samples: int, summary: dict[str, float]) -> None:
        """Tells the shards (and through them the driver) that an epoch ended, with its figures."""
        with self._waiting(record):
            self.exchange.report(summary, report=self.run.report(record, samples))
        self._obey()

    def _obey(self) -> None:
        """Applies a control the driver sent through the shards since the last exchange: stop, or
        a new learning rate for the local optimizer."""
        version = self.client.control_version
        if version <= self._control_seen:
            return
        self._control_seen = version
        control = self.client.control
        rate = control.get("learning_rate")
        if rate is not None and float(rate) != float(self.model.optimizer.learning_rate):
            self.model.optimizer.learning_rate = float(rate)
            logger.info("worker %d: learning rate %.6g from the driver", self.run.worker_id, float(rate))
        if control.get("stop"):
            self.stopping = True

    @contextlib.contextmanager
    def _waiting(self, record: dict[str, Any]) -> Iterator[None]:
        """Times a wait on the PS, and names the worker when the PS refuses non-finite weights."""
        started = time.perf_counter()
        try:
            yield
        except RemoteError as exc:
            if exc.code != "non_finite":
                raise
            raise NonFiniteError(
                f"worker {self.run.worker_id}: its weights became non-finite by epoch {record.get('epoch')}, step "
                f"{record.get('step')}, and the parameter server refused them ({exc}). Check the input data for "
                "NaN or infinite values and try a lower learning rate."
            ) from None
        finally:
            self.blocked += time.perf_counter() - started


class _EveryEpoch(_EveryWindow):
    """An exchange at the end of every epoch (synchronous rounds without a window)."""

    def after_step(self, record: dict[str, Any], samples: int) -> None:
        self.in_window += 1

    def horizon(self) -> int | None:
        return None

    def end_epoch(self, record: dict[str, Any], samples: int, summary: dict[str, float], *, last: bool) -> None:
        if self.in_window:
            self._exchange(record, samples)
        self._report(record, samples, summary)


class _Overlapped(_EveryWindow):
    """Every λ steps the exchange starts on a background thread and the worker trains on; a
    finished exchange is folded into the model at the next step: θ ← θ + (θ_s' − θ_s)."""

    def after_step(self, record: dict[str, Any], samples: int) -> None:
        self.in_window += 1
        if self.exchange.ready():
            self._collect(record, block=False)
        if self.in_window == self.exchange.window:
            self._collect(record, block=True)
            get_flat_weights(self.model, self.layout, self.local)
            self.exchange.begin_window(self.in_window, report=self.run.report(record, samples))
            self.in_window = 0

    def end_epoch(self, record: dict[str, Any], samples: int, summary: dict[str, float], *, last: bool) -> None:
        self._collect(record, block=True)  # the client serves one thread at a time
        if last and self.in_window:
            self._exchange(record, samples)
        self._report(record, samples, summary)

    def finish(self, record: dict[str, Any], samples: int) -> None:
        self._collect(record, block=True)
        super().finish(record, samples)

    def _collect(self, record: dict[str, Any], *, block: bool) -> None:
        if not self.exchange.in_flight:
            return
        get_flat_weights(self.model, self.layout, self.local)
        with self._waiting(record):
            receipt = self.exchange.collect(block=block)
        set_flat_weights(self.model, self.layout, self.local)
        if receipt is not None:
            _note(record, receipt)
            self._obey()


def _accumulate(sums: dict[str, float], record: dict[str, Any], rows: int) -> None:
    """Adds a step's loss and metrics, weighted by its ``rows``, to the epoch's ``sums``."""
    figures = {"loss": record["loss"], **json.loads(record["metrics"])}
    for name, value in figures.items():
        if value is not None:
            sums[name] = sums.get(name, 0.0) + float(value) * rows


def _windows(batches: Iterable[Batch], size: Callable[[Batch], int]) -> Iterator[list[Batch]]:
    """``batches`` cut into windows: each of ``size(its first batch)`` batches (fewer at the end).
    ``size`` is asked when the window starts, after the previous one was trained and exchanged."""
    batches = iter(batches)
    for first in batches:
        yield [first, *itertools.islice(batches, size(first) - 1)]


def _note(record: dict[str, Any], receipt: Any) -> None:
    record["staleness"] = receipt.staleness
    if "scale" in receipt.info:
        record["scale"] = receipt.info["scale"]


def train_partition(config_json: str, batches: Iterator) -> Iterator:
    """The ``mapInArrow`` function: trains this partition's worker, yields its history."""
    import pyarrow as pa
    from pyspark import TaskContext

    t_start = time.time()
    # From the task's start: Spark reuses Python workers, whose own high-water mark would carry
    # the peaks of earlier tasks.
    with RssSampler() as memory:
        size_tf_threads()
        ctx = TaskContext.get()
        worker_id = ctx.partitionId() if ctx is not None else 0
        attempt = ctx.attemptNumber() if ctx is not None else 0
        config = WorkerConfig.from_json(config_json)
        initial = None
        if config.initial_file is not None:
            from pyspark import SparkFiles

            initial = np.load(SparkFiles.get(config.initial_file), allow_pickle=False)
        records = WorkerRun(config, worker_id=worker_id, attempt=attempt).run(batches, initial=initial,
                                                                              t_start=t_start, memory=memory)
    yield pa.RecordBatch.from_pylist(records, schema=_arrow_schema())


def _arrow_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "double": pa.float64(),
             "binary": pa.binary(), "boolean": pa.bool_()}
    fields = []
    for part in HISTORY_SCHEMA.split(","):
        name, kind = part.split()
        fields.append(pa.field(name, types[kind]))
    return pa.schema(fields)
