"""Synchronous model averaging."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from zdk.algorithms.base import (
    Params, ShardState, UpdateResult, WorkerSlot, WorkerWindow, _positive, check, reset_to_center,
)
from zdk.algorithms.registry import register
from zdk.errors import ProtocolError


@dataclass(frozen=True)
class AveragingParams(Params):
    """Model averaging hyperparameters.

    Args:
        communication_window: local steps per round (the trainer uses one epoch by default).
        num_workers: K, the workers of every round (the quorum); 0 takes it from the workers'
            `hello` (``args.quorum``), which zdk's trainers send.
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

    def for_job(self, num_workers: int) -> "AveragingParams":
        """K = ``num_workers`` when it was left at 0: every task of the job is in every round."""
        super().for_job(num_workers)
        return dataclasses.replace(self, num_workers=num_workers) if self.num_workers == 0 else self


def quorum(shard: ShardState, params: AveragingParams) -> int:
    """K: ``num_workers`` when set, else what the workers announced at `hello`.

    Raises:
        ProtocolError: when neither is known, since a round could then close on any partial set.
    """
    if params.num_workers:
        return params.num_workers
    if shard.quorum:
        return shard.quorum
    raise ProtocolError("no_quorum", "averaging needs the number of workers per round: start the shards with "
                        "`num_workers` in their params, or send `args.quorum` with every worker's `hello`")


def _round(shard: ShardState) -> tuple[dict[int, np.ndarray], set[int]]:
    return shard.state.setdefault("contributions", {}), shard.state.setdefault("departed", set())


def _close_round_if_complete(shard: ShardState, params: AveragingParams) -> UpdateResult:
    """Closes the round once every active worker has arrived and, with the workers that said
    `bye`, they make the quorum: θ̃ ← (1/|A|)·Σ_{k∈A} θ_k, summed in worker order so every
    shard adds in the same order."""
    contributions, departed = _round(shard)
    arrived = set(contributions)
    complete = (arrived and set(shard.active_workers) <= arrived
                and len(arrived | departed) >= quorum(shard, params))
    if not complete:
        return UpdateResult(advance=False, info={"arrived": float(len(arrived))})
    total = shard.center
    total.fill(0.0)
    for worker in sorted(contributions):
        total += contributions[worker]
    total /= np.float32(len(contributions))
    contributions.clear()
    return UpdateResult(advance=True, info={"round_size": float(len(arrived))})


def averaging_update(shard: ShardState, worker: WorkerSlot, weights: np.ndarray, params: AveragingParams) -> UpdateResult:
    """Keeps θ_k for the open round; when the round is complete, θ̃ ← (1/K)·Σ_k θ_k.

    The version advances only when a round closes, so a pull waiting for
    version ≥ base + 1 is released exactly then. Memory: one slice per worker of the round.
    """
    quorum(shard, params)  # refuses before anything is kept
    contributions, departed = _round(shard)
    if worker.worker in contributions:
        raise ProtocolError(
            "bad_round", f"worker {worker.worker} already committed to round {shard.version + 1}; "
            "pull with min_version before committing again"
        )
    contributions[worker.worker] = weights.copy()
    departed.discard(worker.worker)
    return _close_round_if_complete(shard, params)


def averaging_leave(shard: ShardState, worker: WorkerSlot, params: AveragingParams) -> UpdateResult:
    """A worker that said `bye` counts towards the quorum and no longer holds up the round."""
    contributions, departed = _round(shard)
    departed.add(worker.worker)
    if not contributions:
        return UpdateResult(applied=False, advance=False)
    return _close_round_if_complete(shard, params)


def averaging_reregister(shard: ShardState, old: WorkerSlot, params: AveragingParams) -> None:
    """A retried attempt or a new client session starts clean: the old registration's share of
    the open round is dropped, so a dead attempt's weights are never averaged in."""
    contributions, departed = _round(shard)
    contributions.pop(old.worker, None)
    departed.discard(old.worker)


def round_timeout(params: AveragingParams) -> float:
    """A pull waiting for its round gives up after ``round_timeout`` seconds."""
    return float(params.round_timeout)


def describe_round(shard: ShardState, params: AveragingParams) -> str:
    """What a pull waiting for the round waits for: the active workers that have not committed
    to it and, when K is known, how many of the K workers never said `hello`."""
    waiting = sorted(set(shard.active_workers) - set(shard.state.get("contributions", ())))
    expected = params.num_workers or shard.quorum
    unseen = "" if not expected else (
        f"; {max(0, expected - len(shard.workers))} of the {expected} workers never said `hello`")
    return f"workers not yet committed: {waiting}{unseen}"


def commit_weights(win: WorkerWindow, params: Params) -> np.ndarray:
    """The worker commits its weights θ_k themselves."""
    return win.local


@register("averaging")
class Averaging:
    """Synchronous model averaging: every round, each worker trains λ steps (or an epoch)
    from θ̃, commits θ_k, and waits; the server sets θ̃ ← (1/K)·Σ_k θ_k once all K
    workers of the quorum have arrived (or said `bye`), then releases the pulls; θ_k ← θ̃.
    """

    Params = AveragingParams
    server_update = staticmethod(averaging_update)
    worker_delta = staticmethod(commit_weights)
    worker_reset = staticmethod(reset_to_center)
    synchronous = True
    on_leave = staticmethod(averaging_leave)
    on_reregister = staticmethod(averaging_reregister)
    pull_timeout = staticmethod(round_timeout)
    describe_wait = staticmethod(describe_round)
