"""The HTTP side of ``zdk serve``: aiohttp routes over the store and the runner.

Every ``/api`` route but ``/api/health`` needs ``Authorization: Bearer <token>``; a user sees,
cancels and fetches only their own jobs (another user's job answers 404, as a missing one).
Handlers are thin: validation lives in :mod:`zdk.service.spec` and :mod:`zdk.service.build`,
and blocking work (Keras, Spark, SQLite writes of artifacts) runs on a thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import shutil
import ssl
import tempfile
import threading
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from zdk.errors import ConfigError, TooLarge
from zdk.service import build
from zdk.service.runner import INPUT_MODEL, JobRunner
from zdk.service.spec import JobSpec
from zdk.service.store import FINAL, RUNNING, JobRecord, Store

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_SPEC_BYTES = 1 << 20
_USER = web.RequestKey("user", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How ``zdk serve`` runs.

    Args:
        state_dir: the database (``zdk.db``), job folders and temporary uploads live here.
        host, port: where to listen (port 0: a free one).
        master: the Spark master (None: the active session, else an embedded ``local[*]``).
        policy: data roots, tables and modules jobs may use; the model size limit.
        max_jobs: jobs running at once.
        tls_cert, tls_key: PEM files; HTTPS when given (use it anywhere but loopback).
    """

    state_dir: str
    host: str = "127.0.0.1"
    port: int = 8470
    master: str | None = None
    policy: build.Policy = build.Policy()
    max_jobs: int = 1
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(f"`tls_cert` and `tls_key` go together. Received: tls_cert={self.tls_cert!r}, "
                              f"tls_key={self.tls_key!r}", field="tls_cert")
        if self.max_jobs < 1:
            raise ConfigError(f"`max_jobs` must be ≥ 1. Received: max_jobs={self.max_jobs}", field="max_jobs")

    @property
    def database(self) -> str:
        return os.path.join(self.state_dir, "zdk.db")


def open_store(state_dir: str) -> Store:
    os.makedirs(os.path.join(state_dir, "jobs"), exist_ok=True)
    return Store(os.path.join(state_dir, "zdk.db"))


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


_UNAUTHORIZED = {"error": "a valid token is required: send `Authorization: Bearer <token>` "
                          "(zdk serve token create --user NAME makes one)"}


