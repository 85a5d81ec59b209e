"""Shard supervision: a crashed shard comes back from its checkpoint, or its loss is said plainly.

A shard that crashed (a non-zero exit code, or a signal) is restarted on the endpoint it had,
from its last checkpoint, at most ``max_restarts`` times; it announces a new generation, so
workers re-sync from it. A shard with no checkpoint is never restarted: it would start from
zeros and hand them to every worker as the center. A shard that exited with code 0 stopped on
purpose (`shutdown`, SIGTERM, its idle timeout or its parent's death) and stays stopped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

from zdk.errors import ConfigError, LaunchError, ShardLost
from zdk.ps.launcher import ShardGroup

logger = logging.getLogger(__name__)

#: Why a shard that exited stays stopped.
StopCause = Literal["clean_exit", "no_checkpoint", "out_of_restarts", "restart_failed"]


@dataclass(frozen=True)
class Restarted:
    """A crashed shard that was restarted.

    Args:
        shard: its index.
        code: the exit code of the process that died (negative: killed by that signal).
        checkpoint: the checkpoint file it restored.
        endpoint: where it serves again (the endpoint it had).
        restarts: how many times it has been restarted, this one included.
    """

    shard: int
    code: int
    checkpoint: str
    endpoint: str
    restarts: int


@dataclass(frozen=True)
class Stopped:
    """A shard that exited and was not restarted.

    Args:
        shard: its index.
        code: its exit code (0: it stopped on purpose).
        cause: why it stays stopped: ``clean_exit``, ``no_checkpoint``, ``out_of_restarts`` or
            ``restart_failed``.
        restarts: how many times it had been restarted before.
        detail: for ``restart_failed``, the launch error.
    """

    shard: int
    code: int
    cause: StopCause
    restarts: int = 0
    detail: str = ""

    @property
    def crashed(self) -> bool:
        return self.code != 0

    @property
    def message(self) -> str:
        """One sentence naming the shard, its exit code and why it was not restarted."""
        reasons = {
            "clean_exit": "exited on purpose (`shutdown`, a signal, its idle timeout or its parent's death)",
            "no_checkpoint": "has no checkpoint to restart from (start the shards with a checkpoint directory "
                             "and a checkpoint period), and a shard restarted without its state would hand "
                             "workers zeros",
            "out_of_restarts": f"was not restarted again: it died after {self.restarts} restart(s), the most "
                               "allowed (`max_restarts`)",
            "restart_failed": f"could not be restarted: {self.detail}",
        }
        return f"shard {self.shard} exited with code {self.code} and {reasons[self.cause]}"


@dataclass(frozen=True)
class Outcome:
    """What one :meth:`Supervisor.check` found and did.

    Args:
        restarted: the crashed shards it restarted.
        stopped: the shards that exited and stay stopped.
    """

    restarted: tuple[Restarted, ...] = ()
    stopped: tuple[Stopped, ...] = ()

    @property
    def whole(self) -> bool:
        """Whether every shard is serving (none stays stopped)."""
        return not self.stopped

    def raise_for_stopped(self) -> None:
        """Raises :class:`ShardLost` when a shard stays stopped."""
        if self.stopped:
            raise ShardLost("; ".join(s.message for s in self.stopped), stopped=self.stopped)


class Supervisor:
    """Restarts the crashed shards of a group from their checkpoints, within a restart budget.

    Call :meth:`check` periodically (``zdk ps`` does, twice a second).

    Args:
        group: the running shards; their checkpoint directory is ``group.checkpoints``.
        max_restarts: how many times each shard may be restarted (≥ 0).

    Raises:
        ConfigError: naming ``max_restarts`` when it is not an int ≥ 0.
    """

    def __init__(self, group: ShardGroup, *, max_restarts: int = 3) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ConfigError(f"`max_restarts` must be an int ≥ 0. Received: max_restarts={max_restarts!r}",
                              field="max_restarts")
        self.group = group
        self.max_restarts = max_restarts
        self._stopped: set[int] = set()

    def check(self) -> Outcome:
        """Restarts every shard that crashed since the last check, if it may be.

        A shard is restarted when it exited with a non-zero code, its checkpoint file exists and
        it has been restarted fewer than ``max_restarts`` times. Every other shard that exited is
        reported in ``stopped`` (once: later checks do not report it again).
        """
        restarted: list[Restarted] = []
        stopped: list[Stopped] = []
        for k, alive in enumerate(self.group.alive()):
            if alive or k in self._stopped:
                continue
            outcome = self._recover(k)
            if isinstance(outcome, Restarted):
                restarted.append(outcome)
            else:
                self._stopped.add(k)
                stopped.append(outcome)
                logger.error("%s", outcome.message)
        return Outcome(tuple(restarted), tuple(stopped))

    def _recover(self, k: int) -> Restarted | Stopped:
        code = self.group.processes[k].returncode
        assert code is not None  # only called for exited shards
        done = self.group.restarts[k]
        if code == 0:
            return Stopped(k, code, "clean_exit", done)
        path = self.group.checkpoints.path(k, self.group.plan.num_shards)
        if path is None or not os.path.exists(path):
            return Stopped(k, code, "no_checkpoint", done)
        if done >= self.max_restarts:
            return Stopped(k, code, "out_of_restarts", done)
        logger.warning("shard %d exited with code %d; restarting it from %s", k, code, path)
        try:
            endpoint = self.group.restart(k)
        except LaunchError as exc:
            return Stopped(k, code, "restart_failed", done, str(exc))
        return Restarted(k, code, path, endpoint, self.group.restarts[k])
