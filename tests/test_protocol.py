import msgpack
import numpy as np
import pytest

from zdk.errors import ProtocolError
from zdk.ps.protocol import (
    PROTOCOL_VERSION, Reply, Request, all_finite, as_frames, chunk_lengths, decode_reply, decode_request, join_frames,
)

MAX = 1 << 20

SESSION = 0x5E55


def _decode(header: dict, lens=()):
    return decode_request(msgpack.packb(header), list(lens), max_frame_bytes=MAX)


def test_request_round_trip_keeps_every_field():
    req = Request(op="commit", rid=2**64 - 1, shard=3, worker=7, session=SESSION, base=2**40, dtype="<f4", lens=(8, 4), gen=99,
                  attempt=2, args={"x": 1})
    assert decode_request(req.encode(), [8, 4], max_frame_bytes=MAX) == req


def test_pull_request_with_wait_round_trips():
    req = Request(op="pull", rid=1, shard=0, worker=1, session=SESSION, min_version=5, wait=2.5)
    assert decode_request(req.encode(), [], max_frame_bytes=MAX) == req


def test_reply_round_trip():
    reply = Reply(op="pull", rid=5, shard=1, gen=2**63, version=10, fields={"lens": [4], "dtype": "<f4"})
    assert decode_reply(reply.encode()) == reply
    assert decode_reply(reply.encode()).lens == (4,)


def test_header_is_plain_msgpack_with_64_bit_sizes():
    raw = Request(op="commit", base=0, rid=1, shard=0, dtype="<f4", lens=(2**33,)).encode()
    header = msgpack.unpackb(raw)
    assert header["v"] == PROTOCOL_VERSION and header["lens"] == [2**33]


@pytest.mark.parametrize("header,lens,code,text", [
    ({"v": PROTOCOL_VERSION, "op": "pull", "rid": 1}, [], "bad_header", "`shard` is required"),
    ({"v": 1, "op": "pull", "rid": 1, "shard": 0}, [], "bad_version", "this shard speaks zdk wire protocol 3, the client v=1"),
    ({"v": PROTOCOL_VERSION, "op": "steal", "rid": 1, "shard": 0}, [], "unknown_op", "op='steal'"),
    ({"v": PROTOCOL_VERSION, "op": "pull", "rid": -1, "shard": 0}, [], "bad_header", "rid=-1"),
    ({"v": PROTOCOL_VERSION, "op": "pull", "rid": True, "shard": 0}, [], "bad_header", "rid=True"),
    ({"v": PROTOCOL_VERSION, "op": "pull", "rid": 1, "shard": 0, "evil": 1}, [], "bad_header", "unknown header fields"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0, "dtype": "<f4", "lens": [8, 8]}, [8], "truncated", "announces 2"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0, "dtype": "<f4", "lens": [8]}, [8, 8], "extra_frame", "announces 1"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0, "dtype": "<f4", "lens": [8]}, [12], "bad_length", "says 8 bytes"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0, "dtype": "<f8", "lens": [8]}, [8], "bad_dtype", "'<f8'"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0, "dtype": ">f4", "lens": [8]}, [8], "bad_dtype", "'>f4'"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0, "dtype": "<f4", "lens": [6]}, [6], "bad_length", "multiple of 4"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0, "dtype": "<f4", "lens": [MAX + 4]}, [MAX + 4], "frame_too_large", "must be ≤"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0}, [], "truncated", "needs data frames"),
    ({"v": PROTOCOL_VERSION, "op": "pull", "rid": 1, "shard": 0, "dtype": "<f4", "lens": [4]}, [4], "extra_frame", "takes no data"),
    ({"v": PROTOCOL_VERSION, "op": "pull", "rid": 1, "shard": 0, "wait": -1}, [], "bad_header", "wait=-1"),
    ({"v": PROTOCOL_VERSION, "op": "stats", "rid": 1, "shard": 0, "args": {"role": "admin"}}, [], "bad_header",
     "`args.role` must be 'worker' or 'observer'. Received: role='admin'"),
    ({"v": PROTOCOL_VERSION, "op": "commit", "rid": 1, "shard": 0, "base": 0, "dtype": "<f4", "lens": [4],
      "args": {"role": "observer"}}, [4], "bad_header", "`commit` is a registered worker's op"),
    ({"v": PROTOCOL_VERSION, "op": "bye", "rid": 1, "shard": 0, "args": {"role": "observer"}}, [], "bad_header",
     "`bye` is a registered worker's op"),
])
def test_malformed_request_headers_name_the_problem(header, lens, code, text):
    with pytest.raises(ProtocolError) as info:
        _decode(header, lens)
    assert info.value.code == code
    assert text in info.value.message


@pytest.mark.parametrize("raw", [b"\xc1", b"", msgpack.packb([1, 2]), msgpack.packb({1: 2}), b"\x00" * 70_000])
def test_garbage_headers_are_protocol_errors(raw):
    with pytest.raises(ProtocolError) as info:
        decode_request(raw, [], max_frame_bytes=MAX)
    assert info.value.code in ("bad_header", "bad_version")


def test_chunking_covers_the_array_exactly():
    assert chunk_lengths(10, 4) == [4, 4, 2]
    assert chunk_lengths(0, 4) == [0]
    data = np.arange(1000, dtype=np.float32)
    frames = as_frames(data, chunk_bytes=256)
    assert [f.nbytes for f in frames] == chunk_lengths(4000, 256)
    np.testing.assert_array_equal(join_frames([bytes(f) for f in frames]), data)


def test_as_frames_is_zero_copy():
    data = np.zeros(64, dtype=np.float32)
    frames = as_frames(data, chunk_bytes=64)
    data[0] = 5.0
    assert np.frombuffer(frames[0], dtype="<f4")[0] == 5.0


@pytest.mark.parametrize("bad", [np.zeros(4, dtype=np.float64), np.zeros((4, 4), dtype=np.float32, order="F"),
                                 np.zeros(4, dtype=">f4")])
def test_as_frames_refuses_what_would_be_scrambled(bad):
    with pytest.raises(ProtocolError, match="C-contiguous <f4"):
        as_frames(bad)


def test_all_finite_detects_nan_inf_and_clears_overflow():
    x = np.ones(1 << 19, dtype=np.float32)
    assert all_finite(x)
    x[300_000] = np.nan
    assert not all_finite(x)
    x[300_000] = -np.inf
    assert not all_finite(x)
    big = np.full(1000, 3e38, dtype=np.float32)  # the sum overflows; the values are finite
    assert all_finite(big)


def test_add_checked_adds_frame_by_frame_and_finds_the_first_non_finite_result():
    from zdk.ps.protocol import add_checked

    rng = np.random.default_rng(0)
    base = rng.standard_normal(10_000).astype(np.float32)
    delta = rng.standard_normal(10_000).astype(np.float32)
    frames = [memoryview(delta[:3_000]).cast("B"), memoryview(delta[3_000:]).cast("B")]
    out = np.empty_like(base)
    kept = base.copy()
    assert add_checked(base, frames, out, block=1_024) is None
    np.testing.assert_array_equal(out, base + delta)
    np.testing.assert_array_equal(base, kept)
    for index, value in ((7_777, np.nan), (2_999, np.inf), (3_000, -np.inf)):
        bad = delta.copy()
        bad[index] = value
        assert add_checked(base, [bad[:3_000], bad[3_000:]], out, block=1_024) == index
    huge = np.full(10, 3e38, np.float32)  # finite, but the sum overflows float32
    assert add_checked(huge, [huge], np.empty_like(huge)) == 0
