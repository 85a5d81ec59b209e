"""One shard's request handler: the protocol logic of the parameter server, with no event loop.

:class:`ShardCore` takes a request's raw frames and returns the replies to send.
The asyncio driver in :mod:`zdk.ps.server` only moves bytes, so everything here can
be tested by calling :meth:`ShardCore.handle` directly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from zdk import algorithms
from zdk.algorithms import codecs
from zdk.algorithms.base import APPLIED, Algorithm, Params, ShardState, UpdateResult, WorkerSlot
from zdk.errors import AlgorithmNotFound, ConfigError, ProtocolError, ZdkError
from zdk.ps import checkpoint, snapshot
from zdk.ps.pulled import bound_pulled, history_of, kept
from zdk.ps.checkpoint import CheckpointPolicy
from zdk.ps.layout import DTYPE, ShardPlan
from zdk.ps.protocol import (
    ADMIT_WAIT, CONTROL_REPLY_OPS, DEFAULT_CHUNK_BYTES, DEFAULT_MAX_FRAME_BYTES, ERROR, MAX_WAIT_SECONDS, PROTOCOL_VERSION,
    WIRE_DTYPE, Control, Reply, Request, add_checked, all_finite, as_frames, check_epoch_end, check_epochs_from,
    check_report, decode_request, join_checked, salvage, split_arrays,
)

logger = logging.getLogger(__name__)

#: Epoch summaries a shard keeps per worker: the latest, by epoch number.
MAX_EPOCHS_KEPT = 1000
#: Epoch summaries per worker in one `stats` reply, which keeps the reply's header bounded.
MAX_EPOCHS_PER_STATS = 100
#: Large commits a shard admits at once (`admit`): each is a whole slice in ZeroMQ until handled.
MAX_ADMITTED = 1
#: Seconds an admission lasts without its commit (the worker died, or gave up); then the turn passes on.
ADMIT_HOLD = 10.0

Frame = Any  # bytes, memoryview or zmq.Frame: anything with the buffer protocol


class Lease:
    """A buffer of the shard lent to a reply whose frames are sent zero-copy.

    The buffer is not written while the lease is held. The driver ties the lease to the
    transport's send tracker (:meth:`track`), or releases it when nothing was sent; a lease
    nobody releases is held forever, which costs a copy per update but is never wrong.
    """

    __slots__ = ("buffer", "_tracker", "_released")

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer = buffer
        self._tracker: Any = None
        self._released = False

    def track(self, tracker: Any) -> None:
        """Held until ``tracker.done`` (pyzmq's ``MessageTracker``) is true."""
        self._tracker = tracker

    def release(self) -> None:
        self._released = True

    @property
    def held(self) -> bool:
        if self._released:
            return False
        if self._tracker is not None and self._tracker.done:
            self._released = True
            return False
        return True


@dataclass(frozen=True)
class Outgoing:
    """A reply to send: the peer's routing id, the header, data frames, and the lease on the
    buffer the frames point into (zero-copy pull replies)."""

    peer: bytes
    header: bytes
    frames: Sequence[Frame] = ()
    lease: Lease | None = None


@dataclass(frozen=True)
class ShardConfig:
    """Everything a shard needs to start.

    Args:
        shard: this shard's index k in [0, num_shards).
        num_shards: N.
        total_size: length of the whole flat vector.
        algorithm: a registered algorithm name.
        params: its hyperparameters (validated by the algorithm's params class).
        checkpoint_dir: where `checkpoint` writes, and restores from at start; None disables it.
        checkpoint_every: seconds between periodic checkpoints (needs ``checkpoint_dir``); None: only
            on request. Checked by :class:`~zdk.ps.checkpoint.CheckpointPolicy`.
        max_frame_bytes: the largest data frame accepted.
        chunk_bytes: size of the data frames sent in pull replies.
        dedupe_window: replies to recent commits remembered per worker, for retries.
    """

    shard: int
    num_shards: int
    total_size: int
    algorithm: str = "downpour"
    params: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_dir: str | None = None
    checkpoint_every: float | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    dedupe_window: int = 256

    def __post_init__(self) -> None:
        ShardPlan(self.total_size, self.num_shards).range(self.shard)
        self.checkpoints  # validates checkpoint_every against checkpoint_dir
        for name in ("max_frame_bytes", "chunk_bytes", "dedupe_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}` must be an int ≥ 1. Received: {name}={value!r}", field=name)
        if self.chunk_bytes % 4:
            raise ConfigError(f"`chunk_bytes` must be a multiple of 4. Received: chunk_bytes={self.chunk_bytes}",
                              field="chunk_bytes")

    @property
    def range(self) -> tuple[int, int]:
        return ShardPlan(self.total_size, self.num_shards).range(self.shard)

    @property
    def checkpoints(self) -> CheckpointPolicy:
        return CheckpointPolicy(directory=self.checkpoint_dir, every=self.checkpoint_every)

    @property
    def checkpoint_path(self) -> str | None:
        """This shard's checkpoint file, or None without a checkpoint directory."""
        return self.checkpoints.path(self.shard, self.num_shards)


@dataclass
class _Parked:
    peer: bytes
    request: Request
    deadline: float


@dataclass
class _Counters:
    updates: int = 0
    dropped: int = 0
    duplicates: int = 0
    errors: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    reports: int = 0
    released: int = 0
    info_sums: dict[str, float] = field(default_factory=dict)
    info_counts: dict[str, int] = field(default_factory=dict)


class ShardCore:
    """The state and request handling of one shard.

    Args:
        config: the shard's configuration.
        initial: its starting slice; zeros when omitted (a checkpoint wins over both).
        clock: monotonic seconds, injectable for tests of deadlines.
    """

    def __init__(self, config: ShardConfig, *, initial: np.ndarray | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.algorithm: Algorithm = algorithms.get(config.algorithm)
        if not self.algorithm.uses_ps:
            raise ConfigError(
                f"`algorithm` must use the parameter server. Received: algorithm={config.algorithm!r}, "
                f"which trains without one"
            , field="algorithm")
        self.params: Params = self.algorithm.make_params(dict(config.params))
        # The most distinct pulled centers kept (ADAG's `history`); None: one per worker.
        self._history = history_of(self.params) if self.algorithm.keeps_pulled else None
        start, stop = config.range
        center = np.zeros(stop - start, dtype=DTYPE)
        if initial is not None:
            if initial.shape != center.shape:
                raise ConfigError(f"`initial` must have shape {center.shape}. Received: shape={initial.shape}",
                                  field="initial")
            np.copyto(center, initial)
        self.state = ShardState(center=center)
        self.generation = time.time_ns() & 0xFFFF_FFFF_FFFF_FFFF
        self.stopping = False
        self._clock = clock
        self._started = clock()
        self._last_request = clock()
        self._pool: list[np.ndarray] = [center]
        self._leases: list[Lease] = []
        self._recv_buffer = np.empty(center.size, dtype=DTYPE)
        self._dedupe: dict[int, OrderedDict[int, bytes]] = {}
        self._parked: list[_Parked] = []
        # Workers admitted to send a large commit, each with the deadline of its turn, and the
        # `admit` requests waiting for one, oldest first.
        self._admitted: dict[int, float] = {}
        self._admit_queue: list[_Parked] = []
        self._counters = _Counters()
        # Per worker id, its epoch summaries by epoch number. Not in checkpoints, like the
        # control state: the workers and the driver send them again.
        self._epochs: dict[int, dict[int, dict[str, float]]] = {}
        self._control: Control | None = None
        self._control_version = 0
        self.last_checkpoint = clock()
        self.restored_from: str | None = None
        self.restored_progress: dict[int, dict[str, float]] = {}
        self._restore()
        self._handlers: dict[str, Callable[[bytes, Request, Sequence[Frame]], list[Outgoing]]] = {
            "hello": self._hello, "pull": self._pull, "commit": self._commit, "stats": self._stats,
            "checkpoint": self._checkpoint, "shutdown": self._shutdown, "init": self._init, "bye": self._bye,
            "report": self._report, "control": self._set_control, "admit": self._admit,
        }

    # ------------------------------------------------------------------ entry points

    @property
    def center(self) -> np.ndarray:
        """This shard's slice of θ̃ (read it; only handlers write it)."""
        return self.state.center

    @property
    def version(self) -> int:
        return self.state.version

    @property
    def control(self) -> Control | None:
        """The driver's control state for the workers, or None when none was set since the start or `init`."""
        return self._control

    @property
    def control_version(self) -> int:
        """Bumped by every `control`; 0 means none was set since the start or the last `init`."""
        return self._control_version

    @property
    def idle_seconds(self) -> float:
        return self._clock() - self._last_request

    def handle(self, peer: bytes, header: Frame, frames: Sequence[Frame]) -> list[Outgoing]:
        """Handles one request and returns the replies to send (possibly to parked peers too).

        Never raises for bad input: a malformed request gets an ``error`` reply and the
        center is left as it was.
        """
        self._last_request = self._clock()
        self._counters.requests += 1
        lengths = [memoryview(f).nbytes for f in frames]
        self._counters.bytes_in += memoryview(header).nbytes + sum(lengths)
        try:
            request = decode_request(header, lengths, max_frame_bytes=self.config.max_frame_bytes)
        except ProtocolError as exc:
            salvaged = salvage(header)
            return [self._error(peer, salvaged.rid, salvaged.op, exc.code, exc.message, protocol=salvaged.protocol)]
        try:
            self._check_addressing(request)
            out = self._handlers[request.op](peer, request, frames)
        except ProtocolError as exc:
            out = [self._error(peer, request.rid, request.op, exc.code, exc.message)]
        except ZdkError as exc:
            out = [self._error(peer, request.rid, request.op, "rejected", str(exc))]
        except Exception as exc:  # an algorithm plugin's bug must not kill the shard
            logger.exception("shard %d: `%s` from worker %d failed", self.config.shard, request.op, request.worker)
            out = [self._error(peer, request.rid, request.op, "internal", f"{type(exc).__name__}: {exc}")]
        if request.op in ("commit", "bye") and request.worker is not None:
            # Its commit has arrived (applied or refused) or it left: its turn, or its wait for
            # one (a client that stopped waiting commits anyway), is over.
            self._admit_queue = [p for p in self._admit_queue if p.request.worker != request.worker]
            if self._admitted.pop(request.worker, None) is not None:
                out.extend(self._grant_admissions())
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of a parked pull, a waiting `admit` or an admission, in clock seconds."""
        deadlines = [p.deadline for p in self._parked] + [p.deadline for p in self._admit_queue]
        return min([*deadlines, *self._admitted.values()], default=None)

    def expire(self) -> list[Outgoing]:
        """Error replies for parked pulls whose deadline has passed; admissions whose commit never
        came pass their turn on, and an `admit` that waited its whole ``ADMIT_WAIT`` is answered
        anyway (``admitted`` false: over the budget), so a worker never waits on a dead one."""
        now = self._clock()
        out = self._expire_admissions(now)
        expired = [p for p in self._parked if p.deadline <= now]
        self._parked = [p for p in self._parked if p.deadline > now]
        if not expired:
            return out
        waited_for = self._describe_wait()
        return out + [self._error(p.peer, p.request.rid, "pull", "deadline",
                                  f"shard {self.config.shard} stayed at version {self.version} < min_version="
                                  f"{p.request.min_version} for the whole wait{waited_for}")
                      for p in expired]

    def _expire_admissions(self, now: float) -> list[Outgoing]:
        for worker in [w for w, until in self._admitted.items() if until <= now]:
            del self._admitted[worker]
            logger.info("shard %d: worker %d was admitted but sent no commit for %.0f s; the turn passes on",
                        self.config.shard, worker, ADMIT_HOLD)
        late = [p for p in self._admit_queue if p.deadline <= now]
        self._admit_queue = [p for p in self._admit_queue if p.deadline > now]
        for p in late:
            logger.info("shard %d: worker %d waited %.0f s for its turn; it commits over the budget",
                        self.config.shard, p.request.worker, ADMIT_WAIT)
        return [self._reply(p.peer, p.request, admitted=False) for p in late] + self._grant_admissions()

    def _grant_admissions(self) -> list[Outgoing]:
        """Admits waiting workers, oldest first, while fewer than ``MAX_ADMITTED`` are admitted."""
        out = []
        while self._admit_queue and len(self._admitted) < MAX_ADMITTED:
            waiting = self._admit_queue.pop(0)
            assert waiting.request.worker is not None  # decode_request requires it for `admit`
            self._admitted[waiting.request.worker] = self._clock() + ADMIT_HOLD
            out.append(self._reply(waiting.peer, waiting.request, admitted=True))
        return out

    def _describe_wait(self) -> str:
        """The algorithm's account of what a waiting pull waits for, as a suffix of its error."""
        describe = self.algorithm.describe_wait
        if describe is None:
            return ""
        try:
            return f"; {describe(self.state, self.params)}"
        except Exception:  # a plugin's bug must not cost the worker its deadline error
            logger.exception("shard %d: `describe_wait` of %s failed", self.config.shard, self.algorithm.name)
            return ""

    def stats(self, *, epochs_from: int | None = None) -> dict[str, Any]:
        """Counters, connected workers and their staleness, as sent in a `stats` reply.

        Args:
            epochs_from: when given, each worker's entry also lists the summaries of the epochs
                ≥ ``epochs_from`` it reported, under ``"epochs"`` keyed by the epoch as a string:
                the first :data:`MAX_EPOCHS_PER_STATS` of them (ask again from the next for more).
        """
        c = self._counters
        workers: dict[str, dict[str, Any]] = {}
        for w, s in self.state.workers.items():
            entry: dict[str, Any] = {
                "attempt": s.attempt, "session": s.session, "base_version": s.base_version, "staleness": s.staleness,
                "lag": self.version - s.base_version, "commits": s.commits, "active": s.active, "report": dict(s.report),
            }
            if epochs_from is not None:
                epochs = self._epochs.get(w, {})
                wanted = sorted(e for e in epochs if e >= epochs_from)[:MAX_EPOCHS_PER_STATS]
                entry["epochs"] = {str(e): dict(epochs[e]) for e in wanted}
            workers[str(w)] = entry
        start, stop = self.config.range
        return {
            "shard": self.config.shard, "num_shards": self.config.num_shards, "range": [start, stop],
            "version": self.version, "generation": self.generation, "algorithm": self.algorithm.name,
            "updates": c.updates, "dropped": c.dropped, "duplicates": c.duplicates, "errors": c.errors,
            "requests": c.requests, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
            "uptime": self._clock() - self._started, "parked": len(self._parked),
            "admitted": sorted(self._admitted), "admit_waiting": len(self._admit_queue),
            "quorum": self.state.quorum, "restored_from": self.restored_from,
            "restored_progress": {str(w): r for w, r in self.restored_progress.items()},
            "workers": workers, "reports": c.reports,
            "control": {} if self._control is None else self._control.to_wire(), "control_version": self._control_version,
            "connected": len(self.state.active_workers),
            "pulled_kept": len(kept(self.state.workers.values())), "pulled_released": c.released,
            "info": {k: c.info_sums[k] / c.info_counts[k] for k in c.info_sums},
        }

    # ------------------------------------------------------------------ replies

    def _reply(self, peer: bytes, request: Request, frames: Sequence[Frame] = (), **fields: Any) -> Outgoing:
        if request.op in CONTROL_REPLY_OPS and self._control is not None:
            fields.update(control=self._control.to_wire(), control_version=self._control_version)
        header = Reply(op=request.op, rid=request.rid, shard=self.config.shard, gen=self.generation,
                       version=self.version, fields=fields).encode()
        self._counters.bytes_out += len(header) + sum(memoryview(f).nbytes for f in frames)
        return Outgoing(peer, header, frames)

    def _error(self, peer: bytes, rid: int, op: str, code: str, message: str, *,
               protocol: int = PROTOCOL_VERSION) -> Outgoing:
        self._counters.errors += 1
        logger.warning("shard %d: %s `%s` refused [%s]: %s", self.config.shard, _hex(peer), op, code, message)
        header = Reply(op=ERROR, rid=rid, shard=self.config.shard, gen=self.generation, version=self.version,
                       fields={"code": code, "message": message, "request_op": op}, protocol=protocol).encode()
        return Outgoing(peer, header, ())

    # ------------------------------------------------------------------ checks

    def _check_addressing(self, request: Request) -> None:
        if request.shard != self.config.shard:
            raise ProtocolError("wrong_shard", f"`shard` must be {self.config.shard} here. Received: shard={request.shard}")
        if request.gen is not None and request.gen != self.generation:
            raise ProtocolError(
                "restarted", f"`gen` must be {self.generation} (this shard restarted since). Received: gen={request.gen}"
            )

    def _slot(self, request: Request, *, active: bool = True) -> WorkerSlot:
        assert request.worker is not None and request.session is not None  # decode_request requires them
        slot = self.state.workers.get(request.worker)
        if slot is None:
            raise ProtocolError("unknown_worker", f"worker {request.worker} must say `hello` first. Received: "
                                f"`{request.op}` from worker={request.worker}")
        if request.attempt < slot.attempt:
            raise ProtocolError("stale_attempt", f"worker {request.worker} re-registered as attempt {slot.attempt}. "
                                f"Received: attempt={request.attempt}")
        if request.session != slot.session:
            raise ProtocolError("stale_session", f"worker {request.worker} re-registered with another client "
                                f"session ({slot.session}); this client's is superseded. Received: "
                                f"session={request.session}")
        if active and not slot.active:
            raise ProtocolError("left", f"worker {request.worker} said `bye`; say `hello` again to rejoin")
        return slot

    def _check_size(self, request: Request) -> None:
        expected = self.center.nbytes
        received = sum(request.lens)
        if received != expected:
            raise ProtocolError(
                "bad_length", f"`{request.op}` must carry {expected} bytes ({self.center.size} × {WIRE_DTYPE}) "
                f"for shard range {list(self.config.range)}. Received: {received} bytes"
            )

    def _payload(self, request: Request, frames: Sequence[Frame]) -> np.ndarray:
        self._check_size(request)
        data, finite = join_checked(frames, out=self._recv_buffer)
        if not finite:
            bad = int(np.flatnonzero(~np.isfinite(data))[0])
            raise ProtocolError("non_finite", f"`{request.op}` data must be finite. Received: {data[bad]} at index {bad}")
        return data

    def _decoded(self, request: Request, frames: Sequence[Frame]) -> np.ndarray:
        """The dense float32 slice an encoded commit carries, in the receive buffer; refuses an
        unknown codec, arrays other than the codec's layout, a malformed encoding (the codec's
        decoder says what) and non-finite values."""
        try:
            codec = codecs.get_codec(request.codec or "")
        except AlgorithmNotFound as exc:
            raise ProtocolError("bad_codec", f"`codec` must be a codec registered on this shard. {exc}") from None
        dtypes = tuple(dtype for dtype, _ in request.arrays)
        if dtypes != codec.layout:
            raise ProtocolError("bad_dtype", f"`arrays` of codec {codec.name!r} must have dtypes "
                                f"{list(codec.layout)}. Received: {list(dtypes)}")
        out = self._recv_buffer
        out.fill(np.nan)  # what a decoder leaves unwritten is refused as non-finite, not a stale value
        try:
            codec.decode(split_arrays(frames, request.arrays), out)
        except ProtocolError:
            raise
        except (ValueError, TypeError, IndexError, ArithmeticError) as exc:
            raise ProtocolError("bad_encoding", f"codec {codec.name!r} could not decode the commit: {exc!r}") from None
        if not all_finite(out):
            bad = int(np.flatnonzero(~np.isfinite(out))[0])
            raise ProtocolError("non_finite", f"`commit` data must be finite. Received: {out[bad]} at index {bad} "
                                f"after decoding with codec {codec.name!r}")
        return out

    # ------------------------------------------------------------------ handlers

    def _hello(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        role = request.args.get("role", "worker")  # checked by decode_request
        quorum = request.args.get("quorum")
        if quorum is not None and (isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1):
            raise ProtocolError("bad_header", f"`args.quorum` must be an int ≥ 1. Received: quorum={quorum!r}")
        if role == "worker":
            self._register(request)
        if quorum is not None:
            self.state.quorum = quorum
        start, stop = self.config.range
        return [self._reply(
            peer, request, range=[start, stop], total=self.config.total_size, num_shards=self.config.num_shards,
            dtype=WIRE_DTYPE, algorithm=self.algorithm.name, params=self.params.to_dict(),
            chunk_bytes=self.config.chunk_bytes, max_frame_bytes=self.config.max_frame_bytes,
        )]

    def _register(self, request: Request) -> None:
        """Registers a worker's client session. The same session saying `hello` again (a resend,
        or a re-sync after a shard restart) keeps its registration; a new session or a later
        attempt replaces it: a fresh slot, a fresh dedupe window, and the algorithm drops what
        the old registration left in the shard's state."""
        assert request.worker is not None and request.session is not None
        old = self.state.workers.get(request.worker)
        if old is not None and request.attempt < old.attempt:
            raise ProtocolError("stale_attempt", f"worker {request.worker} is registered as attempt {old.attempt}. "
                                f"Received: attempt={request.attempt}")
        if old is not None and old.active and old.attempt == request.attempt and old.session == request.session:
            return
        if old is not None and self.algorithm.on_reregister is not None:
            self.algorithm.on_reregister(self.state, old, self.params)
        self.state.workers[request.worker] = WorkerSlot(worker=request.worker, attempt=request.attempt,
                                                        session=request.session, base_version=self.version)
        self._dedupe.pop(request.worker, None)
        # A new registration is another task attempt or another job: its epochs start afresh.
        self._epochs.pop(request.worker, None)
        if old is not None:
            logger.info("shard %d: worker %d re-registered (attempt %d → %d, a new client session)",
                        self.config.shard, request.worker, old.attempt, request.attempt)

    def _pull(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        slot = None if request.args.get("role") == "observer" else self._slot(request)
        if request.min_version is not None and self.version < request.min_version:
            wait = MAX_WAIT_SECONDS if request.wait is None else request.wait
            limit = self.algorithm.pull_wait(self.params)
            if limit is not None:
                wait = min(wait, float(limit))
            self._parked.append(_Parked(peer, request, self._clock() + wait))
            return []
        return [self._answer_pull(peer, request, slot)]

    def _answer_pull(self, peer: bytes, request: Request, slot: WorkerSlot | None) -> Outgoing:
        center = self.state.center
        if slot is not None:
            slot.base_version = self.version
            if self.algorithm.keeps_pulled:
                slot.pulled = center
                if self._history is not None:
                    self._bound_pulled(self._history)
        frames = as_frames(center, self.config.chunk_bytes)
        lease = Lease(center)
        self._leases.append(lease)
        reply = self._reply(peer, request, frames, dtype=WIRE_DTYPE, lens=[f.nbytes for f in frames])
        return Outgoing(reply.peer, reply.header, reply.frames, lease)

    def _bound_pulled(self, history: int) -> None:
        """Keeps at most ``history`` distinct pulled centers (:func:`zdk.ps.pulled.bound_pulled`), so
        the shard's memory does not grow with the number of workers."""
        released = bound_pulled(self.state.workers.values(), history)
        if released and not self._counters.released:
            logger.info("shard %d: workers hold more than history=%d distinct pulled centers; the oldest are "
                        "released and their workers' drift is measured from the oldest one kept",
                        self.config.shard, history)
        self._counters.released += released

    def _lent(self, buffer: np.ndarray) -> bool:
        """Whether ``buffer`` is still read by someone else: a reply being sent zero-copy, or a
        worker's kept snapshot (ADAG's θ̃_{t−τ})."""
        self._leases = [lease for lease in self._leases if lease.held]
        return (any(lease.buffer is buffer for lease in self._leases)
                or any(slot.pulled is buffer for slot in self.state.workers.values()))

    def _writable_state(self) -> ShardState:
        """The state, with a center no one else reads, ready for an update.

        Pull replies are sent zero-copy straight from the center by ZeroMQ's I/O thread,
        and ADAG keeps pulled centers, so a lent center is frozen: the update goes to a
        copy (copy-on-write) and pulls never see a half-applied update.
        """
        if self._lent(self.state.center):
            fresh = self._free_buffer()
            np.copyto(fresh, self.state.center)
            self.state.center = fresh
        return self.state

    def _free_buffer(self) -> np.ndarray:
        """A slice-sized buffer no one reads: neither the center nor lent. Reusing one avoids
        page-faulting a fresh allocation for every update; the pool keeps only the center, the
        lent buffers (their leases keep them alive anyway) and one spare, so memory returns to
        center + spare once pulls in flight have been sent, however many workers there are."""
        center = self.state.center
        free = [b for b in self._pool if b is not center and not self._lent(b)]
        buf = free[0] if free else np.empty_like(center)
        self._pool = [b for b in self._pool if b is center or (b is not buf and self._lent(b))]
        self._pool.append(buf)
        return buf

    def _commit(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        slot = self._slot(request)
        assert request.worker is not None and request.base is not None  # decode_request requires them
        seen = self._dedupe.setdefault(request.worker, OrderedDict())
        cached = seen.get(request.rid)
        if cached is not None:
            self._counters.duplicates += 1
            self._counters.bytes_out += len(cached)
            return [Outgoing(peer, cached, ())]
        if request.base > self.version:
            raise ProtocolError("bad_base", f"`base` must be ≤ the shard version {self.version}. "
                                f"Received: base={request.base}")
        report = check_report(request.args.get("report", {}))
        # An encoded payload is decoded into the receive buffer, checked finite there, and then
        # goes where a float32 one would: nothing of a malformed one reaches the center.
        decoded = None if request.codec is None else self._decoded(request, frames)
        if self.algorithm.additive:
            # θ̃ + Δ is elementwise: it is computed frame by frame into a free buffer, each block
            # checked while in cache, and becomes the center only if all of it is finite. No joined
            # copy, no separate validation pass, the live center is never written (so in-flight
            # zero-copy pulls need no copy-on-write), and bad data leaves it untouched.
            if decoded is None:
                self._check_size(request)
            else:
                frames = [decoded]
            fresh = self._free_buffer()
            bad = add_checked(self.state.center, frames, fresh)
            if bad is not None:
                value = np.frombuffer(b"".join(bytes(f) for f in frames), dtype=WIRE_DTYPE)[bad]
                raise ProtocolError("non_finite", f"`{request.op}` data must be finite and keep the center finite. "
                                    f"Received: {value} at index {bad}")
            slot.report = report or slot.report
            slot.staleness = self.version - request.base
            self.state.center = fresh
            result = APPLIED
        else:
            data = self._payload(request, frames) if decoded is None else decoded
            slot.report = report or slot.report
            slot.staleness = self.version - request.base
            assert self.algorithm.server_update is not None  # checked in __init__: the algorithm uses the PS
            result = self.algorithm.server_update(self._writable_state(), slot, data, self.params)
        out = self._after_update(result, slot)
        reply = self._reply(peer, request, applied=result.applied, staleness=slot.staleness, info=dict(result.info))
        seen[request.rid] = reply.header
        while len(seen) > self.config.dedupe_window:
            seen.popitem(last=False)
        return [reply, *out]

    def _after_update(self, result: UpdateResult, slot: WorkerSlot | None) -> list[Outgoing]:
        c = self._counters
        if result.applied and slot is not None:
            slot.commits += 1
            c.updates += 1
        elif slot is not None:
            c.dropped += 1
        for key, value in result.info.items():
            c.info_sums[key] = c.info_sums.get(key, 0.0) + float(value)
            c.info_counts[key] = c.info_counts.get(key, 0) + 1
        if result.advance:
            self.state.version += 1
            return self._release_parked()
        return []

    def _release_parked(self) -> list[Outgoing]:
        ready = [p for p in self._parked if self.version >= (p.request.min_version or 0)]
        self._parked = [p for p in self._parked if p not in ready]
        out = []
        for p in ready:
            observer = p.request.args.get("role") == "observer"
            slot = None if p.request.worker is None else self.state.workers.get(p.request.worker)
            if not observer and (slot is None or slot.session != p.request.session):
                out.append(self._error(p.peer, p.request.rid, "pull", "stale_session",
                                       f"worker {p.request.worker} re-registered while this pull waited"))
            else:
                out.append(self._answer_pull(p.peer, p.request, None if observer else slot))
        return out

    def _bye(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        slot = self._slot(request, active=False)
        if not slot.active:  # a resent `bye`
            return [self._reply(peer, request)]
        slot.active = False
        out: list[Outgoing] = []
        if self.algorithm.on_leave is not None:
            out = self._after_update(self.algorithm.on_leave(self._writable_state(), slot, self.params), None)
        slot.pulled = None  # it commits no more: its kept center is read no more
        return [self._reply(peer, request), *out]

    def _init(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        active = self.state.active_workers
        if active:
            raise ProtocolError("busy", f"`init` needs a shard with no active workers. Received: active workers {active}")
        data = self._payload(request, frames)
        np.copyto(self._writable_state().center, data)
        self.state.state.clear()
        self.state.quorum = None
        # A new job starts: it must not inherit the last job's `stop` or its workers' epoch ends.
        self._control, self._control_version = None, 0
        self._epochs.clear()
        self.state.version += 1
        return [self._reply(peer, request)]

    def _report(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        slot = self._slot(request)
        assert request.worker is not None  # decode_request requires it
        if "epoch_end" not in request.args:
            raise ProtocolError("bad_header", "`args.epoch_end` is required for `report`: a map with `epoch` and "
                                "`samples`. Received: no `args.epoch_end`")
        summary = check_epoch_end(request.args["epoch_end"])
        report = check_report(request.args.get("report", {}))
        epochs = self._epochs.setdefault(request.worker, {})
        epochs[int(summary["epoch"])] = summary  # a resend of the same epoch overwrites it
        if len(epochs) > MAX_EPOCHS_KEPT:
            del epochs[min(epochs)]
        slot.report = report or slot.report
        self._counters.reports += 1
        return [self._reply(peer, request)]

    def _admit(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        """Answers when the worker may send a large commit: at once while fewer than
        ``MAX_ADMITTED`` workers are admitted (or it already is), else when a turn frees up (its
        commit arrives, it says `bye`, or its admission lapses), or after ``ADMIT_WAIT``."""
        self._slot(request)
        worker = request.worker
        assert worker is not None  # decode_request requires it
        if worker in self._admitted or len(self._admitted) < MAX_ADMITTED:
            self._admitted[worker] = self._clock() + ADMIT_HOLD
            return [self._reply(peer, request, admitted=True)]
        # A resend comes from a fresh socket: it replaces the worker's earlier wait, keeping its place.
        for i, waiting in enumerate(self._admit_queue):
            if waiting.request.worker == worker:
                self._admit_queue[i] = _Parked(peer, request, waiting.deadline)
                return []
        self._admit_queue.append(_Parked(peer, request, self._clock() + ADMIT_WAIT))
        return []

    def _set_control(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        if "control" not in request.args:
            raise ProtocolError("bad_header", "`args.control` is required for `control`: a map with `stop` and "
                                "optionally `learning_rate`. Received: no `args.control`")
        self._control = Control.decode(request.args["control"])
        self._control_version += 1
        logger.info("shard %d: control %d is %s", self.config.shard, self._control_version, self._control.to_wire())
        return [self._reply(peer, request, control=self._control.to_wire(), control_version=self._control_version)]

    def _stats(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        epochs_from = request.args.get("epochs_from")
        if epochs_from is not None:
            epochs_from = check_epochs_from(epochs_from)
        return [self._reply(peer, request, stats=self.stats(epochs_from=epochs_from))]

    def _checkpoint(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        path = self.config.checkpoint_path
        if path is None:
            raise ProtocolError("no_checkpoint_dir", "this shard was started without a checkpoint directory "
                                "(`--checkpoint-dir`)")
        self.write_checkpoint(path)
        return [self._reply(peer, request, path=path)]

    def checkpoint_due(self) -> bool:
        """Whether a periodic checkpoint is due (every ``config.checkpoint_every`` seconds)."""
        every = self.config.checkpoint_every
        return every is not None and self._clock() - self.last_checkpoint >= every

    def _shutdown(self, peer: bytes, request: Request, frames: Sequence[Frame]) -> list[Outgoing]:
        self.stopping = True
        return [self._reply(peer, request)]

    # ------------------------------------------------------------------ checkpoints

    def write_checkpoint(self, path: str | None = None) -> str:
        """Writes the slice, its range, the version, the algorithm's shard state, the quorum and
        the workers' last progress reports to ``path`` atomically (:func:`zdk.ps.checkpoint.write`).

        Returns:
            the path written (the configured checkpoint path when ``path`` is None).
        """
        path = path or self.config.checkpoint_path
        if path is None:
            raise ConfigError("`checkpoint_dir` must be set to write checkpoints. Received: checkpoint_dir=None",
                              field="checkpoint_dir")
        start, stop = self.config.range
        arrays: dict[str, np.ndarray] = {}
        meta = {"algorithm": self.algorithm.name, "quorum": self.state.quorum,
                "state": snapshot.pack(self.state.state, arrays),
                "progress": {str(w): {**slot.report, "active": float(slot.active)}
                             for w, slot in self.state.workers.items() if slot.report}}
        entries = {f"state_{k}": v for k, v in arrays.items()}
        entries.update(center=self.center, version=np.array([self.version], dtype=np.uint64),
                       range=np.array([start, stop, self.config.total_size], dtype=np.int64),
                       meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        checkpoint.write(path, entries)
        self.last_checkpoint = self._clock()
        return path

    def _restore(self) -> None:
        path = self.config.checkpoint_path
        if path is None or not os.path.exists(path):
            return
        data = checkpoint.read(path)
        saved_range = [int(x) for x in data["range"]]
        start, stop = self.config.range
        if saved_range != [start, stop, self.config.total_size]:
            raise ConfigError(
                f"checkpoint {path} holds range {saved_range[:2]} of {saved_range[2]}; this shard is "
                f"[{start}, {stop}) of {self.config.total_size}"
            )
        meta = json.loads(bytes(data["meta"]).decode()) if "meta" in data else {}
        if meta.get("algorithm", self.algorithm.name) != self.algorithm.name:
            raise ConfigError(f"checkpoint {path} was written by algorithm {meta['algorithm']!r}; this shard "
                              f"runs {self.algorithm.name!r}")
        np.copyto(self.state.center, data["center"])
        self.state.version = int(data["version"][0])
        if "state" in meta:
            arrays = {k[len("state_"):]: v for k, v in data.items() if k.startswith("state_")}
            self.state.state = snapshot.unpack(meta["state"], arrays)
        self.state.quorum = meta.get("quorum")
        self.restored_progress = {int(w): r for w, r in meta.get("progress", {}).items()}
        self.restored_from = path
        logger.info("shard %d: restored version %d from %s", self.config.shard, self.version, path)


def _hex(peer: bytes) -> str:
    return "peer " + peer.hex()[:10] if peer else "peer ?"
