"""Submitting training jobs to a ``zdk serve`` job server, from a notebook or a script.

:class:`Job` is dist-keras's call shape; :class:`JobClient` is the REST API underneath, which
``zdk job …`` uses too. :mod:`zdk.jobs.spec` (the job spec) and :mod:`zdk.jobs.states` (a job's
states) are shared with the server, which imports them from here.
"""

from zdk.jobs.client import JobClient
from zdk.jobs.describe import trainer_spec
from zdk.jobs.job import Job
from zdk.jobs.models import load_model_bytes, model_bytes

__all__ = ["Job", "JobClient", "load_model_bytes", "model_bytes", "trainer_spec"]
