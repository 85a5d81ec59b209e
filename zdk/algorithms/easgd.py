"""Asynchronous elastic averaging SGD and its momentum variant (Zhang, Choromanska, LeCun 2015)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from zdk.algorithms.base import OptimizerSpec, Params, WorkerWindow, _positive, check
from zdk.algorithms.registry import register
from zdk.errors import ConfigError


@dataclass(frozen=True)
class EASGDParams(Params):
    """Elastic averaging hyperparameters (dist-keras's defaults).

    Args:
        communication_window: τ, local steps between elastic exchanges.
        rho: ρ, the elastic force.
        learning_rate: η; the moving rate is α = η·ρ, which must lie in (0, 1].
    """

    communication_window: int = 32
    rho: float = 5.0
    learning_rate: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("rho", self.rho)
        _positive("learning_rate", self.learning_rate)
        check(self.alpha <= 1.0, "learning_rate·rho", self.alpha, "≤ 1 (the elastic moving rate α)")

    @property
    def alpha(self) -> float:
        return float(self.learning_rate * self.rho)


@dataclass(frozen=True)
class EAMSGDParams(EASGDParams):
    """EAMSGD adds Nesterov momentum δ to the local step.

    Args:
        momentum: δ in [0, 1).
    """

    momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        m = self.momentum
        check(isinstance(m, (int, float)) and 0 <= m < 1, "momentum", m, "in [0, 1)")


def elastic_difference(win: WorkerWindow, params: EASGDParams) -> np.ndarray:
    """E = α(θ − θ̃) with α = η·ρ, from the center pulled just before."""
    elastic = np.subtract(win.local, win.center)
    elastic *= np.float32(params.alpha)
    return elastic


def elastic_pull_back(win: WorkerWindow, params: EASGDParams) -> None:
    """θ ← θ − E: the worker moves towards the center by what it pushed."""
    assert win.delta is not None
    win.local -= win.delta


#: The ``module`` of Keras's own optimizers in ``keras.optimizers.serialize``'s output.
KERAS_OPTIMIZERS = "keras.optimizers"


def nesterov_sgd(optimizer: OptimizerSpec, params: EAMSGDParams) -> dict[str, Any]:
    """The local optimizer EAMSGD's math needs: SGD with Nesterov momentum δ = ``params.momentum``,
    as Keras optimizer data (``keras.optimizers.deserialize`` builds it).

    ``"sgd"`` becomes SGD(learning_rate=η, momentum=δ, nesterov=True); a serialized SGD keeps its
    own settings (learning rate, clipping, ...) with momentum δ and ``nesterov=True``.

    Args:
        optimizer: the user's ``worker_optimizer``: a name, or ``keras.optimizers.serialize(opt)``.
        params: EAMSGD's params (η, δ).

    Raises:
        ConfigError: for an optimizer other than SGD (``worker_optimizer``), or an SGD whose own
            momentum is neither 0 nor δ (``momentum``).
    """
    if isinstance(optimizer, str) and optimizer.lower() == "sgd":
        return {"module": KERAS_OPTIMIZERS, "class_name": "SGD", "registered_name": None,
                "config": {"learning_rate": float(params.learning_rate), "momentum": float(params.momentum),
                           "nesterov": True}}
    if isinstance(optimizer, Mapping) and _is_keras_sgd(optimizer):
        config = dict(optimizer.get("config") or {})
        if config.get("momentum", 0.0) not in (0.0, params.momentum):
            raise ConfigError(f"`momentum` is EAMSGD's Nesterov momentum ({params.momentum}); the SGD passed as "
                              f"`worker_optimizer` has momentum={config['momentum']}. Set one of them only.",
                              field="momentum")
        config.update(momentum=params.momentum, nesterov=True)
        return {**optimizer, "config": config}
    shown = optimizer.get("class_name", optimizer) if isinstance(optimizer, Mapping) else optimizer
    raise ConfigError(f"`worker_optimizer` must be 'sgd' or a keras.optimizers.SGD for EAMSGD, whose momentum is "
                      f"Nesterov momentum in a local SGD step; use AEASGD for elastic averaging with another "
                      f"optimizer. Received: worker_optimizer={shown!r}", field="worker_optimizer")


def _is_keras_sgd(optimizer: Mapping[str, Any]) -> bool:
    return (optimizer.get("class_name") == "SGD"
            and optimizer.get("module", KERAS_OPTIMIZERS) in (None, KERAS_OPTIMIZERS)
            and optimizer.get("registered_name") in (None, "SGD"))


@register("aeasgd")
class AEASGD:
    """Asynchronous EASGD (S. Zhang, A. Choromanska, Y. LeCun, "Deep learning with Elastic
    Averaging SGD", NIPS 2015, Algorithm 1).

    Worker, every τ steps: pull θ̃, E = α(θ − θ̃) with α = ηρ, θ ← θ − E, commit E.
    Server: θ̃ ← θ̃ + E.
    """

    Params = EASGDParams
    additive = True
    worker_delta = staticmethod(elastic_difference)
    worker_reset = staticmethod(elastic_pull_back)
    pull_before_commit = True


@register("eamsgd")
class EAMSGD:
    """Asynchronous EAMSGD (Zhang et al. 2015, Algorithm 2): AEASGD whose local step uses
    Nesterov momentum, v ← δv − η∇f(θ + δv), θ ← θ + v.

    The elastic exchange is AEASGD's: E = α(θ − θ̃), θ ← θ − E, θ̃ ← θ̃ + E. The momentum
    lives in the worker's local optimizer: SGD(momentum=δ, nesterov=True) (``local_optimizer``).
    """

    Params = EAMSGDParams
    additive = True
    worker_delta = staticmethod(elastic_difference)
    worker_reset = staticmethod(elastic_pull_back)
    pull_before_commit = True
    local_optimizer = staticmethod(nesterov_sgd)
