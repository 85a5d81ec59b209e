"""Admitting a submission: everything a job is checked against before it is queued.

The model, the trainer, the stages, the data and the cluster's slots are checked in a scratch
folder, which becomes the job's folder only when all pass; a refused job leaves nothing, neither
a folder nor a record.
"""

from __future__ import annotations

import os
import shutil

from zdk.errors import ConfigError
from zdk.jobs.spec import JobSpec
from zdk.service import build
from zdk.service.artifacts import StateDir
from zdk.service.cluster import Cluster
from zdk.service.store import JobRecord, Store


class Admission:
    """Checks submissions and records the admitted ones as queued jobs.

    Args:
        state: where job folders and uploads go.
        store: the job records.
        cluster: the Spark the job reads its data with and runs on.
        policy: what jobs may read and import, and the model size limit.
    """

    def __init__(self, *, state: StateDir, store: Store, cluster: Cluster, policy: build.Policy) -> None:
        self.state = state
        self.store = store
        self.cluster = cluster
        self.policy = policy

    def admit(self, owner: str, spec: JobSpec, model: bytes) -> JobRecord:
        """Checks the job against the model, the data and the cluster, then queues it.

        Blocking (Keras, one small Spark job): call it off the event loop.

        Args:
            owner: the submitting user.
            spec: the job's spec.
            model: the ``.keras`` file's bytes.

        Raises:
            ConfigError: naming the first field that does not fit (``TooLarge`` for the model's size).
        """
        build.check_model_file(model, self.policy)
        scratch = self.state.scratch()
        try:
            with open(scratch.submitted_model, "wb") as fh:
                fh.write(model)
            # The same constructor call the run makes, so what passes here builds there.
            server = build.server_arguments(spec, checkpoint_dir=scratch.checkpoints)
            trainer = build.make_trainer(spec, build.load_model(scratch.submitted_model), self.policy, server=server)
            stages = build.make_stages(spec)
            data = build.read_data(self.cluster.spark(), spec.data, self.policy)
            build.prepare(data, stages, trainer, check_rows=True)
            slots = self.cluster.slots()
            if spec.slots > slots:
                raise ConfigError(f"`resources` asks for {spec.slots} task slots (num_executors × num_processes); "
                                  f"the server's cluster has {slots}. Received: num_executors={spec.num_executors}, "
                                  f"num_processes={spec.num_processes}", field="resources")
            job_id = self.store.new_id()
            folder = self.state.job(job_id)
            os.rename(scratch.directory, folder.directory)
            return self.store.add_job(owner=owner, name=spec.name, spec=spec.to_dict(), directory=folder.directory,
                                      job_id=job_id)
        finally:
            shutil.rmtree(scratch.directory, ignore_errors=True)
