"""AGN: accumulated gradient normalization (Hermans 2017); dist-keras shipped it as "ADAG"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdk.algorithms.base import Params, WorkerWindow, reset_to_center
from zdk.algorithms.registry import register


@dataclass(frozen=True)
class AGNParams(Params):
    """AGN hyperparameters.

    Args:
        communication_window: λ. A commit of Δ/λ moves the center by about one local step, so
            K workers move it about K/λ local steps per step: with λ ≫ K training crawls.
            Trainers therefore default λ to the number of workers K (single-node pace);
            dist-keras's 12 (the default here, for ``zdk ps``) suits 12 or more workers.
            Measured on Fashion-MNIST, 2 workers, 3 epochs: λ = 12 gave 0.841, λ = 2 gave
            0.872 (SingleTrainer 0.873); benchmarks/RESULTS.md.
    """

    communication_window: int = 12

    @classmethod
    def window_for(cls, num_workers: int) -> int | None:
        return max(1, num_workers)


def normalized_delta(win: WorkerWindow, params: Params) -> np.ndarray:
    """Δ/λ = (θ − θ_pulled) / λ: the mean of the λ accumulated updates."""
    delta = np.subtract(win.local, win.pulled)
    delta /= np.float32(win.window)
    return delta


@register("agn")
class AGN:
    """Accumulated Gradient Normalization (J. Hermans, "On Scalable Deep Learning and
    Parallelizing Gradient Descent", 2017, ch. 4).

    Worker, every λ steps: commits Δ/λ with Δ = θ − θ_pulled, pulls θ̃ and sets θ ← θ̃.
    Server: θ̃ ← θ̃ + Δ/λ.
    """

    Params = AGNParams
    additive = True
    worker_delta = staticmethod(normalized_delta)
    worker_reset = staticmethod(reset_to_center)
