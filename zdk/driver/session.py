"""The Spark session zdk trains on: the active one untouched, or an embedded local one."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import threading
import time
from typing import Any

from zdk.driver import cds
from zdk.runtime import zygote
from zdk.runtime.warmup import import_keras

logger = logging.getLogger(__name__)

#: Environment every Python worker gets: quiet TensorFlow, no oneDNN rounding differences.
EXECUTOR_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0",
                "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}


#: Spark's logging in the embedded session: errors only (see the file for why).
LOG4J2_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")


#: The Python daemon that imports Keras before forking workers (see :mod:`zdk.runtime.daemon`).
DAEMON_MODULE = "zdk.runtime.daemon"


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
        # workers fork with Keras already imported, from a daemon that imports it once
        "spark.python.daemon.module": DAEMON_MODULE,
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
    if active is None:
        try:  # the session another thread started (the active one is per thread)
            active = SparkSession.active()
        except Exception:
            active = None
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for key, value in EXECUTOR_ENV.items():
        os.environ.setdefault(key, value)
    from pyspark import SparkContext

    conf = {**embedded_conf(master), **(extra_conf or {})}
    archive = cds.options() if SparkContext._gateway is None else cds.Plan(None, None)  # a new JVM only
    if archive.java_options:
        conf["spark.driver.extraJavaOptions"] = f"{conf.get('spark.driver.extraJavaOptions', '')} {archive.java_options}".strip()
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    started = time.perf_counter()
    if SparkContext._gateway is None:
        start_zygote(conf)  # the daemon's TensorFlow import overlaps the JVM's start too
    import_keras_beside()  # the driver's TensorFlow import overlaps the JVM's start
    spark = builder.getOrCreate()
    if archive.dump:
        cds.record_dumper(archive, getattr(getattr(SparkContext._gateway, "proc", None), "pid", None))
        atexit.register(cds.finish_dump, spark, archive)
    global _session_seconds
    _session_seconds = time.perf_counter() - started
    level = os.environ.get("ZDK_LOG_LEVEL", "").upper()
    spark.sparkContext.setLogLevel("ERROR" if level not in ("DEBUG", "INFO", "WARN", "WARNING") else
                                   {"WARNING": "WARN"}.get(level, level))
    logger.info("started an embedded Spark session (%s) in %.1f s", master, _session_seconds)
    warm_workers(spark)
    return spark


def start_zygote(conf: dict[str, str]) -> zygote.Zygote | None:
    """Starts the process that imports Keras for the Python daemon while the JVM starts
    (:mod:`zdk.runtime.zygote`), for a session whose daemon runs here: local mode (not
    ``local-cluster``) with zdk's daemon and this interpreter. None when that is not so, or
    when ``ZDK_ZYGOTE=0`` or ``ZDK_WARM=0``. It stops when this process exits."""
    master = conf.get("spark.master", "")
    python = os.environ.get("PYSPARK_PYTHON", sys.executable)
    if (os.environ.get(zygote.ENV) == "0" or os.environ.get("ZDK_WARM", "1") == "0"
            or not sys.platform.startswith("linux") or not (master == "local" or master.startswith("local["))
            or conf.get("spark.python.daemon.module") != DAEMON_MODULE
            or os.path.realpath(shutil.which(python) or python) != os.path.realpath(sys.executable)):
        return None
    started = zygote.start(EXECUTOR_ENV)
    os.environ[zygote.ENV] = started.address  # the JVM, launched next, passes it on to the daemon
    atexit.register(started.stop)
    return started


def import_keras_beside() -> threading.Thread | None:
    """Imports Keras on a thread of the driver, unless it is imported (or ``ZDK_WARM=0``).

    Training needs Keras in the driver too (to build and compile the model), and its import
    (3–5 s here) is CPU work of one core, which the JVM's start does not fully use: started
    together they take about as long as the longer one. A script that calls
    :func:`get_session` before ``import keras`` finds it loaded; ``import keras`` on the main
    thread meanwhile just waits for this one's import to finish.
    """
    if os.environ.get("ZDK_WARM", "1") == "0" or "keras" in sys.modules:
        return None
    if any(t.name == "zdk-driver-keras-import" for t in threading.enumerate()):
        return None

    def run() -> None:
        try:
            import keras  # noqa: F401
        except Exception:  # only an optimization: the import fails again, with its message, where it is needed
            logger.debug("importing Keras beside the JVM's start failed", exc_info=True)

    thread = threading.Thread(target=run, name="zdk-driver-keras-import", daemon=True)
    thread.start()
    return thread


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


_session_seconds = 0.0
_warm_lock = threading.Lock()
_warmed: dict[str, threading.Thread] = {}


def session_seconds(*, consume: bool = False) -> float:
    """Seconds :func:`get_session` spent starting the embedded session (0 when it started none);
    with ``consume``, reported once, to the first ``train()`` after the start."""
    global _session_seconds
    value = _session_seconds
    if consume:
        _session_seconds = 0.0
    return value


def preloading_daemon(spark: Any) -> bool:
    """Whether ``spark`` runs one Python daemon, ours, in local mode: one warm-up task then
    warms every worker, and the other task slots stay free for the driver's own jobs."""
    sc = spark.sparkContext
    return (sc.master or "").startswith("local") and sc.getConf().get("spark.python.daemon.module", "") == DAEMON_MODULE


def warm_workers(spark: Any, slots: int | None = None, *, force: bool = False) -> threading.Thread | None:
    """Starts a Python worker on each task slot and imports Keras in it, in the background.

    Spark reuses Python workers (``spark.python.worker.reuse``), so the training tasks that
    follow find Keras imported: the seconds TensorFlow takes to load overlap with the driver's
    own work (data preparation, shard start) instead of following it. Once per Spark
    application; ``ZDK_WARM=0`` turns it off.

    Args:
        spark: the session.
        slots: how many workers to warm (default: the cluster's task slots).
        force: warm again even if this application was warmed before (idle workers exit after a
            minute, and their replacements start cold).

    Returns:
        the background thread, or None when warming is off or already done.
    """
    if os.environ.get("ZDK_WARM", "1") == "0":
        return None
    sc = spark.sparkContext
    key = sc.applicationId
    with _warm_lock:
        if key in _warmed and not force:
            return None
        count = 1 if preloading_daemon(spark) else max(1, slots or task_slots(spark))

        def run() -> None:
            try:
                sc.setJobGroup(f"zdk-warm-up-{key}", "zdk: importing Keras in the Python workers")
                spark.range(count, numPartitions=count).mapInArrow(import_keras, "pid long").collect()
            except Exception:  # only an optimization: a task failing here fails again, with its message, in train()
                logger.debug("warming the Python workers failed", exc_info=True)

        thread = threading.Thread(target=run, name="zdk-warm-up", daemon=True)
        _warmed[key] = thread
        thread.start()
    return thread
