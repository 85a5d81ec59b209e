"""The zygote: Keras imported beside the JVM's start, and Spark's Python daemon forked from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from zdk.runtime import zygote


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split()[2] != b"Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_parent_of_reads_the_parent_even_when_the_command_name_has_spaces_and_parentheses(tmp_path):
    assert zygote._parent_of(os.getpid()) == os.getppid()
    odd = tmp_path / "a b) c"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        assert zygote._parent_of(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("value", [None, "", "0", "abc:/x", f"{os.getpid()}:", "1:/nonexistent/zygote.sock"])
def test_a_daemon_without_a_usable_zygote_runs_itself(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(zygote.ENV, raising=False)
    else:
        monkeypatch.setenv(zygote.ENV, value)
    assert zygote.hand_off() is False


def test_a_zygote_for_another_driver_is_not_used(monkeypatch, tmp_path):
    sock = tmp_path / "zygote.sock"
    sock.touch()
    # the socket exists, but this process is not the named driver's grandchild
    monkeypatch.setenv(zygote.ENV, f"{os.getppid()}:{sock}")
    assert zygote._zygote_for_this_process() is None


# The test process plays the driver, this script the JVM: it launches the daemon as Spark does
# (`python -m zdk.runtime.daemon`, streams on pipes) and reports the port the daemon writes.
_JVM = textwrap.dedent("""
    import os, struct, subprocess, sys
    daemon = subprocess.Popen([sys.executable, "-m", "zdk.runtime.daemon"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    port = struct.unpack("!i", daemon.stdout.read(4))[0]
    print(daemon.pid, port, flush=True)
    command = sys.stdin.readline().strip()
    if command == "term":
        daemon.terminate()
    else:
        daemon.stdin.close()  # what the JVM's exit does
    print(daemon.wait(timeout=30), flush=True)
""")


def _listener_of(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:``port``."""
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                inode = fields[9]
    if inode is None:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    return None


def test_launched_daemons_are_forked_by_the_zygote_with_keras_loaded_and_stop_with_their_jvm():
    started = zygote.start({"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"})
    jvms: list[subprocess.Popen] = []
    try:
        env = dict(os.environ, **{zygote.ENV: f"{os.getpid()}:{started.path}"})
        # Two JVMs (two sessions, one after another in a driver): one stops its daemon with SIGTERM,
        # the other exits, which closes the daemon's stdin.
        for stop in ("term", "eof"):
            jvm = subprocess.Popen([sys.executable, "-c", _JVM], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, env=env)
            jvms.append(jvm)
            assert jvm.stdout is not None and jvm.stdin is not None
            launched, port = map(int, jvm.stdout.readline().split())
            daemon = _listener_of(port)
            assert daemon is not None, f"nothing listens on the port {port} the daemon wrote"
            # The daemon that serves is not the launched process but the zygote's child, with Keras loaded.
            assert daemon != launched and _parent(daemon) == started.process.pid, _cmdline(daemon)
            with open(f"/proc/{daemon}/maps") as f:
                assert "tensorflow" in f.read(), "the forked daemon has no TensorFlow loaded"
            assert _alive(launched)  # the JVM's handle on the daemon waits for it
            jvm.stdin.write(stop + "\n")
            jvm.stdin.flush()
            code = jvm.stdout.readline().strip()
            assert _wait_gone(daemon), f"the forked daemon outlived its launched process ({stop})"
            assert code.lstrip("-").isdigit(), code
    finally:
        for jvm in jvms:
            jvm.kill()
            jvm.wait()
        started.stop()
    assert started.process.returncode is not None
    assert not os.path.exists(started.directory)


def test_the_zygote_exits_and_removes_its_socket_when_the_driver_is_killed(tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from zdk.runtime import zygote
        z = zygote.start()
        print(z.process.pid, z.directory, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None
    pid, directory = driver.stdout.readline().split()
    try:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert _wait_gone(int(pid), timeout=60), "the zygote outlived its driver"
        assert not os.path.exists(directory)
    finally:
        if _alive(int(pid)):
            os.kill(int(pid), signal.SIGKILL)


def test_the_embedded_session_runs_its_tasks_in_workers_forked_from_the_zygote(spark):
    if os.environ.get(zygote.ENV) in (None, "0"):
        pytest.skip("the session was started without a zygote (ZDK_ZYGOTE=0 or ZDK_WARM=0)")
    driver_pid, _, path = os.environ[zygote.ENV].partition(":")
    assert int(driver_pid) == os.getpid() and os.path.exists(path)

    def where(rows):
        import os

        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            daemon_cmd = f.read().replace(b"\0", b" ").decode()
        with open(f"/proc/{os.getppid()}/stat", "rb") as f:
            stat = f.read()
        grandparent = int(stat[stat.rindex(b")") + 2:].split()[1])
        with open(f"/proc/{grandparent}/cmdline", "rb") as f:
            zygote_cmd = f.read().replace(b"\0", b" ").decode()
        yield daemon_cmd, zygote_cmd

    found = spark.sparkContext.parallelize(range(2), 2).mapPartitions(where).collect()
    for daemon_cmd, zygote_cmd in found:
        assert "zdk.runtime.zygote" in daemon_cmd and "zdk.runtime.zygote" in zygote_cmd, found
        assert path in zygote_cmd
