"""Commit codecs: how a worker encodes its commit payload, and how a shard decodes it.

A codec is a pair of pure numpy functions, like an algorithm. ``encode`` turns one shard's
slice of the payload Δ (float32) into a few arrays, sent as data frames with their dtypes;
``decode`` turns those arrays back into a dense float32 slice Δ̂ before the server update,
refusing a malformed encoding with :class:`~zdk.errors.ProtocolError` code ``bad_encoding``.
The shard then checks Δ̂ finite, so a codec need not.

With ``error_feedback`` the worker keeps what the codec lost, e = Δ + e − Δ̂, and adds it to its
next payload (Seide et al. 2014; Lin et al., Deep Gradient Compression): nothing a worker
computed is dropped, only delayed.

Built-ins:

- ``fp16``: IEEE half precision, 2 bytes per value; a value beyond ±65504 is refused on the worker.
- ``bf16``: bfloat16 (float32's upper 16 bits, rounded to nearest even), 2 bytes per value, float32's range.
- ``int8``: q = round(x / s) with s = max|x| / 127 per block of 65,536 values, 1 byte per value.
- ``topk``: the k = ⌈ratio·n⌉ values of largest magnitude, as (u32 index, f32 value) pairs;
  error feedback on by default.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from zdk.algorithms.base import check
from zdk.errors import AlgorithmNotFound, ConfigError, ProtocolError

#: The dtypes a codec's arrays may have on the wire: little-endian, fixed size.
WIRE_DTYPES = ("<f4", "<f2", "<u2", "|i1", "|u1", "<u4", "<i4")
#: Values per int8 scale.
INT8_BLOCK = 1 << 16
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class CodecArgs:
    """Arguments every codec takes.

    Args:
        error_feedback: keep what the encoding lost on the worker and add it to the next commit.
    """

    error_feedback: bool = False

    def __post_init__(self) -> None:
        check(isinstance(self.error_feedback, bool), "error_feedback", self.error_feedback, "a bool")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "CodecArgs":
        """Validated arguments, naming unknown keys and the valid ones."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown codec argument(s) {unknown} for {cls.__name__}; valid: {sorted(names)}",
                              field="codec_args")
        return cls(**values)


@dataclass(frozen=True)
class TopKArgs(CodecArgs):
    """``topk`` arguments.

    Args:
        ratio: the fraction of a slice's values sent, in (0, 1]; at least one value is.
        error_feedback: on by default: without it the values not sent are lost.
    """

    ratio: float = 0.01
    error_feedback: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.ratio
        check(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r <= 1, "ratio", r, "in (0, 1]")


Encode = Callable[[np.ndarray, Any], tuple[np.ndarray, ...]]
Decode = Callable[[Sequence[np.ndarray], np.ndarray], None]


@dataclass(frozen=True)
class Codec:
    """A registered commit encoding.

    Args:
        name: the registry key, sent in the commit header's ``codec``.
        layout: the dtypes of the arrays ``encode`` returns, in order (each one of :data:`WIRE_DTYPES`).
        encode: ``(x, args) -> arrays``: one slice x (C-contiguous float32, read-only) encoded.
        decode: ``(arrays, out)``: writes every element of the dense float32 slice into ``out``
            (its size is the slice's; the shard fills it with NaN first, so an element left
            unwritten is refused); raises ``ProtocolError("bad_encoding", ...)`` naming what is
            malformed.
        args: the dataclass of its arguments (a :class:`CodecArgs` subclass).
        doc: one paragraph with the math.
    """

    name: str
    layout: tuple[str, ...]
    encode: Encode
    decode: Decode
    args: type[CodecArgs] = CodecArgs
    doc: str = ""

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and self.name != "" and self.name.strip() == self.name and len(self.name) <= 64,
              "name", self.name, "a non-empty string of ≤ 64 characters without surrounding spaces")
        check(isinstance(self.layout, tuple) and len(self.layout) >= 1 and all(d in WIRE_DTYPES for d in self.layout),
              "layout", self.layout, f"a non-empty tuple of dtypes from {list(WIRE_DTYPES)}")
        for attr in ("encode", "decode"):
            check(callable(getattr(self, attr)), attr, getattr(self, attr), "callable")
        check(isinstance(self.args, type) and issubclass(self.args, CodecArgs), "args", self.args,
              "a subclass of zdk.algorithms.codecs.CodecArgs")

    def make_args(self, values: Mapping[str, Any] | CodecArgs | None = None) -> CodecArgs:
        if isinstance(values, CodecArgs):
            check(isinstance(values, self.args), "codec_args", values, f"a {self.args.__name__}")
            return values
        return self.args.from_dict(values)


