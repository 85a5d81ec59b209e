"""dist-keras's ``Job``: a trainer, a data path and resources, sent to a job server.

Its call shape, with a token instead of a secret and no pickle::

    job = Job(token, "digits-adag", "digits.parquet", 1, 2, trainer)
    job.send("http://127.0.0.1:8470")
    job.wait_completion()
    model = job.get_trained_model()
    history = job.get_history()                # per step
    epochs = job.get_epoch_history()           # per epoch, with validation or callbacks
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from zdk.errors import ConfigError, JobError
from zdk.jobs.client import JobClient
from zdk.jobs.describe import stage, trainer_spec
from zdk.jobs.models import load_model_bytes, model_bytes
from zdk.jobs.spec import CallbackSpec, DataSource, JobSpec
from zdk.jobs.states import FINISHED

logger = logging.getLogger(__name__)


class Job:
    """A training job for a ``zdk serve`` job server.

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
        validation: a fraction in (0, 1) of the data set aside for validation, or a path (or a
            table, with ``validation_format="table"``) read like ``data_path``, through the same
            transformers.
        validation_format: ``"parquet"``, ``"csv"`` or ``"table"``, for a ``validation`` path.
        callbacks: Keras callbacks by name, ``{"class": "EarlyStopping", "arguments": {…}}``
            (docs/jobs.md lists the classes; the server places the files they write).
    """

    def __init__(self, secret: str, job_name: str, data_path: str, num_executors: int, num_processes: int,
                 trainer: Any, *, transformers: Sequence[Any] = (), shuffle: bool = False,
                 data_format: str = "parquet", verify: bool | str = True, validation: float | str | None = None,
                 validation_format: str = "parquet", callbacks: Sequence[Mapping[str, Any]] = ()) -> None:
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
        self.validation = validation
        self.validation_format = validation_format
        self.callbacks = list(callbacks)
        self.id: str | None = None
        self.record: dict[str, Any] = {}
        self._client: JobClient | None = None

    def spec(self) -> dict[str, Any]:
        """The JSON job spec (:class:`zdk.jobs.spec.JobSpec`), checked as the server checks its shape.

        Raises:
            ConfigError: naming the spec field of the first wrong value, or an argument without
                a JSON form.
        """
        trainer = trainer_spec(self.trainer)
        validation: float | DataSource | None = (
            DataSource(format=self.validation_format, path=self.validation, role="validation")
            if isinstance(self.validation, str) else self.validation)
        callbacks = []
        for k, c in enumerate(self.callbacks):
            if not isinstance(c, Mapping) or set(c) - {"class", "arguments"}:
                raise ConfigError(f'`callbacks[{k}]` must be {{"class": NAME, "arguments": {{…}}}}. '
                                  f"Received: {c!r}", field=f"callbacks[{k}]")
            callbacks.append(CallbackSpec(cls=c.get("class", ""), arguments=c.get("arguments", {})))
        return JobSpec(name=self.job_name, trainer=trainer["class"], arguments=trainer["arguments"],
                       data=DataSource(format=self.data_format, path=self.data_path),
                       transformers=tuple(stage(t) for t in self.transformers), num_executors=self.num_executors,
                       num_processes=self.num_processes, shuffle=self.shuffle, validation=validation,
                       callbacks=tuple(callbacks)).to_dict()

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
        if self.record["state"] != FINISHED:
            raise JobError(f"job {self.id} {self.record['state']}: {self.record.get('error')}")
        return self.record

    def get_trained_model(self, member: int = 0) -> Any:
        """The trained model (member ``k`` of an ensemble), loaded and compiled."""
        return load_model_bytes(self.client.model_bytes(str(self.id), member))

    def get_history(self) -> list[dict[str, Any]]:
        """The per-step history: worker, epoch, step, loss, metrics, staleness."""
        return list(self.client.history(str(self.id)))

    def get_epoch_history(self) -> list[dict[str, Any]]:
        """The per-epoch figures of a job with ``validation`` or ``callbacks``, as
        ``trainer.keras_history`` holds them: ``{"epoch", "loss", "accuracy", "val_loss", …}``
        per epoch (training figures: the workers' sample-weighted means; ``val_``: the center's)."""
        return list(self.client.epochs(str(self.id)))
