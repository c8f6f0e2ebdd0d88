"""The brain's CPU to take in 100 KB results on the frames socket, with no sidecar.

    .venv/bin/python tests/bench/result_read_floor.py [--frames 3000] [--per-frame 4]

A child process writes ``ResultFrame`` frames of ``--per-frame`` results of 100 KB each to
a unix socket as fast as the socket takes them; this process reads them with the brain's
own frames protocol (``brain._frames``, on uvloop), takes every result's bytes, and counts
its own CPU time (``time.process_time``) per result. What it measures is the floor under
scenario 4's "100 KB whole" row: the socket read, the frame parse and the one copy into
the result's ``bytes``, without the client's per-call work or the agents. Run it under
``perf record -g`` to see the kernel's share (docs/performance.md, "The brain's 100 KB
result").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import time

import uvloop

from brain._frames import PREFACE, _Protocol
from brain._proto.dispatch.v1 import dispatch_pb2 as pb

RESULT_BYTES = 100_000


def _frame(per_frame: int) -> bytes:
    hits = b",".join(
        b'{"id":%d,"title":"result number %d","score":0.5}' % (i, i) for i in range(2200)
    )
    body = (b'{"hits":[' + hits + b"]}")[:RESULT_BYTES]
    result = pb.ToolResult(
        call_id="12345",
        status=pb.STATUS_OK,
        result=body,
        timing=pb.Timing(total_us=100, attempts=1),
    )
    message = pb.ResultFrame(results=[result] * per_frame).SerializeToString()
    return struct.pack(">IB", len(message) + 1, 1) + message


async def _read(sock: socket.socket, frames: int, per_frame: int) -> float:
    """CPU seconds this process spent taking in ``frames`` frames."""
    loop = asyncio.get_running_loop()
    protocol = _Protocol(64 << 20)
    await loop.create_unix_connection(lambda: protocol, sock=sock)
    await protocol.opened
    taken = 0
    started = time.process_time()
    while taken < frames:
        if protocol.frames:
            for result in protocol.frames.popleft():
                if len(result.result_bytes) != RESULT_BYTES:
                    raise AssertionError("a result lost bytes")
            taken += 1
            if protocol.reading_paused and len(protocol.frames) < 8:
                protocol.reading_paused = False
                assert protocol.transport is not None
                protocol.transport.resume_reading()
            continue
        if protocol.closed:
            raise RuntimeError(f"the writer stopped early: {protocol.error}")
        waiter = loop.create_future()
        protocol._waiter = waiter
        await waiter
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--per-frame", type=int, default=4)
    args = parser.parse_args()
    frame = _frame(args.per_frame)
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        reader.close()
        writer.sendall(PREFACE)
        for _ in range(args.frames):
            writer.sendall(frame)
        writer.close()
        os._exit(0)
    writer.close()
    try:
        seconds = uvloop.run(_read(reader, args.frames, args.per_frame))
    finally:
        os.waitpid(child, 0)
    per_result = seconds / (args.frames * args.per_frame) * 1e6
    print(f"{args.per_frame} results of 100 KB per frame: {per_result:.1f} µs CPU per result")


if __name__ == "__main__":
    main()
