"""Synchronous model averaging."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdk.algorithms.base import (
    Params, ShardState, UpdateResult, WorkerSlot, _positive, check, reset_to_center,
)
from zdk.algorithms.registry import register
from zdk.errors import ProtocolError


@dataclass(frozen=True)
class AveragingParams(Params):
    """Model averaging hyperparameters.

    Args:
        communication_window: local steps per round (the trainer uses one epoch by default).
        num_workers: workers expected in every round; 0 means every registered worker.
        round_timeout: seconds a pull waits for the round to close before failing.
    """

    communication_window: int = 1
    num_workers: int = 0
    round_timeout: float = 300.0

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.num_workers
        check(isinstance(n, int) and not isinstance(n, bool) and n >= 0, "num_workers", n, "an int ≥ 0")
        _positive("round_timeout", self.round_timeout)


def _close_round_if_complete(shard: ShardState, params: AveragingParams) -> UpdateResult:
    state = shard.state
    arrived: set[int] = state.setdefault("arrived", set())
    if params.num_workers and len(shard.workers) < params.num_workers:
        return UpdateResult(advance=False, info={"arrived": float(len(arrived))})
    if not arrived or not set(shard.active_workers) <= arrived:
        return UpdateResult(advance=False, info={"arrived": float(len(arrived))})
    np.divide(state["sum"], np.float32(len(arrived)), out=shard.center)
    state["sum"].fill(0.0)
    size = len(arrived)
    arrived.clear()
    return UpdateResult(advance=True, info={"round_size": float(size)})


def averaging_update(shard: ShardState, worker: WorkerSlot, weights: np.ndarray, params: AveragingParams) -> UpdateResult:
    """Adds θ_k to the round's sum; when every active worker has arrived, θ̃ ← (1/K)·Σ_k θ_k.

    The version advances only when a round closes, so a pull waiting for
    version ≥ base + 1 is released exactly then.
    """
    state = shard.state
    if "sum" not in state:
        state["sum"] = np.zeros_like(shard.center)
    arrived: set[int] = state.setdefault("arrived", set())
    if worker.worker in arrived:
        raise ProtocolError(
            "bad_round", f"worker {worker.worker} already committed to round {shard.version + 1}; "
            "pull with min_version before committing again"
        )
    state["sum"] += weights
    arrived.add(worker.worker)
    return _close_round_if_complete(shard, params)


def averaging_leave(shard: ShardState, worker: WorkerSlot, params: AveragingParams) -> UpdateResult:
    """A worker that left no longer holds up the round."""
    if not shard.state.get("arrived"):
        return UpdateResult(applied=False, advance=False)
    return _close_round_if_complete(shard, params)


def commit_weights(win, params: Params) -> np.ndarray:
    """The worker commits its weights θ_k themselves."""
    return win.local


@register("averaging")
class Averaging:
    """Synchronous model averaging: every round, each worker trains λ steps (or an epoch)
    from θ̃, commits θ_k, and waits; the server sets θ̃ ← (1/K)·Σ_k θ_k once all K
    active workers have arrived, then releases the pulls; θ_k ← θ̃.
    """

    Params = AveragingParams
    server_update = staticmethod(averaging_update)
    worker_delta = staticmethod(commit_weights)
    worker_reset = staticmethod(reset_to_center)
    synchronous = True
    on_leave = staticmethod(averaging_leave)
