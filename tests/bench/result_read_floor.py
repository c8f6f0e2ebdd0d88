"""The brain's CPU to take in 100 KB results on the frames socket, with no sidecar.

    .venv/bin/python tests/bench/result_read_floor.py [--frames 3000] [--per-frame 4] [--shared]

A child process writes ``ResultFrame`` frames of ``--per-frame`` results of 100 KB each to
a unix socket as fast as the socket takes them; this process reads them with the brain's
own frames protocol (``brain._frames``, on uvloop), takes every result's bytes, and counts
its own CPU time (``time.process_time``) per result. What it measures is the floor under
scenario 4's "100 KB whole" row: the socket read, the frame parse and the one copy into
the result's ``bytes``, without the client's per-call work or the agents. Run it under
``perf record -g`` to see the kernel's share (docs/performance.md, "The brain's 100 KB
result").

With ``--shared`` the child plays a version 2 sidecar (framing version 2): it writes each
result into a 16 MiB shared region, sends only where it lies, and reuses the space the
reader releases; the reader copies each result out of the region. The reader sets glibc's
malloc as the brain does (``BRAIN_MALLOC_TUNING=0``: glibc's defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import time

import uvloop

from brain._frames import PREFACE, PREFACE_SHARED, _Protocol, _Region
from brain._malloc import tune_malloc
from brain._proto.dispatch.v1 import dispatch_pb2 as pb

RESULT_BYTES = 100_000
REGION_BYTES = 16 << 20
_RELEASE = struct.Struct(">IBQ")


def _body() -> bytes:
    hits = b",".join(
        b'{"id":%d,"title":"result number %d","score":0.5}' % (i, i) for i in range(2200)
    )
    return (b'{"hits":[' + hits + b"]}")[:RESULT_BYTES]


def _result(**fields: object) -> pb.ToolResult:
    return pb.ToolResult(
        call_id="12345", status=pb.STATUS_OK, timing=pb.Timing(total_us=100, attempts=1), **fields
    )


def _encode(results: list[pb.ToolResult]) -> bytes:
    message = pb.ResultFrame(results=results).SerializeToString()
    return struct.pack(">IB", len(message) + 1, 1) + message


def _write_inline(writer: socket.socket, frames: int, per_frame: int) -> None:
    frame = _encode([_result(result=_body())] * per_frame)
    writer.sendall(PREFACE)
    for _ in range(frames):
        writer.sendall(frame)


def _write_shared(writer: socket.socket, frames: int, per_frame: int) -> None:
    """What a version 2 sidecar does: each body into the region after the last (at its
    start when it would cross the end), waiting for releases when it is full."""
    body = _body()
    fd = os.memfd_create("floor-region")
    os.ftruncate(fd, REGION_BYTES)
    socket.send_fds(writer, [PREFACE_SHARED], [fd])
    written = released = 0
    for _ in range(frames):
        spans = []
        for _ in range(per_frame):
            at = written % REGION_BYTES
            if at + len(body) > REGION_BYTES:
                written += REGION_BYTES - at
                at = 0
            while written + len(body) - released > REGION_BYTES:
                message = writer.recv(_RELEASE.size, socket.MSG_WAITALL)
                released = _RELEASE.unpack(message)[2]
            os.pwrite(fd, body, at)
            spans.append(_result(shared_result=pb.SharedSpan(offset=written, length=len(body))))
            written += len(body)
        writer.sendall(_encode(spans))


async def _read(sock: socket.socket, frames: int, per_frame: int, shared: bool) -> float:
    """CPU seconds this process spent taking in ``frames`` frames."""
    loop = asyncio.get_running_loop()
    region = None
    if shared:
        preface, fds, _, _ = socket.recv_fds(sock, len(PREFACE_SHARED), 1)
        assert preface == PREFACE_SHARED
        region = _Region(fds[0])
    protocol = _Protocol(64 << 20, region, preface_read=shared)
    sock.setblocking(False)
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
    parser.add_argument(
        "--shared", action="store_true", help="results through a shared region (version 2)"
    )
    args = parser.parse_args()
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        reader.close()
        write = _write_shared if args.shared else _write_inline
        write(writer, args.frames, args.per_frame)
        writer.close()
        os._exit(0)
    writer.close()
    tune_malloc()
    try:
        seconds = uvloop.run(_read(reader, args.frames, args.per_frame, args.shared))
    finally:
        os.waitpid(child, 0)
    per_result = seconds / (args.frames * args.per_frame) * 1e6
    how = "through a shared region" if args.shared else "on the socket"
    print(
        f"{args.per_frame} results of 100 KB per frame, {how}: {per_result:.1f} µs CPU per result"
    )


if __name__ == "__main__":
    main()
