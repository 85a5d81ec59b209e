"""The job server's REST API, which :class:`zdk.jobs.Job` and ``zdk job …`` use."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from zdk.errors import ConfigError, DeadlineExceeded, JobError
from zdk.jobs.states import FINAL


class JobClient:
    """The job server's REST API.

    Args:
        url: ``http://host:port`` (``https://`` when the server has TLS).
        token: the user's token (``zdk serve token create --user NAME``).
        timeout: seconds for any one request.
        verify: TLS verification: True, False, or a CA bundle path (a self-signed server's cert).

    Raises:
        ConfigError: naming ``url`` when it is not an HTTP(S) URL.
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
            retry = response.headers.get("Retry-After")
            raise JobError(f"{response.status_code} from {self.url}{path}: {body.get('error')}"
                           + (f" (retry after {retry} s)" if retry else ""),
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

    def delete(self, job_id: str) -> dict[str, Any]:
        """Removes an ended job (its record and files); a queued or running one answers 409."""
        return dict(self._request("DELETE", f"/api/jobs/{job_id}").json())

    def model_bytes(self, job_id: str, member: int = 0) -> bytes:
        return bytes(self._request("GET", f"/api/jobs/{job_id}/model", params={"member": member}).content)

    def history(self, job_id: str, fmt: str = "json") -> Any:
        response = self._request("GET", f"/api/jobs/{job_id}/history", params={"format": fmt})
        return response.json() if fmt == "json" else response.text

    def epochs(self, job_id: str, fmt: str = "json") -> Any:
        """A watched job's per-epoch figures, once it finished: a JSON list of
        ``{"epoch", "loss", "val_loss", …}``, or CSV with a column per figure."""
        response = self._request("GET", f"/api/jobs/{job_id}/epochs", params={"format": fmt})
        return response.json() if fmt == "json" else response.text

    def csv_log(self, job_id: str) -> str:
        """The file the job's ``CSVLogger`` callback wrote."""
        return str(self._request("GET", f"/api/jobs/{job_id}/csvlog").text)

    def logs(self, job_id: str) -> str:
        return str(self._request("GET", f"/api/jobs/{job_id}/logs").text)

    def wait(self, job_id: str, *, timeout: float | None = None, interval: float = 1.0,
             progress: bool = True) -> dict[str, Any]:
        """Polls until the job reaches a final state; shows a progress bar on a terminal.
        Returns the final record.

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
                if job["state"] in FINAL:
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
