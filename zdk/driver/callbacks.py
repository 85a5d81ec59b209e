"""Keras callbacks on the driver, at the end of every epoch of an asynchronous run.

The callbacks see a driver-side Keras model, compiled like the workers', whose weights are the
center when an epoch ends: once every worker has reported epoch e, the driver pulls the center
(a version at or after the moment the last worker finished e; workers keep training meanwhile),
evaluates it on the validation data, and calls ``on_epoch_end(e, logs)`` with the epoch's training
figures (the workers' means weighted by samples) and the ``val_`` figures. Then
``on_epoch_begin(e + 1)``.

What the callbacks decide reaches the workers through the shards (the control path): a
``model.stop_training = True`` stops every worker at its next exchange, and a new
``model.optimizer.learning_rate`` (``LearningRateScheduler``, ``ReduceLROnPlateau``, a callback of
yours) becomes every worker's local optimizer's learning rate at its next exchange.

Batch-level hooks (``on_batch_end``) are called once per epoch with the epoch's training figures:
a callback such as ``TerminateOnNaN`` sees the run an epoch at a time (workers themselves stop at
the first non-finite loss unless ``on_nan="warn"``).

At the end, the model gets the final center, then ``on_train_end`` runs (``EarlyStopping`` with
``restore_best_weights`` puts the best epoch's weights back there); that model is what training returns.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from zdk.driver.epochs import EpochFigures
from zdk.driver.models import compiled_model
from zdk.driver.plan import TrainingPlan
from zdk.driver.validation import ValidationSet
from zdk.errors import ConfigError

logger = logging.getLogger(__name__)

#: ``control(stop, learning_rate)``: sends the driver's decisions to the shards.
Control = Callable[[bool, "float | None"], None]


def check_callbacks(callbacks: Sequence[Any]) -> list[Any]:
    """``callbacks`` as a list of Keras callbacks.

    Raises:
        ConfigError: naming ``callbacks`` for anything that is not a ``keras.callbacks.Callback``.
    """
    import keras

    if isinstance(callbacks, keras.callbacks.Callback):
        raise ConfigError("`callbacks` must be a list of keras.callbacks.Callback. Received: one callback; put it "
                          "in a list", field="callbacks")
    out = list(callbacks)
    for c in out:
        if not isinstance(c, keras.callbacks.Callback):
            raise ConfigError(f"`callbacks` must be a list of keras.callbacks.Callback. Received: {c!r}",
                              field="callbacks")
    return out


class EpochCallbacks:
    """The callbacks of one run and the model they see.

    Args:
        plan: the run's plan (the model and its compile settings, the epochs).
        callbacks: Keras callbacks.
        initial: the starting weights (the model holds them until the first epoch ends).
        center: pulls the center from the shards.
        control: sends stop / learning rate to the shards.
        validation: evaluated on the center at every epoch's end, when given.
    """

    def __init__(self, plan: TrainingPlan, callbacks: Sequence[Any], *, initial: np.ndarray,
                 center: Callable[[], np.ndarray], control: Control, validation: ValidationSet | None = None) -> None:
        import keras

        self.plan = plan
        self.model = compiled_model(plan.model, initial)
        if plan.learning_rate is not None:
            self.model.optimizer.learning_rate = plan.learning_rate
        self.model.stop_training = False
        self.history = keras.callbacks.History()
        self._given = list(callbacks)
        self.callbacks = keras.callbacks.CallbackList([*callbacks, self.history], model=self.model, verbose=0,
                                                      epochs=plan.num_epoch, steps=None)
        self._center, self._control, self.validation = center, control, validation
        self._initial_rate = self.learning_rate
        self._sent: tuple[bool, float | None] | None = None
        self.last_logs: dict[str, float] = {}
        self.validation_seconds: list[float] = []
        self.stopped = False

    @property
    def learning_rate(self) -> float:
        return float(np.asarray(self.model.optimizer.learning_rate))

    def begin(self, first_epoch: int) -> None:
        """``on_train_begin`` and ``on_epoch_begin(first_epoch)``; the workers' control is set before they start."""
        self.callbacks.on_train_begin()
        self.callbacks.on_epoch_begin(first_epoch)
        self._send()

    def epoch_end(self, figures: EpochFigures) -> None:
        """An epoch every worker finished: evaluate the center, run the callbacks, tell the workers."""
        if self.stopped:
            return
        self.model.set_weights(self.plan.model.layout.views(self._center()))
        logs = dict(figures.logs)
        if self.validation is not None:
            started = time.perf_counter()
            logs.update(self.validation.evaluate(self.model))
            self.validation_seconds.append(time.perf_counter() - started)
        for callback in self._given:  # batch-level hooks see the run an epoch at a time (TerminateOnNaN)
            callback.on_batch_end(figures.epoch, dict(figures.logs))
        self.callbacks.on_epoch_end(figures.epoch, logs)
        self.last_logs = logs
        self.stopped = bool(self.model.stop_training)
        if self.stopped:
            logger.info("a callback stopped training at the end of epoch %d", figures.epoch)
        elif figures.epoch + 1 < self.plan.num_epoch:
            self.callbacks.on_epoch_begin(figures.epoch + 1)
        self._send()

    def stop_workers(self) -> None:
        """Tells every worker to stop at its next exchange (after a callback's error)."""
        self.stopped = True
        self._control(True, None)
        self._sent = (True, None)

    def end(self, center: np.ndarray) -> Any:
        """The final center into the model, then ``on_train_end``; returns the model."""
        self.model.set_weights(self.plan.model.layout.views(center))
        self.callbacks.on_train_end(self.last_logs)
        return self.model

    def _send(self) -> None:
        """Sends stop and, once a callback changed it, the learning rate (else the workers keep
        their optimizer's own, a schedule included)."""
        rate = self.learning_rate
        changed = not math.isclose(rate, self._initial_rate, rel_tol=1e-7)
        if changed and not (math.isfinite(rate) and rate >= 0):
            raise ConfigError(f"`learning_rate` set by a callback must be ≥ 0. Received: learning_rate={rate!r}",
                              field="learning_rate")
        state = (self.stopped, rate if changed else None)
        if state != self._sent:
            self._control(*state)
            self._sent = state


