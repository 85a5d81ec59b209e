"""A Keras model as ``.keras`` bytes and back: what a submission uploads and a fetch downloads."""

from __future__ import annotations

import os
import tempfile
from typing import Any


def model_bytes(model: Any) -> bytes:
    """The model as ``.keras`` bytes."""
    with tempfile.TemporaryDirectory(prefix="zdk-job-") as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def load_model_bytes(data: bytes) -> Any:
    """The model in ``.keras`` bytes, loaded and compiled."""
    import keras

    with tempfile.TemporaryDirectory(prefix="zdk-job-") as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as fh:
            fh.write(data)
        return keras.saving.load_model(path)
