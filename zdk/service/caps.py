"""The server's caps on what a job may ask of its host: tasks within the job's slots, and at most
so many shards, epochs, rows per batch and seconds per parameter-server request.

Checked on the trainer its own constructor built (so the values are the ones it will train
with, defaults included), at admission and again when the job runs: a server restarted with
tighter caps fails a queued job that no longer fits, naming the field.

Training steps are not capped here: counting them needs the data's rows, which for CSV is a
scan of the whole file. ``num_epoch`` and ``batch_size`` bound them for the data the operator
put under the data roots.
"""

from __future__ import annotations

from typing import Any

from zdk.errors import ConfigError
from zdk.jobs.spec import JobSpec
from zdk.service.policy import Policy


def check(trainer: Any, spec: JobSpec, policy: Policy) -> None:
    """Refuses a trainer that asks for more than ``policy`` and the job's slots allow.

    Args:
        trainer: built by its constructor from the spec.
        spec: the job (its slots).
        policy: the caps.

    Raises:
        ConfigError: naming the ``trainer.arguments`` field over its cap.
    """
    plan = trainer.plan
    if plan.num_tasks > spec.slots:
        name = "num_workers" if plan.parallelism_factor == 1 else "parallelism_factor"
        raise ConfigError(f"`trainer.arguments.{name}`: the job's tasks, num_workers × parallelism_factor = "
                          f"{plan.num_tasks}, must fit in its task slots, resources.num_executors × "
                          f"resources.num_processes = {spec.slots}. Received: num_workers={plan.num_workers}, "
                          f"parallelism_factor={plan.parallelism_factor}", field=f"trainer.arguments.{name}")
    limits: list[tuple[str, Any, Any, str]] = [
        ("num_epoch", plan.num_epoch, policy.max_epochs, "--max-epochs"),
        ("batch_size", plan.batch_size, policy.max_batch_size, "--max-batch-size")]
    if plan.uses_ps:
        limits += [("num_shards", plan.server.num_shards, policy.max_shards, "--max-shards"),
                   ("timeout", plan.server.timeout, policy.max_timeout, "--max-timeout")]
    for name, value, cap, flag in limits:
        if value > cap:
            raise ConfigError(f"`trainer.arguments.{name}` must be at most {cap:g} on this server ({flag}). "
                              f"Received: {name}={value!r}", field=f"trainer.arguments.{name}")
