"""Weights between the driver and the executors outside the parameter server: the starting
weights of algorithms without one, shipped as a file; and trained weights back into a compiled model."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from typing import Any

import numpy as np

from zdk.runtime.models import ModelSpec, build_model, set_flat_weights

_lock = threading.Lock()
_directory: str | None = None
_added: set[tuple[str, str]] = set()  # (Spark application, file name)


def compiled_model(spec: ModelSpec, flat: np.ndarray) -> Any:
    """A Keras model of ``spec`` holding ``flat``, compiled with the run's optimizer, loss and metrics.

    The optimizer is built at once, so a saved model carries all its variables and loads without a warning.
    """
    model = build_model(spec)
    set_flat_weights(model, spec.layout, flat)
    model.optimizer.build(model.trainable_variables)
    return model


def shipping_directory() -> str:
    """This process's directory of shipped weights, removed when the process exits."""
    global _directory
    with _lock:
        if _directory is None:
            _directory = tempfile.mkdtemp(prefix=f"zdk-initial-{os.getpid()}-")
            atexit.register(shutil.rmtree, _directory, True)
        return _directory


def ship_weights(spark: Any, flat: np.ndarray) -> str:
    """Hands ``flat`` to Spark's file distribution (``SparkContext.addFile``) as a raw float32
    ``.npy``: executors on any host fetch it, and no pickle is involved.

    Spark serves an added file from its path for the rest of the application, and an executor
    that has not fetched it yet does so at its next task, whatever the job; so the file stays
    until this process exits. Its name is its content's hash, so shipping the same weights again
    adds nothing.

    Returns:
        the file's name, for ``SparkFiles.get`` on the executors.
    """
    data = np.ascontiguousarray(flat, dtype=np.float32)
    name = f"zdk-initial-{hashlib.sha256(data.tobytes()).hexdigest()[:32]}.npy"
    path = os.path.join(shipping_directory(), name)
    if not os.path.exists(path):
        np.save(path + ".tmp.npy", data, allow_pickle=False)
        os.replace(path + ".tmp.npy", path)
    key = (spark.sparkContext.applicationId, name)
    with _lock:
        if key not in _added:
            spark.sparkContext.addFile(path)
            _added.add(key)
    return name