class EpochLoop:
    """Runs a run's callbacks as epochs end, on the thread that called ``train`` (as ``fit`` does:
    a callback may rely on what lives in that thread, such as MLflow's active run), while the
    Spark job runs beside it.

    The progress poll feeds it every shard's ``stats`` (with the workers' epoch reports from
    :attr:`next_epoch` on) through :meth:`on_stats`; :meth:`serve` runs the callbacks of each epoch
    that ended until the job is done; :meth:`finish` runs those of the epochs reported last. A
    callback's error stops the workers, and is raised once they have.

    Args:
        callbacks: the run's :class:`EpochCallbacks`.
        tracker: says which epochs ended.
    """

    def __init__(self, callbacks: EpochCallbacks, tracker: Any) -> None:
        import queue

        self.callbacks = callbacks
        self.tracker = tracker
        self.error: BaseException | None = None
        self.epochs: list[dict[str, float]] = []
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._lock = threading.Lock()

    @property
    def next_epoch(self) -> int:
        with self._lock:
            return int(self.tracker.next_epoch)

    def start(self, first_epoch: int) -> None:
        """``on_train_begin``; the workers' control is set before they start."""
        self.callbacks.begin(first_epoch)

    def on_stats(self, stats: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            ended = self.tracker.add(stats)
        for figures in ended:
            self._queue.put(figures)

    def status(self) -> dict[str, Any]:
        """For progress snapshots: the epochs' figures so far and the last ``val_loss``."""
        epochs = list(self.epochs)
        last = epochs[-1] if epochs else {}
        return {"epoch_logs": epochs, "val_loss": last.get("val_loss")}

    def serve(self, done: threading.Event) -> None:
        """Runs the callbacks of every epoch that ends, until ``done`` is set (the job ended)."""
        import queue

        while not done.is_set() or not self._queue.empty():
            try:
                figures = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self._epoch(figures)

    def finish(self, stats: Sequence[dict[str, Any]]) -> None:
        """Runs the callbacks of the epochs in ``stats`` (a poll after the workers ended), then
        raises a callback's error."""
        self.on_stats(stats)
        while not self._queue.empty():
            self._epoch(self._queue.get())
        if self.error is not None:
            raise self.error

    def _epoch(self, figures: EpochFigures) -> None:
        if self.error is not None or self.callbacks.stopped:
            return
        try:
            self.callbacks.epoch_end(figures)
            self.epochs.append({"epoch": float(figures.epoch), **self.callbacks.last_logs})
        except Exception as exc:  # raised by finish(), once the workers stopped
            logger.error("a callback failed at the end of epoch %d: %s", figures.epoch, exc)
            self.error = exc
            try:
                self.callbacks.stop_workers()
            except Exception:
                logger.exception("could not stop the workers after the callback's error")
