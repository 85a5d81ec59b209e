"""The lab's numpy models: each a pair of pure functions on a flat float32 vector, no Keras.

* ``digits``: sklearn's 8×8 digits through a 64-64-10 ReLU MLP with softmax cross-entropy
  (Hermans's staleness experiment at small scale); its metric is test accuracy.
* ``lstsq``: least squares on a synthetic linear regression drawn once from a fixed seed,
  y = X·w* + b* + ε; its loss and metric are the mean squared error.

The weights are one flat vector θ (what the parameter server holds); :func:`views` cuts it
into the layers without copying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from zdk.errors import ConfigError

Shapes = tuple[tuple[int, ...], ...]
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

HIDDEN = 64
DIGITS_SHAPES: Shapes = ((64, HIDDEN), (HIDDEN,), (HIDDEN, 10), (10,))

LSTSQ_FEATURES = 20
LSTSQ_TRAIN, LSTSQ_TEST = 2000, 500
LSTSQ_NOISE = 0.1
LSTSQ_DATA_SEED = 1234
LSTSQ_SHAPES: Shapes = ((LSTSQ_FEATURES,), (1,))


def size(shapes: Shapes) -> int:
    """Length of the flat vector holding arrays of ``shapes``."""
    return sum(int(np.prod(s)) for s in shapes)


def views(flat: np.ndarray, shapes: Shapes) -> list[np.ndarray]:
    """The arrays of ``shapes``, in order, as views into ``flat``."""
    out, offset = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[offset:offset + n].reshape(shape))
        offset += n
    return out


# ---------------------------------------------------------------------------- digits MLP


def mlp_init(seed: int) -> np.ndarray:
    """He-normal W₁, Glorot-like W₂ (σ = √(1/fan_in)), zero biases, from ``seed``."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(size(DIGITS_SHAPES), np.float32)
    w1, _, w2, _ = views(flat, DIGITS_SHAPES)
    w1[:] = rng.normal(scale=np.sqrt(2.0 / w1.shape[0]), size=w1.shape)
    w2[:] = rng.normal(scale=np.sqrt(1.0 / w2.shape[0]), size=w2.shape)
    return flat


