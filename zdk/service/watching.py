"""A job's validation and Keras callbacks: what its spec's ``validation`` and ``callbacks``
become as ``trainer.train(…)`` arguments.

Callbacks come from a fixed table (:data:`~zdk.jobs.spec.CALLBACKS`) and are built by their own
constructors from JSON arguments, which must be parameters the constructor names (Keras's
``ReduceLROnPlateau`` would swallow a misspelt one). The files they write are the server's to
place, in the job's folder: the ``CSVLogger``'s file and the ``TensorBoard`` folder. A
validation source is read as the job's data is, under the same roots, through the same
transformer stages, and must have the trainer's columns. Only algorithms with a parameter
server can be watched: the driver sees epochs end, and reads the model, through the shards.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Sequence

from zdk.errors import ConfigError
from zdk.jobs.spec import DataSource, JobSpec
from zdk.service import build
from zdk.service.policy import Policy


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallbackFiles:
    """Where a job's callbacks write.

    Args:
        csv_log: the ``CSVLogger``'s file.
        tensorboard: the ``TensorBoard`` folder.
        append: the run resumes an earlier one: the ``CSVLogger`` keeps that run's rows.
    """

    csv_log: str
    tensorboard: str
    append: bool = False


def check_algorithm(spec: JobSpec, trainer: Any) -> None:
    """Validation and callbacks need an algorithm with a parameter server.

    Raises:
        ConfigError: naming ``callbacks`` or ``validation`` for a trainer without one.
    """
    if not spec.watched or trainer.plan.uses_ps:
        return
    field = "callbacks" if spec.callbacks else "validation"
    raise ConfigError(f"`{field}` needs an algorithm with a parameter server: the driver sees epochs end, and "
                      f"reads the model, through the shards. Received: {field} with {spec.trainer} "
                      f"({trainer.plan.algorithm.name!r}); DOWNPOUR with num_workers=1 and communication_window=1 "
                      f"trains one worker through a parameter server", field=field)


def make_callbacks(spec: JobSpec, files: CallbackFiles) -> list[Any]:
    """The spec's callbacks, each built by its Keras class's constructor.

    Raises:
        ConfigError: naming ``callbacks[k].arguments.NAME`` for an argument the constructor does
            not name, or ``callbacks[k].arguments`` when the constructor refuses the arguments.
    """
    import keras

    built = []
    for k, callback in enumerate(spec.callbacks):
        where = f"callbacks[{k}].arguments"
        cls = getattr(keras.callbacks, callback.cls)
        known = _parameters(cls)
        arguments = dict(callback.arguments)
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise ConfigError(f"`{where}.{unknown[0]}` is not an argument of keras.callbacks.{callback.cls}; it takes "
                              f"{', '.join(known) or 'none'}. Received: {unknown[0]}={arguments[unknown[0]]!r}",
                              field=f"{where}.{unknown[0]}")
        if callback.cls == "CSVLogger":
            arguments["filename"] = files.csv_log
            if files.append:
                arguments["append"] = True
        elif callback.cls == "TensorBoard":
            arguments["log_dir"] = files.tensorboard
        try:
            built.append(cls(**arguments))
        except Exception as exc:  # a fixed Keras class given JSON values: whatever it raises is about them
            raise ConfigError(f"`{where}` refused by keras.callbacks.{callback.cls}: {type(exc).__name__}: {exc}",
                              field=where) from None
    return built


def _parameters(cls: type) -> list[str]:
    """The keyword arguments ``cls.__init__`` names (``**kwargs`` excluded)."""
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def validation_arguments(spec: JobSpec, *, spark: Any, policy: Policy, stages: Sequence[Any],
                         trainer: Any) -> dict[str, Any]:
    """``train()``'s ``validation_split`` or ``validation_data`` for the spec (empty without
    validation). A source is read lazily: its schema is checked here, its rows when training.

    Raises:
        ConfigError: naming ``validation.path`` / ``validation.table`` for a source that is not
            allowed or cannot be read, ``validation`` when the stages cannot run on it or the
            trainer's columns are missing.
    """
    if spec.validation is None:
        return {}
    if not isinstance(spec.validation, DataSource):
        return {"validation_split": float(spec.validation)}
    frame = build.read_data(spark, spec.validation, policy)
    try:
        return {"validation_data": build.prepare(frame, stages, trainer)}
    except ConfigError as exc:
        raise ConfigError(f"`validation` does not fit the job (it goes through the same transformers as `data`, "
                          f"and needs the trainer's columns): {exc}", field="validation") from None
