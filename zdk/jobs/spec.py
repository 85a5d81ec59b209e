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
      "shuffle": false                                           # optional
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
MAX_NAME = 200


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
    """A transformer stage: a ``zdk.transformers`` class name and its keyword arguments."""

    cls: str
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSource:
    """Parquet or CSV (with a header row) at ``path``, or the catalog table ``path`` when
    ``format`` is ``"table"``."""

    format: str
    path: str

    @property
    def field(self) -> str:
        """The spec field that names this source: ``data.table`` or ``data.path``."""
        return "data.table" if self.format == "table" else "data.path"


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
        if self.data.format not in FORMATS:
            raise ConfigError(f"`data.format` must be 'parquet' or 'csv' (or give `data.table`). Received: "
                              f"data.format={_short(self.data.format)}", field="data.format")
        _string(self.data.path, self.data.field)
        for k, stage in enumerate(self.transformers):
            _string(stage.cls, f"transformers[{k}].class")
            _object(stage.arguments, f"transformers[{k}].arguments")
        _count(self.num_executors, "resources.num_executors")
        _count(self.num_processes, "resources.num_processes")
        if not isinstance(self.shuffle, bool):
            raise ConfigError(f"`shuffle` must be true or false. Received: shuffle={_short(self.shuffle)}",
                              field="shuffle")

    @property
    def slots(self) -> int:
        return self.num_executors * self.num_processes

    def to_dict(self) -> dict[str, Any]:
        data = ({"table": self.data.path} if self.data.format == "table"
                else {"format": self.data.format, "path": self.data.path})
        return {"name": self.name, "trainer": {"class": self.trainer, "arguments": self.arguments}, "data": data,
                "transformers": [{"class": s.cls, "arguments": s.arguments} for s in self.transformers],
                "resources": {"num_executors": self.num_executors, "num_processes": self.num_processes},
                "shuffle": self.shuffle}

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
        _known(spec, "spec", ("name", "trainer", "data", "transformers", "resources", "shuffle"))
        name = _string(spec.get("name"), "name")
        trainer = _object(spec.get("trainer"), "trainer")
        _known(trainer, "trainer", ("class", "arguments"))
        arguments = _object(trainer.get("arguments", {}), "trainer.arguments")
        data = _object(spec.get("data"), "data")
        _known(data, "data", ("format", "path", "table"))
        if "table" in data:
            source = DataSource(format="table", path=_string(data["table"], "data.table"))
        else:
            source = DataSource(format=data.get("format", "parquet"), path=_string(data.get("path"), "data.path"))
        stages = spec.get("transformers", [])
        if not isinstance(stages, list):
            raise ConfigError(f"`transformers` must be a list. Received: transformers={_short(stages)}",
                              field="transformers")
        parsed = []
        for k, stage in enumerate(stages):
            where = f"transformers[{k}]"
            stage = _object(stage, where)
            _known(stage, where, ("class", "arguments"))
            parsed.append(Stage(cls=_string(stage.get("class"), f"{where}.class"),
                                arguments=_object(stage.get("arguments", {}), f"{where}.arguments")))
        resources = _object(spec.get("resources", {}), "resources")
        _known(resources, "resources", ("num_executors", "num_processes"))
        return cls(name=name, trainer=_string(trainer.get("class"), "trainer.class"), arguments=arguments,
                   data=source, transformers=tuple(parsed), num_executors=resources.get("num_executors", 1),
                   num_processes=resources.get("num_processes", 1), shuffle=spec.get("shuffle", False))


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
