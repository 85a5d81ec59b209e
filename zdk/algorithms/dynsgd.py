"""DynSGD: staleness-aware asynchronous SGD (Jiang et al., SIGMOD 2017)."""

from __future__ import annotations

import numpy as np

from zdk.algorithms.base import (
    Params, ShardState, UpdateResult, WorkerSlot, accumulated_delta, reset_to_center,
)
from zdk.algorithms.registry import register


def dynsgd_update(shard: ShardState, worker: WorkerSlot, delta: np.ndarray, params: Params) -> UpdateResult:
    """θ̃ ← θ̃ + Δ / (τ + 1), τ = shard version − the commit's base version."""
    scale = 1.0 / (worker.staleness + 1)
    shard.center += delta * np.float32(scale)
    return UpdateResult(info={"scale": scale})


@register("dynsgd")
class DynSGD:
    """DynSGD (J. Jiang, B. Cui, C. Zhang, L. Yu, "Heterogeneity-aware Distributed
    Parameter Servers", SIGMOD 2017).

    Worker: commits Δ = θ − θ_pulled with the version it pulled, then θ ← θ̃.
    Server: θ̃ ← θ̃ + Δ/(τ+1), τ the number of updates since that worker's pull.
    """

    Params = Params
    server_update = staticmethod(dynsgd_update)
    worker_delta = staticmethod(accumulated_delta)
    worker_reset = staticmethod(reset_to_center)
