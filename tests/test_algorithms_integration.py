"""Every PS algorithm trains a least-squares model through real shard processes with 2 workers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from zdk.ps.client import PSClient
from zdk.ps.exchange import Exchange

DIM = 20
ROWS = 2000
LOSS_THRESHOLD = 0.05  # the noise alone gives 0.01; the starting loss is about 17


def make_problem():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    w_true = rng.normal(size=DIM).astype(np.float32)
    y = x @ w_true + rng.normal(scale=0.1, size=ROWS).astype(np.float32)
    return x, y


def mse(w, x, y) -> float:
    return float(np.mean((x @ w - y) ** 2))


def run_worker(endpoints, worker_id, x, y, errors, *, steps=300, batch=16, lr=0.02, momentum=0.0, timeout=30.0,
               tries=3):
    """Plain minibatch SGD on ½‖Xw − y‖²/b; an algorithm's worker side every λ steps."""
    try:
        rng = np.random.default_rng(worker_id)
        with PSClient(endpoints, worker_id=worker_id, timeout=timeout, tries=tries) as client:
            client.hello()
            local = np.zeros(DIM, np.float32)
            exchange = Exchange(client, local)
            exchange.start()
            velocity = np.zeros(DIM, np.float32)
            done_in_window = 0
            for step in range(steps):
                idx = rng.integers(0, len(x), batch)
                xb, yb = x[idx], y[idx]
                lookahead = local + momentum * velocity  # Nesterov: the gradient at θ + δv
                grad = xb.T @ (xb @ lookahead - yb) / batch
                velocity = momentum * velocity - lr * grad
                local += velocity
                done_in_window += 1
                if done_in_window == exchange.window:
                    exchange.end_window(done_in_window)
                    done_in_window = 0
            exchange.finish()
    except BaseException as exc:  # the test thread re-raises it
        errors.append(exc)


def train_two_workers(endpoints, x, y, **kwargs) -> None:
    """Two worker threads, each on half the rows; re-raises a worker's error; fails if one hangs."""
    errors: list[BaseException] = []
    halves = [(x[: ROWS // 2], y[: ROWS // 2]), (x[ROWS // 2:], y[ROWS // 2:])]
    threads = [threading.Thread(target=run_worker, args=(endpoints, w, *halves[w], errors), kwargs=kwargs)
               for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]


CASES = [
    ("downpour", {"communication_window": 5}, {}),
    ("agn", {"communication_window": 5}, {"lr": 0.05}),
    ("adag", {"communication_window": 5, "eta": 0.01}, {"lr": 0.05}),
    ("adag_worker", {"communication_window": 5, "eta": 0.01}, {"lr": 0.05}),
    ("dynsgd", {"communication_window": 5}, {}),
    ("aeasgd", {"communication_window": 4, "rho": 5.0, "learning_rate": 0.1}, {}),
    ("eamsgd", {"communication_window": 4, "rho": 5.0, "learning_rate": 0.1, "momentum": 0.5}, {"momentum": 0.5, "lr": 0.01}),
    ("averaging", {"communication_window": 10, "num_workers": 2, "round_timeout": 30.0}, {}),
]


@pytest.mark.parametrize("name,params,local", CASES, ids=[c[0] for c in CASES])
def test_two_workers_two_shards_reduce_the_loss(shards, name, params, local):
    x, y = make_problem()
    group = shards(num_shards=2, total_size=DIM, algorithm=name, params=params)
    start_loss = mse(np.zeros(DIM, np.float32), x, y)
    train_two_workers(group.endpoints, x, y, **local)
    with PSClient(group.endpoints, worker_id=99) as client:
        client.hello(register=False)
        final = mse(client.pull(), x, y)
        stats = client.stats()
    print(f"{name}: loss {start_loss:.3f} → {final:.4f}")
    assert final < LOSS_THRESHOLD < start_loss, f"{name}: loss {start_loss:.3f} → {final:.4f}"
    assert all(s["updates"] > 0 for s in stats)
    assert {"0", "1"} <= set(stats[0]["workers"])

