"""What an algorithm is: a frozen description holding a pair of pure numpy update functions.

The server update runs on one shard's slice of the center variable θ̃; the worker
update runs on the worker's flat weights θ. Neither does I/O: the shard server
and the worker runtime move the bytes and call them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from zdk.errors import ConfigError


def check(condition: bool, name: str, value: Any, rule: str) -> None:
    """Raises ``ConfigError("`name` must be rule. Received: name=value")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"`{name}` must be {rule}. Received: {name}={value!r}", field=name)


@dataclass(frozen=True)
class Params:
    """Hyperparameters every algorithm shares.

    Args:
        communication_window: λ, local steps between two exchanges with the PS (≥ 1).
    """

    communication_window: int = 5

    def __post_init__(self) -> None:
        w = self.communication_window
        check(isinstance(w, int) and not isinstance(w, bool) and w >= 1, "communication_window", w, "an int ≥ 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def window_for(cls, num_workers: int) -> int | None:
        """The window a trainer uses with ``num_workers`` when the user gives none; None: the
        dataclass default."""
        return None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Params":
        """Builds validated params, naming unknown keys and the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {sorted(names)}")
        return cls(**dict(values))


def _positive(name: str, value: Any) -> None:
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, name, value, "> 0")


@dataclass
class WorkerSlot:
    """What a shard keeps about one worker.

    Args:
        worker: the worker id.
        attempt: the Spark task attempt that registered last; older attempts are refused.
        session: the client session that registered last; requests from other sessions are refused.
        base_version: the shard version this worker last pulled.
        pulled: the slice it last pulled (read-only snapshot), when the algorithm keeps it.
        staleness: τ of the commit being applied: shard version − the commit's base version.
        commits: commits applied from this worker.
        active: False after the worker said `bye`.
        state: the algorithm's own per-worker bookkeeping.
        report: the worker's latest progress report (step, samples, loss), for `stats`.
    """

    worker: int
    attempt: int = 0
    session: int = 0
    base_version: int = 0
    pulled: np.ndarray | None = None
    staleness: int = 0
    commits: int = 0
    active: bool = True
    state: dict[str, Any] = field(default_factory=dict)
    report: dict[str, float] = field(default_factory=dict)


@dataclass
class ShardState:
    """One shard's slice of the center variable and the algorithm's per-shard bookkeeping.

    Args:
        center: θ̃[a:b], updated in place by the server update.
        version: u64, bumped by the runtime after each update that advances it.
        workers: every registered worker's slot.
        state: the algorithm's own per-shard bookkeeping.
        quorum: the number of workers of the current job, when a client announced it at `hello`
            (synchronous algorithms need it to know when a round is complete).
    """

    center: np.ndarray
    version: int = 0
    workers: dict[int, WorkerSlot] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    quorum: int | None = None

    @property
    def active_workers(self) -> list[int]:
        return [w for w, slot in self.workers.items() if slot.active]


@dataclass(frozen=True)
class UpdateResult:
    """What a server update did.

    Args:
        applied: False when the update chose to drop the commit (e.g. a staleness cap).
        advance: whether the shard version is bumped.
        info: numbers to report in the commit reply and in `stats` (e.g. ``scale``).
    """

    applied: bool = True
    advance: bool = True
    info: Mapping[str, float] = field(default_factory=dict)


APPLIED = UpdateResult()


@dataclass
class WorkerWindow:
    """A worker's view at the end of a communication window.

    Args:
        local: θ, the worker's flat weights after λ local steps; ``worker_reset`` writes to it.
        pulled: the center the worker pulled last (the start of this window).
        center: the center just pulled (before the commit when the algorithm pulls first).
        window: λ, local steps taken in this window.
        delta: what ``worker_delta`` returned, for ``worker_reset`` to use.
        state: the algorithm's own worker-side bookkeeping.
    """

    local: np.ndarray
    pulled: np.ndarray
    center: np.ndarray
    window: int
    delta: np.ndarray | None = None
    state: dict[str, Any] = field(default_factory=dict)


ServerUpdate = Callable[[ShardState, WorkerSlot, np.ndarray, Any], UpdateResult]
WorkerDelta = Callable[[WorkerWindow, Any], np.ndarray]
WorkerReset = Callable[[WorkerWindow, Any], None]
LeaveHook = Callable[[ShardState, WorkerSlot, Any], UpdateResult]
RejoinHook = Callable[[ShardState, WorkerSlot, Any], None]


def add_delta(shard: ShardState, worker: WorkerSlot, delta: np.ndarray, params: Any) -> UpdateResult:
    """θ̃ ← θ̃ + Δ."""
    shard.center += delta
    return APPLIED


def accumulated_delta(win: WorkerWindow, params: Any) -> np.ndarray:
    """Δ = θ − θ_pulled: the sum of the λ local updates."""
    return np.subtract(win.local, win.pulled)


def reset_to_center(win: WorkerWindow, params: Any) -> None:
    """θ ← θ̃: the worker continues from the center it just pulled."""
    np.copyto(win.local, win.center)


@dataclass(frozen=True)
class Algorithm:
    """A registered distributed optimizer.

    Args:
        name: the registry key.
        params: the dataclass of its hyperparameters (a :class:`Params` subclass).
        server_update: applies one commit to one shard's slice; ``None`` without a PS.
        worker_delta: what a worker commits at the end of a window.
        worker_reset: how a worker's weights are reset after the exchange.
        pull_before_commit: the worker pulls the center before computing its commit (EASGD).
        synchronous: commits form rounds and pulls wait for the round (model averaging).
        keeps_pulled: the server keeps each worker's pulled slice (ADAG).
        uses_ps: False for algorithms with no parameter-server traffic.
        on_leave: called when a worker says `bye`; lets synchronous rounds finish without it.
        on_reregister: called with a worker's old slot when a new client session or attempt replaces
            it, before the new slot exists: drop what the old one left in the shard's state (its
            share of an open round). Its ``WorkerSlot.state`` and ``pulled`` go with the old slot.
        doc: one paragraph with the math, shown by ``zdk algorithms``.
    """

    name: str
    params: type[Params]
    server_update: ServerUpdate | None
    worker_delta: WorkerDelta | None = None
    worker_reset: WorkerReset | None = None
    pull_before_commit: bool = False
    synchronous: bool = False
    keeps_pulled: bool = False
    uses_ps: bool = True
    on_leave: LeaveHook | None = None
    on_reregister: RejoinHook | None = None
    doc: str = ""

    #: Attributes a class-style definition may set; see ``registry.register``.
    FIELDS: ClassVar[tuple[str, ...]] = (
        "params", "server_update", "worker_delta", "worker_reset", "pull_before_commit",
        "synchronous", "keeps_pulled", "uses_ps", "on_leave", "on_reregister",
    )

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and self.name.strip() == self.name and self.name != "", "name", self.name,
              "a non-empty string without surrounding spaces")
        check(isinstance(self.params, type) and issubclass(self.params, Params), "params", self.params,
              "a subclass of zdk.algorithms.Params")
        if self.uses_ps:
            for attr in ("server_update", "worker_delta", "worker_reset"):
                check(callable(getattr(self, attr)), attr, getattr(self, attr), "callable when uses_ps=True")

    def make_params(self, values: Mapping[str, Any] | Params | None = None, **kwargs: Any) -> Params:
        """Validated params from a mapping or keyword arguments (unknown keys are an error)."""
        if isinstance(values, Params):
            check(isinstance(values, self.params), "params", values, f"a {self.params.__name__}")
            return dataclasses.replace(values, **kwargs) if kwargs else values
        merged = dict(values or {})
        merged.update(kwargs)
        return self.params.from_dict(merged)
