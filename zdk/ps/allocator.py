"""glibc allocator tuning for moving large messages.

ZeroMQ allocates a buffer per received frame. With glibc's defaults the heap top is
returned to the kernel after each large message (M_TRIM_THRESHOLD follows the dynamic
mmap threshold), so the next message page-faults all its memory again: on this
machine that halves PS throughput at 40 MiB. Keeping freed memory in the heap
avoids it, at the price of a process holding on to its peak heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit; also disables the dynamic threshold
TRIM_THRESHOLD = 1 << 30

_done = False
_lock = threading.Lock()


def tune_allocator() -> bool:
    """Sets glibc's mmap and trim thresholds once per process; False where that is not glibc."""
    global _done
    with _lock:
        if _done:
            return True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            logger.debug("no glibc mallopt here; allocator left as it is")
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        _done = ok
        return ok
