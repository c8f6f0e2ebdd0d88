"""The framed transport's client side (``brain._frames``): parsing whatever way the bytes
arrive, refusing what breaks the protocol, bounded buffering, and the socket it writes.
The sidecar's side and both together are tested in ``tests/test_hostile_frames.py`` and
``tests/test_dispatch.py`` (every client test runs on both transports). Each test here runs
on asyncio's loop and on uvloop's, whose transports differ (``conftest.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from messages import as_frame

from brain._frames import (
    PREFACE,
    PREFACE_SHARED,
    FramedStream,
    FramedStreamError,
    _Protocol,
    _Region,
)
from brain._proto.dispatch.v1 import dispatch_pb2 as pb


class FakeTransport(asyncio.Transport):
    """What the protocol calls on its transport, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.paused = False
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.extend(data)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort(self) -> None:
        self.aborted = True


def feed(proto: _Protocol, data: bytes) -> None:
    """What a transport does with bytes read from the socket: one read into each buffer
    the protocol offers, as many as the bytes need."""
    view = memoryview(data)
    while view:
        buffer = proto.get_buffer(len(view))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]


def frame(kind: int, message: bytes) -> bytes:
    return struct.pack(">IB", len(message) + 1, kind) + message


def result_frame(*call_ids: str, size: int = 8) -> pb.ResultFrame:
    return pb.ResultFrame(
        results=[
            pb.ToolResult(call_id=c, status=pb.STATUS_OK, result=b"x" * size) for c in call_ids
        ]
    )


async def protocol(max_frame_bytes: int = 1 << 20) -> tuple[_Protocol, FakeTransport]:
    proto = _Protocol(max_frame_bytes)
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport


async def drain(proto: _Protocol) -> list[pb.ResultFrame]:
    frames = []
    while (f := await proto.next_frame()) is not None:
        frames.append(as_frame(f))
    return frames


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 400_000), max_size=12),
)
async def test_frames_parse_the_same_however_the_bytes_arrive(
    sizes: list[int], cuts: list[int]
) -> None:
    sent = [result_frame(f"c{i}", size=n) for i, n in enumerate(sizes)]
    wire = PREFACE + b"".join(frame(1, f.SerializeToString()) for f in sent)
    wire += frame(2, pb.StreamEnd(code=0).SerializeToString())
    proto, transport = await protocol()
    points = sorted({c % len(wire) for c in cuts} | {0, len(wire)})
    for start, stop in itertools.pairwise(points):
        feed(proto, wire[start:stop])
    assert proto.opened.done()
    assert proto.opened.exception() is None
    assert await drain(proto) == sent
    assert not transport.aborted


async def test_a_frame_of_megabytes_grows_the_read_buffer_then_it_shrinks_back() -> None:
    big, small = result_frame("big", size=5_000_000), result_frame("small")
    proto, _ = await protocol(max_frame_bytes=1 << 23)
    wire = PREFACE + frame(1, big.SerializeToString()) + frame(1, small.SerializeToString())
    feed(proto, wire[:500_000])
    assert len(proto._buffer) >= 5_000_000
    feed(proto, wire[500_000:])
    assert len(proto._buffer) == 256 * 1024
    assert [as_frame(await proto.next_frame()) for _ in range(2)] == [big, small]


async def test_a_stream_end_with_an_error_status_is_raised_after_the_results() -> None:
    proto, _ = await protocol()
    end = pb.StreamEnd(code=14, message="sidecar is draining; reconnect to another")
    feed(proto, PREFACE + frame(1, result_frame("a").SerializeToString()))
    feed(proto, frame(2, end.SerializeToString()))
    assert as_frame(await proto.next_frame()) == result_frame("a")
    with pytest.raises(FramedStreamError, match=r"^UNAVAILABLE: sidecar is draining"):
        await proto.next_frame()


async def test_a_connection_that_closes_without_an_end_is_a_broken_stream() -> None:
    proto, _ = await protocol()
    feed(proto, PREFACE + frame(1, result_frame("a").SerializeToString())[:-1])
    proto.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(FramedStreamError, match=r"without ending the stream.*reset"):
        await drain(proto)


async def test_a_reset_after_the_end_is_not_an_error() -> None:
    proto, _ = await protocol()
    feed(proto, PREFACE + frame(2, b""))
    proto.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    assert await drain(proto) == []


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"\x00\x00\x08\x07\x00\x00\x00\x00", "no tandem frames preface"),
        (PREFACE + struct.pack(">IB", 1 << 30, 1), "over the 1048576 limit"),
        (PREFACE + frame(7, b""), "unknown frame kind 7"),
    ],
)
async def test_what_breaks_the_protocol_fails_the_stream_and_closes_it(
    wire: bytes, error: str
) -> None:
    proto, transport = await protocol()
    feed(proto, wire)
    assert transport.aborted
    with pytest.raises(FramedStreamError, match=error):
        await proto.next_frame()


