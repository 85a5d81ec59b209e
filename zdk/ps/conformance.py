"""The conformance kit for algorithm plugins: does an algorithm keep the promises zdk relies on?

:func:`check` runs an algorithm on runs Hypothesis generates (``pip install 'zdk[testing]'``),
its own functions called directly and through real :class:`~zdk.ps.shard.ShardCore`
instances in this process, and raises :class:`ConformanceError` naming the first broken
invariant with a minimal failing input. ``zdk algorithms check NAME`` prints the table.

It lives here, not in ``zdk.algorithms.testing``, because it drives shards, and
``zdk.algorithms`` sits below ``zdk.ps`` in the layers; that module holds the half that needs
no shard. A plugin's suite::

    from zdk.ps.conformance import check

    def test_my_algorithm_conforms():
        check("my-algorithm", params={"rho": 0.5})
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from zdk import algorithms
from zdk.algorithms._conformance import Case, ranges
from zdk.algorithms.base import Algorithm, Params
from zdk.algorithms.base import check as check_value
from zdk.algorithms.testing import (
    DEFAULT_EXAMPLES, FINITE, NO_WRITES, SHAPES, ConformanceError, Outcome, Report, check_functions, search,
)
from zdk.errors import AlgorithmNotFound
from zdk.ps._simulation import Refused, Setup, play, started

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "FINITE", "INVARIANTS", "NO_WRITES", "REREGISTRATION", "SHAPES", "SHARDING",
           "ConformanceError", "Outcome", "Report", "check", "run"]

SHARDING = "sharding invariance"
CHECKPOINT = "checkpoint round-trip"
REREGISTRATION = "re-registration"
#: Every invariant, in the order checked: an algorithm's own functions first, then the shards'.
INVARIANTS = (SHAPES, FINITE, NO_WRITES, SHARDING, CHECKPOINT, REREGISTRATION)
#: How far 1 shard and 3 shards may differ (float32 arithmetic).
RTOL = ATOL = 1e-6


def check(algorithm: str | Algorithm, *, params: Mapping[str, Any] | Params | None = None,
          max_examples: int = DEFAULT_EXAMPLES) -> Report:
    """Checks every invariant of :data:`INVARIANTS`; the report, when none is broken.

    Args:
        algorithm: a registered name, or an :class:`~zdk.algorithms.Algorithm` (registered or not).
        params: its hyperparameters (defaults when None).
        max_examples: generated runs tried per invariant.

    Raises:
        ConformanceError: naming the first broken invariant, what broke, and the minimal failing input.
        AlgorithmNotFound: for an unknown name.
        MissingDependency: an ImportError, without Hypothesis (``pip install 'zdk[testing]'``).
        ConfigError: for invalid ``params`` or ``max_examples``.
    """
    return run(algorithm, params=params, max_examples=max_examples).raise_for_failure()


def run(algorithm: str | Algorithm, *, params: Mapping[str, Any] | Params | None = None,
        max_examples: int = DEFAULT_EXAMPLES) -> Report:
    """Checks every invariant and reports each one's outcome, raising for none of them."""
    check_value(isinstance(max_examples, int) and not isinstance(max_examples, bool) and max_examples >= 1,
                "max_examples", max_examples, "an int ≥ 1")
    algo = algorithms.get(algorithm)
    chosen = algo.make_params(params)
    began = time.perf_counter()
    outcomes = list(check_functions(algo, chosen, max_examples=max_examples))
    if not algo.uses_ps:
        reason = "no parameter server (uses_ps=False): there is no shard to cut, checkpoint or re-register with"
        outcomes += [Outcome(n, "skipped", reason) for n in (SHARDING, CHECKPOINT, REREGISTRATION)]
    else:
        with _registered(algo) as name:
            shards = _ShardInvariants(name, algo, chosen)
            for invariant, probe in ((SHARDING, shards.sharding), (CHECKPOINT, shards.checkpoint),
                                     (REREGISTRATION, shards.reregistration)):
                outcomes.append(search(invariant, _guard(probe), synchronous=algo.synchronous,
                                       max_examples=max_examples))
    logger.debug("checked %s in %.2f s", algo.name, time.perf_counter() - began)
    return Report(algo.name, tuple(outcomes))


