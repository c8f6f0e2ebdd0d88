"""The brain's CPU per frame on grpc.aio versus a raw unix socket (issue 12's floor check).

    .venv/bin/python tests/bench/transport_floor.py [--frames 20000] [--calls 1 16]

One process plays the brain: it keeps ``--inflight`` frames of ``--calls`` encoded tool
calls in flight to a peer process and counts its own CPU time (``time.process_time``, all
threads) per frame. The peer answers every frame with a frame of as many small results
and is not measured. Two transports, same frames, same uvloop, bytes in and bytes out
(no protobuf objects): a grpc.aio bidirectional stream (the ``SidecarClient``'s transport,
identity serializers) and length-prefixed frames on a unix socket read by an
``asyncio.Protocol`` (the cheapest framing Python offers). The difference is what
grpc.aio itself costs per frame; nothing here involves the sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import tempfile
import time

import grpc
import grpc.aio
import uvloop

from brain._proto.dispatch.v1 import dispatch_pb2 as pb

METHOD = "/floor.Floor/Stream"
#: One ``DispatchFrame.calls`` entry and one ``ResultFrame.results`` entry, encoded: a
#: frame of n calls is ``CALL * n``.
CALL = pb.DispatchFrame(
    calls=[pb.ToolCall(call_id="12345", agent_id="agent-17", tool="ping", arguments=b"{}")]
).SerializeToString()
RESULT = pb.ResultFrame(
    results=[
        pb.ToolResult(
            call_id="12345",
            status=pb.STATUS_OK,
            result=b'{"ok":true}',
            timing=pb.Timing(total_us=100, attempts=1),
        )
    ]
).SerializeToString()
HEADER = struct.Struct("<I")


# ------------------------------------------------------------------ peers


async def grpc_peer(path: str) -> None:
    async def stream(requests, context):  # type: ignore[no-untyped-def]
        async for frame in requests:
            yield RESULT * (len(frame) // len(CALL))

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "floor.Floor", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
            ),
        )
    )
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    await server.wait_for_termination()


class _PeerProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = HEADER.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                break
            reply = RESULT * (n // len(CALL))
            out.append(HEADER.pack(len(reply)) + reply)
            del self.buf[: 4 + n]
        if out:
            self.t.write(b"".join(out))  # type: ignore[attr-defined]


async def raw_peer(path: str) -> None:
    server = await asyncio.get_running_loop().create_unix_server(_PeerProtocol, path)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------ brains


async def grpc_brain(path: str, frames: int, calls: int, inflight: int) -> float:
    async with grpc.aio.insecure_channel(
        f"unix:{path}", options=[("grpc.default_authority", "localhost")]
    ) as channel:
        stream = channel.stream_stream(METHOD)(wait_for_ready=True)
        frame = CALL * calls
        for _ in range(inflight):
            await stream.write(frame)
        start = time.process_time()
        for i in range(frames):
            reply = await stream.read()
            assert len(reply) == len(RESULT) * calls
            if i + inflight < frames:
                await stream.write(frame)
        used = time.process_time() - start
        await stream.done_writing()
        return used


class _BrainProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = HEADER.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                break
            self.frames.put_nowait(bytes(self.buf[4 : 4 + n]))
            del self.buf[: 4 + n]


async def raw_brain(path: str, frames: int, calls: int, inflight: int) -> float:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_unix_connection(_BrainProtocol, path)
    frame = CALL * calls
    framed = HEADER.pack(len(frame)) + frame
    for _ in range(inflight):
        transport.write(framed)
    start = time.process_time()
    for i in range(frames):
        reply = await proto.frames.get()
        assert len(reply) == len(RESULT) * calls
        if i + inflight < frames:
            transport.write(framed)
    used = time.process_time() - start
    transport.close()
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--inflight", type=int, default=4, help="frames in flight at once")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer", choices=["grpc", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        uvloop.run((grpc_peer if args.peer == "grpc" else raw_peer)(args.path))
        return 0
    print("transport  calls/frame  brain µs/frame  brain µs/call   (min of repeats)")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, brain in (("grpc.aio", grpc_brain), ("raw unix", raw_brain)):
            path = os.path.join(tmp, f"{kind.split('.')[0].split()[0]}.sock")
            peer = subprocess.Popen(
                [sys.executable, __file__, "--peer", kind.split(".")[0].split()[0], "--path", path]
            )
            try:
                for _ in range(200):
                    if os.path.exists(path):
                        break
                    time.sleep(0.05)
                for calls in args.calls:
                    best = min(
                        uvloop.run(brain(path, args.frames, calls, args.inflight))
                        for _ in range(args.repeat)
                    )
                    per_frame = best / args.frames * 1e6
                    print(f"{kind:<10} {calls:>11} {per_frame:>15.1f} {per_frame / calls:>14.1f}")
            finally:
                peer.terminate()
                peer.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
