"""Turns a :class:`~zdk.jobs.spec.JobSpec` and a ``.keras`` file into a trainer and a
DataFrame, with the trainers' and transformers' own validation.

Nothing the client sends is executed: the model loads with Keras's ``safe_mode`` (no lambda
layers), after it passed the loader box (:mod:`zdk.service.model_sandbox`); custom layers and
algorithms exist only if the operator installed and allowed their modules, and names map to
classes through fixed tables. :class:`Policy` (:mod:`zdk.service.policy`) is what the operator
allows.
"""

from __future__ import annotations

import importlib
import logging
import os
import posixpath
from typing import Any, Mapping, Sequence

from zdk import algorithms, trainers, transformers
from zdk.errors import ConfigError, TooLarge, ZdkError
from zdk.jobs.spec import SERVER_MANAGED, DataSource, JobSpec
from zdk.service import caps
from zdk.service.policy import Policy
from zdk.service.shards import ShardSettings

logger = logging.getLogger(__name__)

TRANSFORMERS: dict[str, type] = {cls.__name__: cls for cls in (
    transformers.MinMaxTransformer, transformers.BinaryLabelTransformer, transformers.StandardTransformer,
    transformers.DenseTransformer, transformers.ReshapeTransformer, transformers.OneHotTransformer,
    transformers.LabelIndexTransformer)}


def import_custom_modules(policy: Policy) -> None:
    """Imports the operator's modules, so their Keras classes and algorithms register."""
    for name in policy.custom_modules:
        importlib.import_module(name)


#: Characters Spark and Hadoop expand as glob patterns in a path (``\\`` escapes them).
GLOB = frozenset("{}[]*?\\")


def resolve_path(path: str, policy: Policy, *, field: str = "data.path") -> str:
    """The fully qualified URI of a data path, which must lie under one of the data roots.

    Local paths come back as ``file:///…``, so Spark reads them from the local file system
    whatever its cluster manager (on YARN a path without a scheme is an HDFS path). Glob
    characters are refused: Spark expands ``{a,../b}``, which would lead out of a URI root.

    Args:
        path: the spec's path.
        policy: the data roots.
        field: the spec field it comes from (``data.path``, ``validation.path``).

    Raises:
        ConfigError: naming ``field`` when the path holds a glob or control character, or lies
            elsewhere (``..`` and symlinks resolved).
    """
    if set(path) & GLOB or any(ord(c) < 32 for c in path):
        raise ConfigError(f"`{field}` must name one path: the characters {''.join(sorted(GLOB))} are glob "
                          f"patterns to Spark and Hadoop, and control characters are not path names. "
                          f"Received: {field}={path!r}", field=field)
    local_roots = [os.path.realpath(_local(r)) for r in policy.data_roots if _is_local(r)]
    uri_roots = [r for r in policy.data_roots if not _is_local(r)]
    roots = ", ".join(policy.data_roots) or "none: start zdk serve with --data-root"
    refused = ConfigError(f"`{field}` must lie under the server's data roots ({roots}). Received: {field}={path!r}",
                          field=field)
    if not _is_local(path):
        scheme, rest = path.split("://", 1)
        normal = f"{scheme}://{posixpath.normpath(rest)}"
        if ".." in rest.split("/") or not any(normal.startswith(r.rstrip("/") + "/") for r in uri_roots):
            raise refused
        return normal
    local = _local(path)
    if not local_roots or (path.startswith("file:") and not os.path.isabs(local)):
        raise refused
    full = os.path.realpath(os.path.join(local_roots[0], local))
    if not any(os.path.commonpath([full, root]) == root for root in local_roots):
        raise refused
    if not os.path.exists(full):
        raise ConfigError(f"`{field}` does not exist under the data roots. Received: {field}={path!r}", field=field)
    return "file://" + full


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    """The file system path of a local path or ``file://`` URI."""
    return path[len("file://"):] if path.startswith("file://") else path


