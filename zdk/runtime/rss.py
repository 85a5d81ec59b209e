"""A process's resident set size (RSS) over a span of time: at its start, and its peak.

Spark reuses its Python workers from task to task, so the kernel's high-water mark of a worker
(``ru_maxrss``, ``VmHWM``) carries the peaks of earlier tasks. :class:`RssSampler` therefore
reads ``/proc/self/statm`` every ``interval`` seconds on a daemon thread. A sample can miss a
peak shorter than the interval, such as the copy that joins a cached partition's chunks (two
copies of the partition for a few tens of milliseconds: of a task whose RSS rose by about 215 MB,
sampling alone once saw 139 MB here). So where Linux allows it (``/proc/self/clear_refs``,
Linux ≥ 4.0) the sampler also resets the kernel's high-water mark to the current RSS when it
starts, and counts ``VmHWM`` towards the peak, which the kernel updates before it unmaps memory,
however briefly it was held. That resets ``VmHWM`` and ``ru_maxrss`` for the whole process: fine
in a Spark Python worker, which runs one task at a time. Without ``/proc`` the figures are None.
"""

from __future__ import annotations

import logging
import os
import threading

from zdk.errors import ConfigError

logger = logging.getLogger(__name__)

#: Seconds between samples: frequent enough to see the rise of a partition being cached, cheap
#: enough (two small reads) to be invisible next to a training step.
DEFAULT_INTERVAL = 0.05

_STATM = "/proc/self/statm"
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def resident_bytes() -> int | None:
    """This process's resident set size in bytes, or None where ``/proc`` does not exist."""
    try:
        with open(_STATM, "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def high_water_bytes() -> int | None:
    """The kernel's high-water mark of this process's RSS (``VmHWM``) in bytes, or None."""
    try:
        with open(_STATUS, "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_high_water() -> bool:
    """Resets ``VmHWM`` to the current RSS (Linux ≥ 4.0); False where that cannot be done."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return high_water_bytes() is not None


class RssSampler:
    """This process's RSS from :meth:`start` to :meth:`stop`: sampled on a daemon thread, and the
    kernel's high-water mark where it can be reset (see the module's docstring).

    Use it as a context manager (the thread stops however the block ends), or call
    :meth:`start` and :meth:`stop` in a ``try``/``finally``.

    Args:
        interval: seconds between samples (> 0).
    """

    def __init__(self, *, interval: float = DEFAULT_INTERVAL) -> None:
        if not interval > 0:
            raise ConfigError(f"`interval` must be > 0 seconds. Received: interval={interval!r}", field="interval")
        self.interval = interval
        self.start_bytes: int | None = None  #: the RSS when :meth:`start` was called
        self.exact = False  #: whether the kernel's high-water mark counts towards the peak (it was reset)
        self._peak: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    @property
    def peak_bytes(self) -> int | None:
        """The largest RSS seen so far (None before :meth:`start`, or without ``/proc``)."""
        with self._lock:
            return self._peak

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sample(self) -> int | None:
        """Reads the RSS now (and the kernel's high-water mark), counts them towards the peak, and
        returns the RSS."""
        value = resident_bytes()
        if value is None:
            return None
        high = high_water_bytes() if self.exact else None
        with self._lock:
            self._peak = max(value, high or 0, self._peak or 0)
        return value

    def start(self) -> "RssSampler":
        """Takes the first sample (:attr:`start_bytes`) and starts the sampling thread."""
        if self._started:
            raise RuntimeError("an RssSampler samples one span: make a new one to sample again")
        self._started = True
        self.start_bytes = self.sample()
        if self.start_bytes is None:
            logger.debug("no %s here: the worker's RSS is not reported", _STATM)
            return self
        self.exact = reset_high_water()
        self._thread = threading.Thread(target=self._run, name="zdk-rss", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the thread (waiting for it) and takes a last sample; a second call does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "RssSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["DEFAULT_INTERVAL", "RssSampler", "high_water_bytes", "reset_high_water", "resident_bytes"]
