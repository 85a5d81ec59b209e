"""Durable state of the job server: users' tokens and job records, in SQLite.

One connection guarded by a lock (the server's threads share it), WAL journaling so readers do
not wait on the job threads' progress writes. The database file and its journals are 0600.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from typing import Any

from zdk.errors import ConfigError
from zdk.jobs.states import FINAL, QUEUED, RUNNING
from zdk.service.files import create_private, private

TOKEN_PREFIX = "zdk_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, revoked REAL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    progress TEXT, error TEXT, model_path TEXT, history_path TEXT, log_path TEXT,
    directory TEXT NOT NULL, cancel_requested INTEGER NOT NULL DEFAULT 0,
    resumes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created);
"""


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A job as recorded: its spec as submitted, its state (:mod:`zdk.jobs.states`), its
    progress, and the paths of its artifacts once written."""

    id: str
    owner: str
    name: str
    spec: dict[str, Any]
    state: str
    created: float
    started: float | None
    finished: float | None
    progress: dict[str, Any] | None
    error: str | None
    model_path: str | None
    history_path: str | None
    log_path: str | None
    directory: str
    cancel_requested: bool
    resumes: int

    def public(self) -> dict[str, Any]:
        """What the API shows: no server paths."""
        return {"id": self.id, "owner": self.owner, "name": self.name, "spec": self.spec, "state": self.state,
                "created": self.created, "started": self.started, "finished": self.finished,
                "progress": self.progress, "error": self.error, "has_model": self.model_path is not None,
                "has_history": self.history_path is not None, "cancel_requested": self.cancel_requested,
                "resumes": self.resumes}


def hash_token(token: str) -> str:
    """SHA-256 of the token. Tokens carry 256 random bits, so a fast hash suffices: there is
    nothing to brute-force, which is what a slow password hash (bcrypt, argon2) is for."""
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """Tokens and jobs in the SQLite database at ``path`` (created 0600; tightened when looser)."""

    def __init__(self, path: str) -> None:
        self.path = path
        create_private(path)
        for journal in (f"{path}-wal", f"{path}-shm"):  # SQLite gives new ones the database's mode
            if os.path.exists(journal):
                private(journal, 0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args))

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # ------------------------------------------------------------------ tokens

    def create_token(self, user: str) -> str:
        """A new token for ``user``; only its hash is stored, so this is the one time it is seen."""
        if not user or not user.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(user) > 64:
            raise ConfigError(f"`user` must be 1-64 letters, digits, '-', '_' or '.'. Received: user={user!r}",
                              field="user")
        token_id = secrets.token_hex(4)
        token = f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
        self._run("INSERT INTO tokens (id, user, hash, created) VALUES (?, ?, ?, ?)",
                  (token_id, user, hash_token(token), time.time()))
        return token

    def revoke(self, *, user: str | None = None, token: str | None = None) -> int:
        """Revokes every token of ``user``, or the one ``token``; returns how many were revoked."""
        if (user is None) == (token is None):
            raise ConfigError(f"give exactly one of `user` or `token` to revoke. Received: user={user!r}, "
                              f"token={'<a token>' if token is not None else None}", field="user")
        if user is not None:
            return self._run("UPDATE tokens SET revoked = ? WHERE user = ? AND revoked IS NULL", (time.time(), user))
        return self._run("UPDATE tokens SET revoked = ? WHERE hash = ? AND revoked IS NULL",
                         (time.time(), hash_token(str(token))))

    def tokens(self) -> list[dict[str, Any]]:
        """Every token's id, user and dates (never the token or its hash)."""
        return [dict(r) for r in self._rows("SELECT id, user, created, revoked FROM tokens ORDER BY created")]

    def user_of(self, token: str) -> str | None:
        """The user a live token belongs to, or None.

        The token's hash is looked up in a unique index; every wrong token (unknown, revoked,
        malformed) takes the same path, hashing included, so they cannot be told apart by time.
        """
        digest = hash_token(token)
        rows = self._rows("SELECT user, hash, revoked FROM tokens WHERE hash = ?", (digest,))
        if not rows or not hmac.compare_digest(rows[0]["hash"], digest) or rows[0]["revoked"] is not None:
            return None
        return str(rows[0]["user"])

    # ------------------------------------------------------------------ jobs

    def add_job(self, *, owner: str, name: str, spec: dict[str, Any], directory: str, job_id: str) -> JobRecord:
        self._run("INSERT INTO jobs (id, owner, name, spec, state, created, directory) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (job_id, owner, name, json.dumps(spec), QUEUED, time.time(), directory))
        job = self.job(job_id)
        assert job is not None
        return job

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def job(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job, or None when it does not exist or (with ``owner``) belongs to someone else."""
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows or (owner is not None and rows[0]["owner"] != owner):
            return None
        return _record(rows[0])

    def jobs(self, owner: str | None = None, states: tuple[str, ...] | None = None) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs WHERE 1 = 1", []
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        if states:
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args.extend(states)
        return [_record(r) for r in self._rows(sql + " ORDER BY created, id", tuple(args))]

    def active(self, owner: str) -> int:
        """How many of ``owner``'s jobs are queued or running."""
        rows = self._rows("SELECT COUNT(*) AS n FROM jobs WHERE owner = ? AND state IN (?, ?)", (owner, QUEUED, RUNNING))
        return int(rows[0]["n"])

    def ended_before(self, cutoff: float) -> list[JobRecord]:
        """The jobs that ended (a final state) before the Unix time ``cutoff``, oldest first."""
        marks = ", ".join("?" * len(FINAL))
        return [_record(r) for r in self._rows(f"SELECT * FROM jobs WHERE state IN ({marks}) AND finished < ? "
                                               f"ORDER BY finished, id", (*FINAL, cutoff))]

    def delete_job(self, job_id: str) -> bool:
        """Removes the record of a job that ended; True if it was removed (False: it is queued
        or running, or gone)."""
        marks = ", ".join("?" * len(FINAL))
        return self._run(f"DELETE FROM jobs WHERE id = ? AND state IN ({marks})", (job_id, *FINAL)) == 1

    def update(self, job_id: str, **fields: Any) -> None:
        allowed = {"state", "started", "finished", "progress", "error", "model_path", "history_path", "log_path",
                   "cancel_requested", "resumes"}
        assert set(fields) <= allowed, set(fields) - allowed
        values = [json.dumps(v) if k == "progress" and v is not None else v for k, v in fields.items()]
        self._run(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*values, job_id))

    def transition(self, job_id: str, from_states: tuple[str, ...], to_state: str, **fields: Any) -> bool:
        """Moves the job to ``to_state`` only if it is in one of ``from_states``; True if it moved."""
        sets = {"state": to_state, **fields}
        values = [json.dumps(v) if k == "progress" and v is not None else v for k, v in sets.items()]
        marks = ", ".join("?" * len(from_states))
        return self._run(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ? AND state IN ({marks})",
                         (*values, job_id, *from_states)) == 1


def _record(row: sqlite3.Row) -> JobRecord:
    d = dict(row)
    return JobRecord(id=d["id"], owner=d["owner"], name=d["name"], spec=json.loads(d["spec"]), state=d["state"],
                     created=d["created"], started=d["started"], finished=d["finished"],
                     progress=json.loads(d["progress"]) if d["progress"] else None, error=d["error"],
                     model_path=d["model_path"], history_path=d["history_path"], log_path=d["log_path"],
                     directory=d["directory"], cancel_requested=bool(d["cancel_requested"]), resumes=d["resumes"])
