"""Asynchronous elastic averaging SGD and its momentum variant (Zhang, Choromanska, LeCun 2015)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdk.algorithms.base import Params, WorkerWindow, _positive, add_delta, check
from zdk.algorithms.registry import register


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


@register("aeasgd")
class AEASGD:
    """Asynchronous EASGD (S. Zhang, A. Choromanska, Y. LeCun, "Deep learning with Elastic
    Averaging SGD", NIPS 2015, Algorithm 1).

    Worker, every τ steps: pull θ̃, E = α(θ − θ̃) with α = ηρ, θ ← θ − E, commit E.
    Server: θ̃ ← θ̃ + E.
    """

    Params = EASGDParams
    server_update = staticmethod(add_delta)
    worker_delta = staticmethod(elastic_difference)
    worker_reset = staticmethod(elastic_pull_back)
    pull_before_commit = True


@register("eamsgd")
class EAMSGD:
    """Asynchronous EAMSGD (Zhang et al. 2015, Algorithm 2): AEASGD whose local step uses
    Nesterov momentum, v ← δv − η∇f(θ + δv), θ ← θ + v.

    The elastic exchange is AEASGD's: E = α(θ − θ̃), θ ← θ − E, θ̃ ← θ̃ + E. The momentum
    lives in the worker's local optimizer (the trainer builds SGD(momentum=δ, nesterov=True)).
    """

    Params = EAMSGDParams
    server_update = staticmethod(add_delta)
    worker_delta = staticmethod(elastic_difference)
    worker_reset = staticmethod(elastic_pull_back)
    pull_before_commit = True
