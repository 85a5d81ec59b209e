"""Optimization schemes around a trainer: dist-keras's Emperor learning-rate schedule.

Emperor is a Keras callback on the driver (:class:`EmperorSchedule`) in one training run:
every ``evaluation_frequency`` epochs it evaluates the center on the validation set, and divides
the learning rate by 10 when the loss improved by no more than ``loss_threshold``. The new rate
reaches every worker at its next exchange (the control path of ``zdk.driver.callbacks``): training
is never restarted, as dist-keras's was once per chunk of epochs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np

from zdk.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmperorStep:
    """One evaluation: epochs done so far, the validation loss, the learning rate it was reached at,
    and whether the rate was divided after it."""

    epochs: int
    loss: float
    learning_rate: float
    reduced: bool


class EmperorSchedule(keras.callbacks.Callback):
    """The Emperor schedule as a Keras callback.

    Args:
        evaluate_loss: ``(model, validation_set) -> float``, called with the driver's model
            holding the center.
        validation_set: handed to ``evaluate_loss``.
        evaluation_frequency: epochs between evaluations.
        loss_threshold: the smallest improvement that keeps the learning rate.
        steps: where each evaluation is recorded.
    """

    def __init__(self, evaluate_loss: Callable[[Any, Any], float], validation_set: Any, *, evaluation_frequency: int,
                 loss_threshold: float, steps: list[EmperorStep]) -> None:
        super().__init__()
        self.evaluate_loss, self.validation_set = evaluate_loss, validation_set
        self.evaluation_frequency, self.loss_threshold, self.steps = evaluation_frequency, loss_threshold, steps
        self._previous: float | None = None

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        done = epoch + 1
        if done % self.evaluation_frequency:
            return
        loss = float(self.evaluate_loss(self.model, self.validation_set))
        rate = float(np.asarray(self.model.optimizer.learning_rate))
        reduced = self._previous is not None and self._previous - loss <= self.loss_threshold
        self.steps.append(EmperorStep(epochs=done, loss=loss, learning_rate=rate, reduced=reduced))
        if reduced:
            logger.info("Emperor: after %d epochs the loss moved %.5f → %.5f (≤ %.5f better); learning rate "
                        "%.3g → %.3g", done, self._previous, loss, self.loss_threshold, rate, rate / 10)
            self.model.optimizer.learning_rate = rate / 10
        else:
            logger.info("Emperor: after %d epochs loss %.5f at learning rate %.3g", done, loss, rate)
        self._previous = loss


class Emperor:
    """Trains ``num_epoch`` epochs in one run; every ``evaluation_frequency`` epochs evaluates the
    validation loss on the center and divides the learning rate by 10 when it improved by no more
    than ``loss_threshold`` (:class:`EmperorSchedule`).

    Args:
        trainer: a zdk trainer of an algorithm with a parameter server (its callbacks run on the
            driver as epochs end).
        evaluate_loss: ``(model, validation_set) -> float``.
        num_epoch: total epochs.
        evaluation_frequency: epochs between evaluations.
        loss_threshold: the smallest improvement that keeps the learning rate.
    """

    def __init__(self, trainer: Any, evaluate_loss: Callable[[Any, Any], float], num_epoch: int = 15,
                 evaluation_frequency: int = 5, loss_threshold: float = 0.005) -> None:
        if isinstance(num_epoch, bool) or not isinstance(num_epoch, int) or num_epoch < 1:
            raise ConfigError(f"`num_epoch` must be an int ≥ 1. Received: num_epoch={num_epoch!r}", field="num_epoch")
        if isinstance(evaluation_frequency, bool) or not isinstance(evaluation_frequency, int) or evaluation_frequency < 1:
            raise ConfigError(f"`evaluation_frequency` must be an int ≥ 1. "
                              f"Received: evaluation_frequency={evaluation_frequency!r}", field="evaluation_frequency")
        if loss_threshold < 0:
            raise ConfigError(f"`loss_threshold` must be ≥ 0. Received: loss_threshold={loss_threshold!r}",
                              field="loss_threshold")
        self.trainer = trainer
        self.evaluate_loss = evaluate_loss
        self.num_epoch = num_epoch
        self.evaluation_frequency = evaluation_frequency
        self.loss_threshold = loss_threshold
        self.steps: list[EmperorStep] = []

    def optimize(self, training_set: Any, validation_set: Any) -> Any:
        """Runs the schedule in one training run and returns the trained model."""
        self.steps.clear()
        schedule = EmperorSchedule(self.evaluate_loss, validation_set, evaluation_frequency=self.evaluation_frequency,
                                   loss_threshold=self.loss_threshold, steps=self.steps)
        self.trainer.set_num_epoch(self.num_epoch)
        return self.trainer.train(training_set, callbacks=[schedule])
