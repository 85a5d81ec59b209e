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

    def for_job(self, num_workers: int) -> "Params":
        """These params with the defaults that depend on the job filled in, for a job of
        ``num_workers`` workers (Spark tasks). The base has none and returns ``self``; model
        averaging sets its quorum K = ``num_workers`` when it was left at 0.

        Raises:
            ConfigError: when ``num_workers`` is not an int ≥ 1.
        """
        check(isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 1,
              "num_workers", num_workers, "an int ≥ 1")
        return self

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
        state: the algorithm's own worker-side bookkeeping. Numbers ``worker_delta`` leaves in
            ``state["info"]`` (a map of floats) join the commit's reported numbers, as a
            server update's ``UpdateResult.info`` does (``adag_worker``'s ``scale``).
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
PullTimeout = Callable[[Any], float | None]
WaitDescription = Callable[[ShardState, Any], str]
#: A Keras optimizer as data: a name (``"sgd"``), or the map ``keras.optimizers.serialize`` returns
#: (``{"module": ..., "class_name": "SGD", "config": {...}, "registered_name": ...}``).
OptimizerSpec = str | Mapping[str, Any]
LocalOptimizer = Callable[[OptimizerSpec, Any], OptimizerSpec]


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
        server_update: applies one commit to one shard's slice; ``None`` without a PS (and for an
            ``additive`` algorithm, which gets :func:`add_delta`).
        worker_delta: what a worker commits at the end of a window.
        worker_reset: how a worker's weights are reset after the exchange.
        pull_before_commit: the worker pulls the center before computing its commit (EASGD).
        synchronous: commits form rounds and pulls wait for the round (model averaging).
        keeps_pulled: the server keeps each worker's pulled slice (ADAG).
        uses_ps: False for algorithms with no parameter-server traffic.
        workers: the number of workers the algorithm trains with, when it fixes one (plain local
            training: 1); None: as many as the job asks for. Without a PS, training returns one
            model when this is 1, else every worker's.
        additive: the server update is θ̃ ← θ̃ + payload, elementwise, and every commit advances the
            version. The shard then computes θ̃ + payload frame by frame into a buffer no reply
            reads, checking each block finite, and swaps it in only when all of it is: no copy of
            the payload, no copy-on-write of the live center. ``server_update`` must then be unset
            (it becomes :func:`add_delta`) or :func:`add_delta`.
        on_leave: called when a worker says `bye`; lets synchronous rounds finish without it.
        on_reregister: called with a worker's old slot when a new client session or attempt replaces
            it, before the new slot exists: drop what the old one left in the shard's state (its
            share of an open round). Its ``WorkerSlot.state`` and ``pulled`` go with the old slot.
        pull_timeout: ``(params) -> seconds or None``: how long a pull with ``min_version`` (a
            worker waiting for its round) may wait on the shard; None, or a hook returning None:
            as long as the request's ``wait`` says. Averaging: ``round_timeout``.
        describe_wait: ``(shard, params) -> str``: what a pull with ``min_version`` whose wait ran
            out was waiting for, appended to the ``deadline`` error (averaging: the workers not
            yet committed to the round, and how many of the quorum never said `hello`).
        local_optimizer: ``(optimizer, params) -> optimizer``: the local optimizer the algorithm's
            math needs, given the one the user chose, both as Keras optimizer data (a name such
            as ``"sgd"``, or the map ``keras.optimizers.serialize`` returns); raises
            :class:`~zdk.errors.ConfigError` for one it cannot work with. None: the user's
            optimizer as it is. EAMSGD: SGD with Nesterov momentum δ.
        codec: the registered commit codec (``zdk.algorithms.codecs``) its workers encode commits
            with unless the job names another; None: raw float32.
        doc: one paragraph with the math, shown by ``zdk algorithms``.
    """

    name: str
    params: type[Params]
    server_update: ServerUpdate | None = None
    worker_delta: WorkerDelta | None = None
    worker_reset: WorkerReset | None = None
    pull_before_commit: bool = False
    synchronous: bool = False
    keeps_pulled: bool = False
    uses_ps: bool = True
    workers: int | None = None
    additive: bool = False
    on_leave: LeaveHook | None = None
    on_reregister: RejoinHook | None = None
    pull_timeout: PullTimeout | None = None
    describe_wait: WaitDescription | None = None
    local_optimizer: LocalOptimizer | None = None
    codec: str | None = None
    doc: str = ""

    #: Attributes a class-style definition may set; see ``registry.register``.
    FIELDS: ClassVar[tuple[str, ...]] = (
        "params", "server_update", "worker_delta", "worker_reset", "pull_before_commit",
        "synchronous", "keeps_pulled", "uses_ps", "workers", "additive", "on_leave", "on_reregister",
        "pull_timeout", "describe_wait", "local_optimizer", "codec",
    )

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and self.name.strip() == self.name and self.name != "", "name", self.name,
              "a non-empty string without surrounding spaces")
        check(isinstance(self.params, type) and issubclass(self.params, Params), "params", self.params,
              "a subclass of zdk.algorithms.Params")
        for flag in ("pull_before_commit", "synchronous", "keeps_pulled", "uses_ps", "additive"):
            check(isinstance(getattr(self, flag), bool), flag, getattr(self, flag), "a bool")
        w = self.workers
        check(w is None or (isinstance(w, int) and not isinstance(w, bool) and w >= 1), "workers", w,
              "an int ≥ 1 or None")
        if self.additive:
            check(self.uses_ps, "additive", self.additive, "False when uses_ps=False")
            check(self.server_update in (None, add_delta), "server_update", self.server_update,
                  "unset or zdk.algorithms.add_delta when additive=True (the shard applies θ̃ + payload itself)")
            object.__setattr__(self, "server_update", add_delta)
        if self.uses_ps:
            for attr in ("server_update", "worker_delta", "worker_reset"):
                check(callable(getattr(self, attr)), attr, getattr(self, attr), "callable when uses_ps=True")
        check(self.codec is None or (isinstance(self.codec, str) and self.codec != ""), "codec", self.codec,
              "a codec name or None")
        for hook in ("on_leave", "on_reregister", "pull_timeout", "describe_wait", "local_optimizer"):
            value = getattr(self, hook)
            check(value is None or callable(value), hook, value, "callable or None")

    def pull_wait(self, params: Params) -> float | None:
        """Seconds a pull with ``min_version`` may wait on a shard: ``pull_timeout(params)``, or None
        (no limit of the algorithm's) without that hook."""
        return None if self.pull_timeout is None else self.pull_timeout(params)

    def make_params(self, values: Mapping[str, Any] | Params | None = None, **kwargs: Any) -> Params:
        """Validated params from a mapping or keyword arguments (unknown keys are an error)."""
        if isinstance(values, Params):
            check(isinstance(values, self.params), "params", values, f"a {self.params.__name__}")
            return dataclasses.replace(values, **kwargs) if kwargs else values
        merged = dict(values or {})
        merged.update(kwargs)
        return self.params.from_dict(merged)
