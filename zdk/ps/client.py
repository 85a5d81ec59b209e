"""The worker's client: one DEALER per shard, scatter commits, gather pulls, every wait bounded.

Requests to all shards are sent first and the replies gathered after, so shards
work concurrently; each client has at most one request in flight per shard, or two when
a pull follows a commit in the same round trip (``commit(..., pull_into=...)``). A request
that gets no reply in time is resent with the same request id on a fresh socket, a
bounded number of times: shards apply a commit once per (worker, session, rid).
"""

from __future__ import annotations

import logging
import numbers
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from zdk.errors import ConfigError, DeadlineExceeded, ProtocolError, RemoteError, ShardRestarted
from zdk.ps.allocator import tune_allocator
from zdk.ps.layout import DTYPE, ShardPlan
from zdk.ps.protocol import (
    ADMIT_BYTES, ADMIT_WAIT, DEFAULT_CHUNK_BYTES, DEFAULT_MAX_FRAME_BYTES, ERROR, U32_MAX, U64_MAX, WIRE_DTYPE, Control, Reply, Request,
    array_frames, as_frames, check_epoch_end, check_epochs_from, check_report, decode_reply,
)
from zdk.transports.base import ClientConnector, ClientTransport
from zdk.transports.curve import ClientKeys, CurveKeys
from zdk.transports.zmq import ZmqConnector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    """What `hello` told about the shards.

    Args:
        total_size: length of the flat vector.
        ranges: each shard's [start, stop).
        algorithm: the algorithm the shards run.
        params: its hyperparameters.
        versions: each shard's version.
        generations: each shard's generation.
    """

    total_size: int
    ranges: tuple[tuple[int, int], ...]
    algorithm: str
    params: Mapping[str, Any]
    versions: tuple[int, ...]
    generations: tuple[int, ...]


@dataclass(frozen=True)
class CommitReceipt:
    """The merged replies of all shards to one commit.

    Args:
        applied: whether every shard applied it.
        staleness: the largest staleness any shard saw.
        info: the algorithm's reported numbers, averaged over shards.
        versions: each shard's version after the commit.
        control: the driver's control state as the client knew it after this commit (the newest
            of its replies and of every earlier one); empty before any was set.
        control_version: its version; 0 before any was set.
        applied_by: whether each shard applied it, in shard order.
    """

    applied: bool
    staleness: int
    info: Mapping[str, float] = field(default_factory=dict)
    versions: tuple[int, ...] = ()
    applied_by: tuple[bool, ...] = ()
    control: Mapping[str, Any] = field(default_factory=dict)
    control_version: int = 0


