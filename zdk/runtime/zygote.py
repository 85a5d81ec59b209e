"""A process that imports Keras while the driver's JVM starts, and forks Spark's Python daemon.

Spark starts its Python daemon (:mod:`zdk.runtime.daemon`) only once the JVM is up and the
first Python task is scheduled; importing TensorFlow there took 5–9 s after ``train()`` on
this 2-core machine. The embedded local session therefore starts this *zygote* first, beside
the JVM: it imports Keras at once, then waits on a Unix socket. When Spark launches the
daemon, the launched process hands the zygote its standard streams (``SCM_RIGHTS``), its
environment, working directory and ``sys.path``; the zygote forks, and the child becomes the
daemon with Keras already loaded. The launched process stays as the JVM's handle on it: it
forwards ``SIGTERM`` and exits when the daemon does.

Only for local mode, where the daemon runs on the driver's host and is the grandchild of
the driver (driver → JVM → daemon): :func:`hand_off` checks this, and anything else (no
zygote, a zygote that died, another host's executor) runs the daemon as before.
``ZDK_ZYGOTE=0`` turns it off. The zygote exits when the driver does (its stdin closes).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: The environment variable that tells a launched daemon where the zygote listens:
#: ``"<driver pid>:<socket path>"``.
ENV = "ZDK_ZYGOTE"

#: Seconds a launched daemon waits for the zygote to answer (it answers once Keras is loaded).
HAND_OFF_TIMEOUT = 120.0

_HEADER = struct.Struct("!I")


@dataclass(frozen=True)
class Zygote:
    """A running zygote: its process, the socket it listens on and the directory holding it."""

    process: subprocess.Popen
    path: str
    directory: str

    @property
    def address(self) -> str:
        """The value of :data:`ENV` for daemons launched under this driver."""
        return f"{os.getpid()}:{self.path}"

    def stop(self) -> None:
        """Stops the zygote (daemons it forked live on until their JVM stops them) and removes its socket.

        It is terminated rather than asked: in the middle of its import (a script that ends
        early) loading TensorFlow's libraries holds its interpreter for seconds, and its exit
        would wait for that."""
        if self.process.poll() is None:
            self.process.terminate()  # no handler of its own: it ends at once
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def start(env: dict[str, str] | None = None) -> Zygote:
    """Starts a zygote with this interpreter, which begins importing Keras at once.

    Args:
        env: variables set for it on top of this process's (the executors' ``TF_*`` settings).
    """
    directory = tempfile.mkdtemp(prefix="zdk-zygote-")  # mode 0700: only this user may connect
    path = os.path.join(directory, "zygote.sock")
    process = subprocess.Popen([sys.executable, "-m", __name__, path], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})}, close_fds=True)
    return Zygote(process=process, path=path, directory=directory)


# --- the zygote process ------------------------------------------------------------------------

def preload() -> None:
    """Imports what every training task imports, before any fork (here and in
    :mod:`zdk.runtime.daemon`)."""
    import keras  # noqa: F401

    import zdk.runtime.worker  # noqa: F401


def serve(path: str) -> None:
    """Listens on ``path``, imports Keras, then forks a daemon for every launched process that
    connects. Connections that arrive during the import wait in the backlog. Exits, removing the
    socket, as soon as stdin closes (the driver is gone), also in the middle of the import."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked daemons are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it closes our stdin
    threading.Thread(target=_exit_with_driver, args=(path,), name="zdk-zygote-driver", daemon=True).start()
    try:
        preload()
    except Exception as error:  # the daemons' workers then import (and fail, with their message) themselves
        print(f"zdk.runtime.zygote: preloading Keras failed ({error!r})", file=sys.stderr)
    while True:
        connection, _ = listener.accept()
        with connection:
            _fork_daemon(connection, listener)


def _exit_with_driver(path: str) -> None:
    """Waits for stdin's end (the driver exited or stopped us), then removes the socket and exits."""
    while os.read(sys.stdin.fileno(), 4096):
        pass
    for remove, name in ((os.unlink, path), (os.rmdir, os.path.dirname(path))):
        try:
            remove(name)
        except OSError:
            pass
    os._exit(0)


def _fork_daemon(connection: socket.socket, listener: socket.socket) -> None:
    """Receives a launched daemon's streams and context, and forks the daemon that uses them."""
    try:
        data, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
        if len(data) != _HEADER.size or len(fds) != 3:
            raise ValueError(f"expected a {_HEADER.size}-byte header and 3 descriptors, got {len(data)} bytes "
                             f"and {len(fds)} descriptors")
        (size,) = _HEADER.unpack(data)
        context = json.loads(_read_exactly(connection, size))
    except (OSError, ValueError) as error:
        print(f"zdk.runtime.zygote: a launched daemon's request was unreadable ({error!r})", file=sys.stderr)
        return
    pid = os.fork()
    if pid == 0:  # the daemon
        code = 1
        try:
            listener.close()
            connection.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.chdir(context["cwd"])
            os.environ.clear()
            os.environ.update(context["env"])
            sys.path[:] = context["path"]
            from pyspark.daemon import manager

            manager()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException as error:  # the JVM reads this on the daemon's stderr
            print(f"zdk.runtime.zygote: the forked daemon failed ({error!r})", file=sys.stderr)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    connection.sendall(_HEADER.pack(pid))


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 16))
        if not chunk:
            raise ValueError(f"the connection closed {left} bytes short of {size}")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- the launched daemon -----------------------------------------------------------------------

def hand_off() -> bool:
    """In a daemon process Spark launched: has the driver's zygote fork the daemon with this
    process's streams, then waits for it, forwarding ``SIGTERM``. False (nothing done) when
    there is no zygote for this process, and the caller runs the daemon itself."""
    target = _zygote_for_this_process()
    if target is None:
        return False
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(HAND_OFF_TIMEOUT)
        connection.connect(target)
        context = json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "path": sys.path}).encode()
        socket.send_fds(connection, [_HEADER.pack(len(context))], [0, 1, 2])
        connection.sendall(context)
        (pid,) = _HEADER.unpack(_read_exactly(connection, _HEADER.size))
        connection.close()
    except (OSError, ValueError) as error:
        print(f"zdk.runtime.zygote: no daemon from the zygote at {target} ({error!r}); starting one here",
              file=sys.stderr)
        return False
    _wait_for(pid)
    return True


def _zygote_for_this_process() -> str | None:
    """The zygote's socket, when one is named and this process is the driver's grandchild."""
    value = os.environ.get(ENV, "")
    driver, _, path = value.partition(":")
    if not driver.isdigit() or not path or not os.path.exists(path):
        return None
    try:
        jvm = _parent_of(os.getpid())
        return path if jvm is not None and _parent_of(jvm) == int(driver) else None
    except OSError:
        return None


def _parent_of(pid: int) -> int | None:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # the command name (field 2) is in parentheses and may hold spaces: the parent follows the last ')'
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def _wait_for(pid: int) -> None:
    """Returns when process ``pid`` (not our child) exits; a ``SIGTERM`` here (the JVM stopping its
    daemon) goes to it."""
    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    with os.fdopen(handle, "rb", buffering=0) as pidfd:
        while not select.select([pidfd], [], [], 1.0)[0]:
            pass


if __name__ == "__main__":
    serve(sys.argv[1])
