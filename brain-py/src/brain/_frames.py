"""The framed transport: the Dispatch stream on the sidecar's frames socket, without gRPC.

The sidecar serves it with ``--listen frames:/path.sock``; the wire format is specified
beside ``StreamEnd`` in ``proto/dispatch/v1/dispatch.proto``: an 8-byte preface each way,
then frames of a 4-byte big-endian length, a kind byte and a protobuf message. The
messages and the stream's semantics are the gRPC Dispatch stream's; only the carrier
differs. It exists because grpc.aio costs this process about 100 µs per frame written or
read and a plain socket about 6 (``tests/bench/transport_floor.py``), and this is the
process the GIL binds.

:class:`FramedStream` offers the part of a grpc.aio stream-stream call that
``SidecarClient`` uses (``wait_for_connection``, ``write``, ``read``, ``done_writing``,
``cancel``), so the client runs the same code over either. Written on asyncio's
``BufferedProtocol`` (uvloop's when installed) because no library speaks this framing:
the socket reads straight into one buffer and frames are parsed from views of it, so a
megabyte of results is not copied on its way to protobuf.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import cast

import grpc

from ._proto.dispatch.v1 import dispatch_pb2 as pb
from ._types import ToolResult
from ._wire import parse_results

__all__ = ["PREFACE", "FramedStream", "FramedStreamError"]

#: What each side sends first: "tandem", then framing version 1.
PREFACE = b"tandemF1"
_KIND_MESSAGE = 1
_KIND_END = 2
#: A frame's length (of the kind byte and the message) and its kind.
_HEADER = struct.Struct(">IB")
#: Frames read but not yet taken by :meth:`FramedStream.read` before the socket is no
#: longer read (the sidecar then holds further results, within its own bounds).
_MAX_QUEUED_FRAMES = 64
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
#: The read buffer's usual size; it grows for a larger frame (the sidecar's frames carry
#: up to about a megabyte of results) and keeps up to ``_KEEP_BYTES`` of that growth, so a
#: stream of big results does not allocate (and zero) a buffer per frame.
_BUFFER_BYTES = 256 * 1024
_KEEP_BYTES = 4 * 1024 * 1024
#: Room offered to each socket read at least.
_MIN_READ = 64 * 1024


class FramedStreamError(Exception):
    """The framed stream could not open, broke, or the sidecar ended it with an error
    status; the message says which, like a gRPC status (``UNAVAILABLE: ...``)."""


class _Protocol(asyncio.BufferedProtocol):
    """Parses the sidecar's frames as they arrive; see :class:`FramedStream`."""

    def __init__(self, max_frame_bytes: int) -> None:
        loop = asyncio.get_running_loop()
        self.max_frame_bytes = max_frame_bytes
        self.transport: asyncio.Transport | None = None
        #: Resolved by the sidecar's preface (or fails with the reason there was none).
        self.opened: asyncio.Future[None] = loop.create_future()
        #: Parsed frames: each ``ResultFrame``'s results.
        self.frames: deque[list[ToolResult]] = deque()
        #: True once the stream is over; ``error`` then says why, ``None`` after a
        #: StreamEnd with OK.
        self.closed = False
        self.error: FramedStreamError | None = None
        self.reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        #: Bytes read and not yet parsed are ``_buffer[_start:_end]``.
        self._buffer = bytearray(_BUFFER_BYTES)
        self._start = 0
        self._end = 0
        #: Unparsed bytes needed before the next frame (or the preface) is complete.
        self._need = len(PREFACE)
        self._ended = False

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's; both offer a Transport's methods.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        pending = self._end - self._start
        room = max(self._need, pending + _MIN_READ)
        if len(self._buffer) - self._start < room:
            # Move what is pending to the front of a buffer with room for the frame
            # being read: a fresh one when it must grow.
            if room > len(self._buffer):
                fresh = bytearray(max(room, min(2 * len(self._buffer), _KEEP_BYTES)))
                fresh[:pending] = self._buffer[self._start : self._end]
                self._buffer = fresh
            else:
                self._buffer[:pending] = self._buffer[self._start : self._end]
            self._start, self._end = 0, pending
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if self.closed or self._end - self._start < self._need:
            return
        with memoryview(self._buffer) as view:
            self._start += self._parse(view[self._start : self._end])
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buffer) > _KEEP_BYTES:
                # A frame of many megabytes grew it; the stream does not keep that.
                self._buffer = bytearray(_BUFFER_BYTES)
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ended:
            detail = f" ({exc})" if exc else ""
            self._fail(
                "the sidecar closed the frames connection without ending the stream" + detail
            )
        self.closed = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # ------------------------------------------------------------ parsing

    def _parse(self, data: memoryview) -> int:
        """Takes every complete frame (and the preface) from ``data``; returns how many
        bytes it used and leaves in ``_need`` how many the next frame needs. (protobuf
        copies what it parses from a view, so the buffer is free for reuse after.)"""
        pos = 0
        end = len(data)
        if not self.opened.done():
            if data[: len(PREFACE)] != PREFACE:
                self._fail(f"no tandem frames preface from the sidecar: {bytes(data[:8])!r}")
                return end
            self.opened.set_result(None)
            pos = len(PREFACE)
        while end - pos >= _HEADER.size:
            length, kind = _HEADER.unpack_from(data, pos)
            if length - 1 > self.max_frame_bytes:
                self._fail(f"a frame of {length} bytes, over the {self.max_frame_bytes} limit")
                return end
            stop = pos + 4 + length
            if stop > end:
                self._need = stop - pos
                return pos
            # upb parses any buffer; the stubs say bytes.
            payload = cast(bytes, data[pos + _HEADER.size : stop])
            pos = stop
            if kind == _KIND_MESSAGE:
                self.frames.append(parse_results(payload))
            elif kind == _KIND_END:
                self._stream_end(pb.StreamEnd.FromString(payload))
                return end
            else:
                self._fail(f"unknown frame kind {kind} from the sidecar")
                return end
        self._need = _HEADER.size
        if len(self.frames) >= _MAX_QUEUED_FRAMES and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        return pos

    def _stream_end(self, end: pb.StreamEnd) -> None:
        self._ended = True
        self.closed = True
        if end.code != 0:
            name = _CODE_NAMES.get(end.code, str(end.code))
            self.error = FramedStreamError(f"{name}: {end.message}")

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = FramedStreamError(reason)
        if not self.opened.done():
            self.opened.set_exception(self.error)
            # Retrieved: whoever awaits it still gets the error; nobody needs to.
            self.opened.exception()
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ for FramedStream

    async def next_frame(self) -> list[ToolResult] | None:
        while not self.frames:
            if self.closed:
                if self.error is not None:
                    raise self.error
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        frame = self.frames.popleft()
        if self.reading_paused and len(self.frames) < _MAX_QUEUED_FRAMES // 2:
            self.reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return frame

    async def drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            await self._drained


