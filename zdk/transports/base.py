"""The transport interface, after ps-lite's "van": bind or connect, send, receive, close.

A transport moves a header frame plus data frames; it knows nothing of their meaning. A
server binds one :class:`ServerTransport`; a client gets one :class:`ClientTransport` per
server from a :class:`ClientConnector`, which also waits on several of them at once.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

Buffer = Any  # bytes, memoryview, numpy array or zmq.Frame


class ServerTransport(Protocol):
    """The server end: many peers, each reply addressed by the peer's routing id."""

    def bind(self, endpoint: str) -> str:
        """Binds and returns the actual endpoint (a port of 0 or ``*`` becomes the chosen one)."""

    async def recv(self) -> tuple[bytes, Buffer | None, list[Buffer]]:
        """The next message as (peer, header or None when absent, data frames)."""

    async def send(self, peer: bytes, header: bytes, frames: Sequence[Buffer] = (), *, track: bool = False) -> Any:
        """Sends a reply to ``peer``; drops it with a log line when the peer is gone (then None).

        With ``track``, returns an object whose ``done`` turns true once the transport no
        longer reads the frames (they are sent zero-copy); without it, None."""

    async def watch(self) -> None:
        """Logs connection events no reply can carry (cut-off peers, failed handshakes); runs until cancelled."""

    def close(self) -> None: ...


class ClientTransport(Protocol):
    """The client end: one connection to one server."""

    endpoint: str

    def connect(self, endpoint: str) -> None: ...

    def send(self, header: bytes, frames: Sequence[Buffer] = ()) -> None: ...

    def poll(self, timeout: float) -> bool:
        """Whether a message is ready within ``timeout`` seconds."""

    def recv_header(self) -> tuple[bytes, bool]:
        """The next message's first frame, and whether more frames follow."""

    def recv_into(self, buffer: memoryview) -> tuple[int, bool]:
        """Receives the next frame into ``buffer``: (its full size, whether more follow)."""

    def discard_rest(self) -> int:
        """Drops the remaining frames of the current message; returns how many."""

    def close(self) -> None: ...


class ClientConnector(Protocol):
    """Opens a client's links, and waits on several of them at once."""

    def connect(self, endpoint: str) -> ClientTransport:
        """A new link to ``endpoint``, sharing nothing with earlier ones (a resend opens a fresh
        link, so whatever an old one still had queued is dropped with it)."""

    def wait(self, links: Sequence[ClientTransport], timeout: float) -> list[int]:
        """The indices in ``links`` of the links with a message ready, waiting up to ``timeout``
        seconds for the first; ``[]`` when none is ready by then. ``links`` come from
        :meth:`connect` of this connector."""
