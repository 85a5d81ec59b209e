"""Compressed commits: the codecs' math, their wire fields, a shard refusing malformed encodings
with the center untouched, and error feedback through real shards."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from zdk.algorithms import codecs
from zdk.algorithms.codecs import INT8_BLOCK, Codec, CodecArgs, TopKArgs, get_codec
from zdk.errors import AlgorithmNotFound, ConfigError, ProtocolError
from zdk.ps.client import PSClient
from zdk.ps.exchange import Exchange
from zdk.ps.launcher import start_shards
from zdk.ps.protocol import OBSERVER_TOOL, Request, array_frames, decode_request
from zdk.ps.shard import ShardConfig, ShardCore

from test_shard_core import SESSION, decode_reply

SIZE = 300


def rng_vector(n: int = SIZE, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=n) * scale).astype(np.float32)


def roundtrip(name: str, x: np.ndarray, **args) -> np.ndarray:
    codec = get_codec(name)
    arrays = codec.encode(x, codec.make_args(args))
    assert tuple(a.dtype.str for a in arrays) == codec.layout
    out = np.empty_like(x)
    codec.decode(arrays, out)
    return out


# ------------------------------------------------------------------ the math


def test_fp16_and_bf16_keep_values_to_their_precision():
    x = rng_vector(scale=3.0)
    assert np.abs(roundtrip("fp16", x) - x).max() <= np.abs(x).max() * 2.0**-11
    bf = roundtrip("bf16", x)
    assert (np.abs(bf - x) <= np.abs(x) * 2.0**-8).all()
    # bf16 keeps float32's range, where fp16 refuses a value beyond 65504 naming it.
    big = np.array([1.0, -7e4, 3.0], np.float32)
    assert np.allclose(roundtrip("bf16", big), big, rtol=2**-8)
    with pytest.raises(ConfigError, match=r"fp16 cannot carry .*7e\+04 at index 1.*codec='bf16'"):
        roundtrip("fp16", big)


def test_bf16_rounds_to_nearest_even():
    # 1 + 2^-8 lies halfway between bf16's 1 and 1 + 2^-7: ties go to the even mantissa (1).
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-9], np.float32)
    assert roundtrip("bf16", x).tolist() == [1.0, 1 + 2**-6, 1.0]


def test_int8_has_a_scale_per_block_and_errors_within_half_a_step():
    x = rng_vector(INT8_BLOCK + 100)
    x[INT8_BLOCK:] *= 1000  # a second block of another magnitude keeps its own scale
    codec = get_codec("int8")
    q, scales = codec.encode(x, codec.make_args())
    assert q.dtype == np.int8 and scales.size == 2
    assert scales[0] == pytest.approx(np.abs(x[:INT8_BLOCK]).max() / 127)
    out = roundtrip("int8", x)
    for b, scale in enumerate(scales):
        part = slice(b * INT8_BLOCK, (b + 1) * INT8_BLOCK)
        assert np.abs(out[part] - x[part]).max() <= scale / 2 * 1.0001
    assert roundtrip("int8", np.zeros(5, np.float32)).tolist() == [0.0] * 5


def test_topk_sends_the_largest_magnitudes_in_index_order():
    x = rng_vector(1000)
    codec = get_codec("topk")
    idx, values = codec.encode(x, TopKArgs(ratio=0.01))
    assert idx.size == 10 and (np.diff(idx.astype(int)) > 0).all()
    assert set(idx.tolist()) == set(np.argsort(-np.abs(x))[:10].tolist())
    out = roundtrip("topk", x, ratio=0.01)
    assert np.count_nonzero(out) == 10 and np.array_equal(out[idx], x[idx])
    assert codec.encode(x[:3], TopKArgs(ratio=1e-9))[0].size == 1  # at least one value
    assert np.array_equal(roundtrip("topk", x, ratio=1.0), x)


def test_codec_arguments_are_validated_by_name():
    with pytest.raises(ConfigError, match=r"`ratio` must be in \(0, 1\]. Received: ratio=0"):
        get_codec("topk").make_args({"ratio": 0})
    with pytest.raises(ConfigError, match=r"unknown codec argument\(s\) \['ratio'\] for CodecArgs"):
        get_codec("int8").make_args({"ratio": 0.1})
    with pytest.raises(AlgorithmNotFound, match=r"Could not interpret codec: 'zip'; available: bf16, fp16, int8, topk"):
        get_codec("zip")
    assert get_codec("topk").make_args().error_feedback is True
    assert get_codec("int8").make_args().error_feedback is False


# ------------------------------------------------------------------ the wire


def encoded_request(name: str, arrays, *, rid: int = 10, base: int = 0, chunk: int = 64) -> tuple[Request, list]:
    frames = [array_frames(np.ascontiguousarray(a), chunk) for a in arrays]
    layout = tuple((a.dtype.str, len(f)) for a, f in zip(arrays, frames))
    flat = [bytes(f) for group in frames for f in group]
    return Request(op="commit", rid=rid, shard=0, worker=1, session=SESSION, base=base, codec=name, arrays=layout,
                   lens=tuple(len(f) for f in flat)), flat


def test_an_encoded_commit_header_round_trips_and_its_frames_are_checked():
    idx, values = get_codec("topk").encode(rng_vector(), TopKArgs(ratio=0.1))
    request, frames = encoded_request("topk", (idx, values), chunk=40)
    decoded = decode_request(request.encode(), [len(f) for f in frames], max_frame_bytes=1 << 20)
    assert decoded.codec == "topk" and decoded.dtype is None
    assert decoded.arrays == (("<u4", 3), ("<f4", 3))
    cases = {  # header change -> (code, words of the message)
        "codec on a pull": ({"op": "pull", "base": None, "lens": (), "arrays": request.arrays}, "bad_header"),
        "dtype beside codec": ({"dtype": "<f4"}, "bad_dtype"),
        "an unknown array dtype": ({"arrays": (("<f8", 3), ("<f4", 3))}, "bad_dtype"),
        "frames not accounted for": ({"arrays": (("<u4", 3), ("<f4", 2))}, "bad_header"),
    }
    for what, (change, code) in cases.items():
        bad = Request(**{**request.__dict__, **change})
        lens = [len(f) for f in frames] if bad.lens else []
        with pytest.raises(ProtocolError) as info:
            decode_request(bad.encode(), lens, max_frame_bytes=1 << 20)
        assert info.value.code == code, what


def core_for(algorithm: str = "downpour", size: int = SIZE) -> ShardCore:
    core = ShardCore(ShardConfig(shard=0, num_shards=1, total_size=size, algorithm=algorithm, chunk_bytes=64),
                     initial=np.linspace(-1, 1, size, dtype=np.float32))
    core.handle(b"w", Request(op="hello", rid=1, shard=0, worker=1, session=SESSION).encode(), [])
    return core


def send(core: ShardCore, request: Request, frames) -> dict:
    (out,) = core.handle(b"w", request.encode(), frames)
    reply = decode_reply(out.header)
    return {"op": reply.op, **reply.fields}


@pytest.mark.parametrize("algorithm", ["downpour", "adag"])
@pytest.mark.parametrize("name", ["fp16", "bf16", "int8", "topk"])
def test_a_shard_applies_what_the_codec_decodes(algorithm, name):
    core = core_for(algorithm)
    before = core.center.copy()
    delta = rng_vector(seed=3, scale=0.01)
    codec = get_codec(name)
    arrays = codec.encode(delta, codec.make_args())
    reply = send(core, *encoded_request(name, arrays))
    assert reply["op"] == "commit" and reply["applied"], reply
    expected = np.empty_like(delta)
    codec.decode(arrays, expected)
    assert np.allclose(core.center, before + expected, atol=1e-7)  # ADAG's first commit has scale 1
    assert core.version == 1


def malformed():
    """(name, what, arrays): encodings every decoder must refuse."""
    x = rng_vector(seed=5)
    q, scales = get_codec("int8").encode(x, CodecArgs())
    idx, values = get_codec("topk").encode(x, TopKArgs(ratio=0.1))
    f16 = x.astype("<f2")
    yield "int8", "a NaN scale", (q, np.array([np.nan], "<f4")), "bad_encoding"
    yield "int8", "a negative scale", (q, np.array([-0.5], "<f4")), "bad_encoding"
    yield "int8", "an infinite scale", (q, np.array([np.inf], "<f4")), "bad_encoding"
    yield "int8", "two scales for one block", (q, np.ones(2, "<f4")), "bad_encoding"
    yield "int8", "values of the wrong length", (q[:-1], scales), "bad_encoding"
    yield "topk", "an index out of range", (np.append(idx[:-1], np.uint32(SIZE)).astype("<u4"), values), "bad_encoding"
    yield "topk", "indices out of order", (idx[::-1].copy(), values), "bad_encoding"
    yield "topk", "a repeated index", (np.repeat(idx[:15], 2).astype("<u4"), values), "bad_encoding"
    yield "topk", "more values than indices", (idx[:-1].copy(), values), "bad_encoding"
    yield "topk", "a NaN value", (idx, np.where(np.arange(values.size) == 2, np.nan, values).astype("<f4")), "non_finite"
    yield "fp16", "values of the wrong length", (np.append(f16, f16[:1]).astype("<f2"),), "bad_encoding"
    yield "fp16", "an infinite value", (np.where(np.arange(SIZE) == 7, np.inf, f16).astype("<f2"),), "non_finite"
    yield "bf16", "a NaN value", (np.full(SIZE, 0x7FC0, "<u2"),), "non_finite"
    yield "bf16", "the arrays of another codec", (idx, values), "bad_dtype"
    yield "gzip", "an unknown codec", (f16,), "bad_codec"


@pytest.mark.parametrize("name,what,arrays,code", list(malformed()), ids=[f"{c[0]}: {c[1]}" for c in malformed()])
def test_a_malformed_encoding_is_refused_with_a_code_and_the_center_untouched(name, what, arrays, code):
    core = core_for("downpour")
    before = core.center.copy()
    reply = send(core, *encoded_request(name, arrays))
    assert reply["op"] == "error" and reply["code"] == code, (what, reply)
    assert np.array_equal(core.center, before) and core.version == 0
    # The shard keeps serving: the same worker's next, well-formed commit is applied.
    good = get_codec("topk").encode(rng_vector(seed=9, scale=0.1), TopKArgs(ratio=0.1))
    assert send(core, *encoded_request("topk", good, rid=11))["applied"]


def test_a_plugin_codec_is_decoded_by_the_shard_and_a_crashing_decoder_is_refused():
    def sign_encode(x, args):  # 1-bit sign compression with one scale, as a plugin would write it
        return np.packbits(x > 0), np.array([np.abs(x).mean()], "<f4")

    def sign_decode(arrays, out):
        bits, (scale,) = arrays
        out[:] = np.where(np.unpackbits(bits)[:out.size] == 1, scale, -scale)  # too few bits: ValueError

    codecs.register_codec(Codec("test-sign", ("|u1", "<f4"), sign_encode, sign_decode))
    try:
        core = core_for()
        before = core.center.copy()
        x = rng_vector(seed=2)
        assert send(core, *encoded_request("test-sign", sign_encode(x, None)))["applied"]
        assert np.allclose(core.center - before, np.where(x > 0, 1, -1) * np.abs(x).mean())
        # A decoder that fails on bad input (here: too few bits for the slice) is a refused commit too.
        reply = send(core, *encoded_request("test-sign", (np.zeros(2, "|u1"), np.ones(1, "<f4")), rid=12))
        assert reply["code"] == "bad_encoding" and "test-sign" in reply["message"], reply
    finally:
        codecs.unregister_codec("test-sign")


# ------------------------------------------------------------------ through real shards


def pull_center(endpoints) -> np.ndarray:
    with PSClient(endpoints, worker_id=OBSERVER_TOOL, timeout=20) as observer:
        observer.hello(register=False)
        return observer.pull()


def run_windows(endpoints, deltas, *, before_finish=None, **exchange_args):
    """One worker committing each of ``deltas`` through an Exchange; returns it and the final center.
    ``before_finish(exchange)`` runs after the last window, before ``finish`` flushes e."""
    with PSClient(endpoints, worker_id=0, timeout=20) as client:
        client.hello()
        local = np.zeros(deltas[0].size, np.float32)
        exchange = Exchange(client, local, **exchange_args)
        exchange.start()
        for delta in deltas:
            local += delta
            exchange.end_window(1)
        if before_finish is not None:
            before_finish(exchange)
        exchange.finish()
    return exchange, pull_center(endpoints)


def test_topk_error_feedback_sends_every_update_eventually_through_two_shards():
    size = 2_000
    deltas = [rng_vector(size, seed=s, scale=0.01) for s in range(12)]
    seen = {}

    def before_finish(exchange):
        seen["center"], seen["residual"] = pull_center(exchange.client.endpoints), exchange.residual.copy()
        seen["bytes"] = exchange.commit_bytes

    with start_shards(num_shards=2, total_size=size, algorithm="downpour") as group:
        exchange, center = run_windows(group.endpoints, deltas, codec="topk", codec_args={"ratio": 0.05},
                                       before_finish=before_finish)
    # Nothing lost: what the shards applied plus what the worker still holds is every update ...
    assert np.count_nonzero(seen["residual"]) > 0
    assert np.allclose(seen["center"] + seen["residual"], np.sum(deltas, axis=0), atol=1e-6)
    # ... and `finish` commits the remainder, so the final center holds all of it.
    assert np.allclose(center, np.sum(deltas, axis=0), atol=1e-6) and not exchange.residual.any()
    # (u32 index + f32 value) for 5% of the values: 10× fewer bytes than float32; then e once.
    assert seen["bytes"] == len(deltas) * 2 * math.ceil(0.05 * size / 2) * 8
    assert exchange.commit_bytes == seen["bytes"] and exchange.flushed_bytes == size * 4


def test_without_error_feedback_the_lost_part_stays_lost_and_int8_quarters_the_bytes():
    size = 1_000
    deltas = [rng_vector(size, seed=s, scale=0.01) for s in range(4)]
    with start_shards(num_shards=1, total_size=size, algorithm="downpour") as group:
        exchange, center = run_windows(group.endpoints, deltas, codec="int8")
        assert exchange.residual is None
        assert np.abs(center - np.sum(deltas, axis=0)).max() < 4 * 0.03 / 127  # within 4 half-steps
        plain, center32 = run_windows(group.endpoints, deltas)
    assert exchange.commit_bytes * 4 < plain.commit_bytes * 1.01  # 1 byte per value, plus a scale


def test_a_codec_is_refused_for_synchronous_algorithms_and_without_one_its_arguments_are():
    with start_shards(num_shards=1, total_size=10, algorithm="averaging") as group:
        with PSClient(group.endpoints, timeout=10) as client:
            with pytest.raises(ConfigError, match=r"`codec` needs an asynchronous algorithm: 'averaging'"):
                Exchange(client, np.zeros(10, np.float32), codec="topk")
            with pytest.raises(ConfigError, match=r"`codec_args` needs a `codec`"):
                Exchange(client, np.zeros(10, np.float32), codec_args={"ratio": 0.1})


# ------------------------------------------------------------------ trainers


def test_trainers_take_a_codec_and_refuse_a_bad_one_by_name():
    import keras

    from zdk.trainers import ADAG, DOWNPOUR, AveragingTrainer, SingleTrainer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plan = DOWNPOUR(model, "adam", "mse", codec="topk", codec_args={"ratio": 0.02}).plan
    assert plan.codec == "topk" and plan.codec_args == {"ratio": 0.02, "error_feedback": True}
    assert ADAG(model, "adam", "mse", codec="int8").plan.codec_args == {"error_feedback": False}
    cases = [
        (lambda: DOWNPOUR(model, "adam", "mse", codec="zip"), r"`codec` must be a registered codec.*'zip'"),
        (lambda: DOWNPOUR(model, "adam", "mse", codec="topk", codec_args={"ratio": 2}), r"`ratio` must be in \(0, 1\]"),
        (lambda: DOWNPOUR(model, "adam", "mse", codec_args={"ratio": 0.1}), r"`codec_args` needs a `codec`"),
        (lambda: AveragingTrainer(model, "adam", "mse", codec="int8"), r"'averaging' is synchronous"),
        (lambda: SingleTrainer(model, "adam", "mse", codec="int8"), r"`codec` has no effect on SingleTrainer"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message):
            make()


@pytest.mark.spark
def test_downpour_with_int8_and_topk_commits_learns_digits_with_fewer_bytes(digits_df, digits):
    import keras

    from conftest import digits_mlp
    from zdk.trainers import DOWNPOUR

    x_test, y_test = digits[1], digits[3]
    sent, accuracy = {}, {}
    for codec, args in ((None, None), ("int8", None), ("topk", {"ratio": 0.05})):
        keras.utils.set_random_seed(2)
        trainer = DOWNPOUR(digits_mlp(), "adam", "sparse_categorical_crossentropy", num_workers=2, num_epoch=10,
                           communication_window=4, codec=codec, codec_args=args, num_shards=2, progress=False)
        model = trainer.train(digits_df)
        summaries = trainer.worker_summaries
        steps = len(trainer.history)  # one record per step
        sent[codec] = sum(s["commit_bytes"] for s in summaries) / max(1, steps)
        accuracy[codec] = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    # int8: 1 byte a value and a scale per shard; topk at 5%: 8 bytes for 1 value in 20, ⌈⌉ per shard.
    assert sent["int8"] < sent[None] / 3.9 * 1.01 and sent["topk"] < sent[None] / 9.5, sent
    print(sent, accuracy)
    assert accuracy[None] > 0.85, accuracy
    assert accuracy["int8"] > accuracy[None] - 0.03 and accuracy["topk"] > accuracy[None] - 0.08, accuracy


def test_the_plugin_codec_of_the_docs_registers_trains_and_refuses_short_input(tmp_path, monkeypatch):
    import importlib
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "algorithms.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_codec" in b]
    # A plugin's module, importable here and by the shard processes, which import it by name.
    (tmp_path / "zdk_docs_sign_codec.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    importlib.import_module("zdk_docs_sign_codec")
    try:
        size = 1_000
        deltas = [rng_vector(size, seed=s, scale=0.01) for s in range(3)]
        with start_shards(num_shards=2, total_size=size, algorithm="downpour", codec="sign") as group:
            exchange, center = run_windows(group.endpoints, deltas, codec="sign",
                                           codec_args={"error_feedback": True})
        # 1 bit a value and a scale per shard, then the remainder e as float32 at `finish`.
        assert exchange.commit_bytes == 3 * 2 * (-(-500 // 8) + 4) and exchange.flushed_bytes == size * 4
        assert np.allclose(center, np.sum(deltas, axis=0), atol=1e-6)
        core = core_for()
        reply = send(core, *encoded_request("sign", (np.zeros(3, "|u1"), np.ones(1, "<f4"))))
        assert reply["code"] == "bad_encoding" and "sign needs 38 bytes" in reply["message"], reply
    finally:
        codecs.unregister_codec("sign")
        sys.modules.pop("zdk_docs_sign_codec", None)


def test_topk_on_a_large_slice_picks_exactly_the_largest_even_when_the_sample_misjudges_the_tail():
    x = rng_vector(300_000, seed=4)
    idx, values = get_codec("topk").encode(x, TopKArgs(ratio=0.01))
    assert idx.size == 3_000 and set(idx.tolist()) == set(np.argsort(-np.abs(x))[:3_000].tolist())
    # The strided sample sees only the large values here, so its threshold keeps too few candidates
    # (1.9% of the values for k = 5%) and everything is partitioned instead.
    spiky = rng_vector(300_000, seed=6, scale=1e-3)
    spiky[::4] = 1_000 + np.arange(75_000, dtype=np.float32)
    idx, values = get_codec("topk").encode(spiky, TopKArgs(ratio=0.05))
    assert set(idx.tolist()) == set(np.argsort(-spiky)[:15_000].tolist())


# ------------------------------------------------------------------ exactly once, and in the lab


def test_encoded_commits_through_a_lossy_link_are_applied_exactly_once():
    from zdk.lab.proxy import LossyProxy

    size = 2_000
    deltas = [rng_vector(size, seed=s, scale=0.01) for s in range(20)]
    with start_shards(num_shards=2, total_size=size, algorithm="downpour") as group:
        with LossyProxy(group.endpoints[0], drop=0.2, late=0.1, seed=1) as p0, \
                LossyProxy(group.endpoints[1], drop=0.2, late=0.1, seed=2) as p1:
            with PSClient([p0.endpoint, p1.endpoint], worker_id=0, timeout=3.0, tries=12) as client:
                client.hello()
                local = np.zeros(size, np.float32)
                exchange = Exchange(client, local, codec="topk", codec_args={"ratio": 0.05})
                exchange.start()
                for delta in deltas:
                    local += delta
                    exchange.end_window(1)
                exchange.finish()
                resends = client.resends
            dropped = p0.counts["dropped"] + p1.counts["dropped"]
        with PSClient(group.endpoints, worker_id=OBSERVER_TOOL, timeout=20) as observer:
            observer.hello(register=False)
            center = observer.pull()
            updates = [s["updates"] for s in observer.stats()]
    assert dropped > 0 and resends > 0
    # A commit applied twice, or lost, would break the sum: every update reaches the center (the
    # last commit is the remainder e that `finish` flushes).
    assert updates == [len(deltas) + 1] * 2
    assert np.allclose(center, np.sum(deltas, axis=0), atol=1e-6)


def test_the_lab_measures_a_codecs_bytes_and_learns_with_it():
    from zdk.lab import LabSettings, run_cell

    cells = {}
    for codec in (None, "int8"):
        settings = LabSettings(algorithms=("downpour",), model="digits", workers=(2,), epochs=8, codec=codec)
        cells[codec] = run_cell(settings, algorithm="downpour", workers=2, seed=0)
    assert cells["int8"].commit_bytes * 3.9 < cells[None].commit_bytes  # 4810 values: 1 byte each, and 2 scales
    assert cells["int8"].value > 0.85 and abs(cells["int8"].value - cells[None].value) < 0.03, cells
    with pytest.raises(ConfigError, match=r"`codec` must be a registered codec"):
        LabSettings(codec="zip")


def test_topk_counts_values_without_floating_point_surprises_and_handles_sparse_deltas():
    from zdk.algorithms.codecs import topk_count

    assert topk_count(100, 0.07) == 7 and topk_count(0, 0.5) == 0 and topk_count(10, 1e-9) == 1
    sparse = np.zeros(200_000, np.float32)
    sparse[::100] = rng_vector(2_000, seed=8)  # 1% non-zero: the sample's threshold is 0
    idx, _ = get_codec("topk").encode(sparse, TopKArgs(ratio=0.005))
    assert set(idx.tolist()) == set(np.argsort(-np.abs(sparse))[:1_000].tolist())


def test_a_non_finite_payload_is_refused_on_the_worker_naming_its_index():
    with start_shards(num_shards=1, total_size=50, algorithm="downpour") as group:
        with PSClient(group.endpoints, worker_id=0, timeout=10) as client:
            exchange = Exchange(client, np.zeros(50, np.float32), codec="bf16")
            exchange.start()
            exchange.local[7] = np.nan
            with pytest.raises(ProtocolError, match=r"must be finite. Received: nan at index 7, before encoding"):
                exchange.end_window(1)
        assert not pull_center(group.endpoints).any()


def test_a_decoder_that_leaves_values_unwritten_is_refused_not_given_stale_ones():
    def half_decode(arrays, out):
        out[: out.size // 2] = arrays[0][: out.size // 2]

    codecs.register_codec(Codec("test-half", ("<f4",), lambda x, a: (x.copy(),), half_decode))
    try:
        core = core_for()
        assert send(core, *encoded_request("fp16", (np.ones(SIZE, "<f2"),)))["applied"]
        before = core.center.copy()
        reply = send(core, *encoded_request("test-half", (np.zeros(SIZE, "<f4"),), rid=11))
        assert reply["code"] == "non_finite" and "test-half" in reply["message"], reply
        assert np.array_equal(core.center, before)
    finally:
        codecs.unregister_codec("test-half")


DROPPING_PLUGIN = """
from zdk.algorithms import APPLIED, Params, UpdateResult, accumulated_delta, register, reset_to_center


