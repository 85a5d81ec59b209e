"""How many submissions are checked at once: admission loads a model, scans a schema and runs a
small Spark job, so it is bounded in total and per user, and what is over a bound is refused at
once (with ``Retry-After``) instead of queueing behind the rest.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable

from zdk.errors import ZdkError
from zdk.service.policy import count

#: Seconds a refused client is told to wait (``Retry-After``).
RETRY_AFTER = 5


class Busy(ZdkError):
    """A limit of the server is reached; the request may succeed later.

    Args:
        message: which limit, and what to do.
        status: 429 when the limit is the user's own, 503 when it is the server's.
        retry_after: seconds to wait before retrying.
    """

    def __init__(self, message: str, *, status: int, retry_after: int = RETRY_AFTER) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AdmissionGate:
    """Admissions in flight: at most ``total``, and ``per_user`` for each user.

    Args:
        total: admissions in flight on the server.
        per_user: admissions in flight for one user.

    Raises:
        ConfigError: naming ``max_admissions`` or ``max_admissions_per_user`` when below 1.
    """

    def __init__(self, *, total: int, per_user: int) -> None:
        self.total = count(total, "max_admissions")
        self.per_user = count(per_user, "max_admissions_per_user")
        self._lock = threading.Lock()
        self._users: collections.Counter[str] = collections.Counter()

    def take(self, user: str) -> Callable[[], None]:
        """Takes one of ``user``'s admission places; returns the function that gives it back
        (call it once, when the admission's work has ended, not when its request has).

        Raises:
            Busy: 429 when ``user`` already has ``per_user`` in flight, else 503 when the
                server has ``total``.
        """
        with self._lock:
            if self._users[user] >= self.per_user:
                raise Busy(f"you have {self._users[user]} submission(s) being checked, the most the server takes "
                           f"from one user at once (--max-admissions-per-user); retry when it is answered",
                           status=429)
            if sum(self._users.values()) >= self.total:
                raise Busy(f"the server is checking {self.total} submission(s), the most it takes at once "
                           f"(--max-admissions); retry in a few seconds", status=503)
            self._users[user] += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._users[user] -= 1
                if not self._users[user]:
                    del self._users[user]

        return release

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._users.values())
