"""The worker side of an algorithm at runtime: the I/O around its pure update functions.

A worker trains on its local weights θ (a flat float32 vector it owns) and, at the
end of every communication window, calls :meth:`Exchange.end_window`, which pulls,
computes the commit with the algorithm's ``worker_delta``, commits, pulls, and
resets θ with ``worker_reset``, in the order the algorithm asks for. When the pull
follows the commit (asynchronous algorithms that do not pull first), both go in one
round trip (:meth:`PSClient.commit` with ``pull_into``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import numpy as np

from zdk import algorithms
from zdk.algorithms import codecs
from zdk.algorithms.base import Algorithm, Params, WorkerWindow
from zdk.algorithms.codecs import Codec, CodecArgs
from zdk.ps.client import CommitReceipt, PSClient
from zdk.errors import ConfigError, ProtocolError, ShardRestarted

logger = logging.getLogger(__name__)

#: Seconds a synchronous algorithm's pull waits for its round when the algorithm sets no
#: ``pull_timeout``.
DEFAULT_ROUND_WAIT = 300.0


class Exchange:
    """Drives one worker's exchanges with the parameter server.

    Args:
        client: a connected :class:`PSClient` (``hello`` not yet called, or already).
        local: θ, the worker's flat weights; updated in place by every exchange.
        algorithm: overrides the algorithm the shards announce (they must agree).
        params: overrides the announced hyperparameters on the worker side.
        codec: encodes every commit (a registered name or a Codec); None: the algorithm's own
            ``codec``, and without one raw float32. With the codec's ``error_feedback`` the part of
            a payload the encoding lost, e = P − decode(encode(P)), is added to the next payload
            P = Δ + e (see :meth:`_commit` for commits that do not land), and :meth:`finish` commits
            what e holds at the end.
        codec_args: the codec's arguments (``{"ratio": 0.01}`` for ``topk``).
    """

    def __init__(self, client: PSClient, local: np.ndarray, *, algorithm: str | Algorithm | None = None,
                 params: Params | None = None, codec: str | Codec | None = None,
                 codec_args: Mapping[str, Any] | CodecArgs | None = None) -> None:
        info = client.info or client.hello()
        self.algorithm = algorithms.get(algorithm if algorithm is not None else info.algorithm)
        if self.algorithm.name != info.algorithm:
            raise ConfigError(f"`algorithm` must match the shards' {info.algorithm!r}. "
                              f"Received: algorithm={self.algorithm.name!r}", field="algorithm")
        self.params = params if params is not None else self.algorithm.make_params(dict(info.params))
        if local.dtype != np.float32 or local.shape != (info.total_size,) or not local.flags.c_contiguous:
            raise ConfigError(f"`local` must be a C-contiguous float32 vector of size {info.total_size}. "
                              f"Received: dtype={local.dtype}, shape={local.shape}", field="local")
        chosen = codec if codec is not None else self.algorithm.codec
        if chosen is None and codec_args:
            raise ConfigError(f"`codec_args` needs a `codec`. Received: codec_args={codec_args!r}",
                              field="codec_args")
        self.codec: Codec | None = None if chosen is None else codecs.get_codec(chosen)
        self.codec_args: CodecArgs | None = None if self.codec is None else self.codec.make_args(codec_args)
        if self.codec is not None and self.algorithm.synchronous:
            raise ConfigError(f"`codec` needs an asynchronous algorithm: {self.algorithm.name!r} commits whole models "
                              f"in rounds. Received: codec={self.codec.name!r}", field="codec")
        self.client = client
        self.local = local
        self.center = np.empty_like(local)
        self.pulled = np.empty_like(local)
        self.state: dict[str, Any] = {}
        self.exchanges = 0
        self.commit_bytes = 0  #: payload bytes of the windows' commits, as sent (encoded)
        self.flushed_bytes = 0  #: bytes of the error-feedback remainder committed by :meth:`flush`
        self.resyncs = 0
        self._residual: np.ndarray | None = None
        self._payload: np.ndarray | None = None
        self.blocked_seconds = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[CommitReceipt] | None = None
        self._snapshot: np.ndarray | None = None
        self._base: np.ndarray | None = None
        self._correction: np.ndarray | None = None

    @property
    def window(self) -> int:
        return int(self.params.communication_window)

    def start(self) -> None:
        """Pulls θ̃ and starts from it: θ ← θ̃, forgetting the algorithm's worker-side state (adag_worker's
        θ̃_{t−τ}), which described the center before it."""
        self.state.clear()
        self.client.pull(self.center)
        np.copyto(self.local, self.center)
        np.copyto(self.pulled, self.center)

    def end_window(self, steps: int, *, report: dict[str, float] | None = None) -> CommitReceipt:
        """One exchange after ``steps`` local steps; returns the merged commit replies.

        When a shard was restarted (a supervisor brought it back from its checkpoint), the
        worker re-syncs instead of failing: it registers again with its session, pulls θ̃ and
        continues from it, dropping this window's updates. Synchronous algorithms cannot
        re-sync a round halfway, so for them the restart is an error.

        Args:
            steps: local steps since the last exchange (λ, or fewer at the end).
            report: progress numbers for the shards' `stats` (step, samples, loss).
        """
        self.collect(block=True)
        try:
            return self._exchange(self._window(self.local, steps), report)
        except ShardRestarted as exc:
            return self._after_restart(exc)

    def report(self, epoch_end: Mapping[str, float], *, report: Mapping[str, float] | None = None) -> None:
        """Reports the end of an epoch to the shards (:meth:`PSClient.report`), after collecting
        an exchange in flight, so that two threads never use the client at once.

        The replies update ``client.control``, the driver's latest control state. A restarted
        shard is handled as in :meth:`end_window` (re-sync, then the report is sent again).

        Args:
            epoch_end: ``epoch``, ``samples`` and the epoch's figures (``loss``, metrics).
            report: progress numbers for the shards' `stats`.
        """
        self.collect(block=True)
        try:
            self.client.report(epoch_end, report=report)
        except ShardRestarted as exc:
            self._after_restart(exc)
            self.client.report(epoch_end, report=report)

    # ------------------------------------------------------------------ overlapped exchanges

    def begin_window(self, steps: int, *, report: dict[str, float] | None = None) -> None:
        """Starts the exchange of the window that just ended on a background thread, so the
        worker keeps training while the commit and the pull travel.

        The exchange runs on a snapshot θ_s of the local weights; the algorithm's reset maps it
        to θ_s'. The steps taken meanwhile, δ = θ − θ_s, are kept: :meth:`collect` sets
        θ ← θ + (θ_s' − θ_s) = θ_s' + δ, and with θ_pulled ← θ̃ the next window's commit
        carries δ. For DOWNPOUR, AGN, ADAG and DynSGD θ_s' = θ̃ (θ ← θ̃ + δ); for EASGD
        θ_s' = θ_s − E (θ ← θ − E). Synchronous algorithms cannot overlap: their rounds need
        every worker at the same point.

        Args:
            steps: local steps in the window that just ended.
            report: progress numbers for the shards' `stats`.
        """
        if self.algorithm.synchronous:
            raise ConfigError(f"`overlap` needs an asynchronous algorithm; {self.algorithm.name!r} is synchronous",
                              field="overlap")
        self.collect(block=True)  # at most one exchange in flight
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zdk-exchange")
            self._snapshot = np.empty_like(self.local)
            self._base = np.empty_like(self.local)
            self._correction = np.empty_like(self.local)
        assert self._snapshot is not None and self._base is not None
        np.copyto(self._snapshot, self.local)
        np.copyto(self._base, self.local)
        self._future = self._pool.submit(self._exchange_snapshot, steps, report)

    @property
    def in_flight(self) -> bool:
        return self._future is not None

    def ready(self) -> bool:
        """Whether an exchange in flight has finished (its result waits for :meth:`collect`)."""
        return self._future is not None and self._future.done()

    def collect(self, *, block: bool = False) -> CommitReceipt | None:
        """Applies a finished background exchange to ``local`` (θ ← θ + θ_s' − θ_s); None when there is
        none, or when it is still running and ``block`` is False. Time spent blocked is added to
        ``blocked_seconds``."""
        if self._future is None or (not block and not self._future.done()):
            return None
        started = time.perf_counter()
        future, self._future = self._future, None
        try:
            receipt = future.result()
        except ShardRestarted as exc:
            return self._after_restart(exc)
        finally:
            self.blocked_seconds += time.perf_counter() - started
        assert self._correction is not None
        self.local += self._correction
        return receipt

    def _exchange_snapshot(self, steps: int, report: dict[str, float] | None) -> CommitReceipt:
        assert self._snapshot is not None and self._base is not None and self._correction is not None
        receipt = self._exchange(self._window(self._snapshot, steps), report)
        np.subtract(self._snapshot, self._base, out=self._correction)
        return receipt

    # ------------------------------------------------------------------ shared

    def resync(self) -> None:
        """Registers again with every shard (learning their new generations) and restarts from θ̃."""
        self.client.hello(resync=True)
        self.start()
        self.resyncs += 1

    def _after_restart(self, exc: ShardRestarted) -> CommitReceipt:
        if self.algorithm.synchronous:
            raise exc
        logger.warning("%s; re-syncing from the restarted shards' checkpoint", exc)
        self.resync()
        return CommitReceipt(applied=False, staleness=0, info={"resynced": 1.0})

    def _window(self, local: np.ndarray, steps: int) -> WorkerWindow:
        return WorkerWindow(local=local, pulled=self.pulled, center=self.center, window=max(1, steps), state=self.state)

    def _exchange(self, win: WorkerWindow, report: dict[str, float] | None) -> CommitReceipt:
        algo = self.algorithm
        if algo.pull_before_commit:
            self.client.pull(self.center)
        bases = self.client.versions
        assert algo.worker_delta is not None and algo.worker_reset is not None
        win.delta = np.ascontiguousarray(algo.worker_delta(win, self.params), dtype=np.float32)
        # The pull that follows the commit rides behind it, one round trip for both; a synchronous
        # round's pull waits for every worker, and a pull-first algorithm pulled already.
        pipelined = not algo.synchronous and not algo.pull_before_commit
        receipt = self._commit(win.delta, report, pull_into=self.center if pipelined else None)
        info = win.state.pop("info", None)
        if info:
            receipt = dataclasses.replace(receipt, info={**receipt.info, **info})
        if algo.synchronous:
            self.client.pull(self.center, min_version=[b + 1 for b in bases], wait=self._round_wait())
        algo.worker_reset(win, self.params)
        np.copyto(self.pulled, self.center)
        self.exchanges += 1
        return receipt

    def _commit(self, delta: np.ndarray, report: dict[str, float] | None, *,
                pull_into: np.ndarray | None = None) -> CommitReceipt:
        """Commits ``delta``, encoded with the codec when there is one, and pulls θ̃ into
        ``pull_into`` in the same round trip when it is given.

        With error feedback the payload is P = Δ + e, and after the replies, per shard slice:
        e ← P − decode(encode(P)) where the shard applied it, e ← 0 where the algorithm dropped
        it (a dropped commit loses its payload, as a raw one does). When a shard turns out to have
        restarted (:class:`ShardRestarted`), which of the others applied P is unknown: e ← 0, so
        nothing is applied twice, and the window is dropped as for a raw commit.
        """
        if self.codec is None:
            receipt = self.client.commit(delta, report=report, pull_into=pull_into)
            self.commit_bytes += delta.nbytes
            return receipt
        assert self.codec_args is not None and self.client.plan is not None
        plan = self.client.plan
        bad = np.flatnonzero(~np.isfinite(delta))
        if bad.size:
            raise ProtocolError("non_finite", f"`commit` data must be finite. Received: {delta[bad[0]]} at index "
                                f"{int(bad[0])}, before encoding with codec {self.codec.name!r}")
        feedback = self.codec_args.error_feedback
        if feedback:
            if self._residual is None:
                self._residual = np.zeros_like(delta)
                self._payload = np.empty_like(delta)
            assert self._payload is not None
            payload = np.add(delta, self._residual, out=self._payload)
        else:
            payload = delta
        parts = [tuple(self.codec.encode(part, self.codec_args)) for part in plan.slices(payload)]
        try:
            receipt = self.client.commit_encoded(self.codec.name, parts, report=report, pull_into=pull_into)
        except ShardRestarted:
            if self._residual is not None:
                self._residual.fill(0.0)
            raise
        self.commit_bytes += sum(a.nbytes for arrays in parts for a in arrays)
        if feedback and self._residual is not None:
            for arrays, sent, left, applied in zip(parts, plan.slices(self._residual), plan.slices(payload),
                                                   receipt.applied_by):
                if applied:
                    self.codec.decode(arrays, sent)  # e_k ← P_k − decode(encode(P_k)), in place
                    np.subtract(left, sent, out=sent)
                else:
                    sent.fill(0.0)
        return receipt

    def flush(self) -> CommitReceipt | None:
        """Commits what error feedback still holds, e, as raw float32, and sets e ← 0; None when e is
        zero or there is none. :meth:`finish` calls it, so the final center holds every update."""
        if self._residual is None or not self._residual.any():
            return None
        assert self.client.plan is not None
        receipt = self.client.commit(self._residual)
        self.flushed_bytes += self._residual.nbytes
        for left, applied in zip(self.client.plan.slices(self._residual), receipt.applied_by):
            if applied:
                left.fill(0.0)
        return receipt

    @property
    def residual(self) -> np.ndarray | None:
        """e, what error feedback has yet to send (None without it)."""
        return self._residual

    def _round_wait(self) -> float:
        limit = self.algorithm.pull_wait(self.params)
        return DEFAULT_ROUND_WAIT if limit is None else float(limit)

    def finish(self) -> None:
        """Waits for an exchange in flight, commits what error feedback still holds
        (:meth:`flush`), then tells the shards this worker is done."""
        self.collect(block=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        try:
            self.flush()
        except ShardRestarted as exc:
            logger.warning("%s; the error-feedback remainder is dropped", exc)
        self.client.bye()
