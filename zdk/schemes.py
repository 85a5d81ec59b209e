"""Optimization schemes around a trainer: dist-keras's Emperor learning-rate schedule."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from zdk.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmperorStep:
    """One chunk of training: epochs done so far, the validation loss, the learning rate used."""

    epochs: int
    loss: float
    learning_rate: float
    reduced: bool


class Emperor:
    """Trains in chunks of ``evaluation_frequency`` epochs; after each chunk evaluates the
    validation loss and divides the learning rate by 10 when it improved by no more than
    ``loss_threshold``. Each chunk continues from the previous chunk's model.

    Args:
        trainer: a zdk trainer (its ``keras_model`` is replaced by each chunk's result).
        evaluate_loss: ``(model, validation_set) -> float``.
        num_epoch: total epochs.
        evaluation_frequency: epochs per chunk.
        loss_threshold: the smallest improvement that keeps the learning rate.
    """

    def __init__(self, trainer: Any, evaluate_loss: Callable[[Any, Any], float], num_epoch: int = 15,
                 evaluation_frequency: int = 5, loss_threshold: float = 0.005) -> None:
        if not isinstance(num_epoch, int) or num_epoch < 1:
            raise ConfigError(f"`num_epoch` must be an int ≥ 1. Received: num_epoch={num_epoch!r}", field="num_epoch")
        if not isinstance(evaluation_frequency, int) or not 1 <= evaluation_frequency:
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

    def _initial_learning_rate(self) -> float:
        if self.trainer.learning_rate is not None:
            return float(self.trainer.learning_rate)
        return float(self.trainer.plan.model.optimizer["config"]["learning_rate"])

    def optimize(self, training_set: Any, validation_set: Any) -> Any:
        """Runs the schedule and returns the last trained model."""
        rate = self._initial_learning_rate()
        previous: float | None = None
        model = None
        done = 0
        while done < self.num_epoch:
            chunk = min(self.evaluation_frequency, self.num_epoch - done)
            self.trainer.set_num_epoch(chunk)
            self.trainer.set_learning_rate(rate)
            model = self.trainer.train(training_set)
            self.trainer.keras_model = model
            done += chunk
            loss = float(self.evaluate_loss(model, validation_set))
            reduced = previous is not None and previous - loss <= self.loss_threshold
            self.steps.append(EmperorStep(epochs=done, loss=loss, learning_rate=rate, reduced=reduced))
            if reduced:
                logger.info("Emperor: after %d epochs the loss moved %.5f → %.5f (≤ %.5f better); learning rate "
                            "%.3g → %.3g", done, previous, loss, self.loss_threshold, rate, rate / 10)
                rate /= 10
            else:
                logger.info("Emperor: after %d epochs loss %.5f at learning rate %.3g", done, loss, rate)
            previous = loss
        return model