def refuse(message: str) -> None:
    """Raises the ``bad_encoding`` error a decoder reports a malformed encoding with."""
    raise ProtocolError("bad_encoding", message)


def _expect_size(array: np.ndarray, size: int, what: str) -> None:
    if array.size != size:
        refuse(f"{what} must hold {size} values for this slice. Received: {array.size}")


# ------------------------------------------------------------------ fp16


def fp16_encode(x: np.ndarray, args: CodecArgs) -> tuple[np.ndarray, ...]:
    """x → float16(x). A value beyond ±65504 would become ±inf: refused, naming it."""
    if x.size:
        peak = int(np.argmax(np.abs(x)))
        if not abs(float(x[peak])) <= FP16_MAX:
            raise ConfigError(f"`codec` fp16 cannot carry this commit: |Δ| = {abs(float(x[peak])):.4g} at index "
                              f"{peak} is beyond fp16's {FP16_MAX:g}; use codec='bf16', which has float32's range. "
                              f"Received: codec='fp16'", field="codec")
    return (x.astype("<f2"),)


def fp16_decode(arrays: Sequence[np.ndarray], out: np.ndarray) -> None:
    (values,) = arrays
    _expect_size(values, out.size, "fp16 values")
    np.copyto(out, values)


# ------------------------------------------------------------------ bf16


def bf16_encode(x: np.ndarray, args: CodecArgs) -> tuple[np.ndarray, ...]:
    """The upper 16 bits of float32 x, rounded to nearest, ties to even."""
    raw = np.ascontiguousarray(x).view("<u4")
    # Adding < 0x10000 overflows 32 bits only for NaNs with a negative sign and a full mantissa;
    # the worker checks the payload finite before encoding.
    bits = raw >> 16
    bits &= 1
    bits += 0x7FFF
    bits += raw
    bits >>= 16
    return (bits.astype("<u2"),)


def bf16_decode(arrays: Sequence[np.ndarray], out: np.ndarray) -> None:
    (values,) = arrays
    _expect_size(values, out.size, "bf16 values")
    view = out.view("<u4")
    np.copyto(view, values)
    view <<= 16


# ------------------------------------------------------------------ int8


def int8_encode(x: np.ndarray, args: CodecArgs) -> tuple[np.ndarray, ...]:
    """Per block b of :data:`INT8_BLOCK` values: s_b = max|x_b| / 127, q = round(x_b / s_b) ∈ [−127, 127]."""
    blocks = math.ceil(x.size / INT8_BLOCK)
    scales = np.zeros(blocks, "<f4")
    q = np.empty(x.size, "|i1")
    for b in range(blocks):
        part = x[b * INT8_BLOCK:(b + 1) * INT8_BLOCK]
        scale = np.float32(float(np.abs(part).max()) / 127.0)
        scales[b] = scale
        target = q[b * INT8_BLOCK:(b + 1) * INT8_BLOCK]
        if scale > 0:
            target[:] = np.clip(np.rint(part / scale), -127, 127)
        else:
            target[:] = 0
    return q, scales


def int8_decode(arrays: Sequence[np.ndarray], out: np.ndarray) -> None:
    values, scales = arrays
    _expect_size(values, out.size, "int8 values")
    _expect_size(scales, math.ceil(out.size / INT8_BLOCK), f"int8 scales (one per {INT8_BLOCK} values)")
    bad = np.flatnonzero(~(np.isfinite(scales) & (scales >= 0)))
    if bad.size:
        refuse(f"int8 scales must be finite and ≥ 0. Received: {float(scales[bad[0]])} at scale {int(bad[0])}")
    np.copyto(out, values)
    with np.errstate(over="ignore"):  # an overflow gives inf, which the shard refuses as non-finite
        for b in range(scales.size):
            out[b * INT8_BLOCK:(b + 1) * INT8_BLOCK] *= scales[b]


# ------------------------------------------------------------------ topk


def topk_count(n: int, ratio: float) -> int:
    """k = ⌈ratio·n⌉, at least 1 and at most n (0 for n = 0); rounded first, so that 0.07 · 100,
    which is 7.000000000000001 in floating point, gives 7."""
    return min(n, max(1, math.ceil(round(ratio * n, 6)))) if n else 0


def topk_encode(x: np.ndarray, args: TopKArgs) -> tuple[np.ndarray, ...]:
    """The k = ⌈ratio·n⌉ entries of largest |x|, as increasing u32 indices and their f32 values."""
    n = x.size
    k = topk_count(n, args.ratio)
    magnitude = np.abs(x)
    idx = _largest(magnitude, k)
    return idx, x[idx].astype("<f4")