def read_data(spark: Any, source: DataSource, policy: Policy) -> Any:
    """A DataFrame of the source (lazy: Parquet's footer is read; a CSV is scanned for its
    schema); errors name the source's field (``data.path``, ``validation.table`` …)."""
    field = source.field
    if source.format == "table":
        if source.path not in policy.tables:
            raise ConfigError(f"`{field}` must be one of the tables the server allows "
                              f"({', '.join(policy.tables) or 'none'}). Received: {field}={source.path!r}",
                              field=field)
        return spark.table(source.path)
    path = resolve_path(source.path, policy, field=field)
    try:
        if source.format == "csv":
            return spark.read.option("header", True).option("inferSchema", True).csv(path)
        return spark.read.parquet(path)
    except Exception as exc:  # Spark's AnalysisException: not Parquet, empty directory, …
        raise ConfigError(f"`{field}` could not be read as {source.format}: {str(exc).splitlines()[0]}. "
                          f"Received: {field}={source.path!r}", field=field) from None


def check_model_size(data: bytes, policy: Policy) -> None:
    """Refuses a ``.keras`` file over ``max_model_bytes`` unread; its archive and its
    ``config.json`` are checked in the loader box."""
    if len(data) > policy.max_model_bytes:
        raise TooLarge(f"`model` must be at most {policy.max_model_bytes} bytes. Received: {len(data)} bytes",
                       field="model")


