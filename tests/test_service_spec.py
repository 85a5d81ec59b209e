"""The job spec shared by client and server (``zdk.jobs.spec``), and how the server turns it into a
trainer with its own arguments (``zdk.service.build``): real trainers, no Spark."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from conftest import digits_mlp
from zdk.errors import ConfigError
from zdk.jobs.spec import CallbackSpec, DataSource, JobSpec, Stage
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

    from zdk.service.shards import CHECKPOINT_EVERY, ShardSettings

    directory = str(tmp_path / "checkpoints")
    for spec in (spec_of("ADAG", num_workers=2, num_shards=2), spec_of("Trainer", algorithm="downpour")):
        server = build.server_arguments(spec, checkpoint_dir=directory)
        # CURVE always: each run gets keys of its own, and only its workers hold the client's side.
        assert server == {"progress": False, "security": "curve", "ps_host": "127.0.0.1", "checkpoint_dir": directory,
                          "checkpoint_every": CHECKPOINT_EVERY}
        elsewhere = build.server_arguments(spec, checkpoint_dir=directory,
                                           shards=ShardSettings(host="10.1.2.3", checkpoint_every=0.5))
        assert elsewhere["ps_host"] == "10.1.2.3" and elsewhere["checkpoint_every"] == 0.5
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


def test_shard_settings_refuse_what_is_not_a_host_or_a_period():
    from zdk.service.app import ServeConfig
    from zdk.service.shards import ShardSettings

    for host in ("", "tcp://0.0.0.0", "a b", 5):
        with pytest.raises(ConfigError, match="`ps_host`") as caught:
            ShardSettings(host=host)  # type: ignore[arg-type]
        assert caught.value.field == "ps_host"
    for every in (0, -1.0, float("nan"), "10"):
        with pytest.raises(ConfigError, match="`checkpoint_every`"):
            ShardSettings(checkpoint_every=every)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`ps_host`"):
        ServeConfig(state_dir="unused", ps_host="")
    assert ServeConfig(state_dir="unused", ps_host="10.0.0.5").shards.host == "10.0.0.5"


def test_validation_and_callbacks_have_their_shape_checked_naming_the_field():
    base = spec_of().to_dict()
    cases = [
        (1.5, [], "validation"), (0, [], "validation"), (True, [], "validation"), ("x.parquet", [], "validation"),
        ({"path": ""}, [], "validation.path"), ({"format": "orc", "path": "v.orc"}, [], "validation.format"),
        ({"table": 3}, [], "validation.table"), ({"path": "v", "where": 1}, [], "validation.where"),
        (None, {"class": "EarlyStopping"}, "callbacks"),
        (None, [{"class": "ModelCheckpoint", "arguments": {"filepath": "/tmp/x.keras"}}], "callbacks[0].class"),
        (None, [{"class": "EarlyStopping", "arguments": []}], "callbacks[0].arguments"),
        (None, [{"class": "EarlyStopping", "patience": 1}], "callbacks[0].patience"),
        (None, [{"class": "CSVLogger", "arguments": {"filename": "/etc/cron.d/x"}}],
         "callbacks[0].arguments.filename"),
        (None, [{"class": "TensorBoard", "arguments": {"log_dir": "/tmp/tb"}}], "callbacks[0].arguments.log_dir"),
        (None, [{"class": "TensorBoard", "arguments": {"embeddings_metadata": {"dense": "/etc/passwd"}}}],
         "callbacks[0].arguments.embeddings_metadata"),
        (None, [{"class": "CSVLogger"}, {"class": "TerminateOnNaN"}, {"class": "CSVLogger"}], "callbacks[2].class"),
    ]
    for validation, callbacks, field in cases:
        with pytest.raises(ConfigError) as caught:
            JobSpec.from_dict({**base, "validation": validation, "callbacks": callbacks})
        assert caught.value.field == field, (validation, callbacks, caught.value)
        assert f"`{field}`" in str(caught.value)
    spec = JobSpec.from_dict({**base, "validation": {"format": "csv", "path": "v.csv"},
                              "callbacks": [{"class": "EarlyStopping", "arguments": {"patience": 1}}]})
    assert spec.validation == DataSource(format="csv", path="v.csv", role="validation") and spec.watched
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert JobSpec.from_dict({**base, "validation": 0.25}).validation == 0.25
    # A source given in Python names the validation field too.
    given = JobSpec(name="n", trainer="ADAG", data=DataSource(format="parquet", path="d"),
                    validation=DataSource(format="parquet", path="v"))
    assert given.validation.field == "validation.path"  # type: ignore[union-attr]
    assert not spec_of().watched and spec_of().to_dict()["callbacks"] == []


def test_callbacks_are_built_by_their_constructors_writing_only_into_the_job_folder(tmp_path):
    from zdk.service import build, watching

    files = watching.CallbackFiles(csv_log=str(tmp_path / "csvlogger.csv"), tensorboard=str(tmp_path / "tensorboard"))

    def built(*callbacks: CallbackSpec) -> list:
        spec = JobSpec(name="n", trainer="ADAG", data=DataSource(format="parquet", path="d"), callbacks=callbacks)
        return watching.make_callbacks(spec, files)

    stop, lr, nan, log, board = built(
        CallbackSpec(cls="EarlyStopping", arguments={"monitor": "val_loss", "patience": 3, "min_delta": 0.01}),
        CallbackSpec(cls="ReduceLROnPlateau", arguments={"factor": 0.5, "patience": 1}),
        CallbackSpec(cls="TerminateOnNaN"), CallbackSpec(cls="CSVLogger", arguments={"separator": ";"}),
        CallbackSpec(cls="TensorBoard", arguments={"histogram_freq": 0}))
    assert (stop.monitor, stop.patience, lr.factor, log.sep) == ("val_loss", 3, 0.5, ";")
    assert type(nan).__name__ == "TerminateOnNaN"
    assert log.filename == files.csv_log and log.append is False and board.log_dir == files.tensorboard
    resumed = watching.make_callbacks(JobSpec(name="n", trainer="ADAG", data=DataSource(format="parquet", path="d"),
                                              callbacks=(CallbackSpec(cls="CSVLogger"),)),
                                      dataclasses.replace(files, append=True))
    assert resumed[0].append is True  # a resumed run keeps the rows of the run before the restart
    for callback, field, mention in (
            (CallbackSpec(cls="EarlyStopping", arguments={"patiense": 1}), "callbacks[0].arguments.patiense",
             "takes monitor, min_delta, patience"),
            (CallbackSpec(cls="ReduceLROnPlateau", arguments={"epsilon": 0.1}), "callbacks[0].arguments.epsilon",
             "epsilon"),
            (CallbackSpec(cls="ReduceLROnPlateau", arguments={"factor": 1.0}), "callbacks[0].arguments", "factor"),
            (CallbackSpec(cls="TerminateOnNaN", arguments={"raise_error": True, "x": 1}), "callbacks[0].arguments.x",
             "x")):
        with pytest.raises(ConfigError, match=mention) as caught:
            built(callback)
        assert caught.value.field == field, caught.value
    assert not list(tmp_path.iterdir())  # building writes nothing


def test_trainers_without_a_ps_refuse_validation_and_callbacks_naming_the_field():
    from zdk.service import build, watching

    for changes, field in (({"validation": 0.2}, "validation"),
                           ({"callbacks": (CallbackSpec(cls="TerminateOnNaN"),), "validation": 0.1}, "callbacks")):
        spec = dataclasses.replace(spec_of("SingleTrainer", num_workers=1), **changes)
        trainer = build.make_trainer(spec, digits_mlp(), build.Policy(), server=build.server_arguments(
            spec, checkpoint_dir="unused"))
        with pytest.raises(ConfigError, match=f"`{field}` needs an algorithm with a parameter server") as caught:
            watching.check_algorithm(spec, trainer)
        assert caught.value.field == field
    watched = dataclasses.replace(spec_of("ADAG", num_workers=2), validation=0.2)
    watching.check_algorithm(watched, build.make_trainer(watched, digits_mlp(), build.Policy(), server={}))


def test_the_states_docs_jobs_md_lists_are_the_ones_client_and_server_share():
    section = JOBS_DOC.read_text().split("## States", 1)[1]
    line = next(text for text in section.splitlines() if text.startswith("`queued`"))
    assert tuple(re.findall(r"`(\w+)`", line)) == STATES
    assert set(FINAL) == set(STATES) - {QUEUED, RUNNING}
