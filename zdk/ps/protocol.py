"""The zdk wire protocol: one msgpack header frame, then raw array frames.

No pickle, marshal or eval: a header is a msgpack map of ints, floats, strings,
lists and maps, and array data is raw little-endian C-ordered bytes whose dtype
and byte lengths the header states. ``docs/protocol.md`` is the specification;
this module is its reference implementation and knows no event loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

from zdk.errors import ConfigError, ProtocolError

#: Version 2 added the `report` and `control` ops, `args.epochs_from` of `stats`, and the
#: `control` and `control_version` fields of replies. Version 3 added compressed commits: the
#: `codec` and `arrays` fields of a `commit`.
PROTOCOL_VERSION = 3
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1

#: Worker ids of the clients that only observe: they say `hello` with ``args.role = "observer"``,
#: never register and never commit. Training workers number from 0 (their Spark partition id);
#: these come from the top of the u32 range so a shard's log tells who asked.
OBSERVER_TOOL = U32_MAX  # `zdk ps status|stop|checkpoint`, and `start_shards` setting the initial center
OBSERVER_PROGRESS = U32_MAX - 1  # the driver's progress poller (`stats` about twice a second)
OBSERVER_DRIVER = U32_MAX - 2  # the driver's PS session: probe, init, resume point, control, final pull

#: Request ops. Each has a reply with the same ``op``, or an ``error`` reply.
OPS = ("hello", "pull", "commit", "stats", "checkpoint", "shutdown", "init", "bye", "report", "control", "admit")
#: Ops that must carry a worker id and its client session (a `pull` as observer need not).
WORKER_OPS = frozenset({"pull", "commit", "bye", "report", "admit"})
#: Ops a client may send with ``args.role = "observer"`` instead of as a registered worker.
OBSERVABLE_OPS = frozenset({"hello", "pull"})
#: Ops only an observer sends: the driver's decisions are not a worker's to make.
OBSERVER_OPS = frozenset({"control"})
#: Ops whose replies carry ``control`` and ``control_version`` once a control was set: the
#: requests a training worker makes anyway, so the driver's decisions reach it without polling.
CONTROL_REPLY_OPS = frozenset({"hello", "pull", "commit", "report"})
ROLES = ("worker", "observer")
#: Ops whose request carries array frames.
DATA_OPS = frozenset({"commit", "init"})
ERROR = "error"
WIRE_DTYPE = "<f4"
#: Dtypes the arrays of an encoded commit may have (``zdk.algorithms.codecs.WIRE_DTYPES``).
CODEC_DTYPES = ("<f4", "<f2", "<u2", "|i1", "|u1", "<u4", "<i4")
MAX_CODEC_ARRAYS = 16

#: A client asks each shard to `admit` a commit whose slice for some shard is at least this
#: many bytes before sending it, so a shard receives large commits one at a time instead of
#: holding one queued slice per worker in ZeroMQ.
ADMIT_BYTES = 16 << 20
#: Seconds an `admit` waits for its turn on a shard; then it is answered anyway, over the budget.
ADMIT_WAIT = 10.0

DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_MAX_FRAME_BYTES = 64 << 20
MAX_HEADER_BYTES = 64 << 10
#: Replies come from the shards a client chose to trust, and a `stats` reply listing epochs is larger.
MAX_REPLY_HEADER_BYTES = 16 << 20
MAX_WAIT_SECONDS = 3600.0
#: Keys of a worker's number maps (`args.report`, `args.epoch_end`), and the length of a key.
MAX_REPORT_KEYS = 16
MAX_NAME_CHARS = 128
_SAME_ZDK = "run the same zdk version on the driver, the workers and the shards"

# Optional request fields: name -> (type check, description for errors).
_REQUEST_KEYS = frozenset(
    {"v", "op", "rid", "shard", "worker", "session", "base", "dtype", "lens", "gen", "min_version", "wait", "attempt",
     "args", "codec", "arrays"}
)


@dataclass(frozen=True)
class Request:
    """A decoded, validated request header.

    Args:
        op: one of :data:`OPS`.
        rid: request id, u64, unique within the sender's client session; replies echo it.
        shard: the shard the sender believes it talks to.
        worker: the sender's worker id (u32); required for `commit`, `bye`, `report` and a worker's `hello`
            and `pull`.
        session: the sender's client session (u64, random per client): commits are applied once
            per (worker, session, rid), and a new session at `hello` replaces the old registration.
        base: the shard version the sender's data is based on (u64); required for `commit`.
        dtype: dtype of the data frames (``"<f4"``), ``None`` without frames.
        lens: byte length of each data frame.
        gen: shard generation seen at ``hello``; a mismatch means the shard restarted.
        min_version: ``pull`` only: answer once the shard version reaches it.
        wait: ``pull`` only: seconds to wait for ``min_version`` before an error.
        attempt: the sender's Spark task attempt number.
        args: op-specific extras (a msgpack map with string keys).
        codec: `commit` only: the registered codec its payload is encoded with (then ``dtype`` is
            None); None: raw ``"<f4"``.
        arrays: with ``codec``: each encoded array's dtype and number of data frames, in frame order.
    """

    op: str
    rid: int
    shard: int
    worker: int | None = None
    session: int | None = None
    base: int | None = None
    dtype: str | None = None
    lens: tuple[int, ...] = ()
    gen: int | None = None
    min_version: int | None = None
    wait: float | None = None
    attempt: int = 0
    args: Mapping[str, Any] = field(default_factory=dict)
    codec: str | None = None
    arrays: tuple[tuple[str, int], ...] = ()

    def encode(self) -> bytes:
        header: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": self.op, "rid": self.rid, "shard": self.shard}
        if self.attempt:
            header["attempt"] = self.attempt
        for key in ("worker", "session", "base", "dtype", "gen", "min_version", "wait"):
            value = getattr(self, key)
            if value is not None:
                header[key] = value
        if self.lens:
            header["lens"] = list(self.lens)
        if self.args:
            header["args"] = dict(self.args)
        if self.codec is not None:
            header["codec"] = self.codec
            header["arrays"] = [[dtype, frames] for dtype, frames in self.arrays]
        return msgpack.packb(header, use_bin_type=True)


@dataclass(frozen=True)
class Reply:
    """A decoded reply header.

    Args:
        op: the request's op, or ``"error"``.
        rid: the request id it answers.
        shard: the answering shard's id.
        gen: the answering shard's generation.
        version: the shard's version after handling the request.
        fields: every other header field (``lens``, ``dtype``, ``code``, ``message``, ...).
        protocol: the header's ``v``: :data:`PROTOCOL_VERSION`, except in the error reply to a
            request of another version, which speaks the requester's so that an older client
            can read why it was refused (the layout of an `error` reply is the same in every version).
    """

    op: str
    rid: int
    shard: int
    gen: int
    version: int
    fields: Mapping[str, Any] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        header = dict(self.fields)
        header.update(v=self.protocol, op=self.op, rid=self.rid, shard=self.shard, gen=self.gen, version=self.version)
        return msgpack.packb(header, use_bin_type=True)

    @property
    def lens(self) -> tuple[int, ...]:
        return tuple(self.fields.get("lens", ()))


def _unpack(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    limit = MAX_HEADER_BYTES if what == "request" else MAX_REPLY_HEADER_BYTES
    if len(raw) > limit:
        raise ProtocolError("bad_header", f"{what} header must be ≤ {limit} bytes. Received: {len(raw)} bytes")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError("bad_header", f"{what} header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_header", f"{what} header must be a msgpack map. Received: {type(header).__name__}")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        if what == "request":
            message = (f"`v` must be {PROTOCOL_VERSION}: this shard speaks zdk wire protocol {PROTOCOL_VERSION}, "
                       f"the client v={version!r}: {_SAME_ZDK}")
        else:
            message = (f"`v` must be {PROTOCOL_VERSION}: this client speaks zdk wire protocol {PROTOCOL_VERSION}, "
                       f"the shard replied with v={version!r}: {_SAME_ZDK}")
            if header.get("op") == ERROR and isinstance(header.get("message"), str):
                message += f" (the shard's error: {header['message'][:300]})"
        raise ProtocolError("bad_version", message)
    return header


def _int_field(header: Mapping[str, Any], key: str, *, maximum: int, default: int | None = None) -> int:
    value = header.get(key, default)
    if value is None:
        raise ProtocolError("bad_header", f"`{key}` is required. Received: no `{key}`")
    return _check_int(key, value, maximum)


def _optional_int(header: Mapping[str, Any], key: str, *, maximum: int) -> int | None:
    value = header.get(key)
    return None if value is None else _check_int(key, value, maximum)


def _check_int(key: str, value: Any, maximum: int) -> int:
    if not _is_int(value, maximum):
        raise ProtocolError("bad_header", f"`{key}` must be an int in [0, {maximum}]. Received: {key}={value!r}")
    return value


def decode_request(raw: bytes | memoryview, frame_lengths: Sequence[int], *, max_frame_bytes: int) -> Request:
    """Parses and validates a request header against the data frames that came with it.

    Args:
        raw: the header frame.
        frame_lengths: byte length of every data frame received after the header.
        max_frame_bytes: the largest data frame accepted.

    Raises:
        ProtocolError: naming the field and the value that is wrong.
    """
    header = _unpack(raw, "request")
    unknown = set(header) - _REQUEST_KEYS
    if unknown:
        raise ProtocolError("bad_header", f"unknown header fields {sorted(map(str, unknown))}; valid: {sorted(_REQUEST_KEYS)}")
    rid = _int_field(header, "rid", maximum=U64_MAX)
    op = header.get("op")
    if op not in OPS:
        raise ProtocolError("unknown_op", f"`op` must be one of {list(OPS)}. Received: op={op!r}")
    shard = _int_field(header, "shard", maximum=U32_MAX)
    worker = _optional_int(header, "worker", maximum=U32_MAX)
    session = _optional_int(header, "session", maximum=U64_MAX)
    base = _optional_int(header, "base", maximum=U64_MAX)
    attempt = _int_field(header, "attempt", maximum=U32_MAX, default=0)
    gen = _optional_int(header, "gen", maximum=U64_MAX)
    min_version = _optional_int(header, "min_version", maximum=U64_MAX)
    wait = header.get("wait")
    if wait is not None and (
        isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT_SECONDS
    ):
        raise ProtocolError("bad_header", f"`wait` must be seconds in [0, {MAX_WAIT_SECONDS}]. Received: wait={wait!r}")
    args = header.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("bad_header", f"`args` must be a map. Received: args={args!r}")

    lens = header.get("lens", [])
    if not isinstance(lens, list) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in lens):
        raise ProtocolError("bad_header", f"`lens` must be a list of non-negative ints. Received: lens={lens!r}")
    if len(lens) != len(frame_lengths):
        kind = "truncated" if len(frame_lengths) < len(lens) else "extra_frame"
        raise ProtocolError(
            kind, f"`lens` announces {len(lens)} data frames. Received: {len(frame_lengths)} data frames"
        )
    for i, (said, got) in enumerate(zip(lens, frame_lengths)):
        if said != got:
            raise ProtocolError("bad_length", f"`lens[{i}]` says {said} bytes. Received: frame {i} of {got} bytes")
        if got > max_frame_bytes:
            raise ProtocolError(
                "frame_too_large", f"data frame {i} must be ≤ {max_frame_bytes} bytes. Received: {got} bytes"
            )
    dtype = header.get("dtype")
    codec, arrays = header.get("codec"), header.get("arrays")
    if codec is not None or arrays is not None:
        arrays = _check_encoding(op, codec, arrays, dtype, lens)
    elif lens or dtype is not None:
        if dtype != WIRE_DTYPE:
            raise ProtocolError("bad_dtype", f"`dtype` must be {WIRE_DTYPE!r}. Received: dtype={dtype!r}")
        itemsize = np.dtype(WIRE_DTYPE).itemsize
        for i, n in enumerate(lens):
            if n % itemsize:
                raise ProtocolError(
                    "bad_length", f"`lens[{i}]` must be a multiple of {itemsize} for {dtype}. Received: {n}"
                )
    if op in DATA_OPS and not lens:
        raise ProtocolError("truncated", f"`{op}` needs data frames. Received: none")
    if op not in DATA_OPS and lens:
        raise ProtocolError("extra_frame", f"`{op}` takes no data frames. Received: {len(lens)}")
    role = args.get("role", "worker")
    if role not in ROLES:
        raise ProtocolError("bad_header", f"`args.role` must be 'worker' or 'observer'. Received: role={role!r}")
    acts_as_worker = op in WORKER_OPS or op == "hello"
    if acts_as_worker and role == "observer" and op not in OBSERVABLE_OPS:
        raise ProtocolError("bad_header", f"`{op}` is a registered worker's op: `args.role` must be 'worker'. "
                            f"Received: role='observer'")
    if op in OBSERVER_OPS and role != "observer":
        raise ProtocolError("bad_header", f"`{op}` is sent as an observer: `args.role` must be 'observer'. "
                            f"Received: role={role!r}")
    if acts_as_worker and role == "worker":
        for key, value in (("worker", worker), ("session", session)):
            if value is None:
                raise ProtocolError("bad_header", f"`{key}` is required for a worker's `{op}`. Received: no `{key}`")
    if op == "commit" and base is None:
        raise ProtocolError("bad_header", "`base` is required for `commit` (the version of the worker's last pull). "
                            "Received: no `base`")
    return Request(
        op=op, rid=rid, shard=shard, worker=worker, session=session, base=base, dtype=dtype, lens=tuple(lens),
        gen=gen, min_version=min_version, wait=None if wait is None else float(wait), attempt=attempt, args=args,
        codec=codec, arrays=tuple(arrays or ()),
    )


def _check_encoding(op: str, codec: Any, arrays: Any, dtype: Any,
                    lens: Sequence[int]) -> list[tuple[str, int]]:
    """The ``arrays`` of an encoded commit, checked against its frames: each array's frames hold
    whole values of its dtype. Whether the arrays are what the codec sends is the codec's to check."""
    if op != "commit":
        raise ProtocolError("bad_header", f"`codec` is sent with `commit` only. Received: codec on `{op}`")
    if not isinstance(codec, str) or not 0 < len(codec) <= MAX_NAME_CHARS:
        raise ProtocolError("bad_header", f"`codec` must be a codec name of 1 to {MAX_NAME_CHARS} characters. "
                            f"Received: codec={_shown(codec)}")
    if dtype is not None:
        raise ProtocolError("bad_dtype", f"`dtype` must be absent with `codec` (`arrays` gives each array's). "
                            f"Received: dtype={dtype!r}")
    if (not isinstance(arrays, list) or not 0 < len(arrays) <= MAX_CODEC_ARRAYS
            or any(not isinstance(a, list) or len(a) != 2 for a in arrays)):
        raise ProtocolError("bad_header", f"`arrays` must be a list of 1 to {MAX_CODEC_ARRAYS} [dtype, frames] pairs "
                            f"with `codec`. Received: arrays={_shown(arrays)}")
    checked: list[tuple[str, int]] = []
    first = 0
    for i, (array_dtype, frames) in enumerate(arrays):
        if array_dtype not in CODEC_DTYPES:
            raise ProtocolError("bad_dtype", f"`arrays[{i}]` dtype must be one of {list(CODEC_DTYPES)}. "
                                f"Received: dtype={_shown(array_dtype)}")
        if not _is_int(frames, len(lens)) or frames < 1:
            raise ProtocolError("bad_header", f"`arrays[{i}]` frames must be an int ≥ 1. Received: frames={frames!r}")
        itemsize = np.dtype(array_dtype).itemsize
        for j in range(first, first + frames):
            if j < len(lens) and lens[j] % itemsize:
                raise ProtocolError("bad_length", f"`lens[{j}]` must be a multiple of {itemsize} for "
                                    f"{array_dtype} (`arrays[{i}]`). Received: {lens[j]}")
        first += frames
        checked.append((array_dtype, frames))
    if first != len(lens):
        raise ProtocolError("bad_header", f"`arrays` must account for every data frame ({len(lens)}). "
                            f"Received: {first} frames")
    return checked


