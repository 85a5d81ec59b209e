"""How much of its partition a worker keeps in memory between epochs (``cache_memory``).

A worker converts its partition to float32 arrays in the first epoch and serves the later epochs
from them. Up to ``cache_memory`` bytes stay in memory; the rest is spilled to a file in Spark's
local directories (:class:`zdk.runtime.spill.RowStore`). The default is derived from the memory
Spark gives each task's Python worker:

    default = ½ · M / T

where M is ``spark.executor.pyspark.memory`` when set, else ``spark.executor.memory`` (in local
mode, where executors live in the driver, ``spark.driver.memory``), and T the tasks an executor
runs at once (``spark.executor.cores`` / ``spark.task.cpus``; the local cores in local mode). The
other half is left to TensorFlow, the model, the optimizer and the exchange buffers.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from zdk.errors import ConfigError

UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
         "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
#: Spark's default ``spark.executor.memory`` / ``spark.driver.memory``.
SPARK_DEFAULT_MEMORY = "1g"


def parse_bytes(value: Any, field: str, *, default_unit: str = "") -> int:
    """Bytes from an int, or a string such as ``"256m"``, ``"1.5g"``, ``"512 KiB"`` (powers of 1024).

    Args:
        value: the size.
        field: the argument it comes from, for the error.
        default_unit: the unit of a bare number in a string (Spark's memory settings mean MiB).

    Raises:
        ConfigError: naming ``field`` when the value is not a size ≥ 0.
    """
    error = ConfigError(f"`{field}` must be a number of bytes ≥ 0 or a size such as '256m' or '2g'. "
                        f"Received: {field}={value!r}", field=field)
    if isinstance(value, bool):
        raise error
    if isinstance(value, int):
        if value < 0:
            raise error
        return value
    if not isinstance(value, str):
        raise error
    match = _SIZE.match(value.lower())
    if not match or match.group(2) not in UNITS:
        raise error
    unit = match.group(2) or default_unit
    return int(float(match.group(1)) * UNITS[unit])


def default_cache_memory(conf: Mapping[str, str], *, local: bool, local_cores: int) -> int:
    """Half the memory a task's Python worker may use (see the module's formula), in bytes.

    Args:
        conf: the Spark configuration (``SparkConf.getAll()`` as a mapping).
        local: whether executors run inside the driver (``local[…]`` masters).
        local_cores: tasks at once in local mode.
    """
    tasks = local_cores if local else _tasks_per_executor(conf)
    key = ("spark.executor.pyspark.memory" if "spark.executor.pyspark.memory" in conf
           else "spark.driver.memory" if local else "spark.executor.memory")
    memory = parse_bytes(conf.get(key, SPARK_DEFAULT_MEMORY), key, default_unit="m")
    return memory // (2 * max(1, tasks))


def _tasks_per_executor(conf: Mapping[str, str]) -> int:
    cores = int(conf.get("spark.executor.cores", "1"))
    return max(1, cores // max(1, int(conf.get("spark.task.cpus", "1"))))


def spark_cache_memory(spark: Any) -> int:
    """:func:`default_cache_memory` for a running session."""
    sc = spark.sparkContext
    master = str(sc.master)
    local = master == "local" or master.startswith("local[")  # not local-cluster: executors of their own
    return default_cache_memory(dict(sc.getConf().getAll()), local=local,
                                local_cores=int(sc.defaultParallelism) if local else 1)


__all__ = ["default_cache_memory", "parse_bytes", "spark_cache_memory"]
