"""What the weights' finiteness check costs a worker without a parameter server, against its steps.

A worker without a PS (SingleTrainer, ensembles) checks every 32 steps and at each epoch's end
that its weights are finite (:func:`zdk.runtime.models.non_finite_weight`), because a finite loss
does not prove it (oneDNN's fused ReLU maps a NaN activation to 0). For MLPs of growing size, in
this process: seconds per ``train_on_batch`` step (batch 64), seconds per check (the traced
reduction zdk uses, and one eager op per variable, as first written), and the check's share of
32 steps' time.

Run: python benchmarks/finite_check.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: (name, hidden layer widths) of the MLPs measured, 784 inputs and 10 classes.
MODELS = [("784-256-128-10", (256, 128)), ("784-1024-1024-10", (1024, 1024)),
          ("784-2048x4-10", (2048, 2048, 2048, 2048))]


def seconds(fn, repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``fn``, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per figure (default: 50)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    from keras import ops

    from zdk.runtime.models import non_finite_weight

    rng = np.random.default_rng(0)
    x = rng.random((64, 784), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    rows = []
    for name, widths in MODELS:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((784,)), *[keras.layers.Dense(w, activation="relu") for w in widths],
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        step = seconds(lambda: model.train_on_batch(x, y), args.repeats)
        traced = seconds(lambda: non_finite_weight(model), args.repeats)
        eager = seconds(lambda: [bool(ops.all(ops.isfinite(v))) for v in model.weights], args.repeats)
        rows.append((name, model.count_params(), len(model.weights), step, traced, eager))

    print(f"{'model':<18} {'params':>10} {'vars':>5} {'step ms':>8} {'check ms':>9} {'eager ms':>9} "
          f"{'check / 32 steps':>17} {'eager / step':>13}")
    for name, params, variables, step, traced, eager in rows:
        print(f"{name:<18} {params:>10,} {variables:>5} {step * 1e3:>8.2f} {traced * 1e3:>9.3f} {eager * 1e3:>9.3f} "
              f"{traced / (32 * step):>16.2%} {eager / step:>12.2f}×")


if __name__ == "__main__":
    main()
