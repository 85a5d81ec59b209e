"""The training data on the driver: checked against the model, then prepared for the workers.

Checking reads one row (:mod:`zdk.driver.preflight`) so a wrong column, width or label kind
fails in seconds, before any executor starts. Preparing casts the columns to what workers
read (:func:`zdk.driver.columns.as_float32`), cuts the rows into one partition per task and,
with ``shuffle``, shuffles them; a cached DataFrame's preparation is kept for the next run
(:mod:`zdk.driver.prepared`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zdk.driver import preflight
from zdk.driver.columns import as_float32
from zdk.driver.plan import TrainingPlan
from zdk.driver.prepared import prepared
from zdk.driver.session import task_slots
from zdk.errors import ConfigError


@dataclass(frozen=True)
class PreparedData:
    """The DataFrame the tasks read, whether it was reused from an earlier run, and the shape a
    worker reads one row of each feature and label column as (from the row checked; workers
    trace their training step from it while their rows are on their way)."""

    frame: Any
    reused: bool
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def check(plan: TrainingPlan, dataframe: Any) -> dict[str, tuple[int, ...]]:
    """The columns exist, and one row fits the model (feature widths, labels against the loss;
    no empty DataFrame).

    Returns:
        the shape of that row's value in each feature and label column (:func:`preflight.value_shape`).

    Raises:
        ConfigError: naming the column or argument to change.
    """
    wanted = (*plan.features_col, *plan.label_col)
    missing = [c for c in wanted if c not in dataframe.columns]
    if missing:
        raise ConfigError(f"columns {missing} are not in the DataFrame. Received columns: {dataframe.columns}",
                          field="features_col" if missing[0] in plan.features_col else "label_col")
    spec = plan.model
    if len(plan.features_col) != len(spec.inputs):
        raise ConfigError(f"`features_col` must name one column per model input ({len(spec.inputs)}). "
                          f"Received: features_col={list(plan.features_col)}", field="features_col")
    if len(plan.label_col) != len(spec.outputs):
        raise ConfigError(f"`label_col` must name one column per model output ({len(spec.outputs)}). "
                          f"Received: label_col={list(plan.label_col)}", field="label_col")
    row = preflight.first_row(dataframe, list(dict.fromkeys(wanted)))
    preflight.check_features(row, plan.features_col, spec.inputs)
    preflight.check_labels(row, plan.label_col, spec.outputs, preflight.losses_per_output(spec.loss, spec.output_names))
    return {name: preflight.value_shape(row[name]) for name in dict.fromkeys(wanted)}


def check_slots(plan: TrainingPlan, spark: Any) -> None:
    """A synchronous algorithm's workers run at once in one barrier stage: they must fit the cluster."""
    if not plan.algorithm.synchronous:
        return
    slots = task_slots(spark)
    if slots < plan.num_tasks:
        raise ConfigError(f"`num_workers` must be ≤ the cluster's {slots} task slots for the synchronous algorithm "
                          f"{plan.algorithm.name!r}, whose workers all run at once in one barrier stage. "
                          f"Received: num_workers={plan.num_tasks}", field="num_workers")


def partitioned(plan: TrainingPlan, dataframe: Any, *, shuffle: bool) -> Any:
    """The columns cast for training, in one partition per task, each shuffled with ``shuffle``.

    Round-robin partitioning spreads every stretch of the input evenly over the tasks, and a
    local sort by a random key shuffles each task's rows: no global sort, whose range
    partitioning costs a sampling job of its own.
    """
    from pyspark.sql import functions as F

    names = dict.fromkeys((*plan.features_col, *plan.label_col))
    data = dataframe.select(*[as_float32(dataframe, name).alias(name) for name in names])
    data = data.repartition(plan.num_tasks)
    return data.sortWithinPartitions(F.rand(plan.seed)) if shuffle else data


def prepare(plan: TrainingPlan, dataframe: Any, *, shuffle: bool = False) -> PreparedData:
    """Checks ``dataframe`` (:func:`check`), then prepares it (:func:`partitioned`), reusing the
    preparation of a cached DataFrame trained before with the same columns, tasks and shuffle."""
    shapes = check(plan, dataframe)
    key = (plan.features_col, plan.label_col, plan.num_tasks, shuffle, plan.seed)
    frame, reused = prepared(dataframe, key, lambda: partitioned(plan, dataframe, shuffle=shuffle))
    return PreparedData(frame, reused, shapes)
