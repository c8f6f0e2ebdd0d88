"""Is this grpcio affected by the grpc.aio throughput regression (grpc/grpc#43092)?

grpcio 1.75.1 through at least 1.83.0 lost 2-7% of grpc.aio unary throughput against
1.75.0 (upstream's measurements; the fix, grpc/grpc#43222, was not in a release when this
was written). This runs the issue's reproduction on loopback with whatever grpcio the
interpreter has: a grpc.aio server in a child process, a client making unary calls with
empty bytes payloads (no protobuf) at a fixed concurrency for a few seconds, several times,
and prints the median calls/s. Compare versions by running it under one venv per version,
alternating, on an otherwise idle machine (docs/performance.md, "grpcio"):

    python tests/bench/grpc_aio_check.py --seconds 5 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

import grpc

METHOD = "/bench.Bench/Call"


async def _serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b""

    rpc = grpc.unary_unary_rpc_method_handler(handler)
    service = grpc.method_handlers_generic_handler("bench.Bench", {"Call": rpc})
    server.add_generic_rpc_handlers((service,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def _measure(port: int, concurrency: int, seconds: float) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        await call(b"")  # connected, warm
        done = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await call(b"")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the grpc.aio server did not start")
        rates = [
            asyncio.run(_measure(port, args.concurrency, args.seconds)) for _ in range(args.runs)
        ]
    finally:
        server.terminate()
        server.wait(10)
    print(
        json.dumps(
            {
                "grpcio": grpc.__version__,
                "python": sys.version.split()[0],
                "concurrency": args.concurrency,
                "median_calls_per_s": round(statistics.median(rates)),
                "runs": [round(r) for r in rates],
            }
        )
    )


if __name__ == "__main__":
    main()
