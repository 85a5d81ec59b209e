"""Shards and workers in one process, for the conformance kit (:mod:`zdk.ps.conformance`).

A :class:`Cluster` is real :class:`~zdk.ps.shard.ShardCore` instances over one cut of the
vector, called through :meth:`~zdk.ps.shard.ShardCore.handle` with encoded requests and no
sockets. A :class:`SimWorker` calls the algorithm's worker functions in the order
:meth:`zdk.ps.exchange.Exchange._exchange` does, and keeps the versions a client keeps.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from zdk.algorithms._conformance import Case
from zdk.algorithms.base import Algorithm, Params, WorkerWindow
from zdk.ps.layout import DTYPE, ShardPlan
from zdk.ps.protocol import ERROR, WIRE_DTYPE, Reply, Request, as_frames, decode_reply
from zdk.ps.shard import ShardConfig, ShardCore

PEER = b"conformance"


class Refused(Exception):
    """A shard answered with an error, or did not answer at all."""


@dataclass(frozen=True)
class Setup:
    """What every cluster and worker of one check shares.

    Args:
        name: the algorithm's registered name (shards look it up).
        algorithm: the algorithm itself (workers call its functions).
        params: its params for the job.
        case: the generated run.
    """

    name: str
    algorithm: Algorithm
    params: Params
    case: Case


class Cluster:
    """``num_shards`` shard cores over the case's vector, started at its ``start``.

    Args:
        setup: the check's setup.
        num_shards: the cut.
        checkpoint_dir: where the shards checkpoint, and restore from when built.
    """

    def __init__(self, setup: Setup, *, num_shards: int, checkpoint_dir: str | None = None) -> None:
        size = setup.case.size
        self.setup = setup
        self.plan = ShardPlan(size, num_shards)
        start = np.array(setup.case.start, dtype=DTYPE)
        self.cores = [ShardCore(ShardConfig(shard=k, num_shards=num_shards, total_size=size, algorithm=setup.name,
                                            params=setup.params.to_dict(), checkpoint_dir=checkpoint_dir),
                                initial=start[a:b])
                      for k, (a, b) in enumerate(self.plan.ranges)]

    def restored(self) -> "Cluster":
        """New shard cores of the same cut, which restore from this cluster's checkpoint directory."""
        return Cluster(self.setup, num_shards=len(self.cores), checkpoint_dir=self.cores[0].config.checkpoint_dir)

    def checkpoint(self) -> None:
        for core in self.cores:
            core.write_checkpoint()

    @property
    def center(self) -> np.ndarray:
        return np.concatenate([core.center for core in self.cores])

    @property
    def versions(self) -> list[int]:
        return [core.version for core in self.cores]

    def call(self, k: int, request: Request, frames: Sequence[Any] = ()) -> tuple[Reply, bytes]:
        """Shard ``k``'s reply to ``request`` and its data, or :class:`Refused` naming why there is none."""
        out = self.cores[k].handle(PEER, request.encode(), list(frames))
        for outgoing in out:
            if outgoing.lease is not None:
                outgoing.lease.release()
        if not out:
            raise Refused(f"shard {k} did not answer worker {request.worker}'s `{request.op}` with "
                          f"min_version={request.min_version} (version {self.cores[k].version}): the round never closed")
        reply = decode_reply(out[0].header)
        if reply.op == ERROR:
            raise Refused(f"shard {k} refused worker {request.worker}'s `{request.op}`: "
                          f"[{reply.fields.get('code')}] {reply.fields.get('message')}")
        return reply, b"".join(bytes(f) for f in out[0].frames)


