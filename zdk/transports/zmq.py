"""ZeroMQ transports: an asyncio ROUTER for shards, and blocking DEALERs for workers that a
:class:`ZmqConnector` opens and polls together.

Both sockets bound their queues (high-water marks count messages), use linger 0 and
cap inbound frame sizes with MAXMSGSIZE; the ROUTER sets ROUTER_MANDATORY so a
reply to a vanished peer is an error we log instead of a silent drop.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Sequence

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from zdk.errors import ConfigError, DeadlineExceeded
from zdk.transports.curve import AllowedKeys, ClientKeys, CurveKeys, ServerCurve
from zdk.transports.base import Buffer, ClientTransport

logger = logging.getLogger(__name__)

HWM = 16
SEND_TIMEOUT = 30.0


class _NeverDone:
    """A tracker for a send whose fate is unknown (it timed out): its buffers stay lent."""

    done = False


_NEVER_DONE = _NeverDone()


def check_endpoint(endpoint: str) -> str:
    """Accepts ``tcp://HOST:PORT`` (PORT may be 0 or ``*``) and ``ipc://PATH``."""
    if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(f"`endpoint` must be tcp://HOST:PORT or ipc://PATH. Received: endpoint={endpoint!r}",
                          field="endpoint")
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[6:].rpartition(":")
        if not sep or not host or not (port == "*" or (port.isdigit() and int(port) < 65536)):
            raise ConfigError(f"`endpoint` must be tcp://HOST:PORT. Received: endpoint={endpoint!r}", field="endpoint")
    return endpoint


def _tune(sock: zmq.Socket, max_message_bytes: int) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)


class ZmqRouterTransport:
    """Asyncio ROUTER socket for one shard.

    Args:
        max_message_bytes: frames larger than this make ZeroMQ drop the peer's connection.
        context: a ``zmq.asyncio.Context``; a private one is made (and closed) when omitted.
        curve: require CURVE with this key pair, admitting only its client keys.
    """

    def __init__(self, *, max_message_bytes: int, context: zmq.asyncio.Context | None = None,
                 curve: ServerCurve | None = None) -> None:
        self._own_context = context is None
        self._context = context or zmq.asyncio.Context()
        self._auth: AsyncioAuthenticator | None = None
        if curve is not None:
            # The authenticator must run before the socket binds, or early peers skip it.
            self._auth = AsyncioAuthenticator(self._context)
            self._auth.start()
            self._auth.configure_curve_callback(domain="*", credentials_provider=AllowedKeys(curve.allowed_clients))
        self._socket = self._context.socket(zmq.ROUTER)
        _tune(self._socket, max_message_bytes)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if curve is not None:
            self._socket.curve_secretkey = curve.secret.encode()
            self._socket.curve_publickey = curve.public.encode()
            self._socket.curve_server = True
        self.endpoint: str | None = None

    def bind(self, endpoint: str) -> str:
        endpoint = check_endpoint(endpoint)
        if endpoint.startswith("tcp://") and endpoint.endswith((":0", ":*")):
            endpoint = endpoint.rsplit(":", 1)[0] + ":*"
        self._socket.bind(endpoint)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    async def recv(self) -> tuple[bytes, Buffer | None, list[Buffer]]:
        parts = await self._socket.recv_multipart(copy=False)
        peer = parts[0].bytes
        if len(parts) < 2:
            return peer, None, []
        return peer, parts[1], parts[2:]

    async def send(self, peer: bytes, header: bytes, frames: Sequence[Buffer] = (), *, track: bool = False) -> Any:
        try:
            return await asyncio.wait_for(
                self._socket.send_multipart([peer, header, *frames], copy=False, track=track), SEND_TIMEOUT)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            logger.warning("%s: reply to peer %s dropped: it disconnected", self.endpoint, peer.hex()[:10])
        except asyncio.TimeoutError:
            logger.warning("%s: reply to peer %s dropped: its queue stayed full for %.0f s",
                           self.endpoint, peer.hex()[:10], SEND_TIMEOUT)
            return _NEVER_DONE
        return None

    async def watch(self) -> None:
        """Logs connections that end without a reply being possible: peers cut off by ZeroMQ
        (e.g. for a frame over MAXMSGSIZE) and failed CURVE handshakes. Runs until cancelled."""
        events = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        monitor = self._socket.get_monitor_socket(events)
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                kind = event["event"]
                if kind == zmq.EVENT_ACCEPTED:
                    logger.debug("%s: connection accepted", self.endpoint)
                elif kind == zmq.EVENT_DISCONNECTED:
                    logger.info("%s: a peer disconnected (it left, or ZeroMQ cut it off, e.g. for a frame "
                                "over MAXMSGSIZE)", self.endpoint)
                else:
                    logger.warning("%s: a peer failed the handshake (%s): wrong or missing CURVE keys?",
                                   self.endpoint, zmq.Event(kind).name)
        finally:
            self._socket.disable_monitor()
            monitor.close(linger=0)

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._context.term()


