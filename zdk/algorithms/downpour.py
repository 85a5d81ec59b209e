"""DOWNPOUR: asynchronous SGD with accumulated updates (Dean et al., NIPS 2012)."""

from __future__ import annotations

from zdk.algorithms.base import Params, accumulated_delta, reset_to_center
from zdk.algorithms.registry import register


@register("downpour")
class Downpour:
    """DOWNPOUR SGD (Dean et al. 2012, "Large Scale Distributed Deep Networks").

    Worker, every λ steps: Δ = θ − θ_pulled (the λ local updates summed), commit Δ,
    pull θ̃, then θ ← θ̃.  Server: θ̃ ← θ̃ + Δ.
    """

    Params = Params
    additive = True
    worker_delta = staticmethod(accumulated_delta)
    worker_reset = staticmethod(reset_to_center)
