"""Experiment tracking with MLflow: a run's parameters, its per-epoch figures, its timings and its model.

With an active MLflow run (``mlflow.start_run()``), or ``train(..., mlflow=True)`` (which starts
one and ends it), zdk logs:
- the trainer's arguments and the algorithm's hyperparameters, as params;
- the per-epoch figures (``loss``, metrics, ``val_…``), as metrics with the epoch as step;
- ``trainer.timings``, as metrics named ``timing_<phase>``;
- the trained model, as a ``.keras`` artifact under ``model/``.
MLflow comes with the ``mlflow`` extra (``pip install zdk[mlflow]``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from typing import Any, Mapping

from zdk.errors import ConfigError

#: MLflow's longest param value.
MAX_PARAM_CHARS = 500


def mlflow_module() -> Any:
    """The ``mlflow`` package, or a ConfigError saying how to install it."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("`mlflow` needs MLflow: pip install 'zdk[mlflow]'. Received: mlflow=True",
                          field="mlflow") from None
    return mlflow


def active() -> bool:
    """Whether an MLflow run is active in this thread (False when MLflow is not installed).

    A run is active only once something imported ``mlflow`` to start it, so an unimported
    MLflow means none: importing it just to ask took 1.9 s of every ``train()`` here."""
    mlflow = sys.modules.get("mlflow")
    return mlflow is not None and mlflow.active_run() is not None


def _param(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."


class MlflowTracking:
    """Logs one training run to MLflow (see the module's docstring).

    Args:
        params: what to log as params (the trainer's arguments, the algorithm's hyperparameters).
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.mlflow = mlflow_module()
        self.params = {str(k): _param(v) for k, v in params.items()}
        self._own = False

    def callback(self) -> Any:
        """A Keras callback that logs the params when training begins and the figures of every epoch."""
        import keras

        tracking = self

        class _Logger(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                tracking.begin()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                tracking.epoch(epoch, logs or {})

        return _Logger()

    def begin(self) -> None:
        if self.mlflow.active_run() is None:
            self.mlflow.start_run()
            self._own = True
        self.mlflow.log_params(self.params)

    def epoch(self, epoch: int, logs: Mapping[str, Any]) -> None:
        metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if metrics:
            self.mlflow.log_metrics(metrics, step=epoch)

    def finish(self, model: Any, timings: Mapping[str, float], *, failed: bool = False) -> None:
        """Logs the timings and the model (when there is one), and ends the run it started."""
        try:
            if timings:
                self.mlflow.log_metrics({f"timing_{k}": float(v) for k, v in timings.items()})
            if model is not None:
                with tempfile.TemporaryDirectory(prefix="zdk-mlflow-") as tmp:
                    path = os.path.join(tmp, "model.keras")
                    model.save(path)
                    self.mlflow.log_artifact(path, artifact_path="model")
        finally:
            if self._own:
                self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
                self._own = False
