"""The Spark session zdk trains on: the active one untouched, or an embedded local one."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

#: Environment every Python worker gets: quiet TensorFlow, no oneDNN rounding differences.
EXECUTOR_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0",
                "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}


#: Spark's logging in the embedded session: errors only (see the file for why).
LOG4J2_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")


def embedded_conf(master: str = "local[*]") -> dict[str, str]:
    """The settings of the embedded session: loopback only, no UI, quiet executors, and
    barrier stages that fail fast instead of waiting ~10 minutes for missing slots."""
    conf = {
        "spark.master": master,
        "spark.app.name": "zdk",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "1s",
        "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "1",
        "spark.python.worker.reuse": "true",
        # local mode runs executors in the driver JVM: Spark's 1 GiB default is too small
        # for image data sets such as Fashion-MNIST held as ML vectors.
        "spark.driver.memory": os.environ.get("ZDK_DRIVER_MEMORY", "4g"),
    }
    for key, value in EXECUTOR_ENV.items():
        conf[f"spark.executorEnv.{key}"] = value
    if os.environ.get("ZDK_LOG_LEVEL", "").upper() not in ("DEBUG", "INFO", "WARN", "WARNING"):
        conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}"
    return conf


def get_session(master: str = "local[*]", extra_conf: dict[str, str] | None = None) -> Any:
    """The active SparkSession, or a new embedded one configured by :func:`embedded_conf`."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for key, value in EXECUTOR_ENV.items():
        os.environ.setdefault(key, value)
    builder = SparkSession.builder
    for key, value in {**embedded_conf(master), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    level = os.environ.get("ZDK_LOG_LEVEL", "").upper()
    spark.sparkContext.setLogLevel("ERROR" if level not in ("DEBUG", "INFO", "WARN", "WARNING") else
                                   {"WARNING": "WARN"}.get(level, level))
    logger.info("started an embedded Spark session (%s)", master)
    return spark


def task_slots(spark: Any) -> int:
    """How many tasks the cluster can run at once (executors × cores per executor, or local cores)."""
    sc = spark.sparkContext
    master = sc.master or ""
    if master.startswith("local"):
        return int(sc.defaultParallelism)
    try:
        executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
        cores = int(sc.getConf().get("spark.executor.cores", "1"))
        task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
        if executors > 0:
            return max(1, executors * cores // task_cpus)
    except Exception:  # the JVM view is best effort; fall back to Spark's own guess
        logger.debug("could not read executor counts", exc_info=True)
    return int(sc.defaultParallelism)
