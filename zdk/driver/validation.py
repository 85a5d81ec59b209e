"""Validation data for a run, and evaluating the center on it at the end of each epoch.

A validation set small enough (``max_driver_bytes`` as float32, 256 MiB by default) is read
into numpy on the driver once, before training, and evaluated there: workers keep training
meanwhile, and no task slot is needed. A larger one stays in Spark and is evaluated by a Spark
job over Arrow batches with the weights broadcast; that job needs free task slots, so it waits
while the training tasks hold every slot (a warning says so).

The figures are the model's loss and compiled metrics, named ``val_<name>``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from zdk.driver.columns import as_float32
from zdk.driver.models import compiled_model
from zdk.driver.plan import TrainingPlan
from zdk.driver.session import task_slots
from zdk.errors import ConfigError
from zdk.runtime.evaluation import (EVALUATION_SCHEMA, EvaluationConfig, MetricLayout, evaluate, evaluate_partition,
                                    merge_states, metric_layout, write_state)
from zdk.runtime.minibatches import column_to_numpy, record_batch_arrays

logger = logging.getLogger(__name__)

#: The largest validation set (as float32) evaluated on the driver.
MAX_DRIVER_BYTES = 256 * 2**20


class ValidationSet(Protocol):
    """Evaluates a Keras model holding the center; returns ``{"val_loss": …, "val_<metric>": …}``."""

    rows: int

    def evaluate(self, model: Any) -> dict[str, float]: ...


def split(dataframe: Any, fraction: float, *, seed: int) -> tuple[Any, Any]:
    """A seeded random split of ``dataframe``: (training rows, validation rows).

    Raises:
        ConfigError: naming ``validation_split`` unless 0 < fraction < 1.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"`validation_split` must be a fraction in (0, 1). Received: validation_split={fraction!r}",
                          field="validation_split")
    train, validation = dataframe.randomSplit([1.0 - float(fraction), float(fraction)], seed=seed)
    return train, validation


def _prefixed(figures: dict[str, float]) -> dict[str, float]:
    return {f"val_{k}": v for k, v in figures.items()}


class DriverValidation:
    """A validation set held in numpy on the driver."""

    def __init__(self, xs: list[np.ndarray], ys: list[np.ndarray], *, batch_size: int) -> None:
        self.xs, self.ys, self.batch_size = xs, ys, batch_size
        self.rows = len(xs[0]) if xs else 0

    def evaluate(self, model: Any) -> dict[str, float]:
        return _prefixed(evaluate(model, self.xs, self.ys, batch_size=self.batch_size))


class SparkValidation:
    """A validation set evaluated by a Spark job (see :mod:`zdk.runtime.evaluation`): the tasks'
    metric states are merged, and the figures computed once from the merged state, so that
    AUC, precision and the like are those of the whole set."""

    def __init__(self, frame: Any, plan: TrainingPlan, *, rows: int, batch_size: int) -> None:
        self.frame, self.plan, self.rows = frame, plan, rows
        self.config = EvaluationConfig(spec=plan.model.to_json(), features=plan.features_col,
                                       labels=plan.label_col, batch_size=batch_size).to_json()
        self._checked: tuple[Any, MetricLayout] | None = None  #: the model last checked, and its layout

    def evaluate(self, model: Any) -> dict[str, float]:
        layout = self.check(model)
        sc = self.frame.sparkSession.sparkContext
        flat = self.plan.model.layout.flatten(model.get_weights())
        weights = sc.broadcast(flat.tobytes())
        config = self.config
        try:
            rows = self.frame.mapInArrow(lambda batches: evaluate_partition(config, weights.value, batches),
                                         EVALUATION_SCHEMA).collect()
        finally:
            weights.destroy()
        evaluated = sum(r.rows for r in rows)
        if evaluated != self.rows:
            raise RuntimeError(f"the validation job evaluated {evaluated} rows, not the {self.rows} counted before "
                               "training: did the validation DataFrame's source change?")
        for r in rows:
            if r.layout != layout.to_json():
                raise ValueError(f"a validation task's metric state {r.layout} is not the driver's {layout.to_json()}")
        state = merge_states(layout, (np.frombuffer(r.state, dtype=np.float64) for r in rows))
        return _prefixed(write_state(model, layout, state))

    def check(self, model: Any) -> MetricLayout:
        """``model``'s metric layout, checked once to be mergeable and to give the figures Keras's
        ``evaluate`` gives. Keras builds the compiled metrics at their first use, so this first
        evaluates one validation row when they are not built.

        Raises:
            ConfigError: naming ``metrics`` for a state that cannot be merged, or a model whose
                ``evaluate`` reports other figures than its metrics (a custom ``test_step``).
        """
        if self._checked is not None and self._checked[0] is model:
            return self._checked[1]
        batch = self.frame.limit(1).toArrow().to_batches()[0]
        xs, ys = record_batch_arrays(batch, self.plan.features_col, self.plan.label_col)
        figures = evaluate(model, xs, ys, batch_size=1)
        from_state = set(model.get_metrics_result())
        if set(figures) != from_state:
            raise ConfigError(f"`metrics`: the model's evaluate() reports {sorted(figures)}, but its metrics hold "
                              f"{sorted(from_state)} (a custom test_step?), which a validation set evaluated in Spark "
                              "cannot merge. Use a validation set small enough to be evaluated on the driver "
                              "(zdk.driver.validation.MAX_DRIVER_BYTES)", field="metrics")
        layout = metric_layout(model)
        layout.check_mergeable()
        self._checked = (model, layout)
        return layout


def validation_set(plan: TrainingPlan, dataframe: Any, *, max_driver_bytes: int = MAX_DRIVER_BYTES) -> ValidationSet:
    """``dataframe``'s feature and label columns as a validation set for ``plan``, on the driver
    when they fit in ``max_driver_bytes``, else in Spark.

    Raises:
        ConfigError: naming ``validation_data`` when columns are missing or it has no rows.
    """
    names = list(dict.fromkeys((*plan.features_col, *plan.label_col)))
    missing = [c for c in names if c not in dataframe.columns]
    if missing:
        raise ConfigError(f"`validation_data` must have the columns {names}. Received: {missing} missing among "
                          f"{dataframe.columns}", field="validation_data")
    frame = dataframe.select(*[as_float32(dataframe, c).alias(c) for c in names])
    rows = frame.count()
    if rows == 0:
        raise ConfigError("`validation_data` must have rows. Received: an empty DataFrame", field="validation_data")
    per_row = sum(int(np.prod([d for d in shape[1:] if d is not None] or [1]))
                  for shape in (*plan.model.inputs, *plan.model.outputs)) * 4
    batch_size = max(plan.batch_size, 256)
    if rows * per_row > max_driver_bytes:
        if task_slots(frame.sparkSession) <= plan.num_tasks:
            logger.warning("the validation set (%d rows) is evaluated by Spark jobs, which wait for a free task slot "
                           "while the %d training tasks hold all of them: epochs are evaluated late", rows,
                           plan.num_tasks)
        in_spark = SparkValidation(frame.cache(), plan, rows=rows, batch_size=batch_size)
        # A metric whose state cannot be merged fails now, not at the end of the first epoch.
        in_spark.check(compiled_model(plan.model, plan.model.layout.empty()))
        return in_spark
    table = frame.toArrow()
    arrays = {c: column_to_numpy(table.column(c).combine_chunks(), c) for c in names}
    return DriverValidation([arrays[c] for c in plan.features_col], [arrays[c] for c in plan.label_col],
                            batch_size=batch_size)
