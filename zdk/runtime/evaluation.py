"""Evaluating a model on a partition, in a Spark task: the executor side of a large validation set.

Each task rebuilds the model from its JSON config (kept per Python worker), sets the weights
the driver broadcast, and evaluates its Arrow batches with the model's loss and metrics. It
yields, per batch, the number of rows and the state of every metric (the loss tracker's total
and count, AUC's confusion counts per threshold, ...), not the figures: a figure such as AUC or
precision over the whole set is not an average of its figures over parts. The driver merges
the states as Keras merges replicas', by each state variable's ``aggregation`` (``"sum"`` for
every built-in metric), and computes the figures once from the merged state
(:func:`merge_metric_states`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from zdk.errors import ConfigError
from zdk.runtime.minibatches import fit_to_shapes, record_batch_arrays
from zdk.runtime.models import ModelSpec, reusable_model, set_flat_weights

#: The rows each evaluation task yields: per Arrow batch, its rows and its metric state (JSON of
#: :func:`metric_state`).
EVALUATION_SCHEMA = "rows long, state string"


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
class MetricVariable:
    """One metric state variable as evaluated: its Keras path (``auc/true_positives``), how
    Keras merges it across replicas, and its values, flattened."""

    path: str
    aggregation: str
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        """The variable's own name, without its metric's (uniquified per process: ``auc_1``)."""
        return self.path.rpartition("/")[2]


def metric_state(model: Any) -> list[MetricVariable]:
    """The state of ``model``'s metrics (its loss tracker's included), after an ``evaluate``."""
    return [MetricVariable(path=v.path, aggregation=str(v.aggregation),
                           values=tuple(float(x) for x in np.asarray(v).ravel())) for v in model.metrics_variables]


def merge_metric_states(states: list[list[MetricVariable]]) -> list[np.ndarray]:
    """One state from the states of disjoint parts of a data set, merged per variable by its
    aggregation as Keras merges replicas: ``sum`` → Σ_parts s, ``mean`` → (1/P) Σ_parts s,
    ``only_first_replica`` → the first part's.

    Raises:
        ValueError: when the parts' variables differ (not the same metrics).
        ConfigError: naming the metric when a variable's aggregation is ``none`` or unknown: its
            parts cannot be merged, and a figure averaged over them would be silently wrong.
    """
    if not states:
        raise ValueError("no metric states to merge")
    first = states[0]
    for other in states[1:]:
        if [(v.name, len(v.values)) for v in other] != [(v.name, len(v.values)) for v in first]:
            raise ValueError(f"metric states of different metrics: {[v.path for v in first]} and "
                             f"{[v.path for v in other]}")
    merged = []
    for k, var in enumerate(first):
        parts = np.array([state[k].values for state in states], dtype=np.float64)
        if var.aggregation == "sum":
            merged.append(parts.sum(axis=0))
        elif var.aggregation == "mean":
            merged.append(parts.mean(axis=0))
        elif var.aggregation == "only_first_replica":
            merged.append(parts[0])
        else:
            raise ConfigError(f"`metrics`: the state variable {var.path!r} has aggregation={var.aggregation!r}, so "
                              "its values on parts of the validation set cannot be merged. Give it aggregation='sum' "
                              "(add_variable's default), or a validation set small enough to be evaluated on the "
                              "driver (validation.MAX_DRIVER_BYTES)", field="metrics")
    return merged


def set_metric_state(model: Any, state: list[MetricVariable], merged: list[np.ndarray]) -> dict[str, float]:
    """Puts ``merged`` (from :func:`merge_metric_states`) into ``model``'s metric variables and
    returns the figures computed from it, as ``evaluate(return_dict=True)`` names them.

    ``model``'s metrics must be built (evaluated once) and be the same metrics as ``state``'s.

    Raises:
        ValueError: when ``model``'s metric variables are not ``state``'s.
    """
    variables = list(model.metrics_variables)
    ours = [(v.path.rpartition("/")[2], int(np.prod(v.shape))) for v in variables]
    theirs = [(v.name, len(v.values)) for v in state]
    if ours != theirs:
        raise ValueError(f"the model's metric variables {[v.path for v in variables]} are not the evaluated ones "
                         f"{[v.path for v in state]}")
    for variable, values in zip(variables, merged):
        variable.assign(np.asarray(values).reshape(tuple(variable.shape)).astype(variable.dtype))
    return {k: float(np.asarray(v)) for k, v in model.get_metrics_result().items()}


def state_to_json(state: list[MetricVariable]) -> str:
    return json.dumps([[v.path, v.aggregation, list(v.values)] for v in state])


def state_from_json(text: str) -> list[MetricVariable]:
    return [MetricVariable(path=p, aggregation=a, values=tuple(values)) for p, a, values in json.loads(text)]


def evaluate_partition(config_json: str, weights: bytes, batches: Iterable[Any]) -> Iterator[Any]:
    """The ``mapInArrow`` function: evaluates this partition's batches; yields rows and metric state per batch."""
    import pyarrow as pa

    config = EvaluationConfig.from_json(config_json)
    spec = ModelSpec.from_json(config.spec)
    model, _ = reusable_model(spec)
    set_flat_weights(model, spec.layout, np.frombuffer(weights, dtype="<f4"))
    rows, states = [], []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        xs, ys = record_batch_arrays(batch, config.features, config.labels)
        evaluate(model, xs, ys, batch_size=config.batch_size)
        rows.append(batch.num_rows)
        states.append(state_to_json(metric_state(model)))
    yield pa.RecordBatch.from_pydict({"rows": rows, "state": states}, schema=pa.schema(
        [pa.field("rows", pa.int64()), pa.field("state", pa.string())]))
