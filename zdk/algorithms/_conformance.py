"""The conformance kit's generated runs, and an algorithm's functions driven directly on one.

A :class:`Case` is a run: its size, workers, start and windows. :func:`run` plays it through
the algorithm's ``server_update``, ``worker_delta`` and ``worker_reset`` with no shard, in the
order :class:`zdk.ps.exchange.Exchange` and a shard call them, passing every array a function
does not own read-only, and returns the first invariant it saw broken.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, TypeVar

import numpy as np

from zdk.algorithms.base import Algorithm, Params, ShardState, UpdateResult, WorkerSlot, WorkerWindow

SHAPES = "documented shapes and dtypes"
FINITE = "finite outputs for finite inputs"
NO_WRITES = "no writes to arrays it does not own"
#: Sizes of the generated runs: never multiples of 3, so a cut into 3 shards is uneven.
SIZES = (4, 5, 7, 8, 10, 11)
T = TypeVar("T")


@dataclass(frozen=True)
class Turn:
    """One communication window of one worker: ``worker`` adds ``step`` to its weights, then exchanges."""

    worker: int
    step: tuple[float, ...]


@dataclass(frozen=True)
class Case:
    """A generated run: its size, workers, start and windows, and where it is interrupted.

    Args:
        size: n, the length of the flat vector; never a multiple of 3.
        workers: the number of workers (the quorum of a synchronous algorithm).
        start: the initial center θ̃₀.
        turns: the windows in the order they exchange; for a synchronous algorithm, rounds of
            ``workers`` turns, each worker once per round.
        synchronous: whether ``turns`` form rounds (every commit of a round before its pulls).
        cut: where a checkpoint or a re-registration interrupts the run: after this many ops of
            :meth:`ops` (clamped to their number).
    """

    size: int
    workers: int
    start: tuple[float, ...]
    turns: tuple[Turn, ...]
    synchronous: bool
    cut: int

    def ops(self) -> Iterator[tuple[Literal["commit", "finish"], int]]:
        """The run as ``("commit", turn)`` (step, pull first if the algorithm says so, commit) and
        ``("finish", turn)`` (pull, reset): back to back for asynchronous algorithms, and for a
        synchronous one every commit of a round before the round's pulls."""
        per_round = self.workers if self.synchronous else 1
        for first in range(0, len(self.turns), per_round):
            group = range(first, min(first + per_round, len(self.turns)))
            yield from (("commit", i) for i in group)
            yield from (("finish", i) for i in group)

    def describe(self) -> str:
        """The case as a reader would rebuild it: sizes, the shard cut, values and the order of windows."""
        cut3 = " ".join(f"[{a}, {b})" for a, b in ranges(self.size, 3))
        turns = "; ".join(f"worker {t.worker} steps by {floats(t.step)}" for t in self.turns)
        return (f"size={self.size} (3 shards: {cut3}), workers={self.workers}, start={floats(self.start)}, "
                f"windows in order: {turns or 'none'}; interrupted after op {self.cut}")


@dataclass(frozen=True)
class Finding:
    """A broken invariant and what broke it."""

    invariant: str
    message: str


class Broken(Exception):
    """Stops a run at its first :class:`Finding`."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(message)
        self.finding = Finding(invariant, message)


def ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """``zdk.ps.layout.ShardPlan(size, parts).ranges``, restated here below the PS layer."""
    q, r = divmod(size, parts)
    starts = [k * q + min(k, r) for k in range(parts + 1)]
    return list(zip(starts, starts[1:]))


def floats(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.7g}" for v in np.asarray(values).ravel()) + "]"


def frozen(array: np.ndarray) -> np.ndarray:
    """A read-only copy of ``array``."""
    out = np.array(array, copy=True)
    out.setflags(write=False)
    return out


def check_vector(invariant_of_values: str, what: str, value: Any, size: int) -> np.ndarray:
    """``value`` as a float32 vector of ``size``, or :class:`Broken` naming what is wrong with it."""
    if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.shape != (size,):
        shown = (f"dtype={value.dtype}, shape={value.shape}" if isinstance(value, np.ndarray)
                 else f"a {type(value).__name__}")
        raise Broken(SHAPES, f"{what} must be a float32 array of shape ({size},). Received: {shown}")
    bad = np.flatnonzero(~np.isfinite(value))
    if bad.size:
        raise Broken(invariant_of_values, f"{what} is not finite: {value[bad[0]]} at index {bad[0]}")
    return value


def guarded(name: str, arguments: tuple[str, ...], call: Callable[[frozenset[str], bool], T]) -> T:
    """``call(read_only, trial)`` with every one of ``arguments`` read-only. A write into one is
    :data:`NO_WRITES`, naming it (found by trial calls on copies, one argument read-only at a
    time); any other exception is :data:`SHAPES`: the function refused its documented inputs."""
    try:
        return call(frozenset(arguments), False)
    except Broken:
        raise
    except Exception as exc:
        if isinstance(exc, ValueError) and "read-only" in str(exc):
            culprits = [a for a in arguments if _writes(lambda: call(frozenset({a}), True))] or list(arguments)
            raise Broken(NO_WRITES, f"`{name}` wrote into `{'`, `'.join(culprits)}`, which it does not own "
                         f"(the array was read-only: {exc})") from None
        raise Broken(SHAPES, f"`{name}` raised {type(exc).__name__}: {exc}") from None


def _writes(call: Callable[[], object]) -> bool:
    try:
        call()
    except ValueError as exc:
        return "read-only" in str(exc)
    except Exception:
        return False
    return False


@dataclass
class _Worker:
    local: np.ndarray
    pulled: np.ndarray
    center: np.ndarray
    state: dict[str, Any]
    delta: np.ndarray | None = None


def run(case: Case, algorithm: Algorithm, params: Params) -> Finding | None:
    """Plays ``case`` through the algorithm's functions alone; the first invariant seen broken, or None."""
    try:
        _Direct(case, algorithm, params).play()
    except Broken as exc:
        return exc.finding
    return None


