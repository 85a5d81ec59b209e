"""What an algorithm tells the shard and the driver: `additive`, `pull_timeout`, `describe_wait`,
`local_optimizer` and `Params.for_job`, for built-ins and plugins alike."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from zdk import algorithms
from zdk.algorithms import Algorithm, Params, ShardState, WorkerSlot, accumulated_delta, add_delta, reset_to_center
from zdk.errors import ConfigError
from zdk.ps.protocol import Request, as_frames, decode_reply
from zdk.ps.shard import ShardConfig, ShardCore

SIZE = 12
SESSION = 0x5E55


def plugin(name: str, **fields) -> Algorithm:
    fields.setdefault("worker_delta", accumulated_delta)
    fields.setdefault("worker_reset", reset_to_center)
    return Algorithm(name=name, params=fields.pop("params", Params), **fields)


@pytest.fixture
def registered():
    """Registers plugin algorithms for one test; unregisters them after."""
    names: list[str] = []

    def add(algorithm: Algorithm) -> Algorithm:
        algorithms.register(algorithm)
        names.append(algorithm.name)
        return algorithm

    yield add
    for name in names:
        algorithms.unregister(name)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def core_of(name: str, clock=None, **params) -> ShardCore:
    config = ShardConfig(shard=0, num_shards=1, total_size=SIZE, algorithm=name, params=params, chunk_bytes=16)
    return ShardCore(config, initial=np.arange(SIZE, dtype=np.float32), **({"clock": clock} if clock else {}))


def send(core: ShardCore, op: str, worker: int = 1, rid: int = 1, data=None, **fields):
    frames = [] if data is None else as_frames(np.ascontiguousarray(data, np.float32), 16)
    if frames:
        fields.update(dtype="<f4", lens=tuple(f.nbytes for f in frames), base=core.version)
    request = Request(op=op, rid=rid, shard=0, worker=worker, session=SESSION, **fields)
    return [decode_reply(o.header) for o in core.handle(b"w", request.encode(), [bytes(f) for f in frames])]


# ---------------------------------------------------------------- additive


@pytest.mark.parametrize("name,additive", [("downpour", True), ("agn", True), ("aeasgd", True), ("eamsgd", True),
                                           ("adag", False), ("adag_worker", True), ("dynsgd", False),
                                           ("averaging", False)])
def test_builtins_say_whether_their_server_update_is_additive(name, additive):
    algo = algorithms.get(name)
    assert algo.additive is additive
    assert (algo.server_update is add_delta) is additive


def test_an_additive_algorithm_gets_add_delta_as_its_server_update():
    algo = plugin("test-additive", additive=True)
    assert algo.server_update is add_delta
    shard = ShardState(center=np.array([1.0, 2.0], np.float32))
    algo.server_update(shard, WorkerSlot(worker=0), np.array([0.5, -1.0], np.float32), Params())
    assert shard.center.tolist() == [1.5, 1.0]


def test_an_additive_algorithm_with_another_server_update_is_refused():
    def doubled(shard, worker, delta, params):
        shard.center += 2 * delta
        return algorithms.APPLIED

    with pytest.raises(ConfigError, match="`server_update` must be unset or zdk.algorithms.add_delta when "
                                          "additive=True") as info:
        plugin("test-additive", additive=True, server_update=doubled)
    assert info.value.field == "server_update"


def test_additive_needs_the_parameter_server():
    with pytest.raises(ConfigError, match="`additive` must be False when uses_ps=False"):
        Algorithm(name="test-local", params=Params, uses_ps=False, additive=True)


def test_a_plugin_that_is_additive_is_applied_without_writing_the_live_center(registered):
    registered(plugin("test-additive", additive=True))
    core = core_of("test-additive")
    send(core, "hello")
    live = core.center
    (reply,) = send(core, "commit", rid=2, data=np.full(SIZE, 0.5))
    assert reply.op == "commit" and reply.fields["applied"] and reply.version == 1
    np.testing.assert_array_equal(core.center, np.arange(SIZE) + 0.5)
    # θ̃ + Δ went into another buffer: the array a zero-copy pull reply could still be sending is intact.
    np.testing.assert_array_equal(live, np.arange(SIZE))
    bad = np.ones(SIZE, np.float32)
    bad[-1] = np.inf
    (refused,) = send(core, "commit", rid=3, data=bad)
    assert refused.fields["code"] == "non_finite" and "index 11" in refused.fields["message"]
    np.testing.assert_array_equal(core.center, np.arange(SIZE) + 0.5)


def test_a_plugin_using_the_class_form_sets_every_hook():
    @algorithms.register("test-class-hooks")
    class Hooks:
        """θ̃ ← θ̃ + Δ, with every hook set."""

        Params = Params
        additive = True
        worker_delta = staticmethod(accumulated_delta)
        worker_reset = staticmethod(reset_to_center)
        pull_timeout = staticmethod(lambda params: 7.0)
        describe_wait = staticmethod(lambda shard, params: "nothing")
        local_optimizer = staticmethod(lambda optimizer, params: "adam")

    try:
        assert Hooks.server_update is add_delta and Hooks.pull_wait(Params()) == 7.0
        assert Hooks.describe_wait(ShardState(center=np.zeros(1, np.float32)), Params()) == "nothing"
        assert Hooks.local_optimizer("sgd", Params()) == "adam"
    finally:
        algorithms.unregister("test-class-hooks")


@pytest.mark.parametrize("hook", ["pull_timeout", "describe_wait", "local_optimizer", "on_leave"])
def test_a_hook_must_be_callable(hook):
    with pytest.raises(ConfigError, match=f"`{hook}` must be callable or None. Received: {hook}=3"):
        plugin("test-bad-hook", additive=True, **{hook: 3})


# ---------------------------------------------------------------- waiting pulls


def barrier_update(shard, worker, payload, params):
    """Advances once two commits have arrived: a minimal synchronous plugin."""
    arrived = shard.state.setdefault("arrived", set())
    arrived.add(worker.worker)
    if len(arrived) < 2:
        return algorithms.UpdateResult(advance=False)
    arrived.clear()
    return algorithms.APPLIED


def test_a_plugins_pull_timeout_and_wait_description_shape_the_deadline_error(registered):
    registered(plugin("test-barrier", server_update=barrier_update, synchronous=True,
                      pull_timeout=lambda params: 2.0,
                      describe_wait=lambda shard, params: f"the barrier has {sorted(shard.state['arrived'])}"))
    clock = FakeClock()
    core = core_of("test-barrier", clock=clock)
    send(core, "hello", worker=1)
    send(core, "hello", worker=2)
    send(core, "commit", worker=1, rid=2, data=np.ones(SIZE))
    assert send(core, "pull", worker=1, rid=3, min_version=1, wait=5.0) == []
    assert core.next_deadline() == pytest.approx(102.0)  # the plugin's 2 s, not the request's 5 s
    clock.now = 102.5
    (out,) = core.expire()
    reply = decode_reply(out.header)
    assert reply.fields["code"] == "deadline"
    assert reply.fields["message"] == ("shard 0 stayed at version 0 < min_version=1 for the whole wait; "
                                       "the barrier has [1]")


def test_a_failing_wait_description_still_lets_the_pull_expire(registered):
    def broken(shard, params):
        raise RuntimeError("boom")

    registered(plugin("test-barrier", server_update=barrier_update, synchronous=True, describe_wait=broken))
    clock = FakeClock()
    core = core_of("test-barrier", clock=clock)
    send(core, "hello", worker=1)
    send(core, "commit", worker=1, rid=2, data=np.ones(SIZE))
    assert send(core, "pull", worker=1, rid=3, min_version=1, wait=1.0) == []
    clock.now = 101.5
    (out,) = core.expire()
    assert decode_reply(out.header).fields["message"].endswith("for the whole wait")


def test_averaging_waits_at_most_its_round_timeout():
    algo = algorithms.get("averaging")
    assert algo.pull_wait(algo.make_params(round_timeout=12.5)) == 12.5
    assert algorithms.get("downpour").pull_wait(Params()) is None


def test_averaging_describes_who_the_round_waits_for():
    algo = algorithms.get("averaging")
    shard = ShardState(center=np.zeros(1, np.float32))
    shard.workers = {w: WorkerSlot(worker=w) for w in (1, 2, 3)}
    shard.state["contributions"] = {2: np.zeros(1, np.float32)}
    assert algo.describe_wait(shard, algo.make_params(num_workers=5)) == (
        "workers not yet committed: [1, 3]; 2 of the 5 workers never said `hello`")
    shard.workers[3].active = False
    shard.quorum = 3
    assert algo.describe_wait(shard, algo.make_params()) == (
        "workers not yet committed: [1]; 0 of the 3 workers never said `hello`")
    shard.quorum = None
    assert algo.describe_wait(shard, algo.make_params()) == "workers not yet committed: [1]"


# ---------------------------------------------------------------- for_job


def test_for_job_returns_the_same_params_when_nothing_depends_on_the_job():
    params = algorithms.get("adag").make_params(eta=0.01)
    assert params.for_job(4) is params


def test_for_job_sets_the_averaging_quorum_only_when_it_was_left_at_zero():
    algo = algorithms.get("averaging")
    params = algo.make_params(round_timeout=9.0)
    filled = params.for_job(4)
    assert filled.num_workers == 4 and filled.round_timeout == 9.0 and params.num_workers == 0
    fixed = algo.make_params(num_workers=2)
    assert fixed.for_job(4) is fixed


@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_for_job_refuses_a_job_without_workers(value):
    with pytest.raises(ConfigError, match=f"`num_workers` must be an int ≥ 1. Received: num_workers={value!r}"):
        algorithms.get("averaging").make_params().for_job(value)


# ---------------------------------------------------------------- local_optimizer


def serialized_sgd(**config) -> dict:
    """What keras.optimizers.serialize(keras.optimizers.SGD(...)) returns in Keras 3."""
    base = {"name": "SGD", "learning_rate": 0.01, "weight_decay": None, "clipnorm": None, "global_clipnorm": None,
            "clipvalue": None, "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
            "loss_scale_factor": None, "gradient_accumulation_steps": None, "momentum": 0.0, "nesterov": False}
    return {"module": "keras.optimizers", "class_name": "SGD", "config": {**base, **config}, "registered_name": None}


@pytest.mark.parametrize("name", ["downpour", "agn", "adag", "dynsgd", "aeasgd", "averaging"])
def test_only_eamsgd_changes_the_local_optimizer(name):
    assert algorithms.get(name).local_optimizer is None


@pytest.mark.parametrize("given", ["sgd", "SGD"])
def test_eamsgd_turns_sgd_by_name_into_nesterov_sgd_with_its_params(given):
    algo = algorithms.get("eamsgd")
    result = algo.local_optimizer(given, algo.make_params(learning_rate=0.05, rho=2.0, momentum=0.8))
    assert result["class_name"] == "SGD" and result["module"] == "keras.optimizers"
    assert result["config"] == {"learning_rate": 0.05, "momentum": 0.8, "nesterov": True}


@pytest.mark.parametrize("momentum", [0.0, 0.8])
def test_eamsgd_keeps_a_given_sgds_settings_with_its_momentum_and_nesterov(momentum):
    algo = algorithms.get("eamsgd")
    given = serialized_sgd(learning_rate=0.3, clipnorm=1.0, momentum=momentum)
    before = copy.deepcopy(given)
    result = algo.local_optimizer(given, algo.make_params(momentum=0.8))
    assert result["config"] == {**given["config"], "momentum": 0.8, "nesterov": True}
    assert given == before, "the caller's data was changed"


def test_eamsgd_refuses_an_sgd_with_another_momentum_naming_momentum():
    algo = algorithms.get("eamsgd")
    with pytest.raises(ConfigError) as info:
        algo.local_optimizer(serialized_sgd(momentum=0.5), algo.make_params(momentum=0.9))
    assert info.value.field == "momentum"
    assert str(info.value) == ("`momentum` is EAMSGD's Nesterov momentum (0.9); the SGD passed as "
                               "`worker_optimizer` has momentum=0.5. Set one of them only.")


@pytest.mark.parametrize("given,shown", [
    ("adam", "'adam'"),
    ({"module": "keras.optimizers", "class_name": "Adam", "config": {}, "registered_name": None}, "'Adam'"),
    ({"module": "my_package", "class_name": "SGD", "config": {}, "registered_name": "my_package>SGD"}, "'SGD'"),
])
def test_eamsgd_refuses_any_other_optimizer_naming_worker_optimizer(given, shown):
    algo = algorithms.get("eamsgd")
    with pytest.raises(ConfigError) as info:
        algo.local_optimizer(given, algo.make_params())
    assert info.value.field == "worker_optimizer"
    assert str(info.value).startswith("`worker_optimizer` must be 'sgd' or a keras.optimizers.SGD for EAMSGD")
    assert str(info.value).endswith(f"Received: worker_optimizer={shown}")


def test_keras_builds_eamsgds_local_optimizer_from_its_data():
    keras = pytest.importorskip("keras")
    algo = algorithms.get("eamsgd")
    params = algo.make_params(learning_rate=0.05, rho=2.0, momentum=0.8)
    from_name = keras.optimizers.deserialize(algo.local_optimizer("sgd", params))
    given = keras.optimizers.serialize(keras.optimizers.SGD(learning_rate=0.01, clipnorm=1.0))
    from_sgd = keras.optimizers.deserialize(algo.local_optimizer(given, params))
    for optimizer, learning_rate in ((from_name, 0.05), (from_sgd, 0.01)):
        config = optimizer.get_config()
        assert isinstance(optimizer, keras.optimizers.SGD)
        assert config["momentum"] == 0.8 and config["nesterov"] is True
        assert config["learning_rate"] == pytest.approx(learning_rate)
    assert from_sgd.get_config()["clipnorm"] == 1.0
