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
    """

    def __init__(self, session: Callable[[], Any]) -> None:
        self._session = session
        self._spark: Any = None
        self._lock = threading.Lock()

    @classmethod
    def of_master(cls, master: str | None) -> "Cluster":
        """The active session, else an embedded one on ``master`` (None: ``local[*]``)."""

        def session() -> Any:
            from zdk.driver.session import get_session

            return get_session(master or "local[*]")

        return cls(session)

    def spark(self) -> Any:
        with self._lock:
            if self._spark is None:
                self._spark = self._session()
            return self._spark

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