async def test_unread_frames_stop_the_socket_being_read_until_taken() -> None:
    proto, transport = await protocol()
    feed(proto, PREFACE)
    for i in range(64):
        feed(proto, frame(1, result_frame(str(i)).SerializeToString()))
    assert transport.paused
    for _ in range(32):
        await proto.next_frame()
    assert transport.paused
    await proto.next_frame()
    assert not transport.paused


@pytest.mark.parametrize("shared_memory", [False, True])
async def test_the_stream_writes_the_preface_then_length_kind_and_message(
    tmp_path: Path, shared_memory: bool
) -> None:
    """Also a version 2 client (``shared_memory``) that a version 1 sidecar answers: the
    stream is then version 1's."""
    received = bytearray()
    got_end = asyncio.Event()

    async def sidecar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.readexactly(len(PREFACE)))
        writer.write(PREFACE + frame(1, result_frame("r").SerializeToString()))
        while not got_end.is_set():
            length, kind = struct.unpack(">IB", await reader.readexactly(5))
            received.extend(struct.pack(">IB", length, kind))
            received.extend(await reader.readexactly(length - 1))
            if kind == 2:
                writer.write(frame(2, b""))
                got_end.set()
        await writer.drain()
        writer.close()

    path = str(tmp_path / "f.sock")
    server = await asyncio.start_unix_server(sidecar, path)
    async with server:
        stream = FramedStream(path, max_receive_bytes=1 << 20, shared_memory=shared_memory)
        await stream.wait_for_connection()
        assert stream.shared_region_bytes == 0
        calls = pb.DispatchFrame(calls=[pb.ToolCall(call_id="1", tool="t", arguments=b"{}")])
        await stream.write(calls.SerializeToString())
        await stream.done_writing()
        results = await stream.read()
        assert results is not None
        assert as_frame(results) == result_frame("r")
        assert await stream.read() is None
        stream.cancel()
    preface = PREFACE_SHARED if shared_memory else PREFACE
    assert bytes(received) == (preface + frame(1, calls.SerializeToString()) + frame(2, b""))


async def test_connecting_where_no_sidecar_answers_fails_with_the_reason(tmp_path: Path) -> None:
    missing = FramedStream(str(tmp_path / "none.sock"), max_receive_bytes=1024)
    with pytest.raises(FramedStreamError, match="UNAVAILABLE: cannot connect to frames:"):
        await missing.wait_for_connection()

    hung_up = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()
        await writer.wait_closed()
        hung_up.set()

    path = str(tmp_path / "mute.sock")
    async with await asyncio.start_unix_server(mute, path):
        silent = FramedStream(path, max_receive_bytes=1024, preface_timeout=0.2)
        with pytest.raises(FramedStreamError, match="no answer to the preface"):
            await silent.wait_for_connection()
        # The stream gave up and closed: the mute server sees it hang up.
        await asyncio.wait_for(hung_up.wait(), 5)


REGION = 256 * 1024


