"""Several training steps of a Keras model in one compiled call.

A window of k steps runs as one ``tf.function`` looping over the window's stacked minibatches
X ∈ R^{k×B×…}, Y ∈ R^{k×B×…}: for i = 0 … k−1 it resets the metrics and runs
``model.train_step((X[i], Y[i]))``, that is θ_{i+1} = opt(θ_i, ∇_θ L(θ_i; X[i], Y[i])), in the same
order and with the same ops as k calls of ``train_on_batch`` (which also resets the metrics
before its step, so its loss and metrics are those of its own batch). Step i's loss and metrics
m_i ∈ R^q are written to row i of a TensorArray, so the call returns the k × q matrix of what
``train_on_batch`` would have returned step by step, in one device-to-host copy.

The batch dimension of the traced signature is free, so windows of any length and a smaller last
batch of an epoch reuse one trace (one trace per distinct trailing shapes and dtypes).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Steps per compiled call when a window has no end of its own (no PS, or one exchange per epoch).
DEFAULT_STEPS_PER_EXECUTION = 32

#: Bytes of stacked minibatches (inputs and labels) one compiled call may hold; a window of
#: larger batches is cut into calls of fewer steps.
MAX_WINDOW_BYTES = 64 << 20

Step = tuple[list[np.ndarray], list[np.ndarray]]


class NotCompilable(Exception):
    """The model's steps cannot run compiled (found while tracing, before any step ran).

    Attributes:
        completed: the per-step logs of the steps of the same call that did run (compiled) before
            a group of another shape failed to trace; the caller runs the rest step by step.
    """

    def __init__(self, reason: str, completed: Sequence[dict[str, float]] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.completed = list(completed)


class CompiledSteps:
    """Runs windows of training steps of one compiled Keras model as single ``tf.function`` calls.

    Keep one per model (:func:`compiled_steps`), so its traces are reused by later windows and
    later runs of a reused model.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._functions: dict[tuple[Any, ...], Any] = {}
        self._orders: dict[tuple[Any, ...], list[str]] = {}
        self.disabled: str | None = self._unsupported()

    def _unsupported(self) -> str | None:
        model = self.model
        if getattr(model, "run_eagerly", False):
            return "the model runs eagerly (run_eagerly=True)"
        if getattr(model, "jit_compile", False):
            return "the model is compiled with XLA (jit_compile=True)"
        if getattr(model, "_distribute_strategy", None) is not None:
            return "the model trains under a tf.distribute strategy"
        if not hasattr(model, "_symbolic_build"):
            return "this Keras version has no Model._symbolic_build to create the optimizer's and metrics' state"
        return None

    def run(self, steps: Sequence[Step]) -> list[dict[str, float]]:
        """Trains on ``steps`` (each one step's input arrays and label arrays, shaped for the
        model) and returns each step's logs, as ``train_on_batch(..., return_dict=True)`` would.

        Consecutive steps of equal shapes run as one call; a step of other shapes (the smaller
        last batch of an epoch) starts another call.

        Raises:
            NotCompilable: the model's steps cannot be traced; nothing of the failed group ran
                (``completed`` holds the logs of earlier groups, which did).
        """
        if self.disabled is not None:
            raise NotCompilable(self.disabled)
        logs: list[dict[str, float]] = []
        start = 0
        while start < len(steps):
            end = start + 1
            shapes = _shapes(steps[start])
            while end < len(steps) and _shapes(steps[end]) == shapes:
                end += 1
            try:
                logs.extend(self._run_group(steps[start:end]))
            except NotCompilable as exc:
                raise NotCompilable(exc.reason, logs) from exc.__cause__
            start = end
        return logs

    def prepare(self, example: Step) -> bool:
        """Traces the window function for steps shaped like ``example`` now, without training
        on it, so the first :meth:`run` of such steps finds it traced (a worker calls this while
        its first rows are still on their way). Only shapes and dtypes count: zeros will do.

        Returns:
            whether a new trace was made (False: traced before).

        Raises:
            NotCompilable: the model's steps cannot be traced (as :meth:`run` would raise).
        """
        if self.disabled is not None:
            raise NotCompilable(self.disabled)
        key = (len(example[0]), *((a.dtype.str, a.shape[1:]) for a in (*example[0], *example[1])))
        if key in self._functions:
            return False
        xs, ys = _stacked([example])
        self._trace(key, example, xs, ys)
        return True

    def _run_group(self, steps: Sequence[Step]) -> list[dict[str, float]]:
        xs, ys = _stacked(steps)
        key = _key(xs, ys)
        function = self._functions.get(key)
        if function is None:
            function = self._trace(key, steps[0], xs, ys)
        out = function(xs, ys).numpy()
        order = self._orders[key]
        return [{name: float(row[j]) for j, name in enumerate(order)} for row in out]

    def _trace(self, key: tuple[Any, ...], first: Step, xs: tuple[np.ndarray, ...],
               ys: tuple[np.ndarray, ...]) -> Any:
        import tensorflow as tf

        model = self.model
        try:
            # Creates the optimizer's and metrics' variables, which a traced loop cannot.
            model._symbolic_build(data_batch=(_unwrap(first[0]), _unwrap(first[1]), None))
        except Exception as exc:
            self.disabled = f"building its training state failed ({type(exc).__name__}: {exc})"
            raise NotCompilable(self.disabled) from exc
        order: list[str] = []
        signature = [tuple(tf.TensorSpec((None, None, *a.shape[2:]), tf.as_dtype(a.dtype)) for a in xs),
                     tuple(tf.TensorSpec((None, None, *a.shape[2:]), tf.as_dtype(a.dtype)) for a in ys)]

        def window(xs: tuple[Any, ...], ys: tuple[Any, ...]) -> Any:
            steps = tf.shape(xs[0])[0]
            names = list(model.get_metrics_result())
            rows = tf.TensorArray(tf.float64, size=steps, element_shape=tf.TensorShape([len(names)]))

            def body(i: Any, rows: Any) -> tuple[Any, Any]:
                model.reset_metrics()  # as train_on_batch does before every step
                x = _unwrap([t[i] for t in xs])
                y = _unwrap([t[i] for t in ys])
                logs = model.train_step((x, y))
                if not isinstance(logs, dict) or sorted(logs) != sorted(names):
                    raise NotCompilable(f"its train_step returns {_describe(logs)}, not the metrics {names}")
                values = []
                for name in sorted(logs):  # train_on_batch's order (keras.src.utils.python_utils.pythonify_logs)
                    value = tf.convert_to_tensor(logs[name])
                    if value.shape.rank != 0:
                        raise NotCompilable(f"its train_step returns a non-scalar `{name}` of shape {value.shape}")
                    values.append(tf.cast(value, tf.float64))
                order[:] = sorted(logs)
                return i + 1, rows.write(i, tf.stack(values))

            _, rows = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), rows), parallel_iterations=1)
            return rows.stack()

        function = tf.function(window, input_signature=signature, autograph=False)
        try:
            function.get_concrete_function()
        except NotCompilable as exc:
            self.disabled = exc.reason
            raise
        except Exception as exc:
            self.disabled = f"tracing its train_step in a loop failed ({type(exc).__name__}: {exc})"
            raise NotCompilable(self.disabled) from exc
        logger.debug("traced a compiled window for inputs %s and labels %s", [a.shape[2:] for a in xs],
                     [a.shape[2:] for a in ys])
        self._functions[key], self._orders[key] = function, order
        return function


