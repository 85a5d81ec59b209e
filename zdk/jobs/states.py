"""The life of a job, as the server records it and the client reads it.

``queued`` → ``running`` → one of the final states. ``interrupted``: the server stopped while
the job ran and it cannot resume (no complete checkpoint); a job that can resume goes back to
``queued`` instead, with its ``resumes`` count incremented. A queued job cancelled by its owner
goes straight to ``cancelled``.
"""

from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"

#: Every state, in the order of a job's life.
STATES = (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED)
#: The states a job never leaves: its record and files no longer change.
FINAL = (FINISHED, FAILED, CANCELLED, INTERRUPTED)
