"""Offline data sets for examples and tests: Fashion-MNIST from Debian's package, sklearn's digits."""

from __future__ import annotations

import gzip
import logging
import os
import struct

import numpy as np

from zdk.errors import ConfigError

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped), as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ConfigError(f"{path} is not an IDX file (magic {data[:4]!r})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.dtype(_IDX_TYPES[data[2]]), offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ConfigError(f"{path}: header says shape {shape}, file holds {array.size} values")
    return array.reshape(shape)


def fashion_mnist_available(directory: str = FASHION_MNIST_DIR) -> bool:
    return os.path.exists(os.path.join(directory, "train-images-idx3-ubyte.gz"))


def load_fashion_mnist(directory: str = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 28×28 images as float32 in [0, 1], labels as int64."""
    if not fashion_mnist_available(directory):
        raise ConfigError(f"Fashion-MNIST is not in {directory}; install the Debian package dataset-fashion-mnist")

    def part(kind: str) -> tuple[np.ndarray, np.ndarray]:
        x = load_idx(os.path.join(directory, f"{kind}-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
        y = load_idx(os.path.join(directory, f"{kind}-labels-idx1-ubyte.gz")).astype(np.int64)
        return x, y

    (x_train, y_train), (x_test, y_test) = part("train"), part("t10k")
    return x_train, y_train, x_test, y_test


def load_digits_split(test_size: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's 8×8 digits as (x_train, y_train, x_test, y_test), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split((data.data / 16.0).astype(np.float32),
                                                        data.target.astype(np.int64), test_size=test_size,
                                                        random_state=seed)
    return x_train, y_train, x_test, y_test


def load_images() -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(name, x_train, y_train, x_test, y_test): Fashion-MNIST, or sklearn's digits when the Debian
    package is missing (the name then says so)."""
    if fashion_mnist_available():
        return ("Fashion-MNIST", *load_fashion_mnist())
    logger.warning("Fashion-MNIST is not installed; using sklearn digits")
    return ("sklearn digits (Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist)",
            *load_digits_split())


def to_dataframe(spark, features: np.ndarray, labels: np.ndarray, *, features_col: str = "features",
                 label_col: str = "label"):
    """A Spark DataFrame with an ``array<float>`` feature column and a ``long`` label, built through Arrow."""
    import pyarrow as pa

    flat = np.ascontiguousarray(features.reshape(len(features), -1), dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]).cast(pa.list_(pa.float32()))
    table = pa.table({features_col: column, label_col: pa.array(labels.astype(np.int64))})
    return spark.createDataFrame(table)