class Placer:
    """What the sidecar does with a region: each body after the last, at the start when
    it would cross the end (the offset counts the skipped tail)."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("test-region")
        os.ftruncate(self.fd, REGION)
        self.written = 0

    def region(self) -> _Region:
        return _Region(os.dup(self.fd))

    def place(self, body: bytes) -> pb.SharedSpan:
        at = self.written % REGION
        if at + len(body) > REGION:
            self.written += REGION - at
            at = 0
        os.pwrite(self.fd, body, at)
        span = pb.SharedSpan(offset=self.written, length=len(body))
        self.written += len(body)
        return span

    def close(self) -> None:
        os.close(self.fd)


def shared_frame(*spans: pb.SharedSpan) -> bytes:
    message = pb.ResultFrame(
        results=[
            pb.ToolResult(call_id=str(i), status=pb.STATUS_OK, shared_result=span)
            for i, span in enumerate(spans)
        ]
    )
    return frame(1, message.SerializeToString())


def released(transport: FakeTransport) -> list[int]:
    """The offsets of the release frames the client wrote."""
    data = bytes(transport.written)
    assert len(data) % 13 == 0, data
    out = []
    for at in range(0, len(data), 13):
        length, kind, through = struct.unpack_from(">IBQ", data, at)
        assert (length, kind) == (9, 3)
        out.append(through)
    return out


async def test_results_in_the_shared_region_are_copied_out_and_released_in_steps() -> None:
    """Fifteen 40 KB results through a 256 KiB region, round it twice: each comes out byte
    for byte, and the region is released once an eighth of it (32 KiB) more was copied,
    through the end of the last span copied; one release per read, however many frames
    the read brought."""
    placer = Placer()
    proto = _Protocol(1 << 20, placer.region(), preface_read=True)
    transport = FakeTransport()
    proto.connection_made(transport)
    bodies = [bytes([65 + i]) * 40_000 for i in range(15)]
    got: list[bytes] = []
    for batch in (bodies[i : i + 3] for i in range(0, len(bodies), 3)):
        spans = [placer.place(body) for body in batch]
        feed(proto, shared_frame(*spans[:2]) + shared_frame(*spans[2:]))
        for _ in range(2):
            got += [r.result_bytes for r in await proto.next_frame() or []]
        assert released(transport)[-1] == spans[-1].offset + spans[-1].length
    assert got == bodies
    assert len(released(transport)) == 5
    assert placer.written > 2 * REGION
    placer.close()


async def test_a_span_outside_the_region_or_already_released_fails_the_stream() -> None:
    placer = Placer()
    outside = pb.SharedSpan(offset=REGION - 10, length=20_000)
    proto = _Protocol(1 << 20, placer.region(), preface_read=True)
    transport = FakeTransport()
    proto.connection_made(transport)
    feed(proto, shared_frame(outside))
    with pytest.raises(FramedStreamError, match="outside the 262144-byte region"):
        await proto.next_frame()
    assert transport.aborted

    spans = [placer.place(b"y" * 40_000) for _ in range(2)]
    proto = _Protocol(1 << 20, placer.region(), preface_read=True)
    transport = FakeTransport()
    proto.connection_made(transport)
    feed(proto, shared_frame(*spans))
    assert len(await proto.next_frame() or []) == 2
    assert released(transport) == [80_000]
    feed(proto, shared_frame(spans[0]))
    with pytest.raises(FramedStreamError, match="already released"):
        await proto.next_frame()
    placer.close()


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_sidecar(path: str, answer: Answer) -> AsyncIterator[None]:
    """A unix server whose one connection gets ``answer``, then is read until the client
    closes; leaving waits for that (the handler must not outlive the test's loop)."""
    finished = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(reader, writer)
        await reader.read()
        writer.close()
        await writer.wait_closed()
        finished.set()

    async with await asyncio.start_unix_server(serve, path):
        yield
        await asyncio.wait_for(finished.wait(), 5)


async def test_a_sidecar_that_passes_a_region_gets_it_mapped_and_used(tmp_path: Path) -> None:
    """A version 2 sidecar by hand: the preface with a memfd attached; the stream maps it
    and reads a result out of it."""
    body = b'{"k": "' + b"v" * 30_000 + b'"}'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(8) == PREFACE_SHARED
        fd = os.memfd_create("region")
        os.ftruncate(fd, REGION)
        os.pwrite(fd, body, 0)
        # asyncio's transports cannot pass a descriptor: a duplicate of the socket can.
        # (Non-blocking like the original: 8 bytes into an empty socket buffer.)
        with socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno())) as sock:
            socket.send_fds(sock, [PREFACE_SHARED], [fd])
        os.close(fd)
        writer.write(shared_frame(pb.SharedSpan(offset=0, length=len(body))))

    path = str(tmp_path / "v2.sock")
    async with fake_sidecar(path, answer):
        stream = FramedStream(path, max_receive_bytes=1 << 20)
        await stream.wait_for_connection()
        assert stream.shared_region_bytes == REGION
        results = await stream.read()
        assert results is not None
        assert [r.result_bytes for r in results] == [body]
        stream.cancel()


async def test_a_version_2_answer_without_a_region_is_refused(tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(PREFACE_SHARED)

    path = str(tmp_path / "bad.sock")
    async with fake_sidecar(path, answer):
        stream = FramedStream(path, max_receive_bytes=1 << 20)
        with pytest.raises(FramedStreamError, match="without passing its shared region"):
            await stream.wait_for_connection()


async def test_a_shared_result_in_a_large_message_is_taken_too() -> None:
    """A shared result whose own message is over 16 KiB (a 20 KB call id) in a frame over
    64 KiB goes through the large-frame path's fallback: it still comes out of the
    region, not empty."""
    placer = Placer()
    bodies = [b"a" * 40_000, b"b" * 40_000]
    spans = [placer.place(body) for body in bodies]
    message = pb.ResultFrame(
        results=[
            pb.ToolResult(call_id="c" * 20_000, status=pb.STATUS_OK, shared_result=spans[0]),
            pb.ToolResult(call_id="x", status=pb.STATUS_OK, result=b"i" * 50_000),
            pb.ToolResult(call_id="y", status=pb.STATUS_OK, shared_result=spans[1]),
        ]
    )
    proto = _Protocol(1 << 20, placer.region(), preface_read=True)
    proto.connection_made(FakeTransport())
    feed(proto, frame(1, message.SerializeToString()))
    results = await proto.next_frame() or []
    assert [r.result_bytes for r in results] == [bodies[0], b"i" * 50_000, bodies[1]]
    assert results[0].call_id == "c" * 20_000
    placer.close()
