"""Where and how a job's parameter-server shards run: what the server decides for every job
(``zdk serve --ps-host``, ``--checkpoint-every``) and a spec cannot set.

Kept apart from :mod:`zdk.service.build` so that ``zdk serve``'s argument parsing reads its
defaults without importing the trainers.
"""

from __future__ import annotations

import dataclasses

from zdk.errors import ConfigError
from zdk.service.policy import amount

#: Seconds between a running job's shard checkpoints, from which it resumes after a server restart.
CHECKPOINT_EVERY = 10.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardSettings:
    """How the server runs a job's parameter-server shards (a spec cannot set these).

    Args:
        host: the address the shards bind (``ps_host``); executors on other hosts must reach it.
        checkpoint_every: seconds between the shards' checkpoints, which a job resumes from
            after the server restarts.

    Raises:
        ConfigError: naming ``ps_host`` when it is not a host name or address, or
            ``checkpoint_every`` when it is not a positive number.
    """

    host: str = "127.0.0.1"
    checkpoint_every: float = CHECKPOINT_EVERY

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or any(c in self.host for c in "/ \t\n"):
            raise ConfigError(f"`ps_host` must be a host name or an address (the shards bind tcp://HOST:PORT). "
                              f"Received: ps_host={self.host!r}", field="ps_host")
        amount(self.checkpoint_every, "checkpoint_every")
