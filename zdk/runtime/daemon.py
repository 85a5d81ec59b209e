"""Spark's Python daemon with Keras loaded once, before it forks the workers.

Spark starts one daemon per executor, which forks a Python worker per task slot. With the
stock daemon every worker imports TensorFlow and Keras itself: on this 2-core machine, two
workers importing at once took 8–13 s of the time between ``train()`` and the first step.
This daemon imports them first, so forked workers start with them loaded (shared
copy-on-write), and the import is paid once per executor, off the training's critical path
(the driver warms the workers when its session starts).

Importing TensorFlow initializes no device or thread pool of its own (its eager context is
created at the first operation, in the worker), which is what makes forking after it safe;
:func:`zdk.runtime.threads.size_tf_threads` still sizes each worker's pools from its task.

Use it with ``spark.python.daemon.module=zdk.runtime.daemon`` (the embedded session does).
When the preload fails, the daemon runs as Spark's own and workers import as before.

In the embedded local session the import starts even earlier, beside the JVM's start: the
driver's zygote (:mod:`zdk.runtime.zygote`) has it done, and forks the daemon for this process.
"""

from __future__ import annotations

import sys

from zdk.runtime.zygote import hand_off, preload


def main() -> None:
    if hand_off():  # the driver's zygote, with Keras loaded since the JVM's start, forked the daemon
        return
    try:
        preload()
    except Exception as error:  # the workers import (and fail, with their message) themselves
        print(f"zdk.runtime.daemon: preloading Keras failed ({error!r}); workers import it themselves",
              file=sys.stderr)
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
