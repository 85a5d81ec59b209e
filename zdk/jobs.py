"""Submitting training jobs to a ``zdk serve`` job server, from a notebook or a script.

dist-keras's call shape, with a token instead of a secret and no pickle::

    job = Job(token, "digits-adag", "digits.parquet", 1, 2, trainer)
    job.send("http://127.0.0.1:8470")
    job.wait_completion()
    model = job.get_trained_model()
    history = job.get_history()

The trainer is described, not shipped: its class name, its arguments as JSON (Keras optimizer
and loss objects as their Keras configs) and its model as ``.keras`` bytes. :class:`JobClient`
is the REST API underneath, which ``zdk job …`` uses too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from typing import Any, Sequence

from zdk.errors import ConfigError, DeadlineExceeded, JobError

logger = logging.getLogger(__name__)

ENDED = ("finished", "failed", "cancelled", "interrupted")


class JobClient:
    """The job server's REST API.

    Args:
        url: ``http://host:port`` (``https://`` when the server has TLS).
        token: the user's token (``zdk serve token create --user NAME``).
        timeout: seconds for any one request.
        verify: TLS verification: True, False, or a CA bundle path (a self-signed server's cert).
    """

    def __init__(self, url: str, token: str, *, timeout: float = 60.0, verify: bool | str = True) -> None:
        import requests

        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"`url` must start with http:// or https://. Received: url={url!r}", field="url")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self.verify = verify  # per request: a session's own setting loses to $REQUESTS_CA_BUNDLE

    def close(self) -> None:
        self._session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        try:
            response = self._session.request(method, self.url + path, timeout=self.timeout, verify=self.verify,
                                             **kwargs)
        except requests.Timeout:
            raise DeadlineExceeded(f"the job server at {self.url} did not answer {method} {path} within "
                                   f"{self.timeout} s") from None
        except requests.ConnectionError as exc:
            raise JobError(f"cannot reach the job server at {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text[:500] or response.reason}
            raise JobError(f"{response.status_code} from {self.url}{path}: {body.get('error')}",
                           status=response.status_code, field=body.get("field"))
        return response

    def submit(self, spec: dict[str, Any], model: bytes) -> dict[str, Any]:
        """Queues a job; returns its record (``id``, ``state`` …)."""
        files = {"spec": ("spec.json", json.dumps(spec).encode(), "application/json"),
                 "model": ("model.keras", model, "application/zip")}
        return dict(self._request("POST", "/api/jobs", files=files).json())

    def jobs(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/jobs").json()["jobs"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/jobs/{job_id}/cancel").json())

    def model_bytes(self, job_id: str, member: int = 0) -> bytes:
        return bytes(self._request("GET", f"/api/jobs/{job_id}/model", params={"member": member}).content)

    def history(self, job_id: str, fmt: str = "json") -> Any:
        response = self._request("GET", f"/api/jobs/{job_id}/history", params={"format": fmt})
        return response.json() if fmt == "json" else response.text

    def logs(self, job_id: str) -> str:
        return str(self._request("GET", f"/api/jobs/{job_id}/logs").text)

    def wait(self, job_id: str, *, timeout: float | None = None, interval: float = 1.0,
             progress: bool = True) -> dict[str, Any]:
        """Polls until the job ends; shows a progress bar on a terminal. Returns the final record.

        Raises:
            DeadlineExceeded: after ``timeout`` seconds (the job keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(job_id) if progress and sys.stderr.isatty() else None
        try:
            while True:
                job = self.job(job_id)
                if bar is not None:
                    bar.update(job)
                if job["state"] in ENDED:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded(f"job {job_id} on {self.url} is still {job['state']} after {timeout} s")
                time.sleep(interval)
        finally:
            if bar is not None:
                bar.close()


class _Bar:
    """A rich progress bar fed by the job's record."""

    def __init__(self, job_id: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn(f"[bold]zdk job {job_id}[/] {{task.description}}"), BarColumn(),
                                  TextColumn("{task.completed}{task.fields[of]} steps"),
                                  TextColumn("{task.fields[rate]} samples/s, loss {task.fields[loss]}"),
                                  TimeElapsedColumn())
        self._progress.start()
        self._task = self._progress.add_task("queued", total=None, of="", rate="-", loss="-")

    def update(self, job: dict[str, Any]) -> None:
        p = job.get("progress") or {}
        total = p.get("total")
        self._progress.update(self._task, description=job["state"], completed=p.get("steps", 0), total=total,
                              of=f"/{total}" if total else "", rate=f"{p.get('samples_per_s', 0):,.0f}",
                              loss=f"{p['loss']:.4f}" if p.get("loss") is not None else "-")

    def close(self) -> None:
        self._progress.stop()


def trainer_spec(trainer: Any) -> dict[str, Any]:
    """The ``trainer`` part of a job spec: the class name and the arguments as JSON.

    Raises:
        ConfigError: naming an argument that has no JSON form (a custom Python object).
    """
    from zdk import trainers

    cls = type(trainer)
    if trainers.TRAINERS.get(cls.__name__) is not cls:
        raise ConfigError(f"`trainer` must be a zdk.trainers class (a job server builds it by name). Received: "
                          f"{cls.__module__}.{cls.__name__}", field="trainer")
    arguments = {}
    for name, value in trainer.arguments.items():
        arguments[name] = _json_argument(name, value)
    return {"class": cls.__name__, "arguments": arguments}


def _json_argument(name: str, value: Any) -> Any:
    import keras

    from zdk.algorithms.base import Algorithm

    if isinstance(value, Algorithm):
        return value.name
    if isinstance(value, (keras.optimizers.Optimizer, keras.losses.Loss, keras.metrics.Metric)):
        return _plain(keras.saving.serialize_keras_object(value))
    if isinstance(value, (list, tuple)):
        return [_json_argument(name, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_argument(name, v) for k, v in value.items()}
    if callable(value):
        serialized = keras.saving.serialize_keras_object(value)
        if isinstance(serialized, str):
            return serialized
        raise ConfigError(f"`{name}` has no JSON form for a job server: give a Keras name or a built-in Keras "
                          f"object. Received: {name}={value!r}", field=name)
    try:
        json.dumps(value)
    except TypeError:
        raise ConfigError(f"`{name}` has no JSON form for a job server. Received: {name}={value!r}",
                          field=name) from None
    return value


def _plain(value: Any) -> Any:
    """Keras configs may hold numpy scalars; JSON wants Python ones."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def model_bytes(model: Any) -> bytes:
    """The model as ``.keras`` bytes."""
    with tempfile.TemporaryDirectory(prefix="zdk-job-") as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def load_model_bytes(data: bytes) -> Any:
    import keras

    with tempfile.TemporaryDirectory(prefix="zdk-job-") as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as fh:
            fh.write(data)
        return keras.saving.load_model(path)


class Job:
    """dist-keras's ``Job``: a trainer, a data path and resources, sent to a job server.

    Args:
        secret: the user's token (``zdk serve token create --user NAME``).
        job_name: a name shown in listings and the dashboard.
        data_path: Parquet (or CSV with ``data_format="csv"``) under the server's data roots.
        num_executors, num_processes: task slots reserved for the job (their product); the
            trainer's ``num_workers`` must fit in them.
        trainer: a zdk trainer, configured but not trained.
        transformers: zdk transformer stages the server applies to the data first.
        shuffle: ``train(df, shuffle=True)`` on the server.
        data_format: ``"parquet"``, ``"csv"`` or ``"table"`` (``data_path`` names a table).
        verify: TLS verification (a CA bundle path for a self-signed server).
    """

    def __init__(self, secret: str, job_name: str, data_path: str, num_executors: int, num_processes: int,
                 trainer: Any, *, transformers: Sequence[Any] = (), shuffle: bool = False,
                 data_format: str = "parquet", verify: bool | str = True) -> None:
        self.secret = secret
        self.job_name = job_name
        self.data_path = data_path
        self.num_executors = num_executors
        self.num_processes = num_processes
        self.trainer = trainer
        self.transformers = list(transformers)
        self.shuffle = shuffle
        self.data_format = data_format
        self.verify = verify
        self.id: str | None = None
        self.record: dict[str, Any] = {}
        self._client: JobClient | None = None

    def spec(self) -> dict[str, Any]:
        """The JSON job spec (see ``zdk.service.spec``)."""
        data = {"table": self.data_path} if self.data_format == "table" else {"format": self.data_format,
                                                                               "path": self.data_path}
        return {"name": self.job_name, "trainer": trainer_spec(self.trainer), "data": data,
                "transformers": [{"class": type(t).__name__, "arguments": {k: _json_argument(k, v) for k, v in
                                                                           t._input_kwargs.items()}}
                                 for t in self.transformers],
                "resources": {"num_executors": self.num_executors, "num_processes": self.num_processes},
                "shuffle": self.shuffle}

    def send(self, url: str) -> str:
        """Submits the job; returns its id. The server validates it first (a 4xx names the field)."""
        self._client = JobClient(url, self.secret, verify=self.verify)
        self.record = self._client.submit(self.spec(), model_bytes(self.trainer.keras_model))
        self.id = str(self.record["id"])
        logger.info("job %s queued on %s", self.id, url)
        return self.id

    @property
    def client(self) -> JobClient:
        if self._client is None or self.id is None:
            raise ConfigError("the job was not sent: call job.send(url) first")
        return self._client

    def status(self) -> dict[str, Any]:
        self.record = self.client.job(str(self.id))
        return self.record

    def cancel(self) -> dict[str, Any]:
        return self.client.cancel(str(self.id))

    def wait_completion(self, timeout: float | None = None, *, progress: bool = True) -> dict[str, Any]:
        """Waits for the job to end (a progress bar on a terminal).

        Raises:
            JobError: when it failed, was cancelled or interrupted, with the server's error.
        """
        self.record = self.client.wait(str(self.id), timeout=timeout, progress=progress)
        if self.record["state"] != "finished":
            raise JobError(f"job {self.id} {self.record['state']}: {self.record.get('error')}")
        return self.record

    def get_trained_model(self, member: int = 0) -> Any:
        """The trained model (member ``k`` of an ensemble), loaded and compiled."""
        return load_model_bytes(self.client.model_bytes(str(self.id), member))

    def get_history(self) -> list[dict[str, Any]]:
        """The per-step history: worker, epoch, step, loss, metrics, staleness."""
        return list(self.client.history(str(self.id)))


__all__ = ["Job", "JobClient", "trainer_spec"]
