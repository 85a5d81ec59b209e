"""The server's Spark: one session for every job, started on first need, and its task slots."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

logger = logging.getLogger(__name__)


class Cluster:
    """The Spark session jobs run on.

    Args:
        session: returns the Spark session; called once, on first need.
        owns: whether the session ``session`` returns is this cluster's to stop (:meth:`stop`);
            called with it.
    """

    def __init__(self, session: Callable[[], Any], *, owns: Callable[[Any], bool] = lambda spark: False) -> None:
        self._session = session
        self._owns = owns
        self._spark: Any = None
        self._stopped = False
        self._lock = threading.Lock()

    @classmethod
    def of_master(cls, master: str | None) -> "Cluster":
        """The active session, else an embedded one on ``master`` (None: ``local[*]``), which
        :meth:`stop` stops."""
        started: list[Any] = []

        def session() -> Any:
            from pyspark.sql import SparkSession

            from zdk.driver.session import get_session

            before = SparkSession.getActiveSession()
            spark = get_session(master or "local[*]")
            if before is None and spark is not None:
                started.append(spark)
            return spark

        return cls(session, owns=lambda spark: any(spark is s for s in started))

    def spark(self) -> Any:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the server is stopping: its Spark session is stopped")
            if self._spark is None:
                self._spark = self._session()
            return self._spark

    def stop(self, timeout: float = 60.0) -> None:
        """Stops the session if this cluster started it, after a start still under way (so
        that pyspark removes the connection folder, with the gateway's secret, it made for it,
        and Spark its temporary directories); a session someone else started is left running."""
        if not self._lock.acquire(timeout=timeout):
            logger.warning("Spark was still starting after %.0f s; leaving it to the process's exit", timeout)
            return
        try:
            self._stopped = True
            spark, self._spark = self._spark, None
        finally:
            self._lock.release()
        if spark is not None and self._owns(spark):
            try:
                spark.stop()
            except Exception:  # stopping is best effort: the JVM goes with the process anyway
                logger.exception("stopping the server's Spark session failed")

    def warm(self) -> None:
        """Starts Spark now (the first submission needs it); a failure is logged and retried then."""
        try:
            self.spark()
        except Exception:
            logger.exception("starting Spark failed; the next submission tries again")

    def slots(self) -> int:
        """How many tasks the cluster runs at once."""
        from zdk.driver.session import task_slots

        return task_slots(self.spark())