def mlp_loss_and_grad(flat: np.ndarray, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    """Mean cross-entropy L = −(1/n) Σᵢ log softmax(relu(xᵢW₁ + b₁)W₂ + b₂)[yᵢ]; writes ∂L/∂θ into ``out``.

    With p the softmax and h the hidden layer: ∂L/∂logits = (p − onehot(y))/n,
    ∂L/∂W₂ = hᵀ·that, ∂L/∂h = that·W₂ᵀ masked by relu′, ∂L/∂W₁ = xᵀ·∂L/∂pre.

    Args:
        flat: θ.
        x: inputs, (n, 64).
        y: integer labels, (n,).
        out: receives the gradient; same shape and dtype as ``flat``.
    """
    w1, b1, w2, b2 = views(flat, DIGITS_SHAPES)
    g1, gb1, g2, gb2 = views(out, DIGITS_SHAPES)
    pre = x @ w1 + b1
    h = np.maximum(pre, 0.0)
    logits = h @ w2 + b2
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(-np.log(p[rows, y] + 1e-12).mean())
    p[rows, y] -= 1.0
    p /= len(y)
    g2[:] = h.T @ p
    gb2[:] = p.sum(axis=0)
    dh = (p @ w2.T) * (pre > 0)
    g1[:] = x.T @ dh
    gb1[:] = dh.sum(axis=0)
    return loss


def mlp_evaluate(flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of θ on (x, y)."""
    w1, b1, w2, b2 = views(flat, DIGITS_SHAPES)
    logits = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean()), float((logits.argmax(axis=1) == y).mean())


def digits_data() -> Data:
    """sklearn's digits, split 75/25 with a fixed seed, pixels in [0, 1]."""
    from zdk.datasets import load_digits_split

    return load_digits_split()


# ---------------------------------------------------------------------------- least squares


def lstsq_init(seed: int) -> np.ndarray:
    """w ~ N(0, 0.01²) from ``seed``, b = 0."""
    flat = np.zeros(size(LSTSQ_SHAPES), np.float32)
    views(flat, LSTSQ_SHAPES)[0][:] = np.random.default_rng(seed).normal(scale=0.01, size=LSTSQ_FEATURES)
    return flat


def lstsq_loss_and_grad(flat: np.ndarray, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    """L = (1/n) Σᵢ (xᵢ·w + b − yᵢ)², ∂L/∂w = (2/n) Xᵀr, ∂L/∂b = (2/n) Σ r, with r = Xw + b − y.

    Args:
        flat: θ = (w, b).
        x: inputs, (n, 20).
        y: targets, (n,).
        out: receives the gradient.
    """
    w, b = views(flat, LSTSQ_SHAPES)
    gw, gb = views(out, LSTSQ_SHAPES)
    r = x @ w + b[0] - y
    gw[:] = (2.0 / len(y)) * (x.T @ r)
    gb[0] = (2.0 / len(y)) * r.sum()
    return float((r * r).mean())


def lstsq_evaluate(flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(MSE, MSE) of θ on (x, y): for least squares the loss is the metric."""
    w, b = views(flat, LSTSQ_SHAPES)
    r = x @ w + b[0] - y
    mse = float((r * r).mean())
    return mse, mse


def lstsq_data() -> Data:
    """X ~ N(0, I₂₀), w* ~ N(0, 1), b* = 0.5, ε ~ N(0, 0.1²): always the same draw."""
    rng = np.random.default_rng(LSTSQ_DATA_SEED)
    n = LSTSQ_TRAIN + LSTSQ_TEST
    x = rng.normal(size=(n, LSTSQ_FEATURES)).astype(np.float32)
    w_star = rng.normal(size=LSTSQ_FEATURES)
    y = (x @ w_star + 0.5 + rng.normal(scale=LSTSQ_NOISE, size=n)).astype(np.float32)
    return x[:LSTSQ_TRAIN], y[:LSTSQ_TRAIN], x[LSTSQ_TRAIN:], y[LSTSQ_TRAIN:]


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True, kw_only=True)
class Model:
    """A lab model: its pure functions and what its metric means.

    Args:
        name: the ``--model`` name.
        metric: the metric's name in tables (``accuracy``, ``mse``).
        higher_is_better: whether a larger metric is better.
        shapes: the layers' shapes, in flat order.
        init: ``seed -> θ₀``.
        loss_and_grad: ``(θ, x, y, out) -> loss``, writing ∂loss/∂θ into ``out``.
        evaluate: ``(θ, x, y) -> (loss, metric)``.
        data: ``() -> (x_train, y_train, x_test, y_test)``, the same on every call.
    """

    name: str
    metric: str
    higher_is_better: bool
    shapes: Shapes
    init: Callable[[int], np.ndarray]
    loss_and_grad: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]
    evaluate: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, float]]
    data: Callable[[], Data]

    @property
    def size(self) -> int:
        return size(self.shapes)


MODELS: dict[str, Model] = {
    "digits": Model(name="digits", metric="accuracy", higher_is_better=True, shapes=DIGITS_SHAPES, init=mlp_init,
                    loss_and_grad=mlp_loss_and_grad, evaluate=mlp_evaluate, data=digits_data),
    "lstsq": Model(name="lstsq", metric="mse", higher_is_better=False, shapes=LSTSQ_SHAPES, init=lstsq_init,
                   loss_and_grad=lstsq_loss_and_grad, evaluate=lstsq_evaluate, data=lstsq_data),
}


def get_model(name: str) -> Model:
    """The model called ``name``.

    Raises:
        ConfigError: naming the value and the valid names.
    """
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"`model` must be one of {sorted(MODELS)}. Received: model={name!r}", field="model") from None