def _largest(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, increasing. For a small k in a large slice, a threshold
    from an evenly strided sample keeps the candidates, and only they are partitioned: the same
    set as partitioning everything (ties aside), 7× faster on 25 M values."""
    n = magnitude.size
    if k == n:
        return np.arange(n, dtype="<u4")
    if n > 1 << 16 and k < n // 8:
        sample = magnitude[:: n // (1 << 16)]
        want = min(sample.size, math.ceil(sample.size * k / n * 1.5) + 8)
        threshold = np.partition(sample, sample.size - want)[sample.size - want]
        candidates = np.flatnonzero(magnitude >= threshold) if threshold > 0 else magnitude[:0]
        # Too few candidates (the sample misjudged the tail), or too many (ties, as zeros of a
        # sparse delta): partition everything instead.
        if k <= candidates.size <= n // 2:
            chosen = np.argpartition(magnitude[candidates], candidates.size - k)[candidates.size - k:]
            return np.sort(candidates[chosen]).astype("<u4")
    return np.sort(np.argpartition(magnitude, n - k)[n - k:]).astype("<u4")


def topk_decode(arrays: Sequence[np.ndarray], out: np.ndarray) -> None:
    indices, values = arrays
    if indices.size != values.size:
        refuse(f"topk must send as many values as indices. Received: {indices.size} indices, {values.size} values")
    if indices.size > out.size:
        refuse(f"topk may send at most {out.size} values for this slice. Received: {indices.size}")
    if indices.size:
        if int(indices[-1]) >= out.size or (indices.size > 1 and not (np.diff(indices.astype(np.int64)) > 0).all()):
            high = int(indices.max())
            if high >= out.size:
                refuse(f"topk indices must be < {out.size} (the slice size). Received: index {high}")
            refuse("topk indices must be strictly increasing (sorted, no repeats)")
    out.fill(0.0)
    out[indices] = values


# ------------------------------------------------------------------ the registry

_codecs: dict[str, Codec] = {}
_lock = threading.RLock()


def register_codec(codec: Codec) -> Codec:
    """Registers ``codec`` under its name; a plugin module calls it at import.

    Raises:
        ConfigError: when the name is taken by another codec.
    """
    if not isinstance(codec, Codec):
        raise ConfigError(f"`codec` must be a zdk.algorithms.codecs.Codec. Received: {codec!r}", field="codec")
    with _lock:
        existing = _codecs.get(codec.name)
        if existing is not None and existing is not codec:
            raise ConfigError(f"`name` must be unique. Received: name={codec.name!r}, already a codec", field="name")
        _codecs[codec.name] = codec
    return codec


def unregister_codec(name: str) -> None:
    with _lock:
        _codecs.pop(name, None)


def available_codecs() -> list[str]:
    """Every registered codec's name, plugins' included."""
    from zdk.algorithms.registry import available

    available()  # plugins register their codecs when their modules load
    with _lock:
        return sorted(_codecs)


def get_codec(codec: str | Codec) -> Codec:
    """The codec registered as ``codec`` (or ``codec`` itself).

    Raises:
        AlgorithmNotFound: naming the value and listing the registered codecs.
    """
    if isinstance(codec, Codec):
        return codec
    with _lock:
        found = _codecs.get(codec) if isinstance(codec, str) else None
    if found is not None:
        return found
    names = available_codecs()
    with _lock:
        found = _codecs.get(codec) if isinstance(codec, str) else None
    if found is None:
        raise AlgorithmNotFound(f"Could not interpret codec: {codec!r}; available: {', '.join(names)}")
    return found


for _codec in (
    Codec("fp16", ("<f2",), fp16_encode, fp16_decode, doc=fp16_encode.__doc__ or ""),
    Codec("bf16", ("<u2",), bf16_encode, bf16_decode, doc=bf16_encode.__doc__ or ""),
    Codec("int8", ("|i1", "<f4"), int8_encode, int8_decode, doc=int8_encode.__doc__ or ""),
    Codec("topk", ("<u4", "<f4"), topk_encode, topk_decode, args=TopKArgs, doc=topk_encode.__doc__ or ""),
):
    register_codec(_codec)

__all__ = ["INT8_BLOCK", "WIRE_DTYPES", "Codec", "CodecArgs", "TopKArgs", "available_codecs", "get_codec", "refuse",
           "register_codec", "unregister_codec"]
