"""Overlapped exchanges: the steps a worker takes while its exchange travels are kept, by the numbers."""

from __future__ import annotations

import numpy as np
import pytest

from zdk.errors import ConfigError
from conftest import digits_mlp, registered_client as client_for
from zdk.ps.exchange import Exchange

SIZE = 6


def test_downpour_overlap_keeps_the_steps_taken_during_the_exchange(shards):
    group = shards(num_shards=2, total_size=SIZE, algorithm="downpour")
    with client_for(group, 0) as a, client_for(group, 1) as b:
        local_a, local_b = np.zeros(SIZE, np.float32), np.zeros(SIZE, np.float32)
        ex_a, ex_b = Exchange(a, local_a), Exchange(b, local_b)
        ex_a.start(), ex_b.start()
        local_b += 3.0
        ex_b.end_window(5)                     # center 3
        local_a += 1.0
        ex_a.begin_window(5)                   # commits Δ = 1 from the snapshot: center 4
        local_a += 0.5                         # δ: steps taken while the exchange travels
        receipt = ex_a.collect(block=True)
        assert receipt is not None and receipt.applied
        np.testing.assert_allclose(local_a, np.full(SIZE, 4.5))   # θ ← θ̃ + δ
        np.testing.assert_allclose(ex_a.pulled, np.full(SIZE, 4.0))
        local_a += 0.25
        ex_a.end_window(5)                     # the next commit carries δ + 0.25
        np.testing.assert_allclose(b.pull(), np.full(SIZE, 4.75))
        assert ex_a.collect() is None and not ex_a.in_flight


def test_easgd_overlap_pulls_the_current_weights_by_the_elastic_difference(shards):
    group = shards(num_shards=1, total_size=SIZE, algorithm="aeasgd",
                   params={"communication_window": 4, "rho": 2.0, "learning_rate": 0.1})
    with client_for(group, 0) as a:
        local = np.zeros(SIZE, np.float32)
        ex = Exchange(a, local)
        ex.start()
        local += 10.0
        ex.begin_window(4)                     # E = 0.2·(10 − 0) = 2 from the snapshot
        local += 1.0                           # θ = 11 meanwhile
        ex.collect(block=True)
        np.testing.assert_allclose(local, np.full(SIZE, 9.0))     # θ − E
        np.testing.assert_allclose(a.pull(), np.full(SIZE, 2.0))


def test_synchronous_algorithms_refuse_to_overlap(shards):
    group = shards(num_shards=1, total_size=SIZE, algorithm="averaging", params={"num_workers": 1})
    with client_for(group, 0) as a:
        ex = Exchange(a, np.zeros(SIZE, np.float32))
        ex.start()
        with pytest.raises(ConfigError, match="`overlap` needs an asynchronous algorithm"):
            ex.begin_window(1)


def _train(digits_df, digits, *, overlap: bool):
    """DOWNPOUR on the digits with an exchange every step, so that waiting on the PS is a large share
    of a plain run; the same seeds, data and settings whatever ``overlap`` is."""
    import keras

    from zdk import trainers

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    trainer = trainers.DOWNPOUR(model, "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=8,
                                communication_window=1, progress=False, overlap=overlap)
    trained = trainer.train(digits_df)
    _, x_test, _, y_test = digits
    acc = float((trained.predict(x_test, verbose=0).argmax(axis=1) == y_test).mean())
    wait = sum(s["wait"] for s in trainer.last.worker_summaries)
    print(f"DOWNPOUR, overlap={overlap}: accuracy {acc:.3f}, workers waited {wait:.2f} s in all, "
          f"PS wait {trainer.ps_wait_fraction:.3f} of their time")
    return trainer, acc, wait


@pytest.mark.spark
def test_a_trainer_with_overlap_learns_and_waits_less(digits_df, digits):
    pytest.importorskip("keras")
    from zdk import trainers

    with pytest.raises(ConfigError, match="`overlap` must be False for the synchronous algorithm"):
        trainers.AveragingTrainer(digits_mlp(), "adam", "sparse_categorical_crossentropy", overlap=True)
    # The overlapped run goes first, so a cold start would count against it.
    overlapped, acc, overlapped_wait = _train(digits_df, digits, overlap=True)
    plain, plain_acc, plain_wait = _train(digits_df, digits, overlap=False)
    assert acc >= 0.9 and plain_acc >= 0.9
    assert any(r["staleness"] is not None for r in overlapped.history)
    # Measured here: 0.05-0.07 s against 0.57-0.78 s summed over both workers, PS wait 0.011-0.025
    # against 0.26-0.29 of their time.
    assert overlapped_wait < plain_wait / 2, (overlapped_wait, plain_wait)
    assert overlapped.ps_wait_fraction < plain.ps_wait_fraction / 2
