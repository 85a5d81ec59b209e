"""``zdk serve`` as one server: its configuration, and the parts wired together and run — the
HTTP side on an event loop in a background thread (TLS when configured), the scheduler, the
model loader box, the retention sweep, the store — with start and stop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import ssl
import threading
import time
from typing import Any, Callable

from aiohttp import web

from zdk.errors import ConfigError
from zdk.service import build, versions
from zdk.service.admission import Admission
from zdk.service.artifacts import StateDir
from zdk.service.cluster import Cluster
from zdk.service.gate import AdmissionGate
from zdk.service.model_sandbox import ModelSandbox
from zdk.service.policy import Policy, amount, count
from zdk.service.retention import Retention
from zdk.service.routes import JobApi
from zdk.service.scheduler import Scheduler
from zdk.service.shards import CHECKPOINT_EVERY, ShardSettings
from zdk.service.store import Store

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How ``zdk serve`` runs.

    Args:
        state_dir: the database, job folders and temporary uploads live here
            (:mod:`zdk.service.artifacts`); made 0700.
        host, port: where to listen (port 0: a free one).
        master: the Spark master (None: the active session, else an embedded ``local[*]``).
        policy: data roots, tables and modules jobs may use; the model's limits; the caps on
            shards, epochs, batch size and timeout.
        max_jobs: jobs running at once.
        max_admissions: submissions checked at once (each loads a model and runs a Spark job);
            more are refused with 503.
        max_admissions_per_user: submissions of one user checked at once; more get 429.
        max_queued_per_user: a user's jobs queued or running at once; more get 429.
        retention_days: ended jobs (records and folders) are removed this many days after they
            ended (None: kept until deleted).
        tls_cert, tls_key: PEM files; HTTPS when given (use it anywhere but loopback).
        ps_host: the address jobs' parameter-server shards bind (CURVE-protected): loopback
            when the executors run on this host, else an address of this host they reach.
        checkpoint_every: seconds between a running job's shard checkpoints (a restart resumes
            from the last one, losing at most that much training).

    Raises:
        ConfigError: naming ``tls_cert`` when only one of the pair is given, ``ps_host`` when it
            is not a host, or the count or duration that is not positive.
    """

    state_dir: str
    host: str = "127.0.0.1"
    port: int = 8470
    master: str | None = None
    policy: Policy = Policy()
    max_jobs: int = 1
    max_admissions: int = 2
    max_admissions_per_user: int = 1
    max_queued_per_user: int = 20
    retention_days: float | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    ps_host: str = "127.0.0.1"
    checkpoint_every: float = CHECKPOINT_EVERY

    def __post_init__(self) -> None:
        ShardSettings(host=self.ps_host, checkpoint_every=self.checkpoint_every)  # refused now, not at the first job
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(f"`tls_cert` and `tls_key` go together. Received: tls_cert={self.tls_cert!r}, "
                              f"tls_key={self.tls_key!r}", field="tls_cert")
        for name in ("max_jobs", "max_admissions", "max_admissions_per_user", "max_queued_per_user"):
            count(getattr(self, name), name)
        if self.retention_days is not None:
            amount(self.retention_days, "retention_days", "days")

    @property
    def shards(self) -> ShardSettings:
        """Where jobs' shards bind and how often they checkpoint."""
        return ShardSettings(host=self.ps_host, checkpoint_every=self.checkpoint_every)

    @property
    def state(self) -> StateDir:
        return StateDir(directory=os.path.abspath(self.state_dir))


class JobServer:
    """``zdk serve`` in a background thread: the event loop, the scheduler and the store.

    Use :meth:`start` / :meth:`stop` (or ``with``); :attr:`url` is where it listens.

    Args:
        config: how it runs.
        spark: returns the Spark session (default: the config's ``master``).

    Raises:
        ConfigError: naming ``keras`` or ``aiohttp`` when the installed one is older than its
            safe floor (:mod:`zdk.service.versions`).
    """

    def __init__(self, config: ServeConfig, *, spark: Callable[[], Any] | None = None) -> None:
        versions.require_safe()
        self.config = config
        state = config.state
        state.create()
        self.store = Store(state.database)
        build.import_custom_modules(config.policy)
        self.cluster = Cluster(spark) if spark is not None else Cluster.of_master(config.master)
        self.sandbox = ModelSandbox(custom_modules=config.policy.custom_modules, size=config.max_admissions)
        self.scheduler = Scheduler(self.store, cluster=self.cluster, policy=config.policy, max_jobs=config.max_jobs,
                                   shards=config.shards)
        self.retention = (Retention(self.store, state, days=config.retention_days)
                          if config.retention_days is not None else None)
        admission = Admission(state=state, store=self.store, cluster=self.cluster, policy=config.policy,
                              sandbox=self.sandbox, max_queued_per_user=config.max_queued_per_user,
                              shards=config.shards)
        gate = AdmissionGate(total=config.max_admissions, per_user=config.max_admissions_per_user)
        self.api = JobApi(store=self.store, state=state, admission=admission, gate=gate, scheduler=self.scheduler,
                          max_model_bytes=config.policy.max_model_bytes)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="zdk-serve-http", daemon=True)
        self._site_runner: web.AppRunner | None = None

    def __enter__(self) -> "JobServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Starts listening and running the queue; returns the URL."""
        zdk_logger = logging.getLogger("zdk")
        if zdk_logger.getEffectiveLevel() > logging.INFO:
            zdk_logger.setLevel(logging.INFO)  # each job's log file records zdk's INFO lines
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(30)
        self.scheduler.start()
        if self.retention is not None:
            self.retention.start()
        logger.info("zdk serve listening on %s (state in %s)", self.url, self.config.state_dir)
        return self.url

    async def _listen(self) -> str:
        context = None
        if self.config.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        self._site_runner = web.AppRunner(self.api.app, access_log=None)
        await self._site_runner.setup()
        site = web.TCPSite(self._site_runner, self.config.host, self.config.port, ssl_context=context)
        await site.start()
        host, port = self._site_runner.addresses[0][:2]
        return f"{'https' if context else 'http'}://{host}:{port}"

    def stop(self) -> None:
        """Stops the scheduler (running jobs go back to the queue or become interrupted), then
        the HTTP side, the Spark session the server started, and the store."""
        started = time.monotonic()
        if self.retention is not None:
            self.retention.stop()
        self.scheduler.stop()
        if self._site_runner is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._site_runner.cleanup(), self._loop).result(30)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
        self.cluster.stop()  # after the HTTP side: no request needs Spark any more
        self.api.close()
        self.sandbox.close()
        self.store.close()
        logger.info("zdk serve stopped in %.1f s", time.monotonic() - started)