class PSClient:
    """Talks to every shard of a parameter server.

    Attributes:
        control: the driver's control state (``stop``, and ``learning_rate`` when set) from the
            replies to `hello`, `pull`, `commit`, `report` and `control` (:meth:`set_control`):
            the one with the highest ``control_version`` seen, so a control that reached some
            shards before others wins once seen. Empty before any. Replaced, never changed in place.
        control_version: that state's version; 0 before any.

    Args:
        endpoints: the shards' endpoints, shard k at index k.
        worker_id: this worker's id (u32), unique among the workers of a job.
        attempt: the Spark task attempt; shards refuse requests of older attempts.
        timeout: seconds any request may take, resends included, before :class:`DeadlineExceeded`.
        tries: how many times a request is sent (≥ 1); each try waits ``timeout / tries``.
        chunk_bytes: data frame size of commits.
        max_frame_bytes: the largest data frame a reply may carry.
        curve: the server's CURVE keys, when its shards require CURVE.
        session: this client's session id (u64); a random one when omitted. A worker's `hello`
            with a new session replaces its earlier registration on every shard.
        connector: opens the links to the shards and waits on them; ZeroMQ DEALERs with ``curve``
            and a message limit of ``max_frame_bytes`` + 1 MiB when omitted.
        admit_bytes: a commit whose slice for some shard has at least this many bytes asks each
            shard to `admit` it first and is sent to a shard once it does, so a shard holds one
            large commit at a time rather than one per worker; None never asks.
    """

    def __init__(self, endpoints: Sequence[str], *, worker_id: int = 0, attempt: int = 0, timeout: float = 30.0,
                 tries: int = 3, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, curve: CurveKeys | ClientKeys | None = None,
                 session: int | None = None, connector: ClientConnector | None = None,
                 admit_bytes: int | None = ADMIT_BYTES) -> None:
        if not endpoints:
            raise ConfigError("`endpoints` must name at least one shard. Received: endpoints=[]", field="endpoints")
        if not isinstance(worker_id, int) or not 0 <= worker_id <= U32_MAX:
            raise ConfigError(f"`worker_id` must be an int in [0, 2^32). Received: worker_id={worker_id!r}",
                              field="worker_id")
        if not isinstance(attempt, int) or not 0 <= attempt <= U32_MAX:
            raise ConfigError(f"`attempt` must be an int in [0, 2^32). Received: attempt={attempt!r}", field="attempt")
        if not timeout > 0:
            raise ConfigError(f"`timeout` must be > 0 seconds. Received: timeout={timeout!r}", field="timeout")
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise ConfigError(f"`tries` must be an int ≥ 1. Received: tries={tries!r}", field="tries")
        if admit_bytes is not None and (isinstance(admit_bytes, bool) or not isinstance(admit_bytes, int)
                                        or admit_bytes < 0):
            raise ConfigError(f"`admit_bytes` must be an int ≥ 0 or None. Received: admit_bytes={admit_bytes!r}",
                              field="admit_bytes")
        if session is not None and not (isinstance(session, int) and 0 <= session <= U64_MAX):
            raise ConfigError(f"`session` must be an int in [0, 2^64). Received: session={session!r}", field="session")
        tune_allocator()
        self.endpoints = list(endpoints)
        self.worker_id = worker_id
        self.attempt = attempt
        self.timeout = float(timeout)
        self.tries = tries
        self.chunk_bytes = chunk_bytes
        self.session = secrets.randbits(64) if session is None else session
        self._rid = 0
        self._connector: ClientConnector = connector or ZmqConnector(
            max_message_bytes=max_frame_bytes + (1 << 20), curve=curve)
        self._links: list[ClientTransport] = [self._connector.connect(e) for e in self.endpoints]
        self.info: ClusterInfo | None = None
        self.plan: ShardPlan | None = None
        self._versions = [0] * len(self._links)
        self._gens: list[int | None] = [None] * len(self._links)
        self.wait_seconds = 0.0
        self.resends = 0
        self.admit_bytes = admit_bytes
        self._observer = False
        self._quorum: int | None = None
        self.control: Mapping[str, Any] = {}
        self.control_version = 0

    # ------------------------------------------------------------------ public API

    @property
    def versions(self) -> tuple[int, ...]:
        """Each shard's version at this worker's last pull (the base of its next commit)."""
        return tuple(self._versions)

    @property
    def total_size(self) -> int:
        return self._require_info().total_size

    def hello(self, *, register: bool = True, quorum: int | None = None, resync: bool = False) -> ClusterInfo:
        """Registers this worker with every shard and checks that their ranges tile the vector.

        Args:
            register: False to only observe (pull, stats, init, checkpoint, shutdown)
                without joining as a worker.
            quorum: the number of workers in the job, which synchronous algorithms need to
                know when a round is complete.
            resync: after :class:`ShardRestarted`: accept the shards' new generations.
        """
        if resync:
            self._gens = [None] * len(self._links)
            register = not self._observer
        self._observer = not register
        if quorum is not None:
            self._quorum = quorum
        args: dict[str, Any] = {} if register else {"role": "observer"}
        if self._quorum is not None:
            args["quorum"] = self._quorum
        replies = self._roundtrip("hello", [self._request("hello", k, args=args) for k in range(len(self._links))])
        ranges = tuple((int(r.fields["range"][0]), int(r.fields["range"][1])) for r in replies)
        total = int(replies[0].fields["total"])
        for k, r in enumerate(replies):
            if r.shard != k or int(r.fields["num_shards"]) != len(self._links) or int(r.fields["total"]) != total:
                raise ConfigError(
                    f"`endpoints` must list the {r.fields['num_shards']} shards of one server in order. "
                    f"Received: {self.endpoints[k]} is shard {r.shard} of {r.fields['num_shards']}, size {r.fields['total']}"
                , field="endpoints")
        plan = ShardPlan(total, len(self._links))
        if list(ranges) != plan.ranges:
            raise ConfigError(f"shard ranges {ranges} do not tile [0, {total}) as {plan.ranges}")
        algos = {r.fields["algorithm"] for r in replies}
        if len(algos) != 1:
            raise ConfigError(f"shards run different algorithms: {sorted(algos)}")
        self._gens = [r.gen for r in replies]
        self._versions = [r.version for r in replies]
        self.plan = plan
        self.info = ClusterInfo(total_size=total, ranges=ranges, algorithm=algos.pop(),
                                params=dict(replies[0].fields["params"]), versions=tuple(self._versions),
                                generations=tuple(r.gen for r in replies))
        return self.info

    def pull(self, out: np.ndarray | None = None, *, min_version: int | Sequence[int] | None = None,
             wait: float | None = None) -> np.ndarray:
        """Gathers the center θ̃ from every shard into ``out`` (allocated when omitted).

        Args:
            out: a C-contiguous float32 vector of the full size; each shard's frames are
                received straight into its slice.
            min_version: shards answer once their version reaches it (synchronous rounds);
                one value for all shards or one per shard.
            wait: seconds a shard may wait for ``min_version``; the client deadline grows to match.
        """
        info = self._require_info()
        if out is None:
            out = np.empty(info.total_size, dtype=DTYPE)
        targets = self._targets(out, "out")
        n = len(self._links)
        minimums = [min_version] * n if min_version is None or isinstance(min_version, int) else list(min_version)
        if len(minimums) != n:
            raise ConfigError(f"`min_version` must hold one version per shard ({n}). Received: {min_version!r}",
                              field="min_version")
        args = {"role": "observer"} if self._observer else {}
        requests = [self._request("pull", k, min_version=minimums[k], wait=wait, args=args) for k in range(n)]
        extra = 0.0 if wait is None else wait
        replies = self._roundtrip("pull", requests, targets=targets, extra_time=extra)
        self._versions = [r.version for r in replies]
        return out

    def commit(self, delta: np.ndarray, *, report: Mapping[str, float] | None = None,
               pull_into: np.ndarray | None = None) -> CommitReceipt:
        """Scatters ``delta`` (full size) to the shards, each with its slice and its base version.

        Args:
            delta: what the algorithm's worker update says to commit.
            report: progress numbers (step, samples, loss) the shards show in `stats`.
            pull_into: also pulls the center θ̃ into this vector, as :meth:`pull` with ``out`` does,
                in the same round trip: each shard gets the pull right behind the commit and
                answers it with the commit handled, so the center pulled holds this commit
                (:meth:`_pipelined_roundtrip`). :attr:`versions` become the pull's.
        """
        info = self._require_info()
        if delta.dtype != DTYPE or delta.shape != (info.total_size,):
            raise ConfigError(f"`delta` must be a float32 vector of size {info.total_size}. "
                              f"Received: dtype={delta.dtype}, shape={delta.shape}", field="delta")
        delta = np.ascontiguousarray(delta)
        assert self.plan is not None
        return self._commit([(None, as_frames(part, self.chunk_bytes)) for part in self.plan.slices(delta)], report,
                            pull_into)

    def commit_encoded(self, codec: str, parts: Sequence[Sequence[np.ndarray]], *,
                       report: Mapping[str, float] | None = None,
                       pull_into: np.ndarray | None = None) -> CommitReceipt:
        """Sends each shard its slice of the payload as ``codec`` encoded it: ``parts[k]`` holds the
        arrays of shard k's slice, which go as data frames with their dtypes (protocol `codec` and
        `arrays`). The shards decode them before the server update.

        Args:
            codec: the registered codec's name.
            parts: one tuple of arrays per shard, in shard order.
            report: as for :meth:`commit`.
            pull_into: as for :meth:`commit`.
        """
        self._require_info()
        if len(parts) != len(self._links):
            raise ConfigError(f"`parts` must hold one encoding per shard ({len(self._links)}). "
                              f"Received: {len(parts)}", field="parts")
        encoded = []
        for arrays in parts:
            frames = [array_frames(np.ascontiguousarray(a), self.chunk_bytes) for a in arrays]
            layout = tuple((a.dtype.str, len(f)) for a, f in zip(arrays, frames))
            encoded.append(((codec, layout), [frame for group in frames for frame in group]))
        return self._commit(encoded, report, pull_into)

    def _commit(self, parts: Sequence[tuple[tuple[str, tuple[tuple[str, int], ...]] | None, Sequence[Any]]],
                report: Mapping[str, float] | None, pull_into: np.ndarray | None = None) -> CommitReceipt:
        targets = None if pull_into is None else self._targets(pull_into, "pull_into")
        args = {"report": _numbers(report, "report")} if report else {}
        requests = []
        for k, (encoding, frames) in enumerate(parts):
            lens = tuple(f.nbytes for f in frames)
            if encoding is None:
                request = self._request("commit", k, base=self._versions[k], dtype=WIRE_DTYPE, lens=lens, args=args)
            else:
                request = self._request("commit", k, base=self._versions[k], codec=encoding[0], arrays=encoding[1],
                                        lens=lens, args=args)
            requests.append((request, frames))
        largest = max(sum(f.nbytes for f in frames) for _, frames in parts)
        admit = self.admit_bytes is not None and largest >= self.admit_bytes
        if targets is not None:
            replies, pulls = self._pipelined_roundtrip(requests, targets, admit=admit)
            self._versions = [r.version for r in pulls]
        elif admit:
            replies = self._admitted_roundtrip(requests)
        else:
            replies = self._roundtrip("commit", requests)
        infos = [r.fields.get("info", {}) for r in replies]
        keys = set().union(*infos) if infos else set()
        merged = {k: float(np.mean([i[k] for i in infos if k in i])) for k in keys}
        applied_by = tuple(bool(r.fields.get("applied", False)) for r in replies)
        return CommitReceipt(applied=all(applied_by), applied_by=applied_by,
                             staleness=max(int(r.fields.get("staleness", 0)) for r in replies),
                             info=merged, versions=tuple(r.version for r in replies),
                             control=self.control, control_version=self.control_version)

    def report(self, epoch_end: Mapping[str, float], *, report: Mapping[str, float] | None = None) -> None:
        """Tells every shard this worker finished an epoch, with its figures for it.

        The shards keep the summary by epoch number (a resend overwrites it) for the driver's
        `stats`; their replies carry the driver's latest control (see :attr:`control`).

        Args:
            epoch_end: ``epoch`` (an int ≥ 0, the epoch just finished; a float with an integral
                value is sent as that int), ``samples`` (≥ 0, the
                samples trained in it) and the epoch's other figures (``loss``, metric names), at
                most 16 names; those others may be NaN or ±inf, so a diverged loss reaches the driver.
            report: progress numbers (step, samples, loss) for `stats`, as :meth:`commit` takes.

        Raises:
            ConfigError: when ``epoch_end`` or ``report`` is not such a map.
        """
        args: dict[str, Any] = {"epoch_end": _numbers(epoch_end, "epoch_end", check=check_epoch_end, ints=("epoch",))}
        if report:
            args["report"] = _numbers(report, "report")
        self._roundtrip("report", self._all("report", args=args))

    def set_control(self, *, stop: bool, learning_rate: float | None = None) -> None:
        """Sets the control state of every shard with the `control` op, as an observer: the workers
        see it in the replies to their next exchange or report. (Not named after its op like the
        other methods: :attr:`control` is the state this client last saw.)

        Each call replaces the whole state and bumps each shard's ``control_version``; `init`
        clears it. Shards do not checkpoint it: send it again to a restarted shard.

        Args:
            stop: whether the workers should stop training.
            learning_rate: the learning rate they should train with from now on (a finite float
                ≥ 0; 0 freezes them); None leaves theirs.

        Raises:
            ConfigError: naming the argument that is wrong.
        """
        wire = Control(stop=stop, learning_rate=learning_rate).to_wire()
        self._roundtrip("control", self._all("control", args={"role": "observer", "control": wire}))

    def init(self, flat: np.ndarray) -> None:
        """Sets the center to ``flat`` (only while no worker is registered)."""
        info = self._require_info()
        if flat.dtype != DTYPE or flat.shape != (info.total_size,):
            raise ConfigError(f"`flat` must be a float32 vector of size {info.total_size}. "
                              f"Received: dtype={flat.dtype}, shape={flat.shape}", field="flat")
        assert self.plan is not None
        requests = []
        for k, part in enumerate(self.plan.slices(np.ascontiguousarray(flat))):
            frames = as_frames(part, self.chunk_bytes)
            requests.append((self._request("init", k, dtype=WIRE_DTYPE, lens=tuple(f.nbytes for f in frames)), frames))
        self._roundtrip("init", requests)

    def stats(self, *, epochs_from: int | None = None) -> list[dict[str, Any]]:
        """Every shard's `stats`.

        Args:
            epochs_from: when given, each worker's entry also holds ``"epochs"``: the summaries of
                the epochs ≥ ``epochs_from`` it reported (:meth:`report`), keyed by the epoch as a
                string; a shard lists at most 100 per worker, the earliest first.
        """
        args: dict[str, Any] = {}
        if epochs_from is not None:
            try:
                args["epochs_from"] = check_epochs_from(epochs_from, "epochs_from")
            except ProtocolError as exc:
                raise ConfigError(exc.message, field="epochs_from") from None
        return [dict(r.fields["stats"]) for r in self._roundtrip("stats", self._all("stats", args=args))]

    def checkpoint(self) -> list[str]:
        """Asks every shard to write its checkpoint; returns the files written."""
        return [str(r.fields["path"]) for r in self._roundtrip("checkpoint", self._all("checkpoint"))]

    def bye(self) -> None:
        """Tells every shard this worker is done (synchronous rounds stop waiting for it)."""
        self._roundtrip("bye", self._all("bye"))

    def shutdown(self) -> None:
        """Stops every shard."""
        self._roundtrip("shutdown", self._all("shutdown"))

    def close(self) -> None:
        for link in self._links:
            link.close()
        self._links = []

    def __enter__(self) -> "PSClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _require_info(self) -> ClusterInfo:
        if self.info is None:
            raise ConfigError("call `hello()` before pulling or committing")
        return self.info

    def _targets(self, out: np.ndarray, name: str) -> list[memoryview]:
        """Each shard's slice of ``out`` as bytes, for its pull reply to be received into."""
        info = self._require_info()
        if out.dtype != DTYPE or out.shape != (info.total_size,) or not out.flags.c_contiguous:
            raise ConfigError(f"`{name}` must be a C-contiguous float32 vector of size {info.total_size}. "
                              f"Received: dtype={out.dtype}, shape={out.shape}", field=name)
        assert self.plan is not None
        return [s.data.cast("B") for s in self.plan.slices(out)]

    def _all(self, op: str, **fields: Any) -> list[Request]:
        return [self._request(op, k, **fields) for k in range(len(self._links))]

    def _request(self, op: str, shard: int, **fields: Any) -> Request:
        self._rid += 1
        return Request(op=op, rid=self._rid, shard=shard, worker=self.worker_id, session=self.session,
                       attempt=self.attempt, gen=self._gens[shard], **fields)

    def _admitted_roundtrip(self, requests: Sequence[tuple[Request, Sequence[Any]]]) -> list[Reply]:
        """Sends each shard its commit once that shard admits it (`admit`), and gathers the
        replies. A shard's part goes as soon as that shard says so, so no worker holds one
        shard's turn while waiting for another's. Whatever is unanswered after a try's share of
        ``timeout`` is sent again on a fresh socket: a resent `admit` keeps its place in the
        shard's queue, and a resent commit is deduplicated by rid. A shard answers an `admit`
        within ``ADMIT_WAIT``, so the deadline is ``timeout`` plus that."""
        started = time.perf_counter()
        admits = {k: self._request("admit", k) for k in range(len(requests))}
        committing: dict[int, Request] = {}
        replies: list[Reply | None] = [None] * len(requests)
        per_try = self.timeout / self.tries
        end = time.monotonic() + self.timeout + ADMIT_WAIT
        for k, admit in admits.items():
            self._links[k].send(admit.encode(), ())
        try:
            while admits or committing:
                now = time.monotonic()
                if now >= end:
                    late = ", ".join(f"shard {k} at {self.endpoints[k]}" for k in sorted({*admits, *committing}))
                    raise DeadlineExceeded(
                        f"`commit` got no reply within {self.timeout + ADMIT_WAIT:.1f} s from {late}: is the "
                        f"parameter server running and reachable? (`zdk ps status ENDPOINT...`)")
                self._gather_admitted(requests, admits, committing, replies, min(end, now + per_try))
                for k in [*admits, *committing]:  # no answer this try: again, on a fresh socket
                    self._links[k].close()
                    self._links[k] = self._connector.connect(self.endpoints[k])
                    self.resends += 1
                    if k in admits:
                        self._links[k].send(admits[k].encode(), ())
                    else:
                        self._links[k].send(committing[k].encode(), requests[k][1])
        finally:
            self.wait_seconds += time.perf_counter() - started
        return [r for r in replies if r is not None]

    def _gather_admitted(self, requests: Sequence[tuple[Request, Sequence[Any]]], admits: dict[int, Request],
                         committing: dict[int, Request], replies: list[Reply | None], deadline: float) -> None:
        """Until ``deadline``: sends a shard its commit when it admits it, and keeps its reply."""
        while (admits or committing) and (remaining := deadline - time.monotonic()) > 0:
            shards = [*admits, *committing]
            for i in self._connector.wait([self._links[k] for k in shards], remaining):
                k = shards[i]
                if k in admits:
                    if self._admission(k, admits[k]):
                        del admits[k]
                        request, frames = requests[k]
                        self._links[k].send(request.encode(), frames)
                        committing[k] = request
                elif (reply := self._receive(k, committing[k], "commit", None)) is not None:
                    replies[k] = reply
                    del committing[k]

    def _pipelined_roundtrip(self, requests: Sequence[tuple[Request, Sequence[Any]]], targets: Sequence[memoryview],
                             *, admit: bool) -> tuple[list[Reply], list[Reply]]:
        """Sends each shard its commit and, right behind it on the same link, a pull, and gathers
        both replies, the pull's data straight into ``targets[k]``: one round trip per shard
        instead of two.

        A shard handles one link's requests in order, so it answers the pull with the commit
        handled. A link that reorders (a lossy one holds some messages back) can get the pull
        answered first; versions tell. The commit reply carries v_c, the shard's version right
        after the commit, and a pull reply counts only when its version v_p ≥ v_c; otherwise the
        pull is sent again. This relies on an applied commit advancing the version, as every
        asynchronous algorithm's does (a dropped commit leaves the center as it was).

        With ``admit`` each shard is first asked to `admit` the commit, as in
        :meth:`_admitted_roundtrip`, and gets commit and pull once it does. Whatever a shard
        left unanswered after a try's share of ``timeout`` goes again on a fresh socket: its
        `admit` (which keeps its place), else its commit unless answered (the shard deduplicates
        it by rid) and the pull behind it. The deadline is ``timeout``, plus ``ADMIT_WAIT`` with ``admit``.

        Returns:
            the commit replies and the pull replies, in shard order.
        """
        started = time.perf_counter()
        args = {"role": "observer"} if self._observer else {}
        flows = [_Pipelined(commit=request, frames=frames, pull=self._request("pull", k, args=args),
                            admit=self._request("admit", k) if admit else None)
                 for k, (request, frames) in enumerate(requests)]
        per_try = self.timeout / self.tries
        total = self.timeout + (ADMIT_WAIT if admit else 0.0)
        end = time.monotonic() + total
        try:
            for k, flow in enumerate(flows):
                self._send_pipelined(k, flow)
            while True:
                self._gather_pipelined(flows, targets, args, min(end, time.monotonic() + per_try))
                late = [k for k, flow in enumerate(flows) if not flow.done]
                if not late:
                    break
                if time.monotonic() >= end:
                    names = ", ".join(f"shard {k} at {self.endpoints[k]} ({flows[k].unanswered})" for k in late)
                    raise DeadlineExceeded(
                        f"`commit` with its `pull` got no reply within {total:.1f} s from {names}: is the "
                        f"parameter server running and reachable? (`zdk ps status ENDPOINT...`)")
                for k in late:  # no answer this try: again, on a fresh socket
                    self._links[k].close()
                    self._links[k] = self._connector.connect(self.endpoints[k])
                    self.resends += 1
                    logger.info("%s: no reply to %s within %.1f s; resending", self.endpoints[k],
                                flows[k].unanswered, per_try)
                    self._send_pipelined(k, flows[k])
        finally:
            self.wait_seconds += time.perf_counter() - started
        return ([flow.committed for flow in flows if flow.committed is not None],
                [flow.pulled for flow in flows if flow.pulled is not None])

    def _send_pipelined(self, k: int, flow: _Pipelined) -> None:
        """Sends shard ``k`` what ``flow`` still needs: its `admit`, else the commit unless it was
        answered and the pull (a pull answered before the commit reply came goes again with it)."""
        link = self._links[k]
        if flow.admit is not None:
            link.send(flow.admit.encode(), ())
            return
        if flow.committed is None:
            link.send(flow.commit.encode(), flow.frames)
            flow.pulled = None
        if flow.pulled is None:
            link.send(flow.pull.encode(), ())

    def _gather_pipelined(self, flows: Sequence[_Pipelined], targets: Sequence[memoryview], args: Mapping[str, Any],
                          deadline: float) -> None:
        """Until ``deadline`` or every flow is done: sends a shard commit and pull once it admits
        them, keeps the replies, and pulls again where the pull was answered before the commit."""
        while (waiting := [k for k, flow in enumerate(flows) if not flow.done]) \
                and (remaining := deadline - time.monotonic()) > 0:
            for i in self._connector.wait([self._links[k] for k in waiting], remaining):
                k = waiting[i]
                flow = flows[k]
                if flow.admit is not None:
                    if self._admission(k, flow.admit):
                        flow.admit = None
                        self._send_pipelined(k, flow)
                    continue
                expected = [(request, op, target) for request, op, target, answered in (
                    (flow.commit, "commit", None, flow.committed), (flow.pull, "pull", targets[k], flow.pulled))
                    if answered is None]
                reply = self._receive_any(k, expected)
                if reply is None:
                    continue
                if reply.rid == flow.commit.rid:
                    flow.committed = reply
                else:
                    flow.pulled = reply
                if flow.committed is not None and flow.pulled is not None \
                        and flow.pulled.version < flow.committed.version:
                    logger.debug("%s: the pull (version %d) was answered before the commit (version %d); "
                                 "pulling again", self.endpoints[k], flow.pulled.version, flow.committed.version)
                    flow.pulled = None
                    flow.pull = self._request("pull", k, args=args)
                    self._links[k].send(flow.pull.encode(), ())

    def _admission(self, k: int, admit: Request) -> bool:
        """Whether the reply just arrived from shard ``k`` admits ``admit`` (False: a late reply to
        an earlier request). A shard of an older zdk, which knows no `admit`, admits everything."""
        try:
            return self._receive(k, admit, "admit", None) is not None
        except RemoteError as exc:
            if exc.code != "unknown_op":
                raise
            logger.info("%s does not know `admit`; this client commits without asking from now on",
                        self.endpoints[k])
            self.admit_bytes = None
            return True

    def _roundtrip(self, op: str, requests: Sequence[Request | tuple[Request, Sequence[Any]]], *,
                   targets: Sequence[memoryview] | None = None, extra_time: float = 0.0) -> list[Reply]:
        started = time.perf_counter()
        outgoing = [(item if isinstance(item, tuple) else (item, ())) for item in requests]
        encoded = [(request.encode(), frames) for request, frames in outgoing]
        pending: dict[int, Request] = {k: request for k, (request, _) in enumerate(outgoing)}
        replies: list[Reply | None] = [None] * len(requests)
        per_try = self.timeout / self.tries + extra_time
        try:
            for attempt in range(self.tries):
                for k in pending:
                    if attempt:
                        # A fresh socket: whatever the old one still had queued is dropped with it.
                        self._links[k].close()
                        self._links[k] = self._connector.connect(self.endpoints[k])
                        self.resends += 1
                        logger.info("%s: no reply to `%s` (rid %d) within %.1f s; resending (try %d of %d)",
                                    self.endpoints[k], op, pending[k].rid, per_try, attempt + 1, self.tries)
                    self._links[k].send(*encoded[k])
                self._gather(op, pending, replies, targets, time.monotonic() + per_try)
                if not pending:
                    return [r for r in replies if r is not None]
            late = ", ".join(f"shard {k} at {self.endpoints[k]}" for k in sorted(pending))
            raise DeadlineExceeded(
                f"`{op}` got no reply within {self.timeout + self.tries * extra_time:.1f} s "
                f"({self.tries} tries) from {late}: is the parameter server running and reachable? "
                f"(`zdk ps status ENDPOINT...`)"
            )
        finally:
            self.wait_seconds += time.perf_counter() - started

    def _gather(self, op: str, pending: dict[int, Request], replies: list[Reply | None],
                targets: Sequence[memoryview] | None, deadline: float) -> None:
        """Receives replies into ``replies`` until every pending shard answered or ``deadline``."""
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            shards = list(pending)
            for i in self._connector.wait([self._links[k] for k in shards], remaining):
                k = shards[i]
                reply = self._receive(k, pending.get(k), op, None if targets is None else targets[k])
                if reply is not None:
                    replies[k] = reply
                    pending.pop(k, None)

    def _receive(self, k: int, request: Request | None, op: str, target: memoryview | None) -> Reply | None:
        return self._receive_any(k, [] if request is None else [(request, op, target)])

    def _receive_any(self, k: int, expected: Sequence[tuple[Request, str, memoryview | None]]) -> Reply | None:
        """The message waiting on shard ``k``'s link, when it answers one of ``expected`` (each a
        request, its op, and where its data goes: None for none); None for a late reply to an
        earlier request, whose frames are dropped."""
        link = self._links[k]
        raw, more = link.recv_header()
        try:
            reply = decode_reply(raw)
        except ProtocolError as exc:
            link.discard_rest()
            raise ProtocolError(exc.code, f"{self.endpoints[k]}: {exc.message}") from None
        match = next((item for item in expected if item[0].rid == reply.rid), None)
        if match is None:
            dropped = link.discard_rest() if more else 0
            logger.debug("%s: dropped a late reply (rid %d, %d frames)", self.endpoints[k], reply.rid, dropped)
            return None
        _, op, target = match
        if reply.op == ERROR:
            link.discard_rest()
            code = str(reply.fields.get("code", "?"))
            if code == "restarted":
                raise ShardRestarted(f"shard {k} at {self.endpoints[k]} restarted: {reply.fields.get('message')}")
            raise RemoteError(self.endpoints[k], op, code, str(reply.fields.get("message", "")))
        if self._gens[k] is not None and reply.gen != self._gens[k]:
            link.discard_rest()
            raise ShardRestarted(f"shard {k} at {self.endpoints[k]} answered with generation {reply.gen}, "
                                 f"expected {self._gens[k]}: it restarted")
        if target is not None:
            self._receive_data(k, reply, more, target)
        elif more:
            extra = link.discard_rest()
            raise ProtocolError("extra_frame", f"{self.endpoints[k]}: `{op}` reply carried {extra} unexpected frames")
        self._note_control(k, reply)
        return reply

    def _note_control(self, k: int, reply: Reply) -> None:
        """Keeps the control state of ``reply`` when it is newer than any seen."""
        version = reply.fields.get("control_version")
        if version is None:
            return
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ProtocolError("bad_header", f"{self.endpoints[k]}: `control_version` must be an int ≥ 0. "
                                f"Received: control_version={version!r}")
        try:
            control = Control.decode(reply.fields.get("control"), name="control")
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"{self.endpoints[k]}: {exc.message}") from None
        if version > self.control_version:
            self.control, self.control_version = control.to_wire(), version

    def _receive_data(self, k: int, reply: Reply, more: bool, target: memoryview) -> None:
        link = self._links[k]
        lens = reply.lens
        if reply.fields.get("dtype") != WIRE_DTYPE or sum(lens) != target.nbytes:
            if more:
                link.discard_rest()
            raise ProtocolError("bad_length", f"{self.endpoints[k]}: pull reply must carry {target.nbytes} bytes "
                                f"of {WIRE_DTYPE}. Received: {sum(lens)} bytes of {reply.fields.get('dtype')}")
        offset = 0
        for i, n in enumerate(lens):
            if not more:
                raise ProtocolError("truncated", f"{self.endpoints[k]}: pull reply ended after {i} of {len(lens)} frames")
            got, more = link.recv_into(target[offset : offset + n])
            if got != n:
                if more:
                    link.discard_rest()
                raise ProtocolError("bad_length", f"{self.endpoints[k]}: frame {i} is {got} bytes; header said {n}")
            offset += n
        if more:
            extra = link.discard_rest()
            raise ProtocolError("extra_frame", f"{self.endpoints[k]}: pull reply carried {extra} extra frames")


