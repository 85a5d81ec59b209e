"""TensorFlow's thread pools in a Python worker, sized to what Spark gives the task.

By default TensorFlow starts one intra-op thread per core of the host in every process. With
one Python worker per task slot that is cores × tasks threads (plus the shards and the JVM)
fighting over the same cores (benchmarks/RESULTS.md has what that cost, measured).

So a worker uses ``spark.task.cpus`` intra-op threads (Spark's own contract: a task owns
that many cores; raise it for larger models, and Spark schedules fewer tasks per executor to
match). ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` set in the executors'
environment win.
"""

from __future__ import annotations

import os
import sys


def _tf_started() -> bool:
    """Whether TensorFlow's eager context (and its thread pools) exists in this process: a
    worker forked from :mod:`zdk.runtime.daemon` has TensorFlow imported but not started."""
    if "tensorflow" not in sys.modules:
        return False
    try:
        from tensorflow.python.eager import context
    except ImportError:
        return True
    ctx = context.context_safe()
    return ctx is not None and bool(getattr(ctx, "_initialized", True))


def size_tf_threads() -> int | None:
    """Sets TensorFlow's thread counts from the task's CPUs, before TensorFlow starts in this
    process (later, TensorFlow would ignore them). Returns the intra-op count set, or None."""
    if "TF_NUM_INTRAOP_THREADS" in os.environ or _tf_started():
        return None
    from pyspark import TaskContext

    ctx = TaskContext.get()
    cpus = max(1, int(ctx.cpus())) if ctx is not None else 1
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(cpus)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(max(2, cpus)))
    return cpus