class SimWorker:
    """One worker's weights and client state, exchanging with whichever cluster it is given."""

    def __init__(self, setup: Setup, worker: int) -> None:
        size = setup.case.size
        self.setup, self.worker, self.session = setup, worker, 1000 + worker
        self.local, self.pulled, self.center = (np.zeros(size, DTYPE) for _ in range(3))
        self.state: dict[str, Any] = {}
        self.delta: np.ndarray | None = None
        self.versions: list[int] = []
        self.bases: list[int] = []
        self.rid = 0

    def clone(self) -> "SimWorker":
        twin = copy.copy(self)
        for name in ("local", "pulled", "center", "delta", "state", "versions", "bases"):
            setattr(twin, name, copy.deepcopy(getattr(self, name)))
        return twin

    def request(self, op: str, k: int, **fields: Any) -> Request:
        self.rid += 1
        return Request(op=op, rid=self.rid, shard=k, worker=self.worker, session=self.session, **fields)

    def hello(self, cluster: Cluster, *, session: int | None = None) -> None:
        """Registers with every shard (a new client session when ``session`` differs), announcing the quorum."""
        self.session = self.session if session is None else session
        quorum = {"quorum": self.setup.case.workers}
        self.versions = [cluster.call(k, self.request("hello", k, args=quorum))[0].version
                         for k in range(len(cluster.cores))]

    def pull(self, cluster: Cluster, min_versions: Sequence[int] | None = None) -> None:
        parts, versions = [], []
        for k in range(len(cluster.cores)):
            wanted = None if min_versions is None else min_versions[k]
            reply, data = cluster.call(k, self.request("pull", k, min_version=wanted,
                                                       wait=None if wanted is None else 1.0))
            parts.append(np.frombuffer(data, dtype=WIRE_DTYPE))
            versions.append(reply.version)
        np.copyto(self.center, np.concatenate(parts))
        self.versions = versions

    def start(self, cluster: Cluster) -> None:
        """θ ← θ̃, as at the start of training and after a re-sync."""
        self.pull(cluster)
        np.copyto(self.local, self.center)
        np.copyto(self.pulled, self.center)

    def commit(self, cluster: Cluster, step: Iterable[float]) -> None:
        """λ local steps (``step``), then the first half of an exchange: the delta, committed."""
        algo = self.setup.algorithm
        assert algo.worker_delta is not None
        self.local += np.array(tuple(step), dtype=DTYPE)
        if algo.pull_before_commit:
            self.pull(cluster)
        self.bases = list(self.versions)
        delta = np.ascontiguousarray(algo.worker_delta(self._window(), self.setup.params), dtype=np.float32)
        self.delta = delta
        for k, part in enumerate(cluster.plan.slices(delta)):
            frames = as_frames(np.ascontiguousarray(part), 64)
            cluster.call(k, self.request("commit", k, base=self.bases[k], dtype=WIRE_DTYPE,
                                         lens=tuple(f.nbytes for f in frames)), frames)

    def finish(self, cluster: Cluster) -> None:
        """The second half: pull (the next round's center, for a synchronous algorithm), reset."""
        algo = self.setup.algorithm
        assert algo.worker_reset is not None
        if algo.synchronous:
            self.pull(cluster, [b + 1 for b in self.bases])
        elif not algo.pull_before_commit:
            self.pull(cluster)
        algo.worker_reset(dataclasses.replace(self._window(), delta=self.delta), self.setup.params)
        np.copyto(self.pulled, self.center)

    def _window(self) -> WorkerWindow:
        return WorkerWindow(local=self.local, pulled=self.pulled, center=self.center,
                            window=int(self.setup.params.communication_window), state=self.state)


def started(setup: Setup, *, num_shards: int, checkpoint_dir: str | None = None) -> tuple[Cluster, dict[int, SimWorker]]:
    """A fresh cluster and its workers, registered and started from the center."""
    cluster = Cluster(setup, num_shards=num_shards, checkpoint_dir=checkpoint_dir)
    workers = {w: SimWorker(setup, w) for w in range(setup.case.workers)}
    for worker in workers.values():
        worker.hello(cluster)
        worker.start(cluster)
    return cluster, workers


def play(setup: Setup, ops: Sequence[tuple[str, int]], cluster: Cluster, workers: Mapping[int, SimWorker]) -> None:
    """Runs ``ops`` (from :meth:`Case.ops`) against ``cluster``."""
    for op, i in ops:
        turn = setup.case.turns[i]
        if op == "commit":
            workers[turn.worker].commit(cluster, turn.step)
        else:
            workers[turn.worker].finish(cluster)
