"""The class-data sharing archive of the embedded Spark driver (zdk.driver.cds)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zdk.driver import cds


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ZDK_CDS", raising=False)
    return tmp_path / "cds"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_first_session_records_and_later_ones_map_the_archive(cache):
    first = cds.options()
    assert first.use is None and first.dump and first.dump.startswith(str(cache))
    assert f"-XX:ArchiveClassesAtExit={first.dump}" in first.java_options
    # the JVM wrote its dump and exited: the next call promotes it
    with open(first.dump, "wb") as fh:
        fh.write(b"archive")
    cds.record_dumper(first, _dead_pid())
    second = cds.options()
    archive = str(cache / f"{cds.install_key()}.jsa")
    assert second == cds.Plan(archive, None)
    assert f"-XX:SharedArchiveFile={archive}" in second.java_options
    assert sorted(os.listdir(cache)) == [os.path.basename(archive)]  # dump and marker gone


def test_a_dump_still_being_written_is_left_alone_and_not_recorded_twice(cache):
    first = cds.options()
    with open(first.dump, "wb") as fh:
        fh.write(b"half")
    cds.record_dumper(first, os.getpid())  # a live writer
    assert cds.options() == cds.Plan(None, None)  # no second recorder, no archive yet
    assert os.path.exists(first.dump)


def test_a_jvm_that_died_without_writing_leaves_nothing_behind(cache):
    first = cds.options()
    cds.record_dumper(first, _dead_pid())
    assert cds.promote(str(cache), cds.install_key()) is None
    assert os.listdir(cache) == []
    assert cds.options().dump  # and the next session records again


def test_off_and_unwritable_caches_give_no_options(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("ZDK_CDS", "0")
    assert cds.options().java_options == ""
    monkeypatch.delenv("ZDK_CDS")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ZDK_CACHE_DIR", str(blocker))  # cds/ cannot be made under a file
    assert cds.options() == cds.Plan(None, None)


def test_the_key_names_the_install_and_the_java(monkeypatch):
    key = cds.install_key()
    assert "." not in key and key.startswith("pyspark-")
    monkeypatch.setenv("JAVA_HOME", "/opt/another-jdk")
    assert cds.install_key() != key


SCRIPT = """
from zdk.driver.session import get_session
spark = get_session("local[1]")
pid = spark.sparkContext._gateway.proc.pid
print("JVM", pid, flush=True)
with open(f"/proc/{pid}/cmdline", "rb") as fh:
    args = fh.read().split(b"\\0")
print("CLASSPATH", args[args.index(b"-cp") + 1].decode(), flush=True)
"""


@pytest.mark.spark
def test_a_real_driver_jvm_writes_the_archive_at_exit_and_java_maps_it(cache, tmp_path):
    env = dict(os.environ, ZDK_CACHE_DIR=str(cache.parent), ZDK_WARM="0", PYSPARK_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1")
    archive = str(cache / f"{cds.install_key()}.jsa")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("JVM", "CLASSPATH")))
    # the script's exit waited for its JVM to write the archive: no JVM outlives it, and it is in place
    assert not os.path.exists(f"/proc/{said['JVM']}") or open(f"/proc/{said['JVM']}/stat").read().split()[2] == "Z"
    assert os.listdir(cache) == [os.path.basename(archive)]
    assert os.path.getsize(archive) > 10 * 2**20  # Spark's classes, parsed
    # The next driver JVM maps it: -Xshare:on fails instead of falling back when it cannot.
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    mapped = subprocess.run([java, f"-XX:SharedArchiveFile={archive}", "-Xshare:on", "-cp", said["CLASSPATH"],
                             "org.apache.spark.deploy.SparkSubmit", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert mapped.returncode == 0, mapped.stderr[-3000:]
    assert cds.options() == cds.Plan(archive, None)  # and get_session's next JVM is told to
