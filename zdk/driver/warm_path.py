"""Warming Spark's data path in the background, while a script still loads its data.

The first ``train()`` in a new JVM runs its rows through code the JVM has not compiled yet: the
Arrow scan, the round-robin shuffle, the sort by a random key, the conversion to Arrow for the
Python workers, and the query's generated code. Cold, that pass over Fashion-MNIST (188 MB) took
5.0–5.7 s here; after one pass over a small frame of the same column types, 3.4–4.3 s. So an
embedded session, once started, runs that small pass (a few MB, about 2 s) on a background
thread: the script is then reading its own files, which leaves the JVM idle.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from zdk.driver.rows import split_rows

logger = logging.getLogger(__name__)

#: The small frame's shape: enough rows and values for the JVM to compile the per-row and
#: per-value loops (its thresholds are in the tens of thousands of calls and iterations).
ROWS, WIDTH = 8000, 64


def warm_data_path(spark: Any, *, after: threading.Thread | None = None) -> threading.Thread | None:
    """Runs a small frame of an ``array<float>`` feature and a ``long`` label through the data
    path of training (:func:`zdk.driver.rows.split_rows`, then Python workers reading it), on a
    background thread, after ``after`` (the workers' warm-up) ends.

    Returns:
        the thread, or None when warming is off (``ZDK_WARM=0``).
    """
    if os.environ.get("ZDK_WARM", "1") == "0":
        return None
    sc = spark.sparkContext

    def run() -> None:
        if after is not None:
            after.join()
        try:
            sc.setJobGroup(f"zdk-warm-data-{sc.applicationId}", "zdk: warming Spark's data path")
            small_pass(spark)
        except Exception:  # only an optimization: training runs the same path, and fails there with its message
            logger.debug("warming Spark's data path failed", exc_info=True)

    thread = threading.Thread(target=run, name="zdk-warm-data", daemon=True)
    thread.start()
    return thread


def small_pass(spark: Any) -> int:
    """One pass of the small frame through training's data path; returns the rows the Python
    workers read."""
    from zdk.runtime.warmup import drain

    frame = spark.createDataFrame(_table())
    split = split_rows(frame, ("features", "label"), tasks=2, seed=0, shuffle=True)
    return sum(row.rows for row in split.mapInArrow(drain, "rows long").collect())


def _table() -> Any:
    import pyarrow as pa

    values = np.random.default_rng(0).random(ROWS * WIDTH, dtype=np.float32)
    features = pa.FixedSizeListArray.from_arrays(pa.array(values), WIDTH).cast(pa.list_(pa.float32()))
    return pa.table({"features": features, "label": pa.array(np.zeros(ROWS, np.int64))})
