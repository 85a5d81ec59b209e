"""Where the job server keeps things on disk: every file name it writes, in one place.

The state directory holds the database, one folder per job and the uploads being checked; it
is private to the server's user (0700, the database 0600), since job folders hold other users'
models and the database their tokens' hashes::

    STATE_DIR/zdk.db                  SQLite: token hashes and job records
    STATE_DIR/tmp/upload-*/           a submission being checked (emptied at start)
    STATE_DIR/jobs/ID/submitted.keras the model as submitted
    STATE_DIR/jobs/ID/model.keras     the trained model; model-K.keras: member K of an ensemble
    STATE_DIR/jobs/ID/history.json    the per-step history; history.csv: the same, a column per metric
    STATE_DIR/jobs/ID/epochs.json     the per-epoch figures of a watched job; epochs.csv: the same
    STATE_DIR/jobs/ID/csvlogger.csv   the job's CSVLogger callback's file
    STATE_DIR/jobs/ID/tensorboard/    the job's TensorBoard callback's folder
    STATE_DIR/jobs/ID/job.log         zdk's log lines from the job's thread (and Spark's report)
    STATE_DIR/jobs/ID/checkpoints/    the shards' checkpoints while it runs (zdk.ps.checkpoint)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import stat
import tempfile
from typing import Any, Sequence, overload

from zdk.ps import checkpoint
from zdk.service.files import fsync, private

#: The history's fixed columns, in the CSV's order; metrics follow, one column each.
HISTORY_COLUMNS = ("worker", "attempt", "epoch", "step", "timestamp", "loss", "staleness", "scale")
#: The most of a report copied into a job's log.
MAX_REPORT_BYTES = 1 << 20


class _Entry:
    """A file or folder named ``name`` in the ``directory`` of the object it is read from."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> "_Entry": ...

    @overload
    def __get__(self, instance: object, owner: type) -> str: ...

    def __get__(self, instance: object, owner: type) -> "str | _Entry":
        return self if instance is None else os.path.join(getattr(instance, "directory"), self.name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobFolder:
    """One job's folder and the files in it.

    Args:
        directory: the folder (``STATE_DIR/jobs/ID``, or a scratch folder during admission).
    """

    directory: str
    submitted_model = _Entry("submitted.keras")
    history_json = _Entry("history.json")
    history_csv = _Entry("history.csv")
    epochs_json = _Entry("epochs.json")
    epochs_csv = _Entry("epochs.csv")
    csv_log = _Entry("csvlogger.csv")
    tensorboard = _Entry("tensorboard")
    log = _Entry("job.log")
    checkpoints = _Entry("checkpoints")

    def model(self, member: int = 0) -> str:
        """The trained model, or member ``member`` of an ensemble."""
        return os.path.join(self.directory, "model.keras" if member == 0 else f"model-{member}.keras")

    def resumable(self, num_shards: Any) -> bool:
        """Whether each of the job's ``num_shards`` shards left a checkpoint (only algorithms
        with a PS write them)."""
        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
            return False
        return not checkpoint.missing(self.checkpoints, num_shards)

    def drop_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    def save_models(self, models: Sequence[Any]) -> list[str]:
        """Saves the trained model (or an ensemble's members, in order); returns their paths."""
        paths = [self.model(k) for k in range(len(models))]
        for model, path in zip(models, paths):
            model.save(path)
        return paths

    def write_history(self, history: list[dict[str, Any]]) -> str:
        """The per-step history as JSON, and as CSV with one column per metric; returns the
        JSON file's path."""
        with open(self.history_json, "w") as fh:
            json.dump(history, fh)
        metrics = sorted({k for r in history for k in r.get("metrics", {})})
        fixed = [k for k in HISTORY_COLUMNS if any(k in r for r in history)]
        with open(self.history_csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(fixed + metrics)
            for r in history:
                writer.writerow([r.get(k) for k in fixed] + [r.get("metrics", {}).get(k) for k in metrics])
        return self.history_json

    def write_epochs(self, epochs: list[dict[str, Any]]) -> str:
        """The per-epoch figures (``{"epoch", "loss", "val_loss", …}`` each) as JSON, and as CSV
        with ``epoch`` first and a column per figure; returns the JSON file's path."""
        with open(self.epochs_json, "w") as fh:
            json.dump(epochs, fh)
        figures = sorted({k for e in epochs for k in e if k != "epoch"})
        with open(self.epochs_csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["epoch", *figures])
            for e in epochs:
                writer.writerow([e.get("epoch"), *(e.get(k) for k in figures)])
        return self.epochs_json

    def append_to_log(self, title: str, path: str) -> None:
        """Copies the text of the file at ``path`` (its first ``MAX_REPORT_BYTES``) to the end
        of the job's log, under ``title``. A symlink is not followed, and only a regular file is
        read: the log is what the job's owner downloads.

        Raises:
            OSError: when ``path`` is a symlink (ELOOP), missing, or not a regular file.
        """
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as source:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{path} is not a regular file")
            text = source.read(MAX_REPORT_BYTES).decode("utf-8", "replace")
        with open(self.log, "a") as log:
            log.write(f"\n---- {title} ----\n{text}")

    def sync(self) -> None:
        """Flushes the job's artifacts (models, history, log) and the folder to the disk, so a
        job recorded as ended keeps its files through a power cut."""
        names = [n for n in os.listdir(self.directory) if n.endswith((".keras", ".json", ".csv", ".log"))]
        for name in names:
            fsync(os.path.join(self.directory, name))
        fsync(self.directory)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StateDir:
    """The server's state directory.

    Args:
        directory: the directory (``zdk serve --state-dir``).
    """

    directory: str
    database = _Entry("zdk.db")
    jobs = _Entry("jobs")
    uploads = _Entry("tmp")

    def job(self, job_id: str) -> JobFolder:
        return JobFolder(directory=os.path.join(self.jobs, job_id))

    def create(self) -> None:
        """Makes the folders private to this user (tightening them when they exist), and empties
        the uploads folder of what a crash left."""
        self.create_root()
        os.makedirs(self.jobs, mode=0o700, exist_ok=True)
        private(self.jobs, 0o700)
        shutil.rmtree(self.uploads, ignore_errors=True)
        os.makedirs(self.uploads, mode=0o700, exist_ok=True)

    def create_root(self) -> None:
        """Makes the state directory itself, 0700 (tightened when it exists)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        private(self.directory, 0o700)

    def owns(self, folder: str) -> bool:
        """Whether ``folder`` is a job folder of this state directory (before removing it)."""
        jobs = os.path.realpath(self.jobs)
        full = os.path.realpath(folder)
        return os.path.dirname(full) == jobs and full != jobs

    def scratch(self) -> JobFolder:
        """A new, empty folder for a submission being checked; it becomes a job's folder with
        ``os.rename`` (same file system), or is removed."""
        return JobFolder(directory=tempfile.mkdtemp(prefix="upload-", dir=self.uploads))
