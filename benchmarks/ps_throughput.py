"""Parameter-server throughput: zdk commit+pull against a bare ZeroMQ echo and memcpy.

For each model size it measures, in one run on this machine:
  (a) zdk commit+pull round trips: 1 shard × 1 worker, 2 shards × 2 workers (aggregate), and
      1 × 1 with CURVE encryption;
  (b) a bare pyzmq DEALER↔ROUTER echo of the same bytes (one frame, and 1 MiB frames):
      the transport's ceiling;
  (c) np.copyto of the same bytes: the memory bound.
GB/s counts the bytes that cross the wire per round trip (2 × model size; 1 × for copyto).

Run: .venv/bin/python benchmarks/ps_throughput.py [--sizes-mib 4 40 160] [--repeats 7] [--curve-frames 1 4 16]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import sys
import time

import numpy as np
import zmq

from zdk.ps.allocator import tune_allocator
from zdk.ps.client import PSClient
from zdk.ps.launcher import start_shards
from zdk.transports.curve import CurveKeys
from zdk.ps.protocol import DEFAULT_CHUNK_BYTES


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: connections, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _echo_server(port_queue, chunked: bool) -> None:
    tune_allocator()  # the same allocator settings zdk uses, so the ceiling is a fair one
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port_queue.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        parts = sock.recv_multipart(copy=False)
        if len(parts) == 2 and parts[1].bytes == b"stop":
            break
        sock.send_multipart(parts, copy=False)
    sock.close()
    ctx.term()


def bare_echo(nbytes: int, repeats: int, chunked: bool) -> float:
    spawn = mp.get_context("spawn")
    q = spawn.Queue()
    proc = spawn.Process(target=_echo_server, args=(q, chunked), daemon=True)
    proc.start()
    port = q.get(timeout=30)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    payload = np.ones(nbytes // 4, dtype=np.float32)
    out = np.empty_like(payload)
    view, out_view = memoryview(payload).cast("B"), memoryview(out).cast("B")
    step = DEFAULT_CHUNK_BYTES if chunked else nbytes
    frames = [view[i:i + step] for i in range(0, nbytes, step)]

    def once() -> None:
        sock.send_multipart(frames, copy=False)
        offset = 0
        for f in frames:
            offset += sock.recv_into(out_view[offset:offset + len(f)])

    try:
        return _median_seconds(once, repeats)
    finally:
        sock.send(b"stop")
        proc.join(10)
        sock.close()


def _zdk_worker(endpoints, worker_id, size, repeats, barrier, result_queue) -> None:
    with PSClient(endpoints, worker_id=worker_id, timeout=120) as client:
        client.hello()
        delta = np.full(size, 1e-6, dtype=np.float32)
        center = np.empty(size, dtype=np.float32)
        client.commit(delta)
        client.pull(center)
        barrier.wait()
        t0 = time.perf_counter()
        for _ in range(repeats):
            client.commit(delta)
            client.pull(center)
        result_queue.put(time.perf_counter() - t0)


def zdk_roundtrip(nbytes: int, repeats: int, shards: int, workers: int, curve: bool = False,
                  chunk: int = DEFAULT_CHUNK_BYTES) -> float:
    """Seconds per commit+pull round, all workers running at once (aggregate)."""
    size = nbytes // 4
    keys = CurveKeys.generate() if curve else None
    with start_shards(num_shards=shards, total_size=size, algorithm="downpour", curve=keys, chunk_bytes=chunk,
                      max_frame_bytes=max(chunk, DEFAULT_CHUNK_BYTES)) as group:
        if workers == 1:
            with PSClient(group.endpoints, worker_id=0, timeout=120, curve=keys, chunk_bytes=chunk) as client:
                client.hello()
                delta = np.full(size, 1e-6, dtype=np.float32)
                center = np.empty(size, dtype=np.float32)
                return _median_seconds(lambda: (client.commit(delta), client.pull(center)), repeats)
        spawn = mp.get_context("spawn")
        barrier, results = spawn.Barrier(workers + 1), spawn.Queue()
        procs = [spawn.Process(target=_zdk_worker, args=(group.endpoints, w, size, repeats, barrier, results))
                 for w in range(workers)]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)
        t0 = time.perf_counter()
        for _ in procs:
            results.get(timeout=600)
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(30)
        return wall / (repeats * workers)


def copyto(nbytes: int, repeats: int) -> float:
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return _median_seconds(lambda: np.copyto(dst, src), repeats)


def main() -> int:
    tune_allocator()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[4, 40, 160], help="model sizes (default: 4 40 160)")
    parser.add_argument("--repeats", type=int, default=7, help="timed round trips per case (default: 7)")
    parser.add_argument("--grid", nargs="*", default=[], metavar="SHARDSxWORKERS",
                        help="also print aggregate GB/s for these shard × worker counts, e.g. 1x1 4x4 8x16 on a "
                        "bigger machine (default: none)")
    parser.add_argument("--curve-frames", type=int, nargs="*", default=[], metavar="MIB",
                        help="also print 1×1 plaintext and CURVE GB/s with these frame sizes, e.g. 1 4 16 "
                        "(default: none)")
    args = parser.parse_args()
    try:
        grid = [tuple(int(v) for v in cell.lower().split("x")) for cell in args.grid]
    except ValueError:
        parser.error(f"--grid takes SHARDSxWORKERS cells such as 2x4. Received: {args.grid}")

    print(f"# zdk PS throughput — {time.strftime('%Y-%m-%d')} — {platform.node()}, {mp.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}")
    print()
    header = ("| MiB | zdk 1×1 GB/s | zdk 2×2 GB/s | zdk 1×1 CURVE GB/s | echo 1 frame GB/s | echo 1 MiB frames GB/s | copyto GB/s "
              "| 1×1 / echo 1 frame | 1×1 / echo chunked | 1×1 / copyto | 1×1 / dist-keras 0.24 |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for mib in args.sizes_mib:
        nbytes = mib << 20
        wire = 2 * nbytes
        a1 = wire / zdk_roundtrip(nbytes, args.repeats, 1, 1) / 1e9
        a2 = wire / zdk_roundtrip(nbytes, args.repeats, 2, 2) / 1e9
        a3 = wire / zdk_roundtrip(nbytes, args.repeats, 1, 1, curve=True) / 1e9
        b1 = wire / bare_echo(nbytes, args.repeats, chunked=False) / 1e9
        b2 = wire / bare_echo(nbytes, args.repeats, chunked=True) / 1e9
        c = nbytes / copyto(nbytes, args.repeats) / 1e9
        print(f"| {mib} | {a1:.2f} | {a2:.2f} | {a3:.2f} | {b1:.2f} | {b2:.2f} | {c:.2f} | {a1 / b1:.2f} | {a1 / b2:.2f} "
              f"| {a1 / c:.2f} | {a1 / 0.24:.1f}× |", flush=True)
    if args.curve_frames:
        print()
        print("| MiB | frame MiB | zdk 1×1 GB/s | zdk 1×1 CURVE GB/s | CURVE / plaintext |")
        print("|---|---|---|---|---|")
        for mib in args.sizes_mib:
            nbytes = mib << 20
            for frame in args.curve_frames:
                plain = 2 * nbytes / zdk_roundtrip(nbytes, args.repeats, 1, 1, chunk=frame << 20) / 1e9
                secure = 2 * nbytes / zdk_roundtrip(nbytes, args.repeats, 1, 1, curve=True, chunk=frame << 20) / 1e9
                print(f"| {mib} | {frame} | {plain:.2f} | {secure:.2f} | {secure / plain:.2f} |", flush=True)
    if grid:
        print()
        print("| MiB | " + " | ".join(f"{k}×{w} GB/s" for k, w in grid) + " | echo 1 MiB frames GB/s |")
        print("|---" * (len(grid) + 2) + "|")
        for mib in args.sizes_mib:
            nbytes = mib << 20
            cells = [2 * nbytes / zdk_roundtrip(nbytes, args.repeats, k, w) / 1e9 for k, w in grid]
            echo = 2 * nbytes / bare_echo(nbytes, args.repeats, chunked=True) / 1e9
            print(f"| {mib} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {echo:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