@dataclass
class _Pipelined:
    """One shard's commit with a pull behind it, as :meth:`PSClient._pipelined_roundtrip` drives it.

    Args:
        commit: the commit request.
        frames: its data frames.
        pull: the pull request (a new one when a pull must go again).
        admit: the `admit` request while the shard has not admitted the commit; None after, or
            when the commit needs no admission.
        committed: the commit's reply, once it came.
        pulled: the pull's reply, once it came.
    """

    commit: Request
    frames: Sequence[Any]
    pull: Request
    admit: Request | None = None
    committed: Reply | None = None
    pulled: Reply | None = None

    @property
    def done(self) -> bool:
        return self.committed is not None and self.pulled is not None

    @property
    def unanswered(self) -> str:
        """The ops still waiting for a reply, for log lines and errors."""
        if self.admit is not None:
            return "`admit`"
        return " and ".join(f"`{op}`" for op, reply in (("commit", self.committed), ("pull", self.pulled))
                            if reply is None)


def _numbers(values: Mapping[str, Any], name: str, *, check: Callable[[Any, str], dict[str, float]] = check_report,
             ints: Sequence[str] = ()) -> dict[str, float]:
    """``values`` as the wire carries them (numpy numbers become ints and floats, and the values
    named in ``ints`` ints when they are integral), validated by ``check`` the way the shards will.

    Raises:
        ConfigError: naming ``name`` and the value that is wrong.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"`{name}` must be a map of names to numbers. Received: {values!r}", field=name)
    wire = {k: int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool)
            else float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v
            for k, v in values.items()}
    for k in ints:
        value = wire.get(k)
        if isinstance(value, float) and value.is_integer():
            wire[k] = int(value)
    try:
        check(wire, name)
    except ProtocolError as exc:
        raise ConfigError(exc.message, field=name) from None
    return wire
