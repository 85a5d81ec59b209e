"""Distributed optimizers as pairs of pure numpy functions, and their registry.

Importing this package registers the built-ins; plugins in the ``zdk.algorithms``
entry-point group are loaded on first lookup.
"""

from zdk.algorithms.base import (
    APPLIED, Algorithm, OptimizerSpec, Params, ShardState, UpdateResult, WorkerSlot, WorkerWindow,
    accumulated_delta, add_delta, check, reset_to_center,
)
from zdk.algorithms.registry import ENTRY_POINT_GROUP, available, get, register, reload_entry_points, unregister
from zdk.algorithms import adag, agn, averaging, downpour, dynsgd, easgd, local  # noqa: F401  (registers built-ins)

__all__ = [
    "APPLIED", "Algorithm", "ENTRY_POINT_GROUP", "OptimizerSpec", "Params", "ShardState", "UpdateResult", "WorkerSlot",
    "WorkerWindow", "accumulated_delta", "add_delta", "available", "check", "get", "register",
    "reload_entry_points", "reset_to_center", "unregister",
]
