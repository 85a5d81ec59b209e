"""Evaluating a model on a partition, in a Spark task: the executor side of a large validation set.

Each task rebuilds the model from its JSON config (kept per Python worker), sets the weights
the driver broadcast, and evaluates its Arrow batches with the model's loss and metrics. It
yields its number of rows and the state of every metric (the loss tracker's total and count,
AUC's confusion counts per threshold, ...), not the figures: a figure such as AUC or precision
over the whole set is not an average of its figures over parts. States merge as Keras merges
replicas', by each state variable's ``aggregation`` (``"sum"`` for every built-in metric): the
task merges its Arrow batches' states, the driver the tasks', and computes the figures once from
the merged state (:func:`merge_states`, :func:`write_state`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from zdk.errors import ConfigError
from zdk.runtime.minibatches import fit_to_shapes, record_batch_arrays
from zdk.runtime.models import ModelSpec, reusable_model, set_flat_weights

#: The row each evaluation task yields: its rows, its metric layout (JSON of :class:`MetricLayout`)
#: and its metric state (float64 bytes).
EVALUATION_SCHEMA = "rows long, layout string, state binary"


@dataclass(frozen=True)
class EvaluationConfig:
    """What every evaluation task needs, shipped as JSON.

    Args:
        spec: the model (JSON of :class:`~zdk.runtime.models.ModelSpec`).
        features: feature columns, one per model input.
        labels: label columns, one per model output.
        batch_size: rows per evaluation step.
    """

    spec: str
    features: tuple[str, ...]
    labels: tuple[str, ...]
    batch_size: int = 1024

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EvaluationConfig":
        d = json.loads(text)
        return cls(spec=d["spec"], features=tuple(d["features"]), labels=tuple(d["labels"]),
                   batch_size=int(d["batch_size"]))


def evaluate(model: Any, xs: list[np.ndarray], ys: list[np.ndarray], *, batch_size: int) -> dict[str, float]:
    """The model's loss and metrics on ``xs``/``ys`` (one array per input/output)."""
    xs = fit_to_shapes(xs, [tuple(t.shape) for t in model.inputs], [f"input {k}" for k in range(len(xs))])
    ys = fit_to_shapes(ys, [tuple(t.shape) for t in model.outputs], [f"output {k}" for k in range(len(ys))],
                       strict=False)
    figures = model.evaluate(xs[0] if len(xs) == 1 else xs, ys[0] if len(ys) == 1 else ys, batch_size=batch_size,
                             verbose=0, return_dict=True)
    return {k: float(np.asarray(v)) for k, v in figures.items()}


