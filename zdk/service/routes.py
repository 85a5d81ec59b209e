"""The HTTP side of ``zdk serve``: aiohttp routes and middleware over the store, admission and
the scheduler.

Every ``/api`` route but ``/api/health`` needs ``Authorization: Bearer <token>``; a user sees,
cancels, fetches and deletes only their own jobs (another user's job answers 404, as a missing
one). Handlers are thin: validation lives in :mod:`zdk.jobs.spec` and
:mod:`zdk.service.admission`. Blocking work runs on two thread pools, so that slow admissions
(Keras, a schema scan, a Spark job) never hold up the quick work (token checks, SQLite reads,
cancel, delete): ``reads`` for the quick, ``admissions`` for the slow, whose number in flight
:class:`~zdk.service.gate.AdmissionGate` bounds in total and per user. A ``ConfigError`` answers
400 (``TooLarge`` 413) with ``{"error": message, "field": exc.field}``; a ``Busy`` 429 or 503
with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web

from zdk.errors import ConfigError, TooLarge
from zdk.jobs.spec import JobSpec
from zdk.jobs.states import FINAL, RUNNING
from zdk.service import retention
from zdk.service.admission import Admission
from zdk.service.artifacts import JobFolder, StateDir
from zdk.service.gate import AdmissionGate, Busy
from zdk.service.scheduler import Scheduler
from zdk.service.store import JobRecord, Store

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_SPEC_BYTES = 1 << 20
#: Threads for the quick blocking work: token checks, SQLite reads, cancel, delete.
READ_THREADS = 4
_USER = web.RequestKey("user", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")
_UNAUTHORIZED = {"error": "a valid token is required: send `Authorization: Bearer <token>` "
                          "(zdk serve token create --user NAME makes one)"}


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


class JobApi:
    """The aiohttp application (:attr:`app`) and the thread pools its handlers block on.

    Args:
        store: token hashes and job records.
        state: the job folders (deleting a job removes its folder).
        admission: checks and queues submissions.
        gate: how many admissions run at once, in total and per user.
        scheduler: cancels jobs and knows the running ones' live progress.
        max_model_bytes: the largest ``model`` part read.
    """

    def __init__(self, *, store: Store, state: StateDir, admission: Admission, gate: AdmissionGate,
                 scheduler: Scheduler, max_model_bytes: int) -> None:
        self.store = store
        self.state = state
        self.admission = admission
        self.gate = gate
        self.scheduler = scheduler
        self.limits = {"spec": MAX_SPEC_BYTES, "model": max_model_bytes}
        self.reads = concurrent.futures.ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="zdk-serve-read")
        self.admissions = concurrent.futures.ThreadPoolExecutor(max_workers=gate.total,
                                                                thread_name_prefix="zdk-serve-admit")
        self.app = web.Application(middlewares=[self._errors, self._auth],
                                   client_max_size=max_model_bytes + MAX_SPEC_BYTES)
        self.app.add_routes([
            web.get("/", self.index),
            web.get("/api/health", self.health),
            web.get("/api/whoami", self.whoami),
            web.post("/api/jobs", self.submit),
            web.get("/api/jobs", self.list_jobs),
            web.get("/api/jobs/{id}", self.get_job),
            web.delete("/api/jobs/{id}", self.delete),
            web.post("/api/jobs/{id}/cancel", self.cancel),
            web.get("/api/jobs/{id}/model", self.model),
            web.get("/api/jobs/{id}/history", self.history),
            web.get("/api/jobs/{id}/epochs", self.epochs),
            web.get("/api/jobs/{id}/csvlog", self.csv_log),
            web.get("/api/jobs/{id}/logs", self.logs),
            web.static("/static", STATIC),
        ])

    def close(self) -> None:
        """Waits for the handlers' blocking work to finish."""
        self.admissions.shutdown(wait=True)
        self.reads.shutdown(wait=True)

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the quick pool."""
        return await asyncio.get_running_loop().run_in_executor(self.reads, function, *args)

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except TooLarge as exc:
            return _error(413, str(exc), exc.field)
        except ConfigError as exc:
            return _error(400, str(exc), exc.field)
        except Busy as exc:
            response = _error(exc.status, str(exc))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("%s %r failed", request.method, request.path)
            return _error(500, "internal error; the server's log has the details")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/") or request.path == "/api/health":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        # Every wrong token, missing ones included, is hashed and looked up: one path, one answer.
        user = await self._read(self.store.user_of, token)
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
        parts = await self._read_parts(request)  # on the event loop, size-capped: it holds no thread
        if "spec" not in parts:
            raise ConfigError("`spec` is missing: send the job spec as a form part named spec", field="spec")
        if "model" not in parts:
            raise ConfigError("`model` is missing: send the .keras file as a form part named model", field="model")
        spec = JobSpec.from_json(parts["spec"])
        release = self.gate.take(request[_USER])
        # The place is given back when the work ends, even if the client left before.
        try:
            work = self.admissions.submit(self.admission.admit, request[_USER], spec, parts["model"])
        except BaseException:
            release()
            raise
        work.add_done_callback(lambda _: release())
        job = await asyncio.wrap_future(work)
        self.scheduler.notify()
        logger.info("job %s (%r) queued for %s", job.id, job.name, job.owner)
        return web.json_response(await self._read(self._view, job), status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        user = request[_USER]
        views = await self._read(lambda: [self._view(j, series=False) for j in self.store.jobs(owner=user)])
        return web.json_response({"jobs": views})

    async def get_job(self, request: web.Request) -> web.Response:
        return web.json_response(await self._read(self._view, await self._job(request)))

    async def cancel(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        if job.state in FINAL:
            return _error(409, f"`id` names a job that already ended ({job.state}). Received: id={job.id!r}", "id")
        state = await self._read(self.scheduler.cancel, job)
        return web.json_response({"id": job.id, "state": state})

    async def delete(self, request: web.Request) -> web.Response:
        """Removes an ended job: its record and its folder (models, history, log)."""
        job = await self._job(request)
        if job.state not in FINAL or not await self._read(retention.delete_job, self.store, self.state, job):
            return _error(409, f"`id` names a job that has not ended ({job.state}); cancel it first, then delete "
                               f"it. Received: id={job.id!r}", "id")
        return web.json_response({"id": job.id, "deleted": True})

    async def model(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        if job.model_path is None:
            return _error(409, f"`id` names a job without a trained model ({job.state}). Received: id={job.id!r}", "id")
        member = request.query.get("member", "0")
        index = int(member) if member.isascii() and member.isdigit() else -1
        path = JobFolder(directory=job.directory).model(index) if index >= 0 else ""
        if not path or not os.path.exists(path):
            return _error(404, f"`member` names no model of this job. Received: member={member!r}", "member")
        filename = f"{job.id}.keras" if index == 0 else f"{job.id}-{index}.keras"
        return web.FileResponse(path, headers={"Content-Type": "application/zip",
                                               "Content-Disposition": f'attachment; filename="{filename}"'})

    async def history(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            return _error(400, f"`format` must be json or csv. Received: format={fmt!r}", "format")
        if job.history_path is None:
            return _error(409, f"`id` names a job without a history ({job.state}). Received: id={job.id!r}", "id")
        folder = JobFolder(directory=job.directory)
        return web.FileResponse(folder.history_json if fmt == "json" else folder.history_csv,
                                headers={"Content-Type": "application/json" if fmt == "json" else "text/csv"})

    async def epochs(self, request: web.Request) -> web.StreamResponse:
        """A watched job's per-epoch figures (``{"epoch", "loss", "val_loss", …}`` each), once it
        finished; ``progress.epoch_logs`` has them while it runs."""
        job = await self._job(request)
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            return _error(400, f"`format` must be json or csv. Received: format={fmt!r}", "format")
        folder = JobFolder(directory=job.directory)
        path = folder.epochs_json if fmt == "json" else folder.epochs_csv
        if not await self._read(os.path.exists, path):
            return _error(409, f"`id` names a job without per-epoch figures ({job.state}): they are written when a "
                               f"job with `validation` or `callbacks` finishes. Received: id={job.id!r}", "id")
        return web.FileResponse(path, headers={"Content-Type": "application/json" if fmt == "json" else "text/csv"})

    async def csv_log(self, request: web.Request) -> web.StreamResponse:
        """The file of the job's ``CSVLogger`` callback (written as epochs end)."""
        job = await self._job(request)
        path = JobFolder(directory=job.directory).csv_log
        if not await self._read(os.path.exists, path):
            return _error(409, f"`id` names a job without a CSVLogger file ({job.state}): give the job a CSVLogger "
                               f"callback; it writes at every epoch's end. Received: id={job.id!r}", "id")
        return web.FileResponse(path, headers={"Content-Type": "text/csv"})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        path = JobFolder(directory=(await self._job(request)).directory).log
        if not os.path.exists(path):
            return web.Response(text="", content_type="text/plain")
        return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})

    # ------------------------------------------------------------------ helpers

    async def _job(self, request: web.Request) -> JobRecord:
        job = await self._read(self.store.job, request.match_info["id"], request[_USER])
        if job is None:
            raise web.HTTPNotFound(text='{"error": "`id` names no job of yours", "field": "id"}',
                                   content_type="application/json")
        return job

    def _view(self, job: JobRecord, *, series: bool = True) -> dict[str, Any]:
        view = job.public()
        folder = JobFolder(directory=job.directory)
        view["has_epochs"] = os.path.exists(folder.epochs_json)
        view["has_csv_log"] = os.path.exists(folder.csv_log)
        if job.state == RUNNING:
            live = self.scheduler.live(job.id)
            if live:
                view["progress"] = {**(view["progress"] or {}), **live}
        if not series and view["progress"]:
            view["progress"] = {k: v for k, v in view["progress"].items() if k not in ("series", "epoch_logs")}
        return view

    async def _read_parts(self, request: web.Request) -> dict[str, bytes]:
        parts: dict[str, bytes] = {}
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                return parts
            name = getattr(part, "name", None)
            if name not in self.limits:
                raise ConfigError(f"`{name}` is not a part of a job submission; send `spec` and `model`. "
                                  f"Received: a part named {name!r}", field=name)
            limit = self.limits[name]
            chunks, size = [], 0
            while chunk := await part.read_chunk(1 << 16):  # type: ignore[union-attr]
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"`{name}` must be at most {limit} bytes. Received: more than {limit} bytes",
                                   field=name)
                chunks.append(chunk)
            parts[name] = b"".join(chunks)
