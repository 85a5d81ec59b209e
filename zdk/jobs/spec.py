"""The job spec: what a client sends with its ``.keras`` model, as a frozen value.

Client and server share it: :class:`zdk.jobs.Job` builds one from a trainer, and the server
parses each submission with :meth:`JobSpec.from_json`. Only the shape is checked here (no
Spark, no Keras): names are strings, arguments are JSON objects, sizes are positive integers.
What the names mean is checked by the job server with the trainers' and transformers' own
constructors.

Schema (JSON)::

    {
      "name": "digits-adag",                          # free text, ≤ 200 characters
      "trainer": {"class": "ADAG",                    # a zdk.trainers class
                  "arguments": {"loss": "sparse_categorical_crossentropy", "num_workers": 2, ...}},
      "data": {"format": "parquet", "path": "digits.parquet"},   # or "csv", or {"table": "name"}
      "transformers": [{"class": "OneHotTransformer", "arguments": {...}}],   # optional
      "resources": {"num_executors": 1, "num_processes": 2},    # task slots = the product
      "shuffle": false,                                          # optional
      "validation": 0.1,                      # optional: a fraction of the data, or a source like "data"
      "callbacks": [{"class": "EarlyStopping", "arguments": {"monitor": "val_loss", "patience": 2}}]
    }
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from zdk.errors import ConfigError

#: Trainer arguments the server decides: a client naming one gets a 400 naming it.
SERVER_MANAGED = ("parameter_server", "curve_keys", "checkpoint_dir", "checkpoint_every", "progress", "ps_host",
                  "master_port", "security")
#: ``DataSource.format`` values: files at a path, or a catalog table.
FORMATS = ("parquet", "csv", "table")
#: The Keras callbacks a job may name (``keras.callbacks.NAME``).
CALLBACKS = ("EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger", "TensorBoard")
#: The callback argument naming where a callback writes: the server sets it, inside the job's folder.
CALLBACK_FILES = {"CSVLogger": "filename", "TensorBoard": "log_dir"}
#: Other callback arguments that name files (TensorBoard reads embeddings' metadata files): refused.
CALLBACK_PATHS = {"TensorBoard": ("embeddings_metadata",)}
MAX_NAME = 200


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
    """A transformer stage: a ``zdk.transformers`` class name and its keyword arguments."""

    cls: str
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallbackSpec:
    """A Keras callback: one of ``CALLBACKS`` and its keyword arguments (JSON values)."""

    cls: str
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSource:
    """Parquet or CSV (with a header row) at ``path``, or the catalog table ``path`` when
    ``format`` is ``"table"``.

    Args:
        format: one of ``FORMATS``.
        path: the path, or the table's name.
        role: the spec field that holds it: ``"data"`` or ``"validation"`` (errors name it).
    """

    format: str
    path: str
    role: str = "data"

    @property
    def field(self) -> str:
        """The spec field that names this source: ``data.table`` or ``data.path`` (``validation.…``)."""
        return f"{self.role}.table" if self.format == "table" else f"{self.role}.path"

    def to_dict(self) -> dict[str, str]:
        return {"table": self.path} if self.format == "table" else {"format": self.format, "path": self.path}


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A training job, as submitted.

    ``num_executors × num_processes`` task slots are reserved for the job while it runs (the
    seed's Punchcard asked YARN for that many); the trainer's workers must fit in them.

    Args:
        name: shown in listings and the dashboard; 1 to ``MAX_NAME`` characters.
        trainer: a ``zdk.trainers`` class name.
        arguments: the trainer's keyword arguments as JSON values, none of ``SERVER_MANAGED``.
        data: where the training data is.
        transformers: stages applied to the data, in order, before training.
        num_executors, num_processes: the job's task slots are their product.
        shuffle: ``train(df, shuffle=True)``.
        validation: a fraction in (0, 1) of the data set aside (``train(validation_split=…)``), or
            a source read like ``data`` and through the same transformers (``validation_data=``).
        callbacks: Keras callbacks (``CALLBACKS``), built by their own constructors on the server;
            where they write (``CALLBACK_FILES``) is the server's to choose, and the other
            arguments naming files (``CALLBACK_PATHS``) are refused.

    Raises:
        ConfigError: naming the spec field (``name``, ``trainer.arguments.progress``,
            ``resources.num_executors`` …) of the first wrong value.
    """

    name: str
    trainer: str
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: DataSource
    transformers: tuple[Stage, ...] = ()
    num_executors: int = 1
    num_processes: int = 1
    shuffle: bool = False
    validation: float | DataSource | None = None
    callbacks: tuple[CallbackSpec, ...] = ()

    def __post_init__(self) -> None:
        _string(self.name, "name")
        if len(self.name) > MAX_NAME:
            raise ConfigError(f"`name` must have at most {MAX_NAME} characters. Received: {len(self.name)} "
                              f"characters", field="name")
        _string(self.trainer, "trainer.class")
        _object(self.arguments, "trainer.arguments")
        for key in SERVER_MANAGED:
            if key in self.arguments:
                raise ConfigError(f"`trainer.arguments.{key}` is set by the job server; remove it. "
                                  f"Received: {key}={self.arguments[key]!r}", field=f"trainer.arguments.{key}")
        for k, stage in enumerate(self.transformers):
            _string(stage.cls, f"transformers[{k}].class")
            _object(stage.arguments, f"transformers[{k}].arguments")
        _count(self.num_executors, "resources.num_executors")
        _count(self.num_processes, "resources.num_processes")
        if not isinstance(self.shuffle, bool):
            raise ConfigError(f"`shuffle` must be true or false. Received: shuffle={_short(self.shuffle)}",
                              field="shuffle")
        _source(self.data, "data")
        if isinstance(self.validation, DataSource):
            if self.validation.role != "validation":  # its errors name the spec field it is given in
                object.__setattr__(self, "validation", dataclasses.replace(self.validation, role="validation"))
            _source(self.validation, "validation")
        elif self.validation is not None:
            _fraction(self.validation, "validation")
        if isinstance(self.callbacks, list):
            object.__setattr__(self, "callbacks", tuple(self.callbacks))
        _callbacks(self.callbacks)

    @property
    def slots(self) -> int:
        return self.num_executors * self.num_processes

    @property
    def watched(self) -> bool:
        """Whether the run has validation or callbacks: the driver follows its epochs."""
        return self.validation is not None or bool(self.callbacks)

    def to_dict(self) -> dict[str, Any]:
        validation = self.validation.to_dict() if isinstance(self.validation, DataSource) else self.validation
        return {"name": self.name, "trainer": {"class": self.trainer, "arguments": self.arguments},
                "data": self.data.to_dict(),
                "transformers": [{"class": s.cls, "arguments": s.arguments} for s in self.transformers],
                "resources": {"num_executors": self.num_executors, "num_processes": self.num_processes},
                "shuffle": self.shuffle, "validation": validation,
                "callbacks": [{"class": c.cls, "arguments": c.arguments} for c in self.callbacks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobSpec":
        try:
            value = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"`spec` must be a JSON object. Received: malformed JSON ({exc})", field="spec") from None
        return cls.from_dict(value)

    @classmethod
    def from_dict(cls, value: Any) -> "JobSpec":
        """Checks the structure of a decoded spec (objects, known keys), then builds it; the
        error names the first wrong field."""
        spec = _object(value, "spec")
        _known(spec, "spec", ("name", "trainer", "data", "transformers", "resources", "shuffle", "validation",
                              "callbacks"))
        name = _string(spec.get("name"), "name")
        trainer = _object(spec.get("trainer"), "trainer")
        _known(trainer, "trainer", ("class", "arguments"))
        arguments = _object(trainer.get("arguments", {}), "trainer.arguments")
        source = _parse_source(spec.get("data"), "data")
        validation = spec.get("validation")
        if isinstance(validation, dict):
            validation = _parse_source(validation, "validation")
        parsed = [Stage(cls=cls_, arguments=args) for cls_, args in _named_list(spec, "transformers")]
        callbacks = [CallbackSpec(cls=cls_, arguments=args) for cls_, args in _named_list(spec, "callbacks")]
        resources = _object(spec.get("resources", {}), "resources")
        _known(resources, "resources", ("num_executors", "num_processes"))
        return cls(name=name, trainer=_string(trainer.get("class"), "trainer.class"), arguments=arguments,
                   data=source, transformers=tuple(parsed), num_executors=resources.get("num_executors", 1),
                   num_processes=resources.get("num_processes", 1), shuffle=spec.get("shuffle", False),
                   validation=validation, callbacks=tuple(callbacks))


def _parse_source(value: Any, role: str) -> DataSource:
    """``{"format", "path"}`` or ``{"table"}`` under the spec field ``role``."""
    data = _object(value, role)
    _known(data, role, ("format", "path", "table"))
    if "table" in data:
        return DataSource(format="table", path=_string(data["table"], f"{role}.table"), role=role)
    return DataSource(format=data.get("format", "parquet"), path=_string(data.get("path"), f"{role}.path"), role=role)


def _named_list(spec: dict[str, Any], field: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``[{"class", "arguments"}, …]`` list under ``field``, as (class, arguments) pairs."""
    items = spec.get(field, [])
    if not isinstance(items, list):
        raise ConfigError(f"`{field}` must be a list. Received: {field}={_short(items)}", field=field)
    parsed = []
    for k, item in enumerate(items):
        where = f"{field}[{k}]"
        item = _object(item, where)
        _known(item, where, ("class", "arguments"))
        parsed.append((_string(item.get("class"), f"{where}.class"),
                       _object(item.get("arguments", {}), f"{where}.arguments")))
    return parsed


def _source(source: Any, role: str) -> None:
    if not isinstance(source, DataSource):
        raise ConfigError(f"`{role}` must be a data source. Received: {role}={_short(source)}", field=role)
    if source.format not in FORMATS:
        raise ConfigError(f"`{role}.format` must be 'parquet' or 'csv' (or give `{role}.table`). Received: "
                          f"{role}.format={_short(source.format)}", field=f"{role}.format")
    _string(source.path, source.field)


def _fraction(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f'`{field}` must be a fraction in (0, 1) of the data set aside, or a data source '
                          f'like `data` ({{"format": …, "path": …}} or {{"table": …}}). '
                          f"Received: {field}={_short(value)}", field=field)
    return float(value)


def _callbacks(callbacks: Any) -> None:
    """The callbacks' shape: allowed classes, JSON objects of arguments, no file arguments, at
    most one of each class that writes files (they would write the same ones)."""
    if not isinstance(callbacks, tuple):
        raise ConfigError(f"`callbacks` must be a tuple of CallbackSpec. Received: callbacks={_short(callbacks)}",
                          field="callbacks")
    writers: set[str] = set()
    for k, callback in enumerate(callbacks):
        where = f"callbacks[{k}]"
        if not isinstance(callback, CallbackSpec):
            raise ConfigError(f"`{where}` must be a CallbackSpec. Received: {where}={_short(callback)}", field=where)
        _string(callback.cls, f"{where}.class")
        if callback.cls not in CALLBACKS:
            raise ConfigError(f"`{where}.class` must be one of {', '.join(CALLBACKS)}. Received: "
                              f"{where}.class={_short(callback.cls)}", field=f"{where}.class")
        _object(callback.arguments, f"{where}.arguments")
        written = CALLBACK_FILES.get(callback.cls)
        if written in callback.arguments:
            raise ConfigError(f"`{where}.arguments.{written}` is chosen by the job server, inside the job's folder "
                              f"(docs/jobs.md says where); remove it. Received: "
                              f"{written}={_short(callback.arguments[written])}", field=f"{where}.arguments.{written}")
        for name in CALLBACK_PATHS.get(callback.cls, ()):
            if name in callback.arguments:
                raise ConfigError(f"`{where}.arguments.{name}` names files on the server, which a job may not; "
                                  f"remove it. Received: {name}={_short(callback.arguments[name])}",
                                  field=f"{where}.arguments.{name}")
        if written is not None:
            if callback.cls in writers:
                raise ConfigError(f"`{where}.class`: a job may have one {callback.cls} (it writes into the job's "
                                  f"folder). Received: a second {callback.cls}", field=f"{where}.class")
            writers.add(callback.cls)


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"`{field}` must be a JSON object. Received: {field}={_short(value)}", field=field)
    return value


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"`{field}` must be a non-empty string. Received: {field}={_short(value)}", field=field)
    return value


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"`{field}` must be an integer ≥ 1. Received: {field}={_short(value)}", field=field)
    return value


def _known(value: dict[str, Any], field: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ConfigError(f"`{field}.{unknown[0]}` is not a field of {field}; known: {', '.join(keys)}. "
                          f"Received: {unknown[0]}={_short(value[unknown[0]])}", field=f"{field}.{unknown[0]}")


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # a Python object given to the constructor, not decoded JSON
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