@dataclass(frozen=True)
class Salvaged:
    """What the error reply to a request whose header failed validation can echo.

    Args:
        rid: the request's ``rid``, or 0.
        op: its ``op`` when it is one of :data:`OPS`, else ``"?"``.
        protocol: the ``v`` to answer in: the request's own when it is a u32 (an older or newer
            client then reads the error), else :data:`PROTOCOL_VERSION`.
    """

    rid: int = 0
    op: str = "?"
    protocol: int = PROTOCOL_VERSION


def salvage(raw: Any) -> Salvaged:
    """The ``rid``, ``op`` and ``v`` of a request whose header failed validation, for the error
    reply: whatever of them parses."""
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # any garbage: nothing can be salvaged
        return Salvaged()
    if not isinstance(value, dict):
        return Salvaged()
    rid, op, v = value.get("rid", 0), value.get("op"), value.get("v", PROTOCOL_VERSION)
    return Salvaged(rid=rid if _is_int(rid, U64_MAX) else 0, op=op if op in OPS else "?",
                    protocol=v if _is_int(v, U32_MAX) else PROTOCOL_VERSION)


def _is_int(value: Any, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def decode_reply(raw: bytes | memoryview) -> Reply:
    """Parses a reply header; the client checks ``rid`` and data lengths itself."""
    header = _unpack(raw, "reply")
    try:
        fields = {k: v for k, v in header.items() if k not in ("v", "op", "rid", "shard", "gen", "version")}
        return Reply(
            op=str(header["op"]), rid=int(header["rid"]), shard=int(header["shard"]),
            gen=int(header["gen"]), version=int(header["version"]), fields=fields,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError("bad_header", f"reply header lacks a valid field: {exc!r}") from None


# ------------------------------------------------------------------ op arguments


def check_report(value: Any, name: str = "args.report") -> dict[str, float]:
    """A worker's map of names to numbers: its progress (``args.report``: step, samples, loss)
    or an epoch's figures. Any float is accepted, NaN and ±inf included: the driver must see a
    diverged loss.

    Args:
        value: the map as received.
        name: the field, for the error message.

    Raises:
        ProtocolError: unless it maps ≤ :data:`MAX_REPORT_KEYS` names of 1 to
            :data:`MAX_NAME_CHARS` characters to ints or floats.
    """
    if not isinstance(value, dict) or len(value) > MAX_REPORT_KEYS or not all(
        isinstance(k, str) and 0 < len(k) <= MAX_NAME_CHARS and _is_number(v) for k, v in value.items()
    ):
        raise ProtocolError("bad_header", f"`{name}` must map ≤ {MAX_REPORT_KEYS} names (1 to {MAX_NAME_CHARS} "
                            f"characters) to numbers. Received: {_shown(value)}")
    return {k: float(v) for k, v in value.items()}


def check_epoch_end(value: Any, name: str = "args.epoch_end") -> dict[str, float]:
    """A worker's summary of the epoch it just finished: a :func:`check_report` map holding
    ``epoch`` (an int ≥ 0), ``samples`` (a finite number ≥ 0, the samples trained in it) and its
    other figures (``loss``, metric names), which may be NaN or ±inf.

    Returns:
        the summary, ``epoch`` an int and every other value a float.

    Raises:
        ProtocolError: naming the field and the value that is wrong.
    """
    summary = check_report(value, name)
    if "epoch" not in summary or "samples" not in summary:
        raise ProtocolError("bad_header", f"`{name}` must contain `epoch` and `samples`. Received: keys {sorted(summary)}")
    epoch = value["epoch"]
    if not _is_int(epoch, U32_MAX):
        raise ProtocolError("bad_header", f"`{name}.epoch` must be an int in [0, {U32_MAX}] (the epoch just "
                            f"finished). Received: epoch={epoch!r}")
    if not (math.isfinite(summary["samples"]) and summary["samples"] >= 0):
        raise ProtocolError("bad_header", f"`{name}.samples` must be a finite number ≥ 0 (the samples trained "
                            f"in the epoch). Received: samples={value['samples']!r}")
    summary["epoch"] = epoch
    return summary


def check_epochs_from(value: Any, name: str = "args.epochs_from") -> int:
    """``args.epochs_from`` of `stats`: the first epoch whose summaries the reply lists."""
    return _check_int(name, value, U32_MAX)


@dataclass(frozen=True)
class Control:
    """The driver's decisions for every worker of a job: the control state a shard keeps and
    hands out in its replies to workers.

    Args:
        stop: whether the workers should stop training.
        learning_rate: the learning rate the workers should train with from now on; None
            leaves theirs as it is.

    Raises:
        ConfigError: naming the argument and the value that is wrong.
    """

    stop: bool = False
    learning_rate: float | None = None

    def __post_init__(self) -> None:
        problem = _control_problem(self.stop, self.learning_rate, "")
        if problem is not None:
            raise ConfigError(problem[1], field=problem[0])
        if self.learning_rate is not None:
            object.__setattr__(self, "learning_rate", float(self.learning_rate))

    def to_wire(self) -> dict[str, Any]:
        """The ``control`` map of requests and replies."""
        wire: dict[str, Any] = {"stop": self.stop}
        if self.learning_rate is not None:
            wire["learning_rate"] = self.learning_rate
        return wire

    @classmethod
    def decode(cls, value: Any, name: str = "args.control") -> Control:
        """The control state carried by ``value``, a map as received.

        Raises:
            ProtocolError: naming the field and the value that is wrong.
        """
        if not isinstance(value, dict) or "stop" not in value or not set(value) <= {"stop", "learning_rate"}:
            raise ProtocolError("bad_header", f"`{name}` must be a map with `stop` (a bool) and optionally "
                                f"`learning_rate` (a finite float ≥ 0). Received: {_shown(value)}")
        problem = _control_problem(value["stop"], value.get("learning_rate"), f"{name}.")
        if problem is not None:
            raise ProtocolError("bad_header", problem[1])
        return cls(stop=value["stop"], learning_rate=value.get("learning_rate"))


def _control_problem(stop: Any, learning_rate: Any, prefix: str) -> tuple[str, str] | None:
    """The field of a control state that is wrong and why, or None."""
    if not isinstance(stop, bool):
        return "stop", f"`{prefix}stop` must be a bool. Received: stop={stop!r}"
    if learning_rate is not None and not (
        _is_number(learning_rate) and math.isfinite(learning_rate) and learning_rate >= 0
    ):
        # 0 is a rate: a schedule may freeze the model.
        return "learning_rate", (f"`{prefix}learning_rate` must be a finite float ≥ 0, or None to keep the "
                                 f"workers' own. Received: learning_rate={learning_rate!r}")
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


# ------------------------------------------------------------------ data frames


def chunk_lengths(nbytes: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[int]:
    """Byte lengths of the frames an array of ``nbytes`` is sent as: ⌈nbytes / chunk⌉ frames."""
    if nbytes == 0:
        return [0]
    count = math.ceil(nbytes / chunk_bytes)
    return [min(chunk_bytes, nbytes - i * chunk_bytes) for i in range(count)]


def as_frames(array: np.ndarray, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[memoryview]:
    """Zero-copy byte views of ``array``, cut into frames of at most ``chunk_bytes``.

    Raises:
        ProtocolError: when ``array`` is not C-contiguous little-endian float32, since
            sending an F-ordered or big-endian buffer would silently scramble it.
    """
    return array_frames(array, chunk_bytes, dtypes=(WIRE_DTYPE,))


def array_frames(array: np.ndarray, chunk_bytes: int = DEFAULT_CHUNK_BYTES, *,
                 dtypes: Sequence[str] = CODEC_DTYPES) -> list[memoryview]:
    """:func:`as_frames` for an array of any of ``dtypes`` (an encoded commit's arrays); frames
    hold whole values.

    Raises:
        ProtocolError: when ``array`` is not C-contiguous or its dtype is not one of ``dtypes``.
    """
    if array.dtype.str not in dtypes or not array.flags.c_contiguous:
        raise ProtocolError(
            "bad_dtype", f"arrays on the wire must be C-contiguous {' or '.join(dtypes)}. "
            f"Received: dtype={array.dtype.str}, c_contiguous={array.flags.c_contiguous}"
        )
    chunk = max(array.itemsize, chunk_bytes - chunk_bytes % array.itemsize)
    view = array.reshape(-1).data.cast("B")
    out, offset = [], 0
    for n in chunk_lengths(view.nbytes, chunk):
        out.append(view[offset : offset + n])
        offset += n
    return out


def split_arrays(frames: Sequence[memoryview | bytes], arrays: Sequence[tuple[str, int]]) -> list[np.ndarray]:
    """The typed arrays an encoded commit's frames carry, as ``arrays`` (dtype, frames) lays them
    out: a zero-copy view of an array sent as one frame, else one joined copy."""
    out, first = [], 0
    for dtype, count in arrays:
        parts = frames[first:first + count]
        first += count
        data = parts[0] if len(parts) == 1 else b"".join(bytes(p) for p in parts)
        out.append(np.frombuffer(data, dtype=dtype))
    return out


def join_frames(frames: Sequence[memoryview | bytes], out: np.ndarray | None = None) -> np.ndarray:
    """The float32 array carried by ``frames``: a zero-copy view for one frame, else one copy into ``out``."""
    return join_checked(frames, out)[0]


def join_checked(frames: Sequence[memoryview | bytes], out: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """:func:`join_frames`, and whether every value is finite, checked on each frame's copy while
    it is still in cache (one pass over memory instead of two)."""
    if len(frames) == 1:
        data = np.frombuffer(frames[0], dtype=WIRE_DTYPE)
        return data, all_finite(data)
    parts = [np.frombuffer(f, dtype=WIRE_DTYPE) for f in frames]
    total = sum(p.size for p in parts)
    target = np.empty(total, dtype=WIRE_DTYPE) if out is None or out.size < total else out[:total]
    finite = True
    offset = 0
    for part in parts:
        block = target[offset : offset + part.size]
        np.copyto(block, part)
        if finite:
            finite = all_finite(block)
        offset += part.size
    return target, finite


def add_checked(base: np.ndarray, frames: Sequence[memoryview | bytes], out: np.ndarray,
                block: int = 1 << 16) -> int | None:
    """out = base + Δ, with Δ the frames' float32 values in order, checking each block of the result
    for finiteness while it is still in cache (no separate pass over the frames).

    ``base`` must be finite; then a non-finite result means Δ holds NaN or ±inf there, or the sum
    overflows float32. ``out`` is written even then: pass a scratch buffer, not live state.

    Returns:
        None, or the index of the first non-finite result.
    """
    offset = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for frame in frames:
            part = np.frombuffer(frame, dtype=WIRE_DTYPE)
            for start in range(0, part.size, block):
                stop = min(start + block, part.size)
                dst = out[offset + start : offset + stop]
                np.add(base[offset + start : offset + stop], part[start:stop], out=dst)
                if not np.isfinite(dst.sum()) and not np.isfinite(dst).all():
                    return offset + start + int(np.flatnonzero(~np.isfinite(dst))[0])
            offset += part.size
    return None


def all_finite(array: np.ndarray, block: int = 1 << 18) -> bool:
    """Whether every element is finite, in cache-sized blocks: a float32 block sum is finite
    exactly when its elements are, unless it overflows, which the exact test then clears."""
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, array.size, block):
            part = array[start : start + block]
            if not np.isfinite(part.sum()) and not np.isfinite(part).all():
                return False
    return True
