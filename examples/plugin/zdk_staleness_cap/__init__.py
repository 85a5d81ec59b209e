"""A zdk algorithm plugin: DOWNPOUR with a staleness cap.

Installed, it is found by name through the ``zdk.algorithms`` entry point:
``Trainer(algorithm="capped-downpour", max_staleness=2, ...)`` or
``zdk ps --algorithm capped-downpour --params '{"max_staleness": 2}'``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdk.algorithms import (
    Algorithm, Params, ShardState, UpdateResult, WorkerSlot, accumulated_delta, check, reset_to_center,
)


@dataclass(frozen=True)
class CappedParams(Params):
    """Args:
        max_staleness: k; commits whose staleness τ exceeds it are dropped.
    """

    max_staleness: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.max_staleness
        check(isinstance(k, int) and not isinstance(k, bool) and k >= 0, "max_staleness", k, "an int ≥ 0")


def capped_update(shard: ShardState, worker: WorkerSlot, delta: np.ndarray, params: CappedParams) -> UpdateResult:
    """θ̃ ← θ̃ + Δ if τ ≤ k, else θ̃ unchanged (and the version does not move)."""
    if worker.staleness > params.max_staleness:
        return UpdateResult(applied=False, advance=False, info={"dropped": 1.0})
    shard.center += delta
    return UpdateResult(info={"dropped": 0.0})


CappedDownpour = Algorithm(
    name="capped-downpour",
    params=CappedParams,
    server_update=capped_update,
    worker_delta=accumulated_delta,
    worker_reset=reset_to_center,
    doc="DOWNPOUR that drops commits more than k versions stale: θ̃ ← θ̃ + Δ·[τ ≤ k].",
)