class _Direct:
    """One shard holding the whole vector, and the workers, as plain arrays."""

    def __init__(self, case: Case, algorithm: Algorithm, params: Params) -> None:
        self.case, self.algorithm, self.params = case, algorithm, params
        start = np.array(case.start, dtype=np.float32)
        self.shard = ShardState(center=start.copy(), quorum=case.workers,
                                workers={w: WorkerSlot(worker=w) for w in range(case.workers)})
        self.workers = {w: _Worker(start.copy(), start.copy(), start.copy(), {}) for w in range(case.workers)}
        for w in self.workers:
            self.pull(w)

    def play(self) -> None:
        for op, i in self.case.ops():
            turn = self.case.turns[i]
            if op == "commit":
                self.commit(turn)
            else:
                self.finish(turn.worker)

    def pull(self, w: int) -> None:
        slot = self.shard.workers[w]
        np.copyto(self.workers[w].center, self.shard.center)
        slot.base_version = self.shard.version
        if self.algorithm.keeps_pulled:
            slot.pulled = frozen(self.shard.center)

    def commit(self, turn: Turn) -> None:
        algo, worker, slot = self.algorithm, self.workers[turn.worker], self.shard.workers[turn.worker]
        worker.local += np.array(turn.step, dtype=np.float32)
        if algo.pull_before_commit:
            self.pull(turn.worker)
        assert algo.worker_delta is not None and algo.server_update is not None
        worker_delta, server_update = algo.worker_delta, algo.server_update

        def delta_of(read_only: frozenset[str], trial: bool) -> Any:
            win = WorkerWindow(local=_arg("local", worker.local, read_only, trial),
                               pulled=_arg("pulled", worker.pulled, read_only, trial),
                               center=_arg("center", worker.center, read_only, trial), window=self._window,
                               state=copy.deepcopy(worker.state) if trial else worker.state)
            return worker_delta(win, self.params)

        out = guarded("worker_delta", ("local", "pulled", "center"), delta_of)
        worker.delta = np.array(check_vector(FINITE, "the delta `worker_delta` returned", out, self.case.size))
        slot.staleness = self.shard.version - slot.base_version
        payload = frozen(worker.delta)

        def update(read_only: frozenset[str], trial: bool) -> Any:
            shard = copy.deepcopy(self.shard) if trial else self.shard
            target = shard.workers[turn.worker]
            if trial and target.pulled is not None:
                target.pulled = _arg("worker.pulled", target.pulled, read_only, True)
            return server_update(shard, target, payload if "delta" in read_only else payload.copy(), self.params)

        result = guarded("server_update", ("delta", "worker.pulled"), update)
        if not isinstance(result, UpdateResult):
            raise Broken(SHAPES, f"`server_update` must return an UpdateResult. Received: {result!r}")
        check_vector(FINITE, f"the center after worker {turn.worker}'s commit", self.shard.center, self.case.size)
        if result.advance:
            self.shard.version += 1

    def finish(self, w: int) -> None:
        algo, worker = self.algorithm, self.workers[w]
        if algo.synchronous or not algo.pull_before_commit:
            self.pull(w)
        assert algo.worker_reset is not None and worker.delta is not None
        worker_reset, delta, local = algo.worker_reset, worker.delta, worker.local

        def reset(read_only: frozenset[str], trial: bool) -> np.ndarray:
            win = WorkerWindow(local=local.copy() if trial else local,
                               pulled=_arg("pulled", worker.pulled, read_only, trial),
                               center=_arg("center", worker.center, read_only, trial), window=self._window,
                               delta=_arg("delta", delta, read_only, trial),
                               state=copy.deepcopy(worker.state) if trial else worker.state)
            worker_reset(win, self.params)
            return win.local

        if guarded("worker_reset", ("pulled", "center", "delta"), reset) is not local:
            raise Broken(SHAPES, "`worker_reset` must write `win.local` in place; it bound a new array, so the "
                         "worker's weights would not change")
        check_vector(FINITE, f"worker {w}'s weights after `worker_reset`", local, self.case.size)
        np.copyto(worker.pulled, worker.center)

    @property
    def _window(self) -> int:
        return int(self.params.communication_window)


def _arg(name: str, array: np.ndarray, read_only: frozenset[str], trial: bool) -> np.ndarray:
    if name in read_only:
        return frozen(array)
    return array.copy() if trial else array
