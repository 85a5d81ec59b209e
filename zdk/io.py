"""Saving and loading Keras models on any Hadoop-compatible path (``file://``, ``hdfs://``, ``s3a://``).

The model is written as a ``.keras`` file to a local temporary directory, then copied
through Spark's Hadoop ``FileSystem`` API, so every file system Spark is configured for works.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from zdk.errors import ConfigError

logger = logging.getLogger(__name__)


def _filesystem(path: str, spark: Any = None) -> tuple[Any, Any]:
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        if spark is None:
            raise ConfigError("a Spark session is needed for Hadoop paths; start one (zdk.driver.session.get_session())")
    sc = spark.sparkContext
    jvm = sc._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(sc._jsc.hadoopConfiguration()), hpath


def copy_from_local(local: str, path: str, spark: Any = None) -> None:
    """Copies a local file to a Hadoop path, replacing it."""
    fs, target = _filesystem(path, spark)
    fs.copyFromLocalFile(False, True, fs.makeQualified(_local_path(local, spark)), target)


def copy_to_local(path: str, local: str, spark: Any = None) -> None:
    """Copies a file from a Hadoop path to a local one."""
    fs, source = _filesystem(path, spark)
    if not fs.exists(source):
        raise ConfigError(f"`path` must exist. Received: path={path!r}", field="path")
    fs.copyToLocalFile(False, source, _local_path(local, spark), True)


def _local_path(local: str, spark: Any) -> Any:
    _, hpath = _filesystem("file://" + os.path.abspath(local), spark)
    return hpath


def save_model(model: Any, path: str, *, spark: Any = None) -> None:
    """Saves ``model`` as a ``.keras`` file at ``path`` (any Hadoop-compatible URI)."""
    if not path.endswith(".keras"):
        raise ConfigError(f"`path` must end with .keras. Received: path={path!r}", field="path")
    with tempfile.TemporaryDirectory(prefix="zdk-save-") as tmp:
        local = os.path.join(tmp, "model.keras")
        model.save(local)
        copy_from_local(local, path, spark)
    logger.info("saved model to %s", path)


def load_model(path: str, *, spark: Any = None, compile: bool = True, custom_objects: dict | None = None) -> Any:
    """Loads a ``.keras`` file from ``path`` (any Hadoop-compatible URI)."""
    import keras

    with tempfile.TemporaryDirectory(prefix="zdk-load-") as tmp:
        local = os.path.join(tmp, "model.keras")
        copy_to_local(path, local, spark)
        return keras.saving.load_model(local, compile=compile, custom_objects=custom_objects)