class ZmqDealerTransport:
    """Blocking DEALER socket from one worker to one shard.

    Args:
        endpoint: the shard's endpoint.
        max_message_bytes: frames larger than this are refused by ZeroMQ.
        context: a ``zmq.Context``; the process-wide one when omitted.
        curve: talk CURVE with these keys (the shards must require it).
    """

    def __init__(self, endpoint: str, *, max_message_bytes: int, context: zmq.Context | None = None,
                 curve: CurveKeys | ClientKeys | None = None) -> None:
        self.endpoint = check_endpoint(endpoint)
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        _tune(self._socket, max_message_bytes)
        if curve is not None:
            self._socket.curve_secretkey = curve.client_secret.encode()
            self._socket.curve_publickey = curve.client_public.encode()
            self._socket.curve_serverkey = curve.server_public.encode()
        self.connect(endpoint)

    @property
    def socket(self) -> zmq.Socket:
        return self._socket

    def connect(self, endpoint: str) -> None:
        self._socket.connect(endpoint)

    def send(self, header: bytes, frames: Sequence[Buffer] = ()) -> None:
        try:
            self._socket.send_multipart([header, *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            raise DeadlineExceeded(
                f"{self.endpoint}: {HWM} requests are already queued for this shard; it is not reading"
            ) from None

    def poll(self, timeout: float) -> bool:
        return bool(self._socket.poll(max(0, int(timeout * 1000)), zmq.POLLIN))

    def recv_header(self) -> tuple[bytes, bool]:
        data = self._socket.recv(copy=True)
        return data, bool(self._socket.getsockopt(zmq.RCVMORE))

    def recv_into(self, buffer: memoryview) -> tuple[int, bool]:
        n = self._socket.recv_into(buffer)
        return n, bool(self._socket.getsockopt(zmq.RCVMORE))

    def discard_rest(self) -> int:
        count = 0
        while self._socket.getsockopt(zmq.RCVMORE):
            self._socket.recv(copy=False)
            count += 1
        return count

    def close(self) -> None:
        self._socket.close(linger=0)


class ZmqConnector:
    """Opens :class:`ZmqDealerTransport` links and waits on several with one ``zmq.Poller``.

    Args:
        max_message_bytes: frames larger than this are refused by ZeroMQ.
        context: a ``zmq.Context``; the process-wide one when omitted.
        curve: talk CURVE with these keys (the shards must require it).
    """

    def __init__(self, *, max_message_bytes: int, context: zmq.Context | None = None,
                 curve: CurveKeys | ClientKeys | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self._context = context
        self._curve = curve

    def connect(self, endpoint: str) -> ZmqDealerTransport:
        return ZmqDealerTransport(endpoint, max_message_bytes=self.max_message_bytes, context=self._context,
                                  curve=self._curve)

    def wait(self, links: Sequence[ClientTransport], timeout: float) -> list[int]:
        poller = zmq.Poller()
        index: dict[zmq.Socket, int] = {}
        for i, link in enumerate(links):
            if not isinstance(link, ZmqDealerTransport):
                raise TypeError(f"ZmqConnector.wait takes the links it connected. Received: {link!r}")
            poller.register(link.socket, zmq.POLLIN)
            index[link.socket] = i
        # Rounded up, so a wait of a fraction of a millisecond does not become a busy poll.
        ready = poller.poll(max(0, math.ceil(timeout * 1000)))
        return sorted(index[sock] for sock, _ in ready)
