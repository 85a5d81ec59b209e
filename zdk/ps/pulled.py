"""The centers a shard keeps for its workers' pulls (ADAG's θ̃_{t−τ}), at most ``history`` of them.

An algorithm with ``keeps_pulled`` reads, in its server update, the slice each worker last
pulled. The shard keeps that slice by reference, which costs nothing at the pull: the center
is copy-on-write, so the next update writes to another buffer. But workers that pulled
different versions keep that many old centers alive, up to one slice per worker.
:func:`bound_pulled` keeps at most ``history`` distinct ones: when a pull makes one more, the
oldest are released and the workers that held them are given the oldest center still kept.
That center is more recent than their pull, so for them θ̃_t − θ̃_{t−τ} is underestimated and
their next commit is damped less than the exact rule would damp it. While the workers hold no
more distinct centers than ``history`` (always, with as many workers or fewer), nothing changes.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from zdk.algorithms.base import Params, WorkerSlot, check


def history_of(params: Params) -> int | None:
    """The most distinct pulled centers a shard keeps for an algorithm with ``keeps_pulled``: its
    params' ``history`` (ADAG's), or None, one per worker, when its params have none."""
    history = getattr(params, "history", None)
    return history if isinstance(history, int) and not isinstance(history, bool) else None


def kept(slots: Iterable[WorkerSlot]) -> list[np.ndarray]:
    """The distinct centers ``slots`` hold as ``pulled``, oldest first.

    A center's age is the latest pull among the slots that hold it (their ``base_version``).
    Slots moved by :func:`bound_pulled` pulled before the center they were given, but they only
    ever hold the oldest kept center, so the order is that of the versions the centers were
    pulled at. Ties keep the slots' order.
    """
    latest: dict[int, tuple[int, np.ndarray]] = {}
    for slot in slots:
        if slot.pulled is not None:
            seen = latest.get(id(slot.pulled))
            version = slot.base_version if seen is None else max(seen[0], slot.base_version)
            latest[id(slot.pulled)] = (version, slot.pulled)
    return [center for _, center in sorted(latest.values(), key=lambda entry: entry[0])]


def bound_pulled(slots: Iterable[WorkerSlot], history: int) -> int:
    """Leaves at most ``history`` distinct pulled centers among ``slots``.

    When they hold more, the oldest are released: every slot that held one is given the
    oldest center still kept, θ̃_{t−τ'} with τ' < τ. ADAG then scales that worker's next
    commit by 1/(η⁻¹·(θ̃_t − θ̃_{t−τ'})² + 1), missing the drift between its pull and
    θ̃_{t−τ'}: an underestimate, so the commit is damped less. A later pull of the worker
    keeps its exact center again. Slots of workers that pulled more recently are untouched.

    Args:
        slots: every worker slot of the shard.
        history: the most distinct centers kept, ≥ 1.

    Returns:
        the number of centers released (no longer held by any slot).
    """
    check(isinstance(history, int) and not isinstance(history, bool) and history >= 1, "history", history,
          "an int ≥ 1")
    slots = list(slots)
    centers = kept(slots)
    excess = len(centers) - history
    if excess <= 0:
        return 0
    released = {id(center) for center in centers[:excess]}
    oldest = centers[excess]
    for slot in slots:
        if slot.pulled is not None and id(slot.pulled) in released:
            slot.pulled = oldest
    return excess
