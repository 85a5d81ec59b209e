"""Loading an uploaded model in a box: loader processes with memory and CPU limits
(:mod:`zdk.service.model_loader`), so a hostile ``.keras`` file costs a refused request, never
the server, whose process is every job's Spark driver.

The server sends a loader a file's path and waits for its answer with a wall-clock deadline; it
kills a loader that overruns it, and loads the model itself only when the loader passed it. A
loader imports Keras once (several seconds), then serves one check at a time, which keeps a
check as fast as a load. One that hit a limit or died is replaced; one that does not answer the
ping before a check (killed while idle) is replaced without refusing the upload. Its standard
error goes to ``/dev/null`` (Keras's warnings quote names from the upload), and its standard
output carries only the protocol: one JSON line per request and per answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from zdk.errors import ConfigError, TooLarge
from zdk.service.policy import Policy, count

logger = logging.getLogger(__name__)

#: The most bytes of one answer from a child.
MAX_ANSWER_BYTES = 16 * 2**20
#: Seconds an idle loader has to answer a ping.
PING_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadLimits:
    """What loading one model may cost.

    Args:
        max_params: parameters, estimated before loading and counted after.
        max_unpacked_bytes: the archive's members' total size.
        memory_bytes: address space the load may add to the loader process.
        seconds: CPU seconds, and wall-clock seconds, the check may take.
    """

    max_params: int
    max_unpacked_bytes: int
    memory_bytes: int
    seconds: float

    @classmethod
    def of(cls, policy: Policy) -> "LoadLimits":
        return cls(max_params=policy.max_model_params, max_unpacked_bytes=policy.unpacked_limit,
                   memory_bytes=policy.model_memory_bytes, seconds=policy.model_load_seconds)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelFacts:
    """What the box found: the loaded model's parameters, the estimate from its config, and
    its weights' shapes (the first thousand)."""

    params: int
    estimate: int
    weights: tuple[tuple[int, ...], ...]


class ModelSandbox:
    """A pool of loader processes that check uploaded models.

    Args:
        custom_modules: the operator's modules, imported by each loader so their classes load.
        size: loaders at most (admissions in flight at once).
        start_timeout: seconds a new loader may take to import Keras.

    Raises:
        ConfigError: naming ``size`` when it is below 1.
    """

    def __init__(self, *, custom_modules: Sequence[str] = (), size: int = 1, start_timeout: float = 300.0) -> None:
        self.custom_modules = tuple(custom_modules)
        self.size = count(size, "size")
        self.start_timeout = start_timeout
        self._cond = threading.Condition()
        self._idle: list[_Loader] = []
        self._alive = 0
        self._closed = False

    def warm(self) -> None:
        """Starts a loader now (it imports Keras in the background), so the first check is fast."""
        with self._cond:
            if self._closed or self._alive:
                return
            self._alive += 1
        self._put(self._spawn())

    def inspect(self, path: str, limits: LoadLimits) -> ModelFacts:
        """Checks the ``.keras`` file at ``path`` in a loader.

        Raises:
            TooLarge: naming ``model`` when the archive unpacks to too much or has too many members.
            ConfigError: naming ``model`` when it is malformed, its estimated or counted
                parameters are over ``max_params``, it does not load in safe mode, or its
                loading overran the memory, CPU or wall-clock limit.
            RuntimeError: when no loader could start or take the request (the server's problem).
        """
        request = {"path": os.path.abspath(path), "max_params": limits.max_params,
                   "max_unpacked_bytes": limits.max_unpacked_bytes, "memory_bytes": limits.memory_bytes,
                   "seconds": limits.seconds}
        for attempt in (1, 2):  # a loader that died while idle is replaced once, never blamed on the upload
            loader = self._take()
            try:
                loader.wait_ready(self.start_timeout)
                loader.ping()
                answer = loader.ask(request, timeout=limits.seconds)
            except _Gone as exc:
                self._discard(loader)
                if attempt == 2:
                    raise RuntimeError(f"the model loader {exc}") from None
                continue
            except _Overran:
                self._discard(loader)
                raise ConfigError(f"`model` took more than {limits.seconds:g} s to load; the server allows "
                                  f"{limits.seconds:g} s (--model-load-seconds)", field="model") from None
            except _Died as exc:
                self._discard(loader)
                raise ConfigError(f"`model` could not be loaded within the server's limits: the loader {exc}",
                                  field="model") from None
            except BaseException:
                self._discard(loader)
                raise
            return self._answered(loader, answer, limits)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _answered(self, loader: "_Loader", answer: dict[str, Any], limits: LoadLimits) -> ModelFacts:
        """Puts the loader back (or replaces it after it ran out of memory), and turns its answer
        into facts or a refusal."""
        if answer.get("restart"):
            self._discard(loader)
        else:
            self._put(loader)
        if not answer.get("ok"):
            error = TooLarge if answer.get("status") == 413 else ConfigError
            raise error(str(answer.get("error")), field="model")
        facts = ModelFacts(params=int(answer["params"]), estimate=int(answer["estimate"]),
                           weights=tuple(tuple(int(d) for d in shape) for shape in answer["weights"]))
        if facts.params > limits.max_params:
            raise ConfigError(f"`model` has {facts.params:,} parameters; the server allows {limits.max_params:,} "
                              f"(--max-model-params)", field="model")
        return facts

    def close(self) -> None:
        """Stops every loader (those in use stop when their check ends)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for loader in idle:
            loader.close()

    # ------------------------------------------------------------------ the pool

    def _spawn(self) -> "_Loader":
        try:
            return _Loader(self.custom_modules)
        except BaseException:
            with self._cond:
                self._alive -= 1
                self._cond.notify_all()
            raise

    def _take(self) -> "_Loader":
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the model sandbox is closed")
                while self._idle:
                    loader = self._idle.pop()
                    if loader.proc.poll() is None:
                        return loader
                    self._alive -= 1  # died while idle (killed from outside): not this upload's fault
                    loader.kill()
                if self._alive < self.size:
                    self._alive += 1
                    break
                self._cond.wait()
        return self._spawn()

    def _put(self, loader: "_Loader") -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(loader)
                self._cond.notify_all()
                return
            self._alive -= 1
        loader.close()

    def _discard(self, loader: "_Loader") -> None:
        """Kills a loader that overran or died, and starts its replacement."""
        loader.kill()
        with self._cond:
            self._alive -= 1
            if self._closed:
                return
            self._alive += 1
        try:
            self._put(self._spawn())
        except Exception:  # the next check tries again; this one's answer stands
            logger.exception("starting a model loader failed")


class _Overran(Exception):
    """The loader did not answer by the deadline."""


class _Died(Exception):
    """The loader exited while it checked an upload (its message says how)."""


class _Gone(Exception):
    """The loader could not start, or was dead before it was asked: not the upload's doing."""


