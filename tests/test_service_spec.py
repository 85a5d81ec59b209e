"""The job spec shared by client and server (``zdk.jobs.spec``), and how the server turns it into a
trainer with its own arguments (``zdk.service.build``): real trainers, no Spark."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import digits_mlp
from zdk.errors import ConfigError
from zdk.jobs.spec import DataSource, JobSpec, Stage
from zdk.jobs.states import FINAL, QUEUED, RUNNING, STATES

JOBS_DOC = Path(__file__).resolve().parents[1] / "docs" / "jobs.md"


def spec_of(trainer: str = "ADAG", **arguments) -> JobSpec:
    return JobSpec(name="digits", trainer=trainer, arguments={"loss": "sparse_categorical_crossentropy",
                                                              **arguments},
                   data=DataSource(format="parquet", path="digits.parquet"), num_processes=2)


def test_the_constructor_checks_what_from_dict_checks_naming_the_spec_field():
    parquet = DataSource(format="parquet", path="d.parquet")
    cases = [
        (dict(name="x" * 201), "name"),
        (dict(name=""), "name"),
        (dict(trainer=""), "trainer.class"),
        (dict(arguments=["num_workers", 2]), "trainer.arguments"),
        (dict(arguments={"progress": False}), "trainer.arguments.progress"),
        (dict(data=DataSource(format="orc", path="d.orc")), "data.format"),
        (dict(data=DataSource(format="csv", path="")), "data.path"),
        (dict(data=DataSource(format="table", path="")), "data.table"),
        (dict(transformers=(Stage(cls="OneHotTransformer"), Stage(cls=""))), "transformers[1].class"),
        (dict(transformers=(Stage(cls="OneHotTransformer", arguments=None),)), "transformers[0].arguments"),
        (dict(num_executors=0), "resources.num_executors"),
        (dict(num_processes=True), "resources.num_processes"),
        (dict(shuffle="yes"), "shuffle"),
    ]
    for change, field in cases:
        values = {"name": "n", "trainer": "ADAG", "arguments": {}, "data": parquet, **change}
        with pytest.raises(ConfigError, match=f"`{field.replace('[', '.').replace(']', '.')}`") as caught:
            JobSpec(**values)
        assert caught.value.field == field, (change, caught.value.field)
    with pytest.raises(TypeError):
        JobSpec("n", "ADAG", {}, parquet)  # type: ignore[misc]


def test_a_table_source_round_trips_and_older_records_still_parse():
    spec = JobSpec(name="t", trainer="ADAG", data=DataSource(format="table", path="features.train"))
    assert spec.to_dict()["data"] == {"table": "features.train"}
    assert JobSpec.from_dict(spec.to_dict()) == spec
    older = {**spec.to_dict(), "data": {"format": "table", "path": "features.train"}}
    assert JobSpec.from_dict(older) == spec


def test_job_spec_is_checked_on_the_client_as_the_server_checks_it():
    from zdk.jobs import Job
    from zdk.trainers import ADAG

    trainer = ADAG(digits_mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2)
    spec = Job("token", "digits", "features.train", 1, 2, trainer, data_format="table").spec()
    assert JobSpec.from_dict(spec).data == DataSource(format="table", path="features.train")
    assert spec["trainer"]["class"] == "ADAG" and spec["resources"] == {"num_executors": 1, "num_processes": 2}
    quiet = ADAG(digits_mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, progress=False)
    with pytest.raises(ConfigError, match="`trainer.arguments.progress` is set by the job server") as caught:
        Job("token", "digits", "digits.parquet", 1, 2, quiet).spec()
    assert caught.value.field == "trainer.arguments.progress"


def test_the_server_passes_its_checkpoint_arguments_to_the_constructor_of_trainers_with_a_ps(tmp_path):
    from zdk.service import build

    directory = str(tmp_path / "checkpoints")
    for spec in (spec_of("ADAG", num_workers=2, num_shards=2), spec_of("Trainer", algorithm="downpour")):
        server = build.server_arguments(spec, checkpoint_dir=directory)
        assert server == {"progress": False, "checkpoint_dir": directory, "checkpoint_every": build.CHECKPOINT_EVERY}
        trainer = build.make_trainer(spec, digits_mlp(), build.Policy(), server=server)
        assert trainer.algorithm.uses_ps
        assert {k: trainer.arguments[k] for k in server} == server
    for spec in (spec_of("SingleTrainer", num_workers=1), spec_of("EnsembleTrainer", num_ensembles=2),
                 spec_of("Trainer", algorithm="sequential", num_workers=1)):
        server = build.server_arguments(spec, checkpoint_dir=directory)
        assert server == {"progress": False}, spec.trainer
        trainer = build.make_trainer(spec, digits_mlp(), build.Policy(), server=server)
        assert not trainer.algorithm.uses_ps and trainer.arguments["progress"] is False


def test_trainers_without_a_ps_refuse_a_checkpoint_directory_and_unknown_algorithms_are_the_trainers_to_refuse(
        tmp_path):
    from zdk.service import build

    single = spec_of("SingleTrainer", num_workers=1)
    with pytest.raises(ConfigError, match="checkpoint_dir") as caught:
        build.make_trainer(single, digits_mlp(), build.Policy(), server={"checkpoint_dir": str(tmp_path)})
    assert caught.value.field == "trainer.arguments"
    for spec in (spec_of("Trainer", algorithm="nope"), spec_of("Trainer"), spec_of("Nope")):
        server = build.server_arguments(spec, checkpoint_dir=str(tmp_path))
        assert server == {"progress": False}
        with pytest.raises(ConfigError) as caught:
            build.make_trainer(spec, digits_mlp(), build.Policy(), server=server)
        assert caught.value.field in ("trainer.arguments", "trainer.class")
    with pytest.raises(ValueError, match="server-managed"):
        build.make_trainer(spec_of(), digits_mlp(), build.Policy(), server={"num_workers": 2})


def test_the_states_docs_jobs_md_lists_are_the_ones_client_and_server_share():
    section = JOBS_DOC.read_text().split("## States", 1)[1]
    line = next(text for text in section.splitlines() if text.startswith("`queued`"))
    assert tuple(re.findall(r"`(\w+)`", line)) == STATES
    assert set(FINAL) == set(STATES) - {QUEUED, RUNNING}