class JobService:
    """The aiohttp application and what it drives."""

    def __init__(self, config: ServeConfig, store: Store, runner: JobRunner) -> None:
        self.config = config
        self.store = store
        self.runner = runner
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="zdk-serve")
        self.app = web.Application(middlewares=[self._errors, self._auth],
                                   client_max_size=config.policy.max_model_bytes + MAX_SPEC_BYTES)
        self.app.add_routes([
            web.get("/", self.index),
            web.get("/api/health", self.health),
            web.get("/api/whoami", self.whoami),
            web.post("/api/jobs", self.submit),
            web.get("/api/jobs", self.list_jobs),
            web.get("/api/jobs/{id}", self.get_job),
            web.post("/api/jobs/{id}/cancel", self.cancel),
            web.get("/api/jobs/{id}/model", self.model),
            web.get("/api/jobs/{id}/history", self.history),
            web.get("/api/jobs/{id}/logs", self.logs),
            web.static("/static", STATIC),
        ])

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except TooLarge as exc:
            return _error(413, str(exc), exc.field)
        except ConfigError as exc:
            return _error(400, str(exc), exc.field)
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return _error(500, "internal error; the server's log has the details")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/") or request.path == "/api/health":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        # Every wrong token, missing ones included, is hashed and looked up: one path, one answer.
        user = await asyncio.get_running_loop().run_in_executor(self.pool, self.store.user_of, token)
        if user is None:
            return web.json_response(_UNAUTHORIZED, status=401, headers={"WWW-Authenticate": "Bearer"})
        request[_USER] = user
        return await handler(request)

    # ------------------------------------------------------------------ routes

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(os.path.join(STATIC, "index.html"))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def whoami(self, request: web.Request) -> web.Response:
        return web.json_response({"user": request[_USER]})

    async def submit(self, request: web.Request) -> web.Response:
        """``multipart/form-data`` with a ``spec`` (JSON) and a ``model`` (``.keras``) part."""
        if not request.content_type.startswith("multipart/"):
            raise ConfigError(f"`request` must be multipart/form-data with the parts `spec` and `model`. "
                              f"Received: Content-Type {request.content_type!r}", field="request")
        parts = await self._read_parts(request)
        if "spec" not in parts:
            raise ConfigError("`spec` is missing: send the job spec as a form part named spec", field="spec")
        if "model" not in parts:
            raise ConfigError("`model` is missing: send the .keras file as a form part named model", field="model")
        spec = JobSpec.from_json(parts["spec"])
        build.check_model_file(parts["model"], self.config.policy)
        job = await asyncio.get_running_loop().run_in_executor(
            self.pool, self._admit, request[_USER], spec, parts["model"])
        self.runner.notify()
        logger.info("job %s (%s) queued for %s", job.id, job.name, job.owner)
        return web.json_response(job.public(), status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = self.store.jobs(owner=request[_USER])
        return web.json_response({"jobs": [self._view(j, series=False) for j in jobs]})

    async def get_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._view(self._job(request)))

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state in FINAL:
            return _error(409, f"`id` names a job that already ended ({job.state}). Received: id={job.id!r}", "id")
        state = await asyncio.get_running_loop().run_in_executor(self.pool, self.runner.cancel, job)
        return web.json_response({"id": job.id, "state": state})

    async def model(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        if job.model_path is None:
            return _error(409, f"`id` names a job without a trained model ({job.state}). Received: id={job.id!r}", "id")
        member = request.query.get("member", "0")
        path = job.model_path if member == "0" else os.path.join(job.directory, f"model-{member}.keras")
        if not member.isdigit() or not os.path.exists(path):
            return _error(404, f"`member` names no model of this job. Received: member={member!r}", "member")
        return web.FileResponse(path, headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{job.id}{"" if member == "0" else "-" + member}.keras"'})

    async def history(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            return _error(400, f"`format` must be json or csv. Received: format={fmt!r}", "format")
        if job.history_path is None:
            return _error(409, f"`id` names a job without a history ({job.state}). Received: id={job.id!r}", "id")
        path = job.history_path if fmt == "json" else os.path.splitext(job.history_path)[0] + ".csv"
        return web.FileResponse(path, headers={"Content-Type": "application/json" if fmt == "json" else "text/csv"})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        path = os.path.join(job.directory, "job.log")
        if not os.path.exists(path):
            return web.Response(text="", content_type="text/plain")
        return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})

    # ------------------------------------------------------------------ helpers

    def _job(self, request: web.Request) -> JobRecord:
        job = self.store.job(request.match_info["id"], owner=request[_USER])
        if job is None:
            raise web.HTTPNotFound(text='{"error": "`id` names no job of yours", "field": "id"}',
                                   content_type="application/json")
        return job

    def _view(self, job: JobRecord, *, series: bool = True) -> dict[str, Any]:
        view = job.public()
        if job.state == RUNNING:
            live = self.runner.live(job.id)
            if live:
                view["progress"] = {**(view["progress"] or {}), **live}
        if not series and view["progress"]:
            view["progress"] = {k: v for k, v in view["progress"].items() if k != "series"}
        return view

    async def _read_parts(self, request: web.Request) -> dict[str, bytes]:
        limits = {"spec": MAX_SPEC_BYTES, "model": self.config.policy.max_model_bytes}
        parts: dict[str, bytes] = {}
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                return parts
            name = getattr(part, "name", None)
            if name not in limits:
                raise ConfigError(f"`{name}` is not a part of a job submission; send `spec` and `model`. "
                                  f"Received: a part named {name!r}", field=name)
            chunks, size = [], 0
            while chunk := await part.read_chunk(1 << 16):  # type: ignore[union-attr]
                size += len(chunk)
                if size > limits[name]:
                    raise TooLarge(f"`{name}` must be at most {limits[name]} bytes. Received: more than "
                                      f"{limits[name]} bytes", field=name)
                chunks.append(chunk)
            parts[name] = b"".join(chunks)

    def _admit(self, owner: str, spec: JobSpec, model_bytes: bytes) -> JobRecord:
        """Validates the job against the model, the data and the cluster in a scratch folder,
        and only then moves it into place and records it: a refused job leaves nothing."""
        scratch = tempfile.mkdtemp(prefix="upload-", dir=os.path.join(self.config.state_dir, "tmp"))
        try:
            model_path = os.path.join(scratch, INPUT_MODEL)
            with open(model_path, "wb") as fh:
                fh.write(model_bytes)
            model = build.load_model(model_path)
            trainer = build.make_trainer(spec, model, self.config.policy)
            stages = build.make_stages(spec)
            build.prepare(build.read_data(self.runner.spark(), spec.data, self.config.policy), stages, trainer,
                          check_rows=True)
            slots = self.runner.slots()
            if spec.slots > slots:
                raise ConfigError(f"`resources` asks for {spec.slots} task slots (num_executors × num_processes); "
                                  f"the server's cluster has {slots}. Received: num_executors={spec.num_executors}, "
                                  f"num_processes={spec.num_processes}", field="resources")
            job_id = self.store.new_id()
            directory = os.path.join(self.config.state_dir, "jobs", job_id)
            os.rename(scratch, directory)
            return self.store.add_job(owner=owner, name=spec.name, spec=spec.to_dict(), directory=directory,
                                      job_id=job_id)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class JobServer:
    """``zdk serve`` in a background thread: the event loop, the runner and the store.

    Use :meth:`start` / :meth:`stop` (or ``with``); :attr:`url` is where it listens.
    """

    def __init__(self, config: ServeConfig, *, spark: Callable[[], Any] | None = None) -> None:
        self.config = config
        os.makedirs(os.path.join(config.state_dir, "tmp"), exist_ok=True)
        shutil.rmtree(os.path.join(config.state_dir, "tmp"), ignore_errors=True)  # uploads a crash left
        os.makedirs(os.path.join(config.state_dir, "tmp"), exist_ok=True)
        self.store = open_store(config.state_dir)
        build.import_custom_modules(config.policy)
        self.runner = JobRunner(self.store, spark=spark or (lambda: _session(config.master)), policy=config.policy,
                                max_jobs=config.max_jobs)
        self.service = JobService(config, self.store, self.runner)
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
        self.runner.start()
        logger.info("zdk serve listening on %s (state in %s)", self.url, self.config.state_dir)
        return self.url

    async def _listen(self) -> str:
        context = None
        if self.config.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        self._site_runner = web.AppRunner(self.service.app, access_log=None)
        await self._site_runner.setup()
        site = web.TCPSite(self._site_runner, self.config.host, self.config.port, ssl_context=context)
        await site.start()
        host, port = self._site_runner.addresses[0][:2]
        return f"{'https' if context else 'http'}://{host}:{port}"

    def stop(self) -> None:
        """Stops the runner (running jobs become interrupted), then the HTTP side and the store."""
        started = time.monotonic()
        self.runner.stop()
        if self._site_runner is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._site_runner.cleanup(), self._loop).result(30)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
        self.service.pool.shutdown(wait=True)
        self.store.close()
        logger.info("zdk serve stopped in %.1f s", time.monotonic() - started)


def _session(master: str | None) -> Any:
    from zdk.driver.session import get_session

    return get_session(master or "local[*]")
