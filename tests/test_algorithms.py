"""Each built-in algorithm's math against hand-computed numpy, and the registry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from zdk import algorithms
from zdk.algorithms import Algorithm, Params, ShardState, UpdateResult, WorkerSlot, WorkerWindow
from zdk.errors import AlgorithmNotFound, ConfigError, ProtocolError
from zdk.ps.layout import ShardPlan
from zdk.ps.protocol import Request, as_frames, decode_reply
from zdk.ps.shard import ShardConfig, ShardCore

ASYNC = ["downpour", "agn", "adag", "dynsgd", "aeasgd", "eamsgd"]

SESSION = 0x5E55


def window(local, pulled, center=None, steps=4):
    local = np.asarray(local, np.float32).copy()
    pulled = np.asarray(pulled, np.float32)
    center = pulled.copy() if center is None else np.asarray(center, np.float32)
    return WorkerWindow(local=local, pulled=pulled, center=center, window=steps)


def state(center, version=0):
    return ShardState(center=np.asarray(center, np.float32).copy(), version=version)


# ---------------------------------------------------------------- registry

def test_builtins_are_registered():
    assert set(ASYNC + ["averaging", "ensemble", "sequential"]) <= set(algorithms.available())


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(AlgorithmNotFound) as info:
        algorithms.get("adagrad-ish")
    assert "Could not interpret algorithm: 'adagrad-ish'" in str(info.value) and "downpour" in str(info.value)


def test_get_accepts_an_algorithm_object():
    algo = algorithms.get("adag")
    assert algorithms.get(algo) is algo


def test_duplicate_name_is_an_error():
    with pytest.raises(ConfigError, match="`name` must be unique. Received: name='downpour'"):
        @algorithms.register("downpour")
        class Again:
            Params = Params
            server_update = staticmethod(algorithms.add_delta)
            worker_delta = staticmethod(algorithms.accumulated_delta)
            worker_reset = staticmethod(algorithms.reset_to_center)


def test_class_decorator_builds_a_frozen_algorithm_with_its_docstring():
    @algorithms.register("test-double")
    class Double:
        """θ̃ ← θ̃ + 2Δ"""

        Params = Params

        @staticmethod
        def server_update(shard, worker, delta, params):
            shard.center += 2 * delta
            return algorithms.APPLIED

        worker_delta = staticmethod(algorithms.accumulated_delta)
        worker_reset = staticmethod(algorithms.reset_to_center)

    try:
        assert isinstance(Double, Algorithm) and Double.doc == "θ̃ ← θ̃ + 2Δ"
        with pytest.raises(dataclasses.FrozenInstanceError):
            Double.name = "other"  # type: ignore[misc]
        assert algorithms.get("test-double") is Double
    finally:
        algorithms.unregister("test-double")


def test_algorithm_needs_update_functions_when_it_uses_the_ps():
    with pytest.raises(ConfigError, match="`server_update` must be callable"):
        Algorithm(name="x", params=Params, server_update=None)


@pytest.mark.parametrize("name,kwargs,message", [
    ("downpour", {"communication_window": 0}, "`communication_window` must be an int ≥ 1. Received: communication_window=0"),
    ("adag", {"eta": 0.0}, "`eta` must be > 0. Received: eta=0.0"),
    ("aeasgd", {"rho": 5.0, "learning_rate": 0.5}, "`learning_rate·rho` must be ≤ 1"),
    ("eamsgd", {"momentum": 1.0}, "`momentum` must be in [0, 1). Received: momentum=1.0"),
    ("averaging", {"num_workers": -1}, "`num_workers` must be an int ≥ 0"),
    ("downpour", {"rho": 1.0}, "unknown parameter(s) ['rho'] for Params; valid: ['communication_window']"),
])
def test_params_validate_naming_field_and_value(name, kwargs, message):
    with pytest.raises(ConfigError) as info:
        algorithms.get(name).make_params(**kwargs)
    assert message in str(info.value)


def test_dist_keras_defaults():
    assert algorithms.get("adag").make_params().communication_window == 12
    assert algorithms.get("agn").make_params().communication_window == 12
    easgd = algorithms.get("eamsgd").make_params()
    assert (easgd.communication_window, easgd.rho, easgd.learning_rate, easgd.momentum) == (32, 5.0, 0.1, 0.9)
    assert easgd.alpha == pytest.approx(0.5)


# ---------------------------------------------------------------- one step each, by hand

def test_downpour_step():
    algo = algorithms.get("downpour")
    win = window(local=[1.0, 2.0], pulled=[0.5, 0.5])
    delta = algo.worker_delta(win, algo.make_params())
    np.testing.assert_allclose(delta, [0.5, 1.5])
    shard = state([10.0, 20.0])
    algo.server_update(shard, WorkerSlot(worker=0), delta, algo.make_params())
    np.testing.assert_allclose(shard.center, [10.5, 21.5])
    win.center = shard.center.copy()
    algo.worker_reset(win, algo.make_params())
    np.testing.assert_allclose(win.local, [10.5, 21.5])


def test_agn_step_divides_by_the_window():
    algo = algorithms.get("agn")
    win = window(local=[1.0, 2.0], pulled=[0.0, 0.0], steps=4)
    delta = algo.worker_delta(win, algo.make_params())
    np.testing.assert_allclose(delta, [0.25, 0.5])
    shard = state([1.0, 1.0])
    algo.server_update(shard, WorkerSlot(worker=0), delta, algo.make_params())
    np.testing.assert_allclose(shard.center, [1.25, 1.5])


def test_adag_step_scales_elementwise_by_the_center_drift():
    algo = algorithms.get("adag")
    params = algo.make_params(eta=0.01)
    center = np.array([1.0, 2.0, 3.0], np.float32)
    pulled = np.array([1.0, 1.9, 2.0], np.float32)  # what this worker saw τ updates ago
    delta = np.array([0.3, 0.3, 0.3], np.float32)
    shard = state(center)
    slot = WorkerSlot(worker=0, pulled=pulled)
    result = algo.server_update(shard, slot, delta, params)
    scale = 1.0 / ((center - pulled) ** 2 / 0.01 + 1.0)  # [1, 0.5, 1/101]
    np.testing.assert_allclose(shard.center, center + delta * scale, rtol=1e-6)
    np.testing.assert_allclose(scale, [1.0, 0.5, 1 / 101], rtol=1e-6)
    assert result.info["scale"] == pytest.approx(scale.mean(), rel=1e-6)
    assert algo.keeps_pulled and algo.worker_delta is algorithms.get("agn").worker_delta


def test_adag_before_any_pull_applies_the_delta_unscaled():
    algo = algorithms.get("adag")
    shard = state([1.0])
    result = algo.server_update(shard, WorkerSlot(worker=0), np.array([0.5], np.float32), algo.make_params())
    assert shard.center.tolist() == [1.5] and result.info["scale"] == 1.0


def test_adag_worker_scales_its_normalized_delta_by_the_drift_since_its_last_commit():
    algo = algorithms.get("adag_worker")
    params = algo.make_params(eta=0.01)
    pulled = np.array([1.0, 1.9, 2.0], np.float32)  # the center as this worker's last commit left it
    center = np.array([1.0, 2.0, 3.0], np.float32)  # the center just pulled
    local = pulled + np.float32(0.6)  # λ = 2 local steps of 0.3
    win = WorkerWindow(local=local.copy(), pulled=pulled.copy(), center=center.copy(), window=2)
    win.delta = algo.worker_delta(win, params)
    scale = 1.0 / ((center - pulled) ** 2 / 0.01 + 1.0)  # [1, 0.5, 1/101]
    np.testing.assert_allclose(win.delta, 0.3 * scale, rtol=1e-5)
    assert win.state["info"]["scale"] == pytest.approx(scale.mean(), rel=1e-5)
    algo.worker_reset(win, params)
    # It continues from the center as its commit left it, and measures the next drift from there.
    np.testing.assert_allclose(win.local, center + 0.3 * scale, rtol=1e-6)
    np.testing.assert_array_equal(win.state["base"], win.local)
    np.testing.assert_array_equal(win.center, center)  # the pulled center is not the worker's to write
    win.pulled, win.center = center.copy(), center + np.float32(0.1)  # the next exchange's pull
    win.local = win.state["base"] + np.float32(0.4)
    nxt = algo.worker_delta(win, params)
    drift = win.center - win.state["base"]
    np.testing.assert_allclose(nxt, 0.2 / (drift ** 2 / 0.01 + 1.0), rtol=1e-4)
    assert algo.additive and algo.pull_before_commit and not algo.keeps_pulled


def test_adag_worker_without_drift_commits_the_agn_delta():
    adag, agn = algorithms.get("adag_worker"), algorithms.get("agn")
    pulled = np.array([0.5, -1.0], np.float32)

    def window() -> WorkerWindow:
        return WorkerWindow(local=pulled + np.float32(0.4), pulled=pulled.copy(), center=pulled.copy(), window=4)

    np.testing.assert_array_equal(adag.worker_delta(window(), adag.make_params()),
                                  agn.worker_delta(window(), agn.make_params()))


@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_dynsgd_step_divides_by_staleness_plus_one(staleness):
    algo = algorithms.get("dynsgd")
    shard = state([1.0, 1.0], version=5)
    slot = WorkerSlot(worker=0, staleness=staleness)
    result = algo.server_update(shard, slot, np.array([2.0, -4.0], np.float32), algo.make_params())
    np.testing.assert_allclose(shard.center, [1.0 + 2.0 / (staleness + 1), 1.0 - 4.0 / (staleness + 1)])
    assert result.info["scale"] == pytest.approx(1 / (staleness + 1))


@pytest.mark.parametrize("name", ["aeasgd", "eamsgd"])
def test_elastic_averaging_step(name):
    algo = algorithms.get(name)
    params = algo.make_params(rho=2.0, learning_rate=0.1)  # α = 0.2
    assert algo.pull_before_commit
    win = window(local=[3.0, -1.0], pulled=[0.0, 0.0], center=[1.0, 1.0])
    elastic = algo.worker_delta(win, params)
    np.testing.assert_allclose(elastic, [0.4, -0.4])
    win.delta = elastic
    algo.worker_reset(win, params)
    np.testing.assert_allclose(win.local, [2.6, -0.6])
    shard = state([1.0, 1.0])
    algo.server_update(shard, WorkerSlot(worker=0), elastic, params)
    np.testing.assert_allclose(shard.center, [1.4, 0.6])


def test_averaging_round_sets_the_mean_and_advances_once():
    algo = algorithms.get("averaging")
    params = algo.make_params()
    shard = state([0.0, 0.0])
    shard.workers = {1: WorkerSlot(worker=1), 2: WorkerSlot(worker=2)}
    shard.quorum = 2
    first = algo.server_update(shard, shard.workers[1], np.array([2.0, 4.0], np.float32), params)
    assert not first.advance and shard.center.tolist() == [0.0, 0.0]
    second = algo.server_update(shard, shard.workers[2], np.array([4.0, 8.0], np.float32), params)
    assert second.advance and shard.center.tolist() == [3.0, 6.0]
    assert second.info["round_size"] == 2.0


def test_averaging_refuses_two_commits_in_one_round():
    algo = algorithms.get("averaging")
    shard = state([0.0])
    shard.workers = {1: WorkerSlot(worker=1), 2: WorkerSlot(worker=2)}
    shard.quorum = 2
    algo.server_update(shard, shard.workers[1], np.array([1.0], np.float32), algo.make_params())
    with pytest.raises(ProtocolError, match="already committed to round 1"):
        algo.server_update(shard, shard.workers[1], np.array([1.0], np.float32), algo.make_params())


def test_averaging_round_closes_when_the_missing_worker_leaves():
    algo = algorithms.get("averaging")
    shard = state([0.0])
    shard.workers = {1: WorkerSlot(worker=1), 2: WorkerSlot(worker=2)}
    shard.quorum = 2
    algo.server_update(shard, shard.workers[1], np.array([5.0], np.float32), algo.make_params())
    shard.workers[2].active = False
    result = algo.on_leave(shard, shard.workers[2], algo.make_params())
    assert result.advance and shard.center.tolist() == [5.0]


def test_averaging_waits_for_the_expected_number_of_workers():
    algo = algorithms.get("averaging")
    params = algo.make_params(num_workers=2)
    shard = state([0.0])
    shard.workers = {1: WorkerSlot(worker=1)}
    assert not algo.server_update(shard, shard.workers[1], np.array([1.0], np.float32), params).advance


@pytest.mark.parametrize("name", ["ensemble", "sequential"])
def test_local_algorithms_have_no_ps_traffic(name):
    algo = algorithms.get(name)
    assert not algo.uses_ps and algo.server_update is None


# ---------------------------------------------------------------- 1 shard equals 3 shards

class InProcessCluster:
    """Shard cores called directly, to compare shard counts without sockets."""

    def __init__(self, name: str, total: int, num_shards: int, start: np.ndarray, params: dict) -> None:
        self.plan = ShardPlan(total, num_shards)
        self.cores = [ShardCore(ShardConfig(shard=k, num_shards=num_shards, total_size=total, algorithm=name,
                                            params=params), initial=start[a:b])
                      for k, (a, b) in enumerate(self.plan.ranges)]
        self.rid = 0
        self.bases: dict[int, list[int]] = {}

    def call(self, k: int, request: Request, frames=()):
        out = self.cores[k].handle(b"peer", request.encode(), [bytes(f) for f in frames])
        return [(decode_reply(o.header), b"".join(bytes(f) for f in o.frames)) for o in out]

    def hello(self, worker: int) -> None:
        for k in range(len(self.cores)):
            self.call(k, Request(op="hello", rid=0, shard=k, worker=worker, session=SESSION))
        self.bases[worker] = [c.version for c in self.cores]

    def pull(self, worker: int) -> np.ndarray:
        parts = []
        for k in range(len(self.cores)):
            self.rid += 1
            (reply, data), = self.call(k, Request(op="pull", rid=self.rid, shard=k, worker=worker, session=SESSION))
            parts.append(np.frombuffer(data, "<f4"))
            self.bases[worker][k] = reply.version
        return np.concatenate(parts)

    def commit(self, worker: int, delta: np.ndarray) -> list[dict]:
        infos = []
        for k, part in enumerate(self.plan.slices(delta.astype(np.float32))):
            self.rid += 1
            frames = as_frames(np.ascontiguousarray(part), 64)
            req = Request(op="commit", rid=self.rid, shard=k, worker=worker, session=SESSION, base=self.bases[worker][k],
                          dtype="<f4", lens=tuple(f.nbytes for f in frames))
            replies = self.call(k, req, frames)
            assert replies[0][0].op == "commit", replies[0][0].fields
            infos.append(replies[0][0].fields)
        return infos


@pytest.mark.parametrize("name", ASYNC + ["averaging"])
def test_one_shard_and_three_shards_give_the_same_center(name, rng):
    total = 101
    start = rng.normal(size=total).astype(np.float32)
    deltas = rng.normal(scale=0.1, size=(8, total)).astype(np.float32)
    params = {"eta": 0.05} if name == "adag" else {"num_workers": 2} if name == "averaging" else {}
    centers, infos = [], []
    for num_shards in (1, 3):
        cluster = InProcessCluster(name, total, num_shards, start, params)
        cluster.hello(1), cluster.hello(2)
        cluster.pull(1), cluster.pull(2)
        log = []
        for i, delta in enumerate(deltas):
            worker = 1 + i % 2
            log.append([f.get("staleness") for f in cluster.commit(worker, delta)])
            if name == "averaging" or i % 3 == 2:
                cluster.pull(worker)
        centers.append(cluster.pull(1))
        infos.append(log)
    assert centers[0].tobytes() == centers[1].tobytes()
    assert [s[0] for s in infos[0]] == [s[0] for s in infos[1]]
    assert not np.array_equal(centers[0], start)
