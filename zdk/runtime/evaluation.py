"""Evaluating a model on a partition, in a Spark task: the executor side of a large validation set.

Each task rebuilds the model from its JSON config (kept per Python worker), sets the weights
the driver broadcast, and evaluates its Arrow batches with the model's loss and metrics. It
yields, per batch, the number of rows and the figures; the driver averages them weighted by
rows (exact for the loss and mean metrics; an approximation for metrics that do not average,
such as AUC).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from zdk.runtime.minibatches import fit_to_shapes, record_batch_arrays
from zdk.runtime.models import ModelSpec, reusable_model, set_flat_weights

#: The rows each evaluation task yields.
EVALUATION_SCHEMA = "rows long, figures string"


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


def evaluate_partition(config_json: str, weights: bytes, batches: Iterable[Any]) -> Iterator[Any]:
    """The ``mapInArrow`` function: evaluates this partition's batches; yields rows and figures per batch."""
    import pyarrow as pa

    config = EvaluationConfig.from_json(config_json)
    spec = ModelSpec.from_json(config.spec)
    model, _ = reusable_model(spec)
    set_flat_weights(model, spec.layout, np.frombuffer(weights, dtype="<f4"))
    rows, figures = [], []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        xs, ys = record_batch_arrays(batch, config.features, config.labels)
        rows.append(batch.num_rows)
        figures.append(json.dumps(evaluate(model, xs, ys, batch_size=config.batch_size)))
    yield pa.RecordBatch.from_pydict({"rows": rows, "figures": figures}, schema=pa.schema(
        [pa.field("rows", pa.int64()), pa.field("figures", pa.string())]))
