"""Algorithms that train without the parameter server."""

from __future__ import annotations

from zdk.algorithms.base import Params
from zdk.algorithms.registry import register


@register("ensemble")
class Ensemble:
    """N independent models, one per worker, each trained on its own partition with no
    PS traffic; the trainer returns all N."""

    Params = Params
    uses_ps = False


@register("sequential")
class Sequential:
    """One worker, plain local training on the whole data set (dist-keras's SingleTrainer)."""

    Params = Params
    uses_ps = False
    workers = 1
