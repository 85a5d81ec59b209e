"""A class-data sharing archive of the embedded Spark driver's classes, so later sessions start sooner.

Starting Spark loads some twenty thousand classes from pyspark's jars, and the JVM verifies
and links each one, every time: on this 2-core machine that is most of the 8–9 s a
``local[2]`` session takes to start, and of the 3–4 s its first job takes. Java's
class-data sharing (CDS) keeps those classes, already parsed, in a file the next JVM maps
instead (measured here: session 8.7 → 5.3 s, first job 4.1 → 2.3 s).

How the archive comes to be, per pyspark install and Java:

1. The first embedded session finds no archive, so its driver JVM records the classes it
   loads and writes them when it exits (``-XX:ArchiveClassesAtExit``) to a file of its own.
   At the Python process's exit zdk stops Spark and waits for that JVM to finish writing
   (a few seconds, once), so no JVM outlives the script.
2. The next :func:`options` call finds the finished file (its JVM gone) and renames it into
   place; from then on every session maps it (``-XX:SharedArchiveFile``).

A stale or mismatched archive (another Java, a changed class path) is ignored by the JVM,
which then loads classes as usual; the archive is rebuilt under a new name when the pyspark
install or the Java changes. ``ZDK_CDS=0`` turns all of it off. The directory is
``$ZDK_CACHE_DIR/cds`` (default ``~/.cache/zdk/cds``), about 160 MB per install.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: How long a script's exit waits for the JVM to write its archive.
DUMP_WAIT = 60.0
#: JVM logging off for CDS: its warnings (signed jars it skips, an archive it cannot map) are
#: not the user's concern, and the JVM falls back to plain class loading by itself.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


@dataclass(frozen=True)
class Plan:
    """What the next driver JVM does: map ``archive`` (``use``) or write ``dump`` at exit."""

    use: str | None
    dump: str | None

    @property
    def java_options(self) -> str:
        if self.use:
            return f"-XX:SharedArchiveFile={self.use} {QUIET}"
        if self.dump:
            return f"-XX:ArchiveClassesAtExit={self.dump} {QUIET}"
        return ""


def enabled() -> bool:
    return os.environ.get("ZDK_CDS", "1") != "0"


def cache_dir() -> str:
    root = os.environ.get("ZDK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "zdk")
    return os.path.join(root, "cds")


def install_key() -> str:
    """Names the pyspark install and the Java that runs it: an archive holds only for both."""
    import pyspark

    jars = os.path.join(os.path.dirname(os.path.abspath(pyspark.__file__)), "jars")
    java = os.environ.get("JAVA_HOME") or os.path.realpath(shutil.which("java") or "java")
    digest = hashlib.sha256()
    names = sorted(os.listdir(jars)) if os.path.isdir(jars) else []
    for part in (pyspark.__version__, jars, java, *names):
        digest.update(part.encode() + b"\0")
    return f"pyspark-{pyspark.__version__.replace('.', '_')}-{digest.hexdigest()[:16]}"  # no dots: see promote


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dumper_pid(marker: str) -> int:
    try:
        with open(marker) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def recording(directory: str, key: str) -> bool:
    """Whether a live JVM is recording classes for ``key`` (one recorder at a time is enough)."""
    return any(_alive(pid) for pid in map(_dumper_pid, glob.glob(os.path.join(directory, f"{key}.*.pid"))) if pid)


def promote(directory: str, key: str) -> str | None:
    """Renames a finished dump of ``key`` into its archive (the newest wins) and removes dumps
    whose JVM died without writing; returns the archive's path when there is one."""
    archive = os.path.join(directory, f"{key}.jsa")
    for marker in sorted(glob.glob(os.path.join(directory, f"{key}.*.pid"))):
        dump = marker[: -len(".pid")]
        pid = _dumper_pid(marker)
        if pid and _alive(pid):
            continue  # still running, or still writing at its exit
        if os.path.exists(dump) and os.path.getsize(dump) > 0:
            os.replace(dump, archive)
            logger.info("Spark's class archive is ready: %s (later sessions start faster)", archive)
        for leftover in (dump, marker):
            if os.path.exists(leftover):
                os.remove(leftover)
    return archive if os.path.exists(archive) else None


def options() -> Plan:
    """The driver JVM options for the next embedded session (empty when CDS is off)."""
    if not enabled():
        return Plan(None, None)
    directory = cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
        key = install_key()
        archive = promote(directory, key)
    except OSError as error:  # an unwritable cache costs only the speed-up
        logger.warning("not using a class archive for Spark (%s: %s); set ZDK_CDS=0 to silence this",
                       directory, error)
        return Plan(None, None)
    if archive:
        return Plan(archive, None)
    if recording(directory, key):
        return Plan(None, None)
    return Plan(None, os.path.join(directory, f"{key}.{os.getpid()}-{time.time_ns()}.dump"))


def record_dumper(plan: Plan, jvm_pid: int | None) -> None:
    """Notes which JVM writes ``plan.dump``, so :func:`promote` waits for it to finish."""
    if plan.dump and jvm_pid:
        with open(plan.dump + ".pid", "w") as fh:
            fh.write(str(jvm_pid))


def finish_dump(spark, plan: Plan, timeout: float = DUMP_WAIT) -> None:
    """At exit: stops ``spark`` and waits (≤ ``timeout`` s) for its driver JVM to write the archive."""
    if not plan.dump:
        return
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    try:
        spark.stop()
    except Exception:  # the session may already be gone; the JVM's exit is what matters here
        logger.debug("stopping Spark before the class archive was written failed", exc_info=True)
    if proc is None:
        return
    logger.info("writing Spark's class archive for faster starts (once per install): %s", plan.dump)
    if proc.stdin is not None:
        proc.stdin.close()  # the gateway JVM exits when its stdin closes
    try:
        proc.wait(timeout=timeout)
    except Exception:
        logger.warning("Spark's driver JVM (pid %d) did not exit within %.0f s of writing %s; it is left to finish",
                       proc.pid, timeout, plan.dump)
        return
    promote(os.path.dirname(plan.dump), os.path.basename(plan.dump).split(".")[0])  # the key has no dots