_per_model: "weakref.WeakKeyDictionary[Any, CompiledSteps]" = weakref.WeakKeyDictionary()


def compiled_steps(model: Any) -> CompiledSteps:
    """The :class:`CompiledSteps` of ``model``, kept as long as the model lives (a reused model keeps
    its traces)."""
    steps = _per_model.get(model)
    if steps is None or steps.model is not model:
        steps = CompiledSteps(model)
        try:
            _per_model[model] = steps
        except TypeError:  # not weakly referenceable: no reuse across runs
            pass
    return steps


def window_steps(limit: int, horizon: int | None, first: Step) -> int:
    """Steps of the next compiled call: ``limit`` (``steps_per_execution``), no more than the
    ``horizon`` (steps left before the cadence must act, e.g. exchange), and no more than fit in
    :data:`MAX_WINDOW_BYTES` given the ``first`` step's batch; at least 1."""
    size = sum(a.nbytes for a in (*first[0], *first[1]))
    steps = min(limit, horizon if horizon is not None else limit, max(1, MAX_WINDOW_BYTES // max(size, 1)))
    return max(1, steps)


def _stacked(steps: Sequence[Step]) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The steps' inputs and labels stacked along a new first axis, (k, B, ...) each."""
    xs = tuple(np.stack([s[0][j] for s in steps]) for j in range(len(steps[0][0])))
    ys = tuple(np.stack([s[1][j] for s in steps]) for j in range(len(steps[0][1])))
    return xs, ys


def _key(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> tuple[Any, ...]:
    """What a trace depends on: the number of inputs, and each stacked array's dtype and trailing
    shape (the window and batch axes are free in the signature; :meth:`CompiledSteps.prepare`
    computes the same from one unstacked step)."""
    return (len(xs), *((a.dtype.str, a.shape[2:]) for a in (*xs, *ys)))


def _shapes(step: Step) -> tuple[Any, ...]:
    return (len(step[0]), *((a.dtype.str, a.shape) for a in (*step[0], *step[1])))


def _unwrap(arrays: list[Any]) -> Any:
    return arrays[0] if len(arrays) == 1 else arrays


def _describe(logs: Any) -> str:
    return f"keys {sorted(logs)}" if isinstance(logs, dict) else type(logs).__name__
