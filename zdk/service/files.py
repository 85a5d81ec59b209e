"""Files the job server keeps private and durable: modes tightened to the server's user, and
writes flushed to the disk before a record says they exist."""

from __future__ import annotations

import logging
import os
import stat

logger = logging.getLogger(__name__)


def private(path: str, mode: int) -> None:
    """Tightens ``path`` to ``mode`` (0700 for a folder, 0600 for a file) when others could
    use it, saying so: a state directory made by hand, or by an older zdk."""
    current = stat.S_IMODE(os.stat(path).st_mode)
    if current & ~mode:
        os.chmod(path, mode)
        logger.warning("%s was open to other users (mode %o); it is now %o", path, current, mode)


def create_private(path: str) -> None:
    """Creates the empty file ``path`` with mode 0600 unless it exists (then tightens it)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        private(path, 0o600)


def fsync(path: str) -> None:
    """Flushes a file, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
