"""The conformance kit's pure half: generated runs, the search for a minimal failing one, and the
invariants of an algorithm's functions called directly.

The whole kit is :func:`zdk.ps.conformance.check` (``zdk algorithms check NAME``): it adds the
invariants that need real shards, which this package cannot import (``zdk.algorithms`` sits
below ``zdk.ps`` in the layers). Inputs come from Hypothesis, imported only when a check runs
(``pip install 'zdk[testing]'``), with no example database and a fixed seed: a check writes
nothing to disk and finds the same minimal failing input every time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import tempfile
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator, Literal

import numpy as np

from zdk.algorithms import _conformance as model
from zdk.algorithms._conformance import FINITE, NO_WRITES, SHAPES, SIZES, Case, Finding, Turn
from zdk.algorithms.base import Algorithm, Params
from zdk.errors import ZdkError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXAMPLES", "FINITE", "NO_WRITES", "SHAPES", "Case", "ConformanceError", "MissingDependency",
           "Outcome", "Report", "Turn", "cases", "check_functions", "hypothesis", "search"]

#: Examples tried per invariant when the caller gives no number.
DEFAULT_EXAMPLES = 30
Status = Literal["passed", "failed", "skipped"]


class ConformanceError(ZdkError, AssertionError):
    """An algorithm breaks an invariant of the conformance kit.

    A :class:`~zdk.errors.ZdkError`, so ``zdk`` reports it like its other errors, and an
    ``AssertionError``, so a plugin's pytest suite shows it as a failed check rather than a crash.

    Args:
        message: the broken invariant, what went wrong, and the minimal failing input.
        invariant: the broken invariant's name (the first one, when several are).
        report: every invariant's outcome.
    """

    def __init__(self, message: str, *, invariant: str, report: "Report") -> None:
        super().__init__(message)
        self.invariant = invariant
        self.report = report


@dataclass(frozen=True)
class Outcome:
    """One invariant's result: ``detail`` says why it was skipped, or what broke on which input."""

    invariant: str
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class Report:
    """Every invariant's outcome for one algorithm, in the order they were checked."""

    algorithm: str
    outcomes: tuple[Outcome, ...]

    @property
    def failures(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    def raise_for_failure(self) -> "Report":
        """Raises :class:`ConformanceError` for the first broken invariant; returns ``self`` otherwise."""
        if not self.failures:
            return self
        first, *others = self.failures
        also = f" (also broken: {', '.join(o.invariant for o in others)})" if others else ""
        raise ConformanceError(f"algorithm {self.algorithm!r} breaks {first.invariant!r}{also}: {first.detail}",
                               invariant=first.invariant, report=self)


class MissingDependency(ZdkError, ImportError):
    """Hypothesis, which the kit generates its inputs with, is not installed."""


def hypothesis() -> ModuleType:
    """The Hypothesis package, or :class:`MissingDependency` (an ImportError) saying how to install it."""
    try:
        import hypothesis as found
        import hypothesis.strategies  # noqa: F401  (``found.strategies``)
    except ImportError:
        raise MissingDependency("the zdk conformance kit generates its inputs with Hypothesis: "
                          "pip install 'zdk[testing]'") from None
    return found


@functools.lru_cache(maxsize=2)
def cases(*, synchronous: bool) -> Any:
    """A Hypothesis strategy of :class:`Case`: 1 to 3 workers, up to 6 windows (3 rounds), starting
    values in [-2, 2] and steps in [-1, 1], multiples of 1/8 (exact in float32 and short to print)."""
    st = hypothesis().strategies
    # Built once: a strategy built inside the draw is validated again on every example.
    starts = {n: _vectors(st, n, 16) for n in SIZES}
    steps = {n: _vectors(st, n, 8) for n in SIZES}
    rounds = {m: st.permutations(range(m)) for m in (1, 2, 3)}
    windows = {m: st.lists(st.integers(0, m - 1), min_size=1, max_size=6) for m in (1, 2, 3)}
    cuts = {n: st.integers(0, 2 * n) for n in range(1, 10)}
    sizes, counts = st.sampled_from(SIZES), st.integers(1, 3)

    @st.composite
    def draw_case(draw: Callable[[Any], Any]) -> Case:
        size, workers = draw(sizes), draw(counts)
        start = draw(starts[size])
        if synchronous:
            order = [w for _ in range(draw(counts)) for w in draw(rounds[workers])]
        else:
            order = draw(windows[workers])
        turns = tuple(Turn(worker=w, step=draw(steps[size])) for w in order)
        return Case(size=size, workers=workers, start=start, turns=turns, synchronous=synchronous,
                    cut=draw(cuts[len(turns)]))

    return draw_case()


def _vectors(st: Any, size: int, most: int) -> Any:
    """Vectors of ``size`` multiples of 1/8 in [-most/8, most/8]: zeros, a constant, or (what a
    failure shrinks away from) values drawn from a seed, which costs one draw, not ``size``."""
    def seeded(seed: int) -> tuple[float, ...]:
        return tuple(float(v) / 8 for v in np.random.default_rng(seed).integers(-most, most + 1, size))

    return st.one_of(st.just((0.0,) * size), st.integers(-most, most).map(lambda i: (i / 8,) * size),
                     st.integers(0, 2**32 - 1).map(seeded))


def search(invariant: str, probe: Callable[[Case], str | None], *, synchronous: bool, max_examples: int) -> Outcome:
    """Checks ``invariant`` on generated cases: ``probe`` returns what broke, or None.

    Hypothesis shrinks the first failing case to a minimal one, which the outcome describes.
    """
    h = hypothesis()
    settings = h.settings(database=None, deadline=None, derandomize=True, max_examples=max_examples,
                          verbosity=h.Verbosity.quiet, suppress_health_check=list(h.HealthCheck))
    try:
        with _scratch_home(h):
            case = h.find(cases(synchronous=synchronous), lambda c: probe(c) is not None, settings=settings)
    except h.errors.NoSuchExample:
        return Outcome(invariant, "passed")
    message = probe(case) or "it failed during the search but not when replayed: the algorithm is not deterministic"
    logger.debug("%s broken on %s", invariant, case)
    return Outcome(invariant, "failed", f"{message}. Minimal failing input: {case.describe()}")


@contextlib.contextmanager
def _scratch_home(h: ModuleType) -> Iterator[None]:
    """Hypothesis's home in a temporary directory while a search runs: with no database it still
    caches the constants of the source it scans under ``.hypothesis/``, and a check writes nothing
    to the caller's directory. (The home is process-wide: this is not thread-safe.)"""
    configuration = importlib.import_module("hypothesis.configuration")
    previous = configuration.storage_directory(intent_to_write=False).home_directory
    with tempfile.TemporaryDirectory(prefix="zdk-hypothesis-") as home:
        configuration.set_hypothesis_home_dir(home)
        try:
            yield
        finally:
            configuration.set_hypothesis_home_dir(previous)


def check_functions(algorithm: Algorithm, params: Params, *, max_examples: int = DEFAULT_EXAMPLES) -> tuple[Outcome, ...]:
    """The invariants of the algorithm's own functions, called directly on generated runs.

    - *documented shapes and dtypes*: ``worker_delta`` returns a float32 array of the local's
      shape, ``worker_reset`` updates ``local`` in place, and the server update leaves the
      center a float32 array of its size (and returns an ``UpdateResult``).
    - *finite outputs for finite inputs*: every delta, reset weights and center stay finite.
    - *no writes to arrays it does not own*: the server update writes neither the payload nor
      ``worker.pulled``; ``worker_delta`` writes none of ``local``, ``pulled`` and ``center``;
      ``worker_reset`` writes ``local`` only (never ``pulled``, ``center`` or ``delta``). Checked
      by making those arrays read-only.
    """
    names = (SHAPES, FINITE, NO_WRITES)
    if algorithm.worker_delta is None or algorithm.worker_reset is None:
        return tuple(Outcome(n, "skipped", "no worker_delta and worker_reset: the algorithm trains without the "
                             "parameter server (uses_ps=False)") for n in names)

    seen: dict[Case, Finding | None] = {}  # the three searches try the same cases: play each once

    def findings(case: Case) -> Finding | None:
        if case not in seen:
            seen[case] = model.run(case, algorithm, params.for_job(case.workers))
        return seen[case]

    def probe(name: str) -> Callable[[Case], str | None]:
        return lambda case: _message(findings(case), name)

    return tuple(search(n, probe(n), synchronous=algorithm.synchronous, max_examples=max_examples) for n in names)


def _message(finding: Finding | None, invariant: str) -> str | None:
    return finding.message if finding is not None and finding.invariant == invariant else None