@dataclass(frozen=True)
class MetricLayout:
    """Where each metric state variable sits in a flat float64 state vector.

    Args:
        names: ``metric/variable`` per variable, by the metric's own name (``auc/true_positives``;
            the variable's Keras path carries a per-process suffix, ``auc_1``).
        sizes: each variable's element count.
        aggregations: how Keras merges each across replicas (``"sum"`` for every built-in metric).
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    aggregations: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps([self.names, self.sizes, self.aggregations])

    def check_mergeable(self) -> None:
        """Raises:
            ConfigError: naming ``metrics`` and the variable when its aggregation is neither
                ``sum`` nor ``only_first_replica``: parts of unequal size (Arrow batches, partitions)
                cannot be merged into the whole set's state, and an average of figures would be
                silently wrong.
        """
        for name, aggregation in zip(self.names, self.aggregations):
            if aggregation not in MERGEABLE:
                raise ConfigError(f"`metrics`: the state variable {name!r} has aggregation={aggregation!r}, so its "
                                  "values on parts of the validation set cannot be merged. Give it aggregation='sum' "
                                  "(add_variable's default), or use a validation set small enough to be evaluated on "
                                  "the driver (zdk.driver.validation.MAX_DRIVER_BYTES)", field="metrics")


#: The aggregations whose parts merge exactly: Σ_parts s, and the first part's s.
MERGEABLE = ("sum", "only_first_replica")


def _leaf_metrics(metric: Any) -> list[Any]:
    """``metric``, or the metrics a container (Keras's compile metrics and losses) holds, flattened."""
    inner = getattr(metric, "metrics", None)
    if isinstance(inner, (list, tuple)):
        return [leaf for m in inner for leaf in _leaf_metrics(m)]
    return [metric]


def _state_variables(model: Any) -> list[tuple[str, Any]]:
    """(``metric/variable``, variable) for every metric state variable of ``model``, loss trackers
    included, in a build-independent order.

    Raises:
        ValueError: when they are not exactly ``model.metrics_variables`` (a metric structure this
            walk does not know).
    """
    pairs = [(f"{m.name}/{v.name}", v) for top in model.metrics for m in _leaf_metrics(top) for v in m.variables]
    if {id(v) for _, v in pairs} != {id(v) for v in model.metrics_variables} or len(pairs) != len(
            model.metrics_variables):
        raise ValueError(f"the model's metric variables {[v.path for v in model.metrics_variables]} are not those "
                         f"of its metrics {[name for name, _ in pairs]}")
    return pairs


def metric_layout(model: Any) -> MetricLayout:
    """The layout of ``model``'s metric state; its metrics must be built (evaluated once)."""
    pairs = _state_variables(model)
    return MetricLayout(names=tuple(name for name, _ in pairs),
                        sizes=tuple(int(np.prod(v.shape)) for _, v in pairs),
                        aggregations=tuple(str(v.aggregation) for _, v in pairs))


def read_state(model: Any) -> np.ndarray:
    """``model``'s metric state after an ``evaluate``, flat float64 in :func:`metric_layout`'s order."""
    parts = [np.asarray(v, dtype=np.float64).ravel() for _, v in _state_variables(model)]
    return np.concatenate(parts) if parts else np.zeros(0)


def merge_states(layout: MetricLayout, states: Iterable[np.ndarray]) -> np.ndarray:
    """One state from the states of disjoint parts of a data set, merged per variable as Keras
    merges replicas: ``sum`` → Σ_parts s, ``only_first_replica`` → the first part's s.

    Raises:
        ConfigError: from :meth:`MetricLayout.check_mergeable`.
        ValueError: when there are no states, or one has another size than ``layout``'s.
    """
    layout.check_mergeable()
    total = sum(layout.sizes)
    merged: np.ndarray | None = None
    first = np.zeros(0)
    for state in states:
        if state.shape != (total,):
            raise ValueError(f"a metric state has {state.size} values; the layout {list(layout.names)} has {total}")
        if merged is None:
            merged, first = state.astype(np.float64, copy=True), state
        else:
            merged += state
    if merged is None:
        raise ValueError("no metric states to merge")
    offset = 0
    for size, aggregation in zip(layout.sizes, layout.aggregations):
        if aggregation == "only_first_replica":
            merged[offset:offset + size] = first[offset:offset + size]
        offset += size
    return merged


def write_state(model: Any, layout: MetricLayout, state: np.ndarray) -> dict[str, float]:
    """Puts ``state`` into ``model``'s metric variables and returns the figures computed from it,
    named as ``evaluate(return_dict=True)`` names them.

    Raises:
        ValueError: when ``model``'s metric layout is not ``layout``.
    """
    if metric_layout(model) != layout:
        raise ValueError(f"the model's metric state {list(metric_layout(model).names)} is not the evaluated one "
                         f"{list(layout.names)}")
    offset = 0
    for (_, variable), size in zip(_state_variables(model), layout.sizes):
        values = state[offset:offset + size].reshape(tuple(variable.shape))
        variable.assign(values.astype(variable.dtype))
        offset += size
    return {k: float(np.asarray(v)) for k, v in model.get_metrics_result().items()}


def evaluate_partition(config_json: str, weights: bytes, batches: Iterable[Any]) -> Iterator[Any]:
    """The ``mapInArrow`` function: evaluates this partition's batches and yields one row: its
    rows, its metric layout (JSON) and its metric state merged over its batches (float64 bytes)."""
    import pyarrow as pa

    config = EvaluationConfig.from_json(config_json)
    spec = ModelSpec.from_json(config.spec)
    model, _ = reusable_model(spec)
    set_flat_weights(model, spec.layout, np.frombuffer(weights, dtype="<f4"))
    rows, states = 0, []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        xs, ys = record_batch_arrays(batch, config.features, config.labels)
        evaluate(model, xs, ys, batch_size=config.batch_size)
        rows += batch.num_rows
        states.append(read_state(model))
    if not states:
        return
    layout = metric_layout(model)
    yield pa.RecordBatch.from_pydict(
        {"rows": [rows], "layout": [layout.to_json()], "state": [merge_states(layout, states).tobytes()]},
        schema=pa.schema([pa.field("rows", pa.int64()), pa.field("layout", pa.string()),
                          pa.field("state", pa.binary())]))
