"""What a run is watched and steered with on the driver: validation data, Keras callbacks and
experiment tracking (:class:`Watch`), and the epoch loop that runs them (:func:`epoch_loop`).

Watching needs the parameter server: the driver learns that an epoch ended, and reads the
center, through the shards, and its decisions reach the workers through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from zdk.driver.callbacks import EpochCallbacks, EpochLoop, check_callbacks
from zdk.driver.epochs import EpochTracker
from zdk.driver.plan import TrainingPlan
from zdk.driver.tracking import MlflowTracking
from zdk.driver.validation import ValidationSet, split, validation_set
from zdk.errors import ConfigError


@dataclass(frozen=True)
class Watch:
    """What a run is watched and steered with.

    Args:
        callbacks: Keras callbacks, run on the driver at every epoch's end (:mod:`zdk.driver.callbacks`).
        validation_data: a DataFrame with the feature and label columns, evaluated on the center
            at every epoch's end.
        validation_split: a fraction of the training DataFrame set aside (a seeded random split)
            for validation instead.
        tracking: logs the run to MLflow.
    """

    callbacks: tuple[Any, ...] = ()
    validation_data: Any = None
    validation_split: float | None = None
    tracking: MlflowTracking | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "callbacks", tuple(check_callbacks(self.callbacks)))
        if self.validation_data is not None and self.validation_split is not None:
            raise ConfigError(f"`validation_split` and `validation_data` are alternatives: give one. Received: "
                              f"validation_split={self.validation_split!r} and a validation DataFrame",
                              field="validation_split")

    @property
    def active(self) -> bool:
        return bool(self.callbacks) or self.validates or self.tracking is not None

    @property
    def validates(self) -> bool:
        return self.validation_data is not None or self.validation_split is not None

    def check(self, plan: TrainingPlan) -> None:
        """Watching needs a parameter server.

        Raises:
            ConfigError: naming the first option given for an algorithm without one.
        """
        if not self.active or plan.uses_ps:
            return
        name = ("callbacks" if self.callbacks else "validation_data" if self.validation_data is not None
                else "validation_split" if self.validation_split is not None else "mlflow")
        raise ConfigError(f"`{name}` needs an algorithm with a parameter server: the driver sees epochs end, and "
                          f"reads the model, through the shards. Received: {name} with {plan.algorithm.name!r}; "
                          f"DOWNPOUR(num_workers=1, communication_window=1) trains one worker through a PS",
                          field=name)

    def split(self, dataframe: Any, *, seed: int) -> tuple[Any, Any]:
        """The training DataFrame, and the validation one (None without validation)."""
        if self.validation_split is not None:
            return split(dataframe, self.validation_split, seed=seed)
        return dataframe, self.validation_data


def epoch_loop(plan: TrainingPlan, watch: Watch, *, initial: np.ndarray, first_epoch: int,
               center: Callable[[], np.ndarray], control: Callable[[bool, float | None], None],
               validation: ValidationSet | None) -> EpochLoop | None:
    """The loop that runs ``watch``'s callbacks as epochs end, or None when nothing is watched."""
    if not watch.active:
        return None
    callbacks: Sequence[Any] = watch.callbacks
    if watch.tracking is not None:
        callbacks = (*callbacks, watch.tracking.callback())
    runner = EpochCallbacks(plan, callbacks, initial=initial, center=center, control=control, validation=validation)
    return EpochLoop(runner, EpochTracker(num_workers=plan.num_tasks, first_epoch=first_epoch))
