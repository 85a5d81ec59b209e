"""The shard process: an asyncio loop driving a :class:`~zdk.ps.shard.ShardCore` over a ROUTER socket.

Run as ``python -m zdk.ps.server --shard K --num-shards N --size S --bind ENDPOINT``;
it prints one JSON line ``{"endpoint": ..., "pid": ..., "generation": ...}`` on
stdout when it is ready, logs to stderr, and exits on `shutdown`, SIGTERM/SIGINT,
when the process that started it dies, or after ``--idle-timeout`` seconds
without a request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Sequence

from zdk.algorithms.sources import load_sources
from zdk.ps.allocator import tune_allocator
from zdk.errors import ConfigError
from zdk.ps.protocol import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_FRAME_BYTES
from zdk.transports.curve import ServerCurve
from zdk.ps.shard import Outgoing, ShardConfig, ShardCore
from zdk.transports.base import ServerTransport
from zdk.transports.zmq import ZmqRouterTransport

logger = logging.getLogger(__name__)

WATCH_INTERVAL = 0.5


class ShardServer:
    """Drives one :class:`ShardCore`: receive, handle, send, expire parked pulls.

    Args:
        core: the shard's protocol logic and state.
        transport: a bound server transport.
        parent_pid: exit when this process is gone (our parent changed); None disables it.
        idle_timeout: exit after this many seconds without a request; None disables it.

    The shard checkpoints every ``core.config.checkpoint_every`` seconds, when that is set.
    """

    def __init__(self, core: ShardCore, transport: ServerTransport, *, parent_pid: int | None = None,
                 idle_timeout: float | None = None) -> None:
        self.core = core
        self.transport = transport
        self.parent_pid = parent_pid
        self.idle_timeout = idle_timeout
        self._stop = asyncio.Event()
        self.exit_reason = ""

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.exit_reason = reason
            self._stop.set()

    async def serve(self) -> None:
        receiver = asyncio.ensure_future(self._receive_loop())
        watcher = asyncio.ensure_future(self._watch_loop())
        monitor = asyncio.ensure_future(self.transport.watch())
        stopper = asyncio.ensure_future(self._stop.wait())
        tasks = (receiver, watcher, monitor, stopper)
        try:
            done, _ = await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if task is not stopper and error is not None:
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        logger.info("shard %d stopping: %s", self.core.config.shard, self.exit_reason)

    async def _receive_loop(self) -> None:
        while True:
            peer, header, frames = await self.transport.recv()
            if header is None:
                logger.warning("shard %d: message without a header frame from peer %s dropped",
                               self.core.config.shard, peer.hex()[:10])
                continue
            await self._send_all(self.core.handle(peer, header, frames))
            del header, frames
            if self.core.stopping:
                self.stop("shutdown requested")
                return

    async def _send_all(self, replies: list[Outgoing]) -> None:
        for out in replies:
            sent = await self.transport.send(out.peer, out.header, out.frames, track=out.lease is not None)
            if out.lease is not None:
                # The center stays frozen until ZeroMQ has let go of the zero-copy frames.
                if sent is None:
                    out.lease.release()
                else:
                    out.lease.track(sent)

    async def _watch_loop(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            delay = WATCH_INTERVAL if deadline is None else min(WATCH_INTERVAL, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(delay)
            await self._send_all(self.core.expire())
            if self.core.checkpoint_due():
                # A few ms for a large slice; it runs between requests, so the state is consistent.
                self.core.write_checkpoint()
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                self.stop(f"parent process {self.parent_pid} is gone")
            if self.idle_timeout is not None and self.core.idle_seconds > self.idle_timeout:
                self.stop(f"no request for {self.idle_timeout:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zdk.ps.server", description="Run one zdk parameter-server shard.")
    p.add_argument("--shard", type=int, default=0, help="this shard's index (default: 0)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (default: 1)")
    p.add_argument("--size", type=int, required=True, help="length of the whole flat parameter vector")
    p.add_argument("--bind", default="tcp://127.0.0.1:0", help="endpoint; port 0 picks a free one "
                   "(default: tcp://127.0.0.1:0)")
    p.add_argument("--algorithm", default="downpour", help="registered algorithm (default: downpour)")
    p.add_argument("--params", default="{}", help="algorithm parameters as a JSON object (default: {})")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint directory (default: none)")
    p.add_argument("--checkpoint-every", type=float, default=None,
                   help="write a checkpoint every this many seconds (needs --checkpoint-dir; default: never)")
    p.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                   help=f"largest data frame accepted (default: {DEFAULT_MAX_FRAME_BYTES})")
    p.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES,
                   help=f"data frame size of pull replies (default: {DEFAULT_CHUNK_BYTES})")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies (default: none)")
    p.add_argument("--idle-timeout", type=float, default=None, help="exit after this many idle seconds "
                   "(default: never)")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="module or .py file defining the algorithm; repeatable (default: none)")
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return p


def _parse_params(text: str) -> dict:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"`--params` must be a JSON object. Received: {text!r} ({exc})", field="--params") from None
    if not isinstance(params, dict):
        raise ConfigError(f"`--params` must be a JSON object. Received: {text!r}", field="--params")
    return params


async def _amain(args: argparse.Namespace) -> str:
    load_sources(args.imports)
    config = ShardConfig(
        shard=args.shard, num_shards=args.num_shards, total_size=args.size, algorithm=args.algorithm,
        params=_parse_params(args.params), checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every, max_frame_bytes=args.max_frame_bytes, chunk_bytes=args.chunk_bytes,
    )
    core = ShardCore(config)
    tune_allocator()
    # ZeroMQ itself cuts connections sending frames far over the protocol limit; between the
    # two limits the protocol answers with an error naming the frame.
    curve = ServerCurve.from_env(os.environ)
    transport = ZmqRouterTransport(max_message_bytes=2 * config.max_frame_bytes + (1 << 20), curve=curve)
    try:
        endpoint = transport.bind(args.bind)
        server = ShardServer(core, transport, parent_pid=args.parent_pid, idle_timeout=args.idle_timeout)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop, f"signal {signal.Signals(sig).name}")
        print(json.dumps({"endpoint": endpoint, "pid": os.getpid(), "shard": args.shard,
                          "generation": core.generation}), flush=True)
        logger.info("shard %d/%d serving [%d, %d) at %s (%s%s)", args.shard, args.num_shards,
                    *config.range, endpoint, core.algorithm.name, ", CURVE" if curve else "")
        await server.serve()
        if config.checkpoint_every is not None:
            core.write_checkpoint()  # a clean stop keeps everything up to the last request
        return server.exit_reason
    finally:
        transport.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s shard[{args.shard}] %(levelname)s %(message)s")
    try:
        asyncio.run(_amain(args))
    except ConfigError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