class _ShardInvariants:
    """The invariants that need shards, each a probe: a generated case -> what broke, or None."""

    def __init__(self, name: str, algorithm: Algorithm, params: Params) -> None:
        self.name, self.algorithm, self.params = name, algorithm, params

    def setup(self, case: Case) -> Setup:
        return Setup(name=self.name, algorithm=self.algorithm, params=self.params.for_job(case.workers), case=case)

    def sharding(self, case: Case) -> str | None:
        """*Sharding invariance*: the same hellos, pulls and commits from the same workers give the
        same center, and the same versions, with the vector in 1 shard or cut into 3 (unevenly):
        a server update must be elementwise, blind to where its slice starts and how long it is."""
        setup = self.setup(case)
        ops = list(case.ops())
        ends = []
        for num_shards in (1, 3):
            cluster, workers = started(setup, num_shards=num_shards)
            play(setup, ops, cluster, workers)
            ends.append(cluster)
        one, three = ends
        if set(three.versions) != set(one.versions):
            return f"the shard versions differ: {one.versions} with 1 shard, {three.versions} with 3"
        return _differs(one.center, three.center, "with 1 shard", "with 3 shards", RTOL, ATOL)

    def checkpoint(self, case: Case) -> None | str:
        """*Checkpoint round-trip*: shards checkpointed mid-run and restored from it continue
        exactly as the originals do: the same commits give the same centers and versions. What
        an algorithm keeps outside ``ShardState.state`` (``WorkerSlot.state``, a module global)
        or cannot pack (:mod:`zdk.ps.snapshot`) does not survive a restart."""
        setup = self.setup(case)
        ops = list(case.ops())
        cut = min(case.cut, len(ops))
        with tempfile.TemporaryDirectory(prefix="zdk-conformance-") as directory:
            original, workers = started(setup, num_shards=3, checkpoint_dir=directory)
            play(setup, ops[:cut], original, workers)
            original.checkpoint()
            restored = original.restored()
            twins = {w: worker.clone() for w, worker in workers.items()}
            for cluster, team in ((original, workers), (restored, twins)):
                for worker in team.values():  # a restarted shard has forgotten its workers: they re-sync
                    worker.hello(cluster)
                    if not self.algorithm.synchronous:
                        worker.start(cluster)
                play(setup, ops[cut:], cluster, team)
        if restored.versions != original.versions:
            return f"the restored shards end at versions {restored.versions}, the originals at {original.versions}"
        return _differs(original.center, restored.center, "without a restart", "restored from the checkpoint", 0, 0)

    def reregistration(self, case: Case) -> str | None:
        """*Re-registration*: a worker whose attempt died after a commit says `hello` with a new
        session; what that commit left open (its share of a synchronous round) is dropped, so the
        run ends as if it had not been made, and the shards keep serving with a finite center.
        A commit the shards already applied (the version moved) stays applied."""
        setup = self.setup(case)
        ops = list(case.ops())
        cut, who = _rejoin_point(case, ops)
        orphan = case.turns[0].step
        ends = []
        applied = False
        for with_orphan in (True, False):
            cluster, workers = started(setup, num_shards=3)
            play(setup, ops[:cut], cluster, workers)
            if with_orphan or applied:
                before = cluster.versions
                workers[who].commit(cluster, orphan)
                applied = applied or cluster.versions != before
            workers[who].hello(cluster, session=2000 + who)
            workers[who].start(cluster)
            play(setup, ops[cut:], cluster, workers)
            ends.append(cluster)
        rejoined, clean = ends
        if not np.isfinite(rejoined.center).all():
            return f"the center is not finite after worker {who} re-registered: {rejoined.center}"
        if rejoined.versions != clean.versions:
            return (f"worker {who} re-registered after a commit left open (op {cut}): the shards end at versions "
                    f"{rejoined.versions}, against {clean.versions} had that commit not been made")
        return _differs(clean.center, rejoined.center, f"without worker {who}'s open commit",
                        f"after worker {who} re-registered (op {cut})", RTOL, ATOL)


def _rejoin_point(case: Case, ops: Sequence[tuple[str, int]]) -> tuple[int, int]:
    """The first op at or after ``case.cut`` before which a worker can make a commit that its next
    attempt abandons, and that worker. It commits in the next op, so it has nothing in flight;
    for a synchronous algorithm, another worker must still be due in that round, or the commit
    would close the round rather than stay open."""
    for at in range(min(case.cut, len(ops)), len(ops)):
        op, i = ops[at]
        due = next((n for n, (o, _) in enumerate(ops[at:]) if o != "commit"), len(ops) - at)
        if op == "commit" and (not case.synchronous or case.workers == 1 or due >= 2):
            return at, case.turns[i].worker
    return len(ops), 0


def _differs(expected: np.ndarray, got: np.ndarray, left: str, right: str, rtol: float, atol: float) -> str | None:
    close = np.isclose(got, expected, rtol=rtol, atol=atol) & np.isfinite(got) & np.isfinite(expected)
    if close.all():
        return None
    i = int(np.flatnonzero(~close)[0])
    where = next(f"shard {k} [{a}, {b})" for k, (a, b) in enumerate(ranges(expected.size, 3)) if a <= i < b)
    return (f"the centers differ at index {i} ({where} of the 3-shard cut): {expected[i]:.9g} {left}, "
            f"{got[i]:.9g} {right}")


def _guard(probe: Callable[[Case], str | None]) -> Callable[[Case], str | None]:
    """The probe, with a refused request or an exception from the algorithm as what broke."""
    def guarded(case: Case) -> str | None:
        try:
            return probe(case)
        except Exception as exc:  # the plugin's bug, or a shard's refusal: the run broke
            return str(exc) if isinstance(exc, Refused) else f"the run raised {type(exc).__name__}: {exc}"
    return guarded


@contextmanager
def _registered(algorithm: Algorithm) -> Iterator[str]:
    """A name the shards find ``algorithm`` by: its own when registered as it is, else a private
    alias registered for the duration of the check (the shared registry keeps no trace)."""
    try:
        found = algorithms.get(algorithm.name)
    except AlgorithmNotFound:
        found = None
    if found is algorithm:
        yield algorithm.name
        return
    alias = dataclasses.replace(algorithm, name=f"{algorithm.name}~conformance-{uuid.uuid4().hex[:8]}")
    algorithms.register(alias)
    try:
        yield alias.name
    finally:
        algorithms.unregister(alias.name)

