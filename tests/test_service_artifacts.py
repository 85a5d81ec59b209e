"""The job server's files on disk (``zdk.service.artifacts``): names, writers, checkpoint completeness."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from zdk.ps import checkpoint
from zdk.service.artifacts import JobFolder, StateDir


def test_every_file_of_a_job_lives_in_its_folder_under_the_state_dir(tmp_path):
    state = StateDir(directory=str(tmp_path))
    folder = state.job("abc123")
    assert folder.directory == str(tmp_path / "jobs" / "abc123")
    assert state.database == str(tmp_path / "zdk.db")
    names = [folder.submitted_model, folder.model(), folder.model(0), folder.model(2), folder.history_json,
             folder.history_csv, folder.epochs_json, folder.epochs_csv, folder.csv_log, folder.tensorboard, folder.log,
             folder.checkpoints]
    assert [os.path.relpath(n, folder.directory) for n in names] == [
        "submitted.keras", "model.keras", "model.keras", "model-2.keras", "history.json", "history.csv", "epochs.json",
        "epochs.csv", "csvlogger.csv", "tensorboard", "job.log", "checkpoints"]


def test_create_empties_the_uploads_a_crash_left_and_scratch_folders_become_job_folders(tmp_path):
    state = StateDir(directory=str(tmp_path / "state"))
    state.create()
    left = state.scratch()
    with open(left.submitted_model, "wb") as fh:
        fh.write(b"half an upload")
    state.create()
    assert os.listdir(state.uploads) == [] and os.path.isdir(state.jobs)
    scratch = state.scratch()
    assert os.path.dirname(scratch.directory) == state.uploads and os.listdir(scratch.directory) == []
    os.rename(scratch.directory, state.job("j1").directory)
    assert os.listdir(state.jobs) == ["j1"]


def test_history_is_written_as_json_and_as_csv_with_a_column_per_metric(tmp_path):
    folder = JobFolder(directory=str(tmp_path))
    history = [{"worker": 0, "epoch": 0, "step": 1, "timestamp": 10.0, "loss": 2.5, "metrics": {"accuracy": 0.5}},
               {"worker": 1, "epoch": 0, "step": 1, "timestamp": 10.5, "loss": 2.0, "staleness": 1,
                "metrics": {"accuracy": 0.6, "mae": 0.1}}]
    assert folder.write_history(history) == folder.history_json
    with open(folder.history_json) as fh:
        assert json.load(fh) == history
    with open(folder.history_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["worker", "epoch", "step", "timestamp", "loss", "staleness", "accuracy", "mae"]
    assert rows[1] == ["0", "0", "1", "10.0", "2.5", "", "0.5", ""]
    assert rows[2] == ["1", "0", "1", "10.5", "2.0", "1", "0.6", "0.1"]


def test_epochs_are_written_as_json_and_as_csv_with_epoch_first(tmp_path):
    folder = JobFolder(directory=str(tmp_path))
    epochs = [{"epoch": 0, "loss": 2.0, "val_loss": 2.5},
              {"epoch": 1, "loss": 1.0, "val_loss": None, "learning_rate": 0.5}]
    assert folder.write_epochs(epochs) == folder.epochs_json
    with open(folder.epochs_json) as fh:
        assert json.load(fh) == epochs
    with open(folder.epochs_csv, newline="") as fh:
        assert list(csv.reader(fh)) == [["epoch", "learning_rate", "loss", "val_loss"], ["0", "", "2.0", "2.5"],
                                        ["1", "0.5", "1.0", ""]]


def test_a_job_resumes_only_when_every_shard_left_a_checkpoint(tmp_path):
    folder = JobFolder(directory=str(tmp_path))
    assert not folder.resumable(2)
    checkpoint.write(checkpoint.checkpoint_path(folder.checkpoints, 0, 2), {"center": np.zeros(3, np.float32)})
    assert not folder.resumable(2)
    assert not folder.resumable(1)  # a checkpoint of another cut of the vector does not count
    checkpoint.write(checkpoint.checkpoint_path(folder.checkpoints, 1, 2), {"center": np.zeros(3, np.float32)})
    assert folder.resumable(2)
    for wrong in (0, -1, True, "2", None):
        assert not folder.resumable(wrong)
    folder.drop_checkpoints()
    assert not os.path.exists(folder.checkpoints) and not folder.resumable(2)


def test_a_report_is_appended_to_the_job_log_under_its_title(tmp_path):
    folder = JobFolder(directory=str(tmp_path))
    with open(folder.log, "w") as fh:
        fh.write("line one\n")
    (tmp_path / "report.txt").write_text("Traceback: boom\n")
    folder.append_to_log("Spark's full report", str(tmp_path / "report.txt"))
    with open(folder.log) as fh:
        assert fh.read() == "line one\n\n---- Spark's full report ----\nTraceback: boom\n"