def load_model(path: str) -> Any:
    """Loads a ``.keras`` file with ``safe_mode``: no lambda layers, only registered classes.
    Only for a file the loader box passed (:meth:`zdk.service.model_sandbox.ModelSandbox.inspect`)."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise ConfigError(f"`model` could not be loaded as a Keras model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}", field="model") from None


def server_arguments(spec: JobSpec, *, checkpoint_dir: str, shards: ShardSettings = ShardSettings()) -> dict[str, Any]:
    """The trainer arguments the server decides for the job (of ``SERVER_MANAGED``).

    No progress bar (the dashboard shows progress). With a parameter server, its shards bind
    ``shards.host`` with CURVE (``security="curve"``): each run gets keys of its own, and only
    its workers hold the client's side, so no other process, local or not, can pull the model,
    commit to it or stop it. They checkpoint into ``checkpoint_dir`` every
    ``shards.checkpoint_every`` seconds, so that a server restart resumes the job. Trainers
    without a parameter server refuse these arguments.
    """
    server: dict[str, Any] = {"progress": False}
    if _uses_ps(spec):
        server.update(security="curve", ps_host=shards.host, checkpoint_dir=checkpoint_dir,
                      checkpoint_every=shards.checkpoint_every)
    return server


def _uses_ps(spec: JobSpec) -> bool:
    """Whether the spec's algorithm has a parameter server: its ``algorithm`` argument, else its
    trainer class's. False when neither names a registered algorithm, which the trainer's
    constructor then refuses with its own message."""
    cls = trainers.TRAINERS.get(spec.trainer)
    name = spec.arguments.get("algorithm")
    if name is None and cls is not None:
        name = cls.default_algorithm
    try:
        return algorithms.get(name).uses_ps if isinstance(name, str) else False
    except ZdkError:
        return False


def make_trainer(spec: JobSpec, model: Any, policy: Policy, *, server: Mapping[str, Any]) -> Any:
    """The trainer the spec names, built by its own constructor (its errors name the argument).

    Args:
        spec: the job; its arguments hold none of ``SERVER_MANAGED`` (the spec refuses them).
        model: the submitted Keras model.
        policy: the custom modules the job may name, and the caps (:mod:`zdk.service.caps`).
        server: the server's own arguments (:func:`server_arguments`), merged after the spec's.

    Raises:
        ConfigError: naming the trainer's class or argument that is refused or over a cap.
    """
    unknown = sorted(set(server) - set(SERVER_MANAGED))
    if unknown:
        raise ValueError(f"`server` may hold only server-managed arguments ({', '.join(SERVER_MANAGED)}). "
                         f"Received: {unknown}")
    cls = trainers.TRAINERS.get(spec.trainer)
    if cls is None:
        raise ConfigError(f"`trainer.class` must be one of {', '.join(trainers.TRAINERS)}. Received: "
                          f"trainer.class={spec.trainer!r}", field="trainer.class")
    arguments = dict(spec.arguments)
    modules = arguments.get("custom_modules", [])
    if not isinstance(modules, list) or any(m not in policy.custom_modules for m in modules):
        raise ConfigError(f"`trainer.arguments.custom_modules` may name only the modules the server allows "
                          f"({', '.join(policy.custom_modules) or 'none'}). Received: custom_modules={modules!r}",
                          field="trainer.arguments.custom_modules")
    for field, kind in (("worker_optimizer", "optimizers"), ("loss", "losses")):
        if isinstance(arguments.get(field), dict):
            arguments[field] = _keras_object(kind, arguments[field], f"trainer.arguments.{field}")
    if isinstance(arguments.get("metrics"), list):
        arguments["metrics"] = [_keras_object("metrics", m, "trainer.arguments.metrics") if isinstance(m, dict)
                                else m for m in arguments["metrics"]]
    try:
        trainer = cls(model, **arguments, **server)
    except (ZdkError, TypeError, ValueError) as exc:
        raise ConfigError(f"`trainer.arguments` refused by {spec.trainer}: {exc}", field="trainer.arguments") from None
    caps.check(trainer, spec, policy)
    return trainer


def make_stages(spec: JobSpec) -> list[Any]:
    """The transformer stages, each built by its own constructor."""
    stages = []
    for k, stage in enumerate(spec.transformers):
        cls = TRANSFORMERS.get(stage.cls)
        if cls is None:
            raise ConfigError(f"`transformers[{k}].class` must be one of {', '.join(TRANSFORMERS)}. Received: "
                              f"transformers[{k}].class={stage.cls!r}", field=f"transformers[{k}].class")
        try:
            stages.append(cls(**stage.arguments))
        except (ZdkError, TypeError, ValueError) as exc:
            raise ConfigError(f"`transformers[{k}].arguments` refused by {stage.cls}: {exc}",
                              field=f"transformers[{k}].arguments") from None
    return stages


def prepare(dataframe: Any, stages: Sequence[Any], trainer: Any, *, check_rows: bool = False) -> Any:
    """Applies the stages (lazily) and checks the trainer's columns exist in the result; with
    ``check_rows``, also the trainer's pre-flight on one row (widths, labels; one small Spark job)."""
    for k, stage in enumerate(stages):
        try:
            dataframe = stage.transform(dataframe)
        except ZdkError as exc:
            raise ConfigError(f"`transformers[{k}]` cannot run on this data: {exc}",
                              field=f"transformers[{k}]") from None
        except Exception as exc:  # Spark's AnalysisException names the missing column
            raise ConfigError(f"`transformers[{k}]` cannot run on this data: {str(exc).splitlines()[0]}",
                              field=f"transformers[{k}]") from None
    for field in ("features_col", "label_col"):
        missing = [c for c in getattr(trainer, field) if c not in dataframe.columns]
        if missing:
            raise ConfigError(f"`trainer.arguments.{field}` names columns the data does not have: {missing}. "
                              f"Received columns: {dataframe.columns}", field=f"trainer.arguments.{field}")
    if check_rows:
        try:
            trainer.check(dataframe)
        except ConfigError as exc:
            raise ConfigError(f"`trainer.arguments` do not fit the data or the model: {exc}",
                              field="trainer.arguments") from None
    return dataframe


def _keras_object(kind: str, config: dict[str, Any], field: str) -> Any:
    import keras

    expected = {"optimizers": keras.optimizers.Optimizer, "losses": keras.losses.Loss,
                "metrics": keras.metrics.Metric}[kind]
    try:
        value = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as exc:
        value = exc
    if not isinstance(value, expected):
        raise ConfigError(f"`{field}` must be a Keras {kind[:-1]} config (keras.{kind}.serialize), or a name. "
                          f"Received: {field}={str(config)[:80]}", field=field) from None
    return value
