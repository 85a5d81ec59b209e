"""The job server's files are private and are never opened through a planted symlink: the state
directory and database modes, Spark's failure reports, the reports' copy into a job's log."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from zdk.driver.spark_job import save_report
from zdk.service.artifacts import JobFolder, StateDir
from zdk.service.store import Store


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_state_directory_is_0700_and_the_database_0600(tmp_path):
    state = StateDir(directory=str(tmp_path / "state"))
    state.create()
    store = Store(state.database)
    try:
        store.create_token("alice")  # writes, so SQLite's journal files exist too
        assert mode(state.directory) == 0o700 and mode(state.jobs) == 0o700 and mode(state.uploads) == 0o700
        assert mode(state.database) == 0o600
        for journal in (state.database + "-wal", state.database + "-shm"):
            assert not os.path.exists(journal) or mode(journal) == 0o600
        assert mode(state.scratch().directory) == 0o700
    finally:
        store.close()


def test_looser_modes_of_an_existing_state_directory_are_tightened_and_logged(tmp_path, caplog):
    root = tmp_path / "state"
    (root / "jobs").mkdir(parents=True)
    (root / "zdk.db").write_bytes(b"")
    os.chmod(root, 0o755)
    os.chmod(root / "jobs", 0o777)
    os.chmod(root / "zdk.db", 0o644)
    state = StateDir(directory=str(root))
    with caplog.at_level(logging.WARNING, logger="zdk.service"):
        state.create()
        Store(state.database).close()
    assert (mode(root), mode(root / "jobs"), mode(root / "zdk.db")) == (0o700, 0o700, 0o600)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{root} was open to other users (mode 755); it is now 700" in logged
    assert f"{root / 'zdk.db'} was open to other users (mode 644); it is now 600" in logged


def test_a_report_never_follows_a_symlink_planted_at_its_path(tmp_path):
    secret = tmp_path / "server.key"
    secret.write_text("PRIVATE KEY\n")
    folder = tmp_path / "job"
    folder.mkdir(mode=0o700)
    os.symlink(secret, folder / "zdk-abc.log")  # what another local user would plant
    path = save_report("zdk-abc", RuntimeError("boom"), directory=str(folder))
    assert secret.read_text() == "PRIVATE KEY\n"
    assert not os.path.islink(path) and os.path.dirname(path) != str(folder)
    assert mode(path) == 0o600 and mode(os.path.dirname(path)) == 0o700
    with open(path) as fh:
        assert fh.read() == "builtins.RuntimeError: boom\n"
    own = save_report("zdk-def", RuntimeError("again"))  # no folder given: a new private one
    assert mode(own) == 0o600 and mode(os.path.dirname(own)) == 0o700
    assert os.path.dirname(own) != os.path.dirname(path)


def test_copying_a_report_into_a_job_log_does_not_follow_a_symlink(tmp_path):
    secret = tmp_path / "zdk.db"
    secret.write_text("token hashes")
    report = tmp_path / "report.log"
    os.symlink(secret, report)
    folder = JobFolder(directory=str(tmp_path))
    with open(folder.log, "w") as fh:
        fh.write("line one\n")
    with pytest.raises(OSError):
        folder.append_to_log("Spark's full report", str(report))
    os.mkfifo(tmp_path / "fifo")  # nor does it block on a FIFO
    with pytest.raises(OSError, match="not a regular file"):
        folder.append_to_log("Spark's full report", str(tmp_path / "fifo"))
    with open(folder.log) as fh:
        assert fh.read() == "line one\n"


def test_sync_flushes_the_artifacts_of_a_job(tmp_path):
    folder = JobFolder(directory=str(tmp_path))
    folder.write_history([{"worker": 0, "step": 1, "loss": 1.0}])
    with open(folder.log, "w") as fh:
        fh.write("done\n")
    folder.sync()  # fsync of each artifact and of the folder: it must not raise
