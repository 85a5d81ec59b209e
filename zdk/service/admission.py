"""Admitting a submission: everything a job is checked against before it is queued.

The user's queue, the model (in the loader box first, then loaded here), the trainer and the
caps, the callbacks, the stages, the data, the validation data and the cluster's slots are
checked in a scratch folder, which becomes the job's folder only when all pass; a refused job leaves nothing, neither a folder nor
a record.
"""

from __future__ import annotations

import os
import shutil

from zdk.errors import ConfigError
from zdk.jobs.spec import JobSpec
from zdk.service import build, watching
from zdk.service.artifacts import StateDir
from zdk.service.cluster import Cluster
from zdk.service.gate import Busy
from zdk.service.model_sandbox import LoadLimits, ModelSandbox
from zdk.service.policy import Policy, count
from zdk.service.shards import ShardSettings
from zdk.service.store import JobRecord, Store


class Admission:
    """Checks submissions and records the admitted ones as queued jobs.

    Args:
        state: where job folders and uploads go.
        store: the job records.
        cluster: the Spark the job reads its data with and runs on.
        policy: what jobs may read and import, the model's limits and the caps.
        sandbox: the loader box uploaded models are checked in before this process loads them.
        max_queued_per_user: a user's jobs queued or running at once.
        shards: where jobs' shards bind and how often they checkpoint (the trainer is built with them).

    Raises:
        ConfigError: naming ``max_queued_per_user`` when it is below 1.
    """

    def __init__(self, *, state: StateDir, store: Store, cluster: Cluster, policy: Policy, sandbox: ModelSandbox,
                 max_queued_per_user: int = 20, shards: ShardSettings = ShardSettings()) -> None:
        self.max_queued_per_user = count(max_queued_per_user, "max_queued_per_user")
        self.state = state
        self.store = store
        self.cluster = cluster
        self.policy = policy
        self.sandbox = sandbox
        self.shards = shards

    def admit(self, owner: str, spec: JobSpec, model: bytes) -> JobRecord:
        """Checks the job against the model, the data and the cluster, then queues it.

        Blocking (Keras, one small Spark job): call it off the event loop.

        Args:
            owner: the submitting user.
            spec: the job's spec.
            model: the ``.keras`` file's bytes.

        Raises:
            Busy: 429 when the user has ``max_queued_per_user`` jobs queued or running.
            ConfigError: naming the first field that does not fit (``TooLarge`` for the model's size).
        """
        build.check_model_size(model, self.policy)
        active = self.store.active(owner)
        if active >= self.max_queued_per_user:
            raise Busy(f"you have {active} jobs queued or running, the most the server keeps for one user "
                       f"(--max-queued-per-user); submit again when one has ended, or cancel one", status=429)
        scratch = self.state.scratch()
        try:
            with open(scratch.submitted_model, "wb") as fh:
                fh.write(model)
            self.sandbox.inspect(scratch.submitted_model, LoadLimits.of(self.policy))
            # The same constructor call the run makes, so what passes here builds there.
            server = build.server_arguments(spec, checkpoint_dir=scratch.checkpoints, shards=self.shards)
            trainer = build.make_trainer(spec, build.load_model(scratch.submitted_model), self.policy, server=server)
            watching.check_algorithm(spec, trainer)
            watching.make_callbacks(spec, watching.CallbackFiles(csv_log=scratch.csv_log,
                                                                 tensorboard=scratch.tensorboard))
            stages = build.make_stages(spec)
            spark = self.cluster.spark()
            build.prepare(build.read_data(spark, spec.data, self.policy), stages, trainer, check_rows=True)
            watching.validation_arguments(spec, spark=spark, policy=self.policy, stages=stages, trainer=trainer)
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