_SIGNALS = {signal.SIGXCPU: "went over its CPU time limit (--model-load-seconds)",
            signal.SIGKILL: "was killed (out of memory?)", signal.SIGSEGV: "crashed (SIGSEGV)",
            signal.SIGABRT: "aborted (SIGABRT; out of memory?)"}


class _Loader:
    """One loader process and the pipe to it."""

    def __init__(self, custom_modules: Sequence[str]) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MALLOC_ARENA_MAX": "2", "CUDA_VISIBLE_DEVICES": ""}
        self.proc = subprocess.Popen([sys.executable, "-m", "zdk.service.model_loader", *custom_modules],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, close_fds=True)
        self._buffer = b""
        self._ready = False

    def wait_ready(self, timeout: float) -> None:
        if self._ready:
            return
        try:
            hello = json.loads(self._line(time.monotonic() + timeout))
        except _Overran:
            raise _Gone(f"did not start within {timeout:g} s") from None
        except (_Died, ValueError) as exc:
            raise _Gone(f"could not start: {exc or 'it did not say it was ready'}") from None
        if not hello.get("ready"):
            raise _Gone(f"could not start: {hello.get('error')}")
        self._ready = True

    def ping(self) -> None:
        """Checks that it still answers, before it is given an upload.

        Raises:
            _Gone: when it does not.
        """
        try:
            answer = self.ask({"ping": True}, timeout=PING_TIMEOUT)
        except (_Died, _Overran) as exc:
            raise _Gone(str(exc) or "did not answer a ping") from None
        if not answer.get("pong"):
            raise _Gone("answered a ping with something else")

    def ask(self, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:  # its end of the pipe is closed: it died before it saw the request
            raise _Gone(self._how()) from None
        try:
            return dict(json.loads(self._line(time.monotonic() + timeout)))
        except ValueError:
            raise _Died("answered with something that is not JSON") from None

    def _line(self, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Overran()
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk or len(self._buffer) > MAX_ANSWER_BYTES:
                raise _Died(self._how())
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _how(self) -> str:
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
            return "stopped answering"
        if code >= 0:
            return f"exited with code {code}"
        try:
            number = signal.Signals(-code)
        except ValueError:
            return f"was stopped by signal {-code}"
        return _SIGNALS.get(number, f"was stopped by signal {number.name}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def close(self) -> None:
        """Closes its standard input (it exits), then kills it if it lingers; one still
        importing Keras is killed at once."""
        if not self._ready:
            self.kill()
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