class FramedStream:
    """One Dispatch stream over the frames socket at ``path``. ``preface_timeout`` bounds
    how long the sidecar has to answer the preface."""

    def __init__(self, path: str, *, max_receive_bytes: int, preface_timeout: float = 10.0) -> None:
        self.path = path
        self._max_receive_bytes = max_receive_bytes
        self._preface_timeout = preface_timeout
        self._protocol: _Protocol | None = None

    async def wait_for_connection(self) -> None:
        """Connect and exchange prefaces; :class:`FramedStreamError` if that fails."""
        loop = asyncio.get_running_loop()
        protocol = self._protocol = _Protocol(self._max_receive_bytes)
        try:
            transport, _ = await loop.create_unix_connection(lambda: protocol, self.path)
        except OSError as exc:
            raise FramedStreamError(
                f"UNAVAILABLE: cannot connect to frames:{self.path}: {exc.strerror or exc}"
            ) from exc
        transport.write(PREFACE)
        try:
            async with asyncio.timeout(self._preface_timeout):
                await protocol.opened
        except TimeoutError:
            transport.abort()
            raise FramedStreamError(
                f"UNAVAILABLE: no answer to the preface from frames:{self.path} in "
                f"{self._preface_timeout:g}s (is it the sidecar's frames socket?)"
            ) from None

    async def write(self, frame: bytes) -> None:
        """Send one encoded ``DispatchFrame``; waits while the socket's buffer is full."""
        await self._send(_KIND_MESSAGE, frame)

    async def done_writing(self) -> None:
        """No more calls: the sidecar answers those in flight, then ends the stream."""
        await self._send(_KIND_END, b"")

    async def read(self) -> list[ToolResult] | None:
        """The next ``ResultFrame``'s results (:func:`_wire.parse_results`); ``None`` once
        the sidecar ended the stream with OK.
        Raises :class:`FramedStreamError` when it ended otherwise or broke."""
        if self._protocol is None:
            raise FramedStreamError("UNAVAILABLE: not connected")
        return await self._protocol.next_frame()

    def cancel(self) -> None:
        """Close at once: the sidecar cancels every call in flight on this stream."""
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def _send(self, kind: int, message: bytes) -> None:
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.closed:
            raise FramedStreamError(
                str(protocol.error) if protocol and protocol.error else "UNAVAILABLE: closed"
            )
        protocol.transport.write(_HEADER.pack(len(message) + 1, kind) + message)
        await protocol.drained()
