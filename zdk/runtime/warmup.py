"""The executor side of warming Python workers: Keras imported on a thread, so training tasks find it loaded."""

from __future__ import annotations

import os
import sys
import threading
from typing import Iterator


def load_keras() -> None:
    """Imports Keras and zdk's worker module and runs one tiny step, so the backend is initialized."""
    import numpy as np

    import keras

    import zdk.runtime.worker  # noqa: F401  (the training task's own imports)

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.train_on_batch(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32))


def import_keras(batches: Iterator) -> Iterator:
    """Runs in a Python worker: starts importing Keras (and its backend) and one tiny training step
    on a thread of the worker process, and returns at once. The task frees its slot right away, so
    the driver's own small jobs (pre-flight) do not queue behind TensorFlow's start-up; a training
    task that arrives meanwhile waits on the import lock only for what is left of it."""
    import pyarrow as pa

    from zdk.runtime.threads import size_tf_threads

    size_tf_threads()  # before the import thread starts TensorFlow
    if not any(t.name == "zdk-keras-import" for t in threading.enumerate()) and "keras" not in sys.modules:
        threading.Thread(target=load_keras, name="zdk-keras-import", daemon=True).start()
    for _ in batches:
        pass
    yield pa.RecordBatch.from_pydict({"pid": [os.getpid()]})