@register("test-drop-1")
class DropOnSecondShard:
    Params = Params
    worker_delta = staticmethod(accumulated_delta)
    worker_reset = staticmethod(reset_to_center)

    @staticmethod
    def server_update(shard, worker, delta, params):
        if shard.center.size == 30:  # the second of two shards of 61 values (31 + 30)
            return UpdateResult(applied=False, advance=False)
        shard.center += delta
        return APPLIED
"""


def test_error_feedback_forgets_what_a_shard_dropped_and_what_a_restart_may_have_applied_twice(tmp_path,
                                                                                             monkeypatch):
    import importlib

    from zdk.algorithms import unregister

    (tmp_path / "zdk_test_dropping.py").write_text(DROPPING_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the shards import it by name
    importlib.import_module("zdk_test_dropping")
    try:
        with start_shards(num_shards=2, total_size=61, algorithm="test-drop-1") as group:
            seen = {}
            run_windows(group.endpoints, [rng_vector(61, seed=1)], codec="topk", codec_args={"ratio": 0.2},
                        before_finish=lambda ex: seen.update(residual=ex.residual.copy()))
        # Shard 0 applied its part: e keeps what topk left out there; shard 1 dropped its part: e ← 0.
        assert seen["residual"][:31].any() and not seen["residual"][31:].any()
    finally:
        unregister("test-drop-1")
        sys.modules.pop("zdk_test_dropping", None)
    with start_shards(num_shards=2, total_size=60, algorithm="downpour") as group:
        with PSClient(group.endpoints, worker_id=0, timeout=10) as client:
            exchange = Exchange(client, np.zeros(60, np.float32), codec="topk", codec_args={"ratio": 0.2})
            exchange.start()
            exchange.local += rng_vector(60, seed=2)
            exchange.end_window(1)
            assert exchange.residual.any()
            client._gens[1] ^= 1  # shard 1's next reply looks like a restarted shard's
            exchange.local += rng_vector(60, seed=3)
            receipt = exchange.end_window(1)
            assert receipt.info == {"resynced": 1.0} and not exchange.residual.any()

