"""What a lab run sweeps and the faults it injects: :class:`LabSettings`, validated at construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from zdk import algorithms
from zdk.algorithms import codecs
from zdk.errors import AlgorithmNotFound, ConfigError
from zdk.lab.models import MODELS


def _fail(name: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"`{name}` must be {rule}. Received: {name}={value!r}", field=name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class LabSettings:
    """One lab run: every algorithm × worker count × seed is a cell, trained through fresh shards.

    Every cell sees the same data passes in total: with K workers each trains on 1/K of the
    rows for ``epochs`` epochs. The data split, the initial θ₀ and each worker's shuffling
    come from the cell's seed alone.

    Args:
        algorithms: registered algorithm names, plugins included (imported from ``plugins``).
        model: ``digits`` (MLP, metric accuracy) or ``lstsq`` (least squares, metric MSE).
        workers: the worker counts K to sweep, each ≥ 1.
        shards: parameter-server shards per cell (≥ 1).
        window: λ, local steps between exchanges; None: each algorithm's own default. An
            algorithm's ``communication_window`` in ``params`` wins over it.
        lr: the workers' local SGD learning rate (> 0).
        epochs: epochs over each worker's rows (≥ 1).
        batch: minibatch size (≥ 1).
        seeds: one cell per seed; tables show the mean over seeds.
        stragglers: the fraction of each cell's workers that are slow, in [0, 1]: ⌊f·K + ½⌋
            workers, the highest ids.
        slowdown: s ≥ 1; a slow worker sleeps (s − 1)× each step's compute time, so its steps
            take s× as long.
        drop: probability that the lossy link drops a message, each direction, in [0, 1).
        late: probability that it holds a message back ``delay`` seconds, in [0, 1 − drop].
        delay: seconds a late message is held (≥ 0).
        params: hyperparameters per algorithm name (``{"adag": {"eta": 1e-3}}``).
        plugins: modules (or ``.py`` files) that register algorithms, imported here, in the
            shards and in every worker process.
        timeout: seconds one cell may take once its workers start (> 0).
        codec: the commit codec every worker encodes with (``zdk.algorithms.codecs``; a plugin's
            must be registered by one of ``plugins``); None: float32.
        codec_args: the codec's arguments (``{"ratio": 0.01}``), validated.
    """

    algorithms: tuple[str, ...] = ("downpour", "agn", "adag", "dynsgd")
    model: str = "digits"
    workers: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    shards: int = 2
    window: int | None = 4
    lr: float = 0.1
    epochs: int = 30
    batch: int = 16
    seeds: tuple[int, ...] = (0,)
    stragglers: float = 0.0
    slowdown: float = 4.0
    drop: float = 0.0
    late: float = 0.0
    delay: float = 0.05
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    timeout: float = 900.0
    codec: str | None = None
    codec_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("algorithms", "workers", "seeds", "plugins"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise _fail(name, value, "a sequence")
            object.__setattr__(self, name, tuple(value))
        if not self.algorithms or not all(isinstance(a, str) and a for a in self.algorithms):
            raise _fail("algorithms", self.algorithms, "a non-empty sequence of algorithm names")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise _fail("algorithms", self.algorithms, "free of repeats")
        if self.model not in MODELS:
            raise _fail("model", self.model, f"one of {sorted(MODELS)}")
        if not self.workers or not all(_is_int(k) and k >= 1 for k in self.workers):
            raise _fail("workers", self.workers, "a non-empty sequence of ints ≥ 1")
        if not self.seeds or not all(_is_int(s) and s >= 0 for s in self.seeds):
            raise _fail("seeds", self.seeds, "a non-empty sequence of ints ≥ 0")
        for name in ("shards", "epochs", "batch"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                raise _fail(name, value, "≥ 1")
        if self.window is not None and not (_is_int(self.window) and self.window >= 1):
            raise _fail("window", self.window, "≥ 1 (or None for each algorithm's default)")
        if not (_is_number(self.lr) and self.lr > 0):
            raise _fail("lr", self.lr, "> 0")
        if not (_is_number(self.stragglers) and 0 <= self.stragglers <= 1):
            raise _fail("stragglers", self.stragglers, "in [0, 1]")
        if not (_is_number(self.slowdown) and self.slowdown >= 1):
            raise _fail("slowdown", self.slowdown, "≥ 1")
        if not (_is_number(self.drop) and 0 <= self.drop < 1):
            raise _fail("drop", self.drop, "in [0, 1)")
        if not (_is_number(self.late) and 0 <= self.late <= 1 - self.drop):
            raise _fail("late", self.late, f"in [0, 1 − drop] = [0, {1 - self.drop:g}]")
        if not (_is_number(self.delay) and self.delay >= 0):
            raise _fail("delay", self.delay, "≥ 0 seconds")
        if not (_is_number(self.timeout) and self.timeout > 0):
            raise _fail("timeout", self.timeout, "> 0 seconds")
        if not isinstance(self.params, Mapping) or not all(
                isinstance(k, str) and isinstance(v, Mapping) for k, v in self.params.items()):
            raise _fail("params", self.params, "a mapping of algorithm name to a mapping of hyperparameters")
        unknown = sorted(set(self.params) - set(self.algorithms))
        if unknown:
            raise _fail("params", dict(self.params), f"keyed by algorithms of this run {list(self.algorithms)}; "
                        f"{unknown} is not one")
        if not all(isinstance(p, str) and p for p in self.plugins):
            raise _fail("plugins", self.plugins, "a sequence of module names or .py paths")
        self._check_codec()

    def _check_codec(self) -> None:
        if self.codec is None:
            if self.codec_args:
                raise _fail("codec_args", dict(self.codec_args), "empty without a `codec`")
            return
        try:
            codec = codecs.get_codec(self.codec)
        except AlgorithmNotFound as exc:
            if self.plugins:  # a plugin's codec: checked once the plugins are imported (run.check_algorithms)
                return
            raise ConfigError(f"`codec` must be a registered codec. {exc}", field="codec") from None
        object.__setattr__(self, "codec_args", codec.make_args(self.codec_args).to_dict())

    @property
    def lossy(self) -> bool:
        """Whether messages go through the lossy link."""
        return self.drop > 0 or self.late > 0

    def slow_workers(self, workers: int) -> tuple[int, ...]:
        """The ids of the slow workers among ``workers``: the last ⌊f·K + ½⌋."""
        count = min(workers, int(math.floor(self.stragglers * workers + 0.5))) if self.slowdown > 1 else 0
        return tuple(range(workers - count, workers))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["params"] = {k: dict(v) for k, v in self.params.items()}
        out["codec_args"] = dict(self.codec_args)
        return out


def spread_params(names: Sequence[str], shared: Mapping[str, Any],
                  per_algorithm: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Hyperparameters per algorithm: each key of ``shared`` goes to every algorithm of ``names``
    that has such a field; ``per_algorithm`` entries win over ``shared`` ones.

    The algorithms must be registered (import plugins first).

    Raises:
        AlgorithmNotFound: for an unknown name.
        ConfigError: when a shared key is a field of none of the algorithms (a typo).
    """
    fields = {name: {f.name for f in dataclasses.fields(algorithms.get(name).params)} for name in names}
    orphans = sorted(k for k in shared if not any(k in f for f in fields.values()))
    if orphans:
        raise ConfigError(f"`params` keys must be hyperparameters of at least one of {list(names)}. "
                          f"Received: {orphans}", field="params")
    out = {name: {k: v for k, v in shared.items() if k in fields[name]} for name in names}
    for name, values in (per_algorithm or {}).items():
        if name not in out:
            raise ConfigError(f"`params` for {name!r} must name an algorithm of this run {list(names)}",
                              field="params")
        out[name].update(values)
    return {name: values for name, values in out.items() if values}
