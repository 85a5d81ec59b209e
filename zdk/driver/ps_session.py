"""The parameter server of one run: shards of its own, started and always stopped, or a running
``zdk ps`` it attaches to; the resume point after a crash; the center at the end.

The driver talks to the shards as an observer (:data:`~zdk.ps.protocol.OBSERVER_DRIVER`): it
never registers as a worker, so it neither holds up synchronous rounds nor counts as one.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
from typing import Any, Callable, TypeVar

import numpy as np

from zdk.driver.plan import ServerPlan, TrainingPlan
from zdk.driver.result import ResumeInfo
from zdk.errors import ConfigError, DeadlineExceeded, ShardRestarted
from zdk.ps import checkpoint
from zdk.ps.client import PSClient
from zdk.ps.launcher import ShardGroup, start_shards
from zdk.ps.protocol import OBSERVER_DRIVER
from zdk.transports.curve import CurveKeys, is_loopback

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How many shard restarts one observer request (center, stats, control) rides through.
OBSERVER_RESYNCS = 3

#: Seconds a running ``zdk ps`` (``parameter_server=``) has to answer the first `hello`.
PROBE_SECONDS = 5.0


def job_keys(server: ServerPlan) -> CurveKeys | None:
    """The CURVE keys of a run: the given ones for a running PS; fresh ones when shards of its
    own need them (``security="curve"``, or ``"auto"`` off loopback); else None (no encryption)."""
    if server.external:
        return server.curve_keys
    if server.security == "curve" or (server.security == "auto" and not is_loopback(server.host)):
        return CurveKeys.generate()
    return None


def check_resume(plan: TrainingPlan) -> None:
    """Whether ``plan`` can resume: it has a parameter server, and its own shards have a complete
    checkpoint to restore (a running ``zdk ps`` resumes from its current state).

    Raises:
        ConfigError: naming what is missing.
    """
    if not plan.uses_ps:
        raise ConfigError(f"`resume` needs an algorithm with a parameter server. Received: resume=True with "
                          f"{plan.algorithm.name!r}", field="resume")
    server = plan.server
    if server.external:
        return
    if server.checkpoint.directory is None:
        raise ConfigError("`resume=True` needs the `checkpoint_dir` the interrupted job wrote. "
                          "Received: checkpoint_dir=None", field="checkpoint_dir")
    absent = checkpoint.missing(server.checkpoint.directory, server.num_shards)
    if absent:
        raise ConfigError(f"`resume=True` needs a checkpoint of each of the {server.num_shards} shards in "
                          f"checkpoint_dir={server.checkpoint.directory!r}. Received: {absent} missing", field="resume")


class PSSession:
    """A run's parameter server, as a context manager.

    Args:
        plan: the run's plan.
        initial: the flat weights the center starts from (ignored when resuming).
        resume: continue from the shards' checkpoints (own shards) or their current state (``zdk ps``).
    """

    def __init__(self, plan: TrainingPlan, *, initial: np.ndarray, resume: bool = False) -> None:
        self.plan = plan
        self.server = plan.server
        self.initial = initial
        self.resume = resume
        self.curve = job_keys(plan.server)
        self.endpoints: list[str] = []
        self.first_epoch = 0
        self.resumed: ResumeInfo | None = None
        self.initial_file: str | None = None  # the center starts the workers, not a shipped file
        self._group: ShardGroup | None = None
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None

    def __enter__(self) -> "PSSession":
        if self.server.external:
            self._attach()
        else:
            self._start()
        try:
            if self.resume:
                self.resumed = self._resume_point()
                self.first_epoch = self.resumed.first_epoch
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def begin(self) -> "PSSession":
        """Starts the shards (or attaches to a running ``zdk ps``) on a thread, so the driver's own
        checks of the data run meanwhile; :meth:`wait` returns the session once they serve.
        :meth:`close` stops them, also while they start."""
        def enter() -> None:
            try:
                self.__enter__()
            except BaseException as exc:  # raised by wait(), on the caller's thread
                self._start_error = exc

        # In the caller's context: what it set for its own thread (e.g. the job service's log) holds here too.
        context = contextvars.copy_context()
        self._starting = threading.Thread(target=context.run, args=(enter,), name="zdk-shards-start", daemon=True)
        self._starting.start()
        return self

    def wait(self) -> "PSSession":
        """The session, once :meth:`begin`'s start has ended.

        Raises:
            whatever the start raised (e.g. ``LaunchError``, or ``ConfigError`` for a running PS that
            does not fit the plan).
        """
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        error, self._start_error = self._start_error, None
        if error is not None:
            raise error
        return self

    def close(self) -> None:
        if self._starting is not None:  # the caller is leaving while the shards start (a data error, Ctrl-C)
            self._starting.join()
            self._starting = None
            if self._start_error is not None:
                logger.warning("the parameter server failed to start as well: %s", self._start_error)
                self._start_error = None
        if self._group is not None:
            self._group.stop()
            self._group = None

    def client(self, *, timeout: float | None = None) -> PSClient:
        """An observer client of the shards (close it, or use ``with``)."""
        return PSClient(self.endpoints, worker_id=OBSERVER_DRIVER, timeout=timeout or self.server.timeout,
                        curve=self.curve)

    def center(self) -> np.ndarray:
        """θ̃, pulled from every shard."""
        return self._observe(lambda client: client.pull())

    def stats(self, *, epochs_from: int | None = None) -> list[dict[str, Any]]:
        """Every shard's ``stats``, with the workers' epoch reports from ``epochs_from`` on when given."""
        return self._observe(lambda client: client.stats(epochs_from=epochs_from))

    def control(self, stop: bool, learning_rate: float | None = None) -> None:
        """Tells every worker, through the shards, to stop, or to train at ``learning_rate``, from its next exchange."""
        self._observe(lambda client: client.set_control(stop=stop, learning_rate=learning_rate))

    def _observe(self, request: Callable[[PSClient], T]) -> T:
        """``request`` on a fresh observer client. A shard restarted from its checkpoint between
        the client's hello and its request (a supervisor brings killed shards back) is met again,
        as workers do, up to ``OBSERVER_RESYNCS`` times: each request here is idempotent."""
        with self.client() as client:
            client.hello(register=False)
            for resyncs in itertools.count():
                try:
                    return request(client)
                except ShardRestarted as exc:
                    if resyncs >= OBSERVER_RESYNCS:
                        raise
                    logger.info("%s; asking again", exc)
                    client.hello(register=False, resync=True)
        raise AssertionError("unreachable")

    def _start(self) -> None:
        cp = self.server.checkpoint
        if self.resume:
            check_resume(self.plan)
        params = self.plan.params.to_dict()
        self._group = start_shards(num_shards=self.server.num_shards, total_size=self.initial.size,
                                   bind=f"tcp://{self.server.host}:{self.server.port}",
                                   algorithm=self.plan.algorithm.name, params=params,
                                   initial=None if self.resume else self.initial, curve=self.curve,
                                   checkpoint_dir=cp.directory, checkpoint_every=cp.every, codec=self.plan.codec)
        self.endpoints = list(self._group.endpoints)

    def _attach(self) -> None:
        self.endpoints = list(self.server.endpoints)
        with self.client() as client:
            info = self._probe(client)
            if info.total_size != self.initial.size:
                raise ConfigError(f"`parameter_server` holds {info.total_size} parameters; the model has "
                                  f"{self.initial.size}. Received: parameter_server={self.endpoints}",
                                  field="parameter_server")
            if info.algorithm != self.plan.algorithm.name:
                raise ConfigError(f"`parameter_server` runs {info.algorithm!r}; this run needs "
                                  f"{self.plan.algorithm.name!r}. Received: parameter_server={self.endpoints}",
                                  field="parameter_server")
            if not self.resume:
                client.init(self.initial)

    def _probe(self, client: PSClient) -> Any:
        """``hello`` with a short deadline, so a wrong address fails in seconds, naming what to check."""
        timeout, tries = client.timeout, client.tries
        client.timeout, client.tries = min(timeout, PROBE_SECONDS), 2
        try:
            return client.hello(register=False)
        except DeadlineExceeded:
            keys = " --curve-keys FILE" if self.curve else ""
            raise ConfigError(
                f"`parameter_server` {self.endpoints} did not answer within {client.timeout:.0f} s: is `zdk ps` "
                f"running there, and reachable from this host? Check with `zdk ps status "
                f"{' '.join(self.endpoints)}`{keys}.", field="parameter_server") from None
        finally:
            client.timeout, client.tries = timeout, tries

    def _resume_point(self) -> ResumeInfo:
        """The first epoch not completed by every worker, from the progress reports the shards
        restored with their checkpoint (the epoch in progress at the crash starts over)."""
        tasks = self.plan.num_tasks
        with self.client() as client:
            client.hello(register=False)
            stats = client.stats()[0]
        progress = {int(w): r for w, r in stats.get("restored_progress", {}).items() if int(w) < tasks}
        done = [int(r.get("epoch", 0)) + (0 if r.get("active", 1.0) else 1) for r in progress.values()]
        info = ResumeInfo(version=int(stats["version"]), first_epoch=min(done) if len(done) == tasks else 0,
                          source=stats.get("restored_from"))
        logger.info("resuming from %s at version %d: epochs %d..%d remain", info.source, info.version,
                    info.first_epoch, self.plan.num_epoch - 1)
        return info
