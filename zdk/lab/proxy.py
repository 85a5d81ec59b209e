"""A ZeroMQ proxy that drops and delays messages: the lab's lossy link, and the tests' too.

Clients connect their DEALERs to the proxy's ROUTER; for each client connection the proxy
opens its own DEALER to the shard, so replies find their way back. Each message, in each
direction, is dropped with probability ``drop`` or held for ``delay`` seconds with
probability ``late``. It runs on a thread until stopped, and only on loopback.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

import numpy as np
import zmq

from zdk.errors import ConfigError


class LossyProxy:
    """A lossy link in front of one shard endpoint; a context manager that runs it on a thread.

    Each message, in each direction, is dropped with probability p_drop, else held for
    ``delay`` seconds with probability p_late, else forwarded at once.

    Args:
        target: the shard's endpoint.
        drop: p_drop, in [0, 1).
        late: p_late, in [0, 1 − p_drop].
        delay: seconds a late message is held (≥ 0).
        seed: seeds the proxy's own random numbers, so a run drops the same rolls.
    """

    def __init__(self, target: str, *, drop: float, late: float = 0.0, delay: float = 0.05, seed: int = 0) -> None:
        if not 0 <= drop < 1:
            raise ConfigError(f"`drop` must be in [0, 1). Received: drop={drop!r}", field="drop")
        if not 0 <= late <= 1 - drop:
            raise ConfigError(f"`late` must be in [0, 1 − drop]. Received: late={late!r}, drop={drop!r}", field="late")
        if not delay >= 0:
            raise ConfigError(f"`delay` must be ≥ 0 seconds. Received: delay={delay!r}", field="delay")
        self.target = target
        self.drop, self.late, self.delay = drop, late, delay
        self._rng = np.random.default_rng(seed)
        self._context = zmq.Context()
        self._front = self._context.socket(zmq.ROUTER)
        self._front.setsockopt(zmq.LINGER, 0)
        port = self._front.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._backs: dict[bytes, zmq.Socket] = {}
        self._owner: dict[zmq.Socket, bytes] = {}
        self._held: list[tuple[float, int, Any, list[bytes]]] = []
        self._order = itertools.count()
        self._stop = threading.Event()
        self.counts = {"forwarded": 0, "dropped": 0, "delayed": 0}
        self._thread = threading.Thread(target=self._run, name="lossy-proxy", daemon=True)

    def __enter__(self) -> "LossyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in [self._front, *self._backs.values()]:
            sock.close(linger=0)
        self._context.term()

    def _back(self, peer: bytes, poller: zmq.Poller) -> zmq.Socket:
        sock = self._backs.get(peer)
        if sock is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.target)
            self._backs[peer] = sock
            self._owner[sock] = peer
            poller.register(sock, zmq.POLLIN)
        return sock

    def _route(self, send: Any, parts: list[bytes]) -> None:
        roll = self._rng.random()
        if roll < self.drop:
            self.counts["dropped"] += 1
        elif roll < self.drop + self.late:
            self.counts["delayed"] += 1
            heapq.heappush(self._held, (time.monotonic() + self.delay, next(self._order), send, parts))
        else:
            self.counts["forwarded"] += 1
            send(parts)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(10):
                if sock is self._front:
                    peer, *parts = self._front.recv_multipart()
                    back = self._back(peer, poller)
                    self._route(back.send_multipart, parts)
                else:
                    parts = sock.recv_multipart()
                    peer = self._owner[sock]
                    self._route(lambda p, peer=peer: self._front.send_multipart([peer, *p]), parts)
            now = time.monotonic()
            while self._held and self._held[0][0] <= now:
                _, _, send, parts = heapq.heappop(self._held)
                try:
                    send(parts)
                except zmq.ZMQError:  # the client went away meanwhile: a loss like any other
                    pass
