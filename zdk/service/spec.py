"""The job spec: what a client sends with its ``.keras`` model, as a frozen value.

Only the shape is checked here (no Spark, no Keras): names are strings, arguments are JSON
objects, sizes are positive integers. What the names mean is checked by
:mod:`zdk.service.build` with the trainers' and transformers' own constructors.

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

from zdk.errors import ConfigError, TooLarge

#: Trainer arguments the server decides: a client naming one gets a 400 naming it.
SERVER_MANAGED = ("parameter_server", "curve_keys", "checkpoint_dir", "checkpoint_every", "progress", "ps_host",
                  "master_port", "security")
FORMATS = ("parquet", "csv", "table")
MAX_NAME = 200


@dataclasses.dataclass(frozen=True)
class Stage:
    """A transformer stage: a ``zdk.transformers`` class name and its keyword arguments."""

    cls: str
    arguments: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Parquet or CSV (with a header row) at ``path``, or the catalog table ``path`` when
    ``format`` is ``"table"``."""

    format: str
    path: str


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """A training job, as submitted.

    ``num_executors × num_processes`` task slots are reserved for the job while it runs (the
    seed's Punchcard asked YARN for that many); the trainer's workers must fit in them.
    """

    name: str
    trainer: str
    arguments: dict[str, Any]
    data: DataSource
    transformers: tuple[Stage, ...] = ()
    num_executors: int = 1
    num_processes: int = 1
    shuffle: bool = False

    @property
    def slots(self) -> int:
        return self.num_executors * self.num_processes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trainer": {"class": self.trainer, "arguments": self.arguments},
                "data": {"format": self.data.format, "path": self.data.path},
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
        """Checks the shape of a decoded spec; the error names the first wrong field."""
        spec = _object(value, "spec")
        _known(spec, "spec", ("name", "trainer", "data", "transformers", "resources", "shuffle"))
        name = _string(spec.get("name"), "name")
        if len(name) > MAX_NAME:
            raise ConfigError(f"`name` must have at most {MAX_NAME} characters. Received: {len(name)} characters",
                              field="name")
        trainer = _object(spec.get("trainer"), "trainer")
        _known(trainer, "trainer", ("class", "arguments"))
        arguments = _object(trainer.get("arguments", {}), "trainer.arguments")
        for key in SERVER_MANAGED:
            if key in arguments:
                raise ConfigError(f"`trainer.arguments.{key}` is set by the job server; remove it. "
                                  f"Received: {key}={arguments[key]!r}", field=f"trainer.arguments.{key}")
        data = _object(spec.get("data"), "data")
        _known(data, "data", ("format", "path", "table"))
        if "table" in data:
            source = DataSource("table", _string(data["table"], "data.table"))
        else:
            fmt = _string(data.get("format", "parquet"), "data.format")
            if fmt not in FORMATS[:2]:
                raise ConfigError(f"`data.format` must be 'parquet' or 'csv' (or give `data.table`). Received: "
                                  f"data.format={fmt!r}", field="data.format")
            source = DataSource(fmt, _string(data.get("path"), "data.path"))
        stages = spec.get("transformers", [])
        if not isinstance(stages, list):
            raise ConfigError(f"`transformers` must be a list. Received: transformers={stages!r}", field="transformers")
        parsed = []
        for k, stage in enumerate(stages):
            where = f"transformers[{k}]"
            stage = _object(stage, where)
            _known(stage, where, ("class", "arguments"))
            parsed.append(Stage(_string(stage.get("class"), f"{where}.class"),
                                _object(stage.get("arguments", {}), f"{where}.arguments")))
        resources = _object(spec.get("resources", {}), "resources")
        _known(resources, "resources", ("num_executors", "num_processes"))
        shuffle = spec.get("shuffle", False)
        if not isinstance(shuffle, bool):
            raise ConfigError(f"`shuffle` must be true or false. Received: shuffle={shuffle!r}", field="shuffle")
        return cls(name=name, trainer=_string(trainer.get("class"), "trainer.class"), arguments=arguments,
                   data=source, transformers=tuple(parsed),
                   num_executors=_count(resources.get("num_executors", 1), "resources.num_executors"),
                   num_processes=_count(resources.get("num_processes", 1), "resources.num_processes"),
                   shuffle=shuffle)


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
    text = json.dumps(value) if not isinstance(value, (bytes, bytearray)) else "<bytes>"
    return text if len(text) <= 80 else text[:77] + "..."
