"""Domain exceptions. Every message says what was wrong, the value seen, and what would be valid."""

from __future__ import annotations

from typing import Any


class ZdkError(Exception):
    """Base of every error zdk raises on purpose."""


class ConfigError(ZdkError, ValueError):
    """A constructor, CLI or job-spec argument is invalid.

    Args:
        message: what was wrong, the value seen and what would be valid.
        field: the argument or spec field the error is about (``"num_workers"``,
            ``"data.path"``), when there is one; the job service returns it with a 400.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TooLarge(ConfigError):
    """A part of a job submission is over its size limit (HTTP 413)."""


class ProtocolError(ZdkError):
    """A message does not follow the wire protocol.

    Args:
        code: a short machine-readable reason, sent as the `code` of an `error` reply.
        message: what was wrong, naming the field and the value.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteError(ZdkError):
    """A shard answered a request with an `error` reply."""

    def __init__(self, endpoint: str, op: str, code: str, message: str) -> None:
        super().__init__(f"shard at {endpoint} refused `{op}`: [{code}] {message}")
        self.endpoint = endpoint
        self.op = op
        self.code = code


class DeadlineExceeded(ZdkError, TimeoutError):
    """A network wait ran past its deadline."""


class ShardRestarted(ZdkError):
    """A shard answered with a different generation than at `hello`: it was restarted."""


class AlgorithmNotFound(ZdkError, KeyError):
    """No algorithm is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LaunchError(ZdkError):
    """Shard processes could not be started or stopped."""


class ShardLost(LaunchError):
    """A shard exited and was not restarted; ``stopped`` holds, per shard, its exit code and why
    (:class:`zdk.ps.supervisor.Stopped`)."""

    def __init__(self, message: str, *, stopped: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.stopped = stopped


class WorkerFailed(ZdkError):
    """A training task failed; the message carries the worker's own error, and ``report`` the
    path of the file holding Spark's full report (when there is one)."""

    def __init__(self, message: str, *, report: str | None = None) -> None:
        super().__init__(message)
        self.report = report


class NonFiniteError(ZdkError):
    """Training produced NaN or infinite values (a loss, or weights the PS refused)."""


class JobError(ZdkError):
    """The job server refused a request, or a job did not finish; the message is the server's.

    Args:
        status: the HTTP status of the refusal, when there was one.
        field: the field the server named.
    """

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class JobCancelled(ZdkError):
    """Training stopped because it was cancelled (``Trainer.cancel()`` or the job service)."""
