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

With ``shared_memory`` (framing version 2, Linux) the stream also maps a region the
sidecar passes with its preface; large results lie there and are copied out once as the
frame that points at them is parsed (:class:`_Region`). Over the socket a 100 KB result
cost this process 34-52 µs (``tests/bench/result_read_floor.py``): the kernel's copy, a
copy out of the read buffer, and the wake-ups of two processes taking turns on a full
socket buffer.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import struct
import sys
from collections import deque
from typing import cast

import grpc

from ._proto.dispatch.v1 import dispatch_pb2 as pb
from ._types import ToolResult
from ._wire import TakeShared, parse_results

__all__ = ["PREFACE", "PREFACE_SHARED", "FramedStream", "FramedStreamError"]

#: What each side sends first: "tandem", then framing version 1.
PREFACE = b"tandemF1"
#: Version 2: version 1 plus a shared region for large results, if the sidecar grants one.
PREFACE_SHARED = b"tandemF2"
_KIND_MESSAGE = 1
_KIND_END = 2
#: Client to sidecar, version 2: every span ending at or before this offset is copied out.
_KIND_RELEASED = 3
_RELEASE = struct.Struct(">IBQ")
#: The region is released in steps of this share of it: a release frame per result would
#: cost this process a write each, and the sidecar sends on the socket while full.
_RELEASE_EVERY = 8
#: Version 2 needs a memfd passed over the socket, and Python's ``socket.recv_fds``.
SHARED_MEMORY_SUPPORTED = sys.platform == "linux" and hasattr(socket, "recv_fds")
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


class _SpanError(Exception):
    """A span that does not lie within the region, or was already released."""


class _Region:
    """A stream's shared region, mapped read-only: the sidecar writes each large result
    into it in the order its frames go out, and the client copies them out in that order
    and releases every byte before the last span it copied (one counter, sent now and
    then). The memfd is sealed at its size, so the map cannot fault."""

    def __init__(self, fd: int) -> None:
        try:
            self.size = os.fstat(fd).st_size
            if self.size <= 0:
                raise _SpanError("the sidecar passed an empty shared region")
            self.map = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)  # the map keeps its own reference
        #: Spans ending at or before this are copied out.
        self.copied = 0
        #: The last release sent: spans before it may already be overwritten.
        self.released = 0
        self.release_every = max(1, self.size // _RELEASE_EVERY)

    def take(self, span: pb.SharedSpan) -> bytes:
        """A copy of the result at ``span``."""
        at = span.offset % self.size
        stop = at + span.length
        if stop > self.size or span.offset < self.released:
            raise _SpanError(
                f"a shared result at offset {span.offset} ({span.length} bytes) outside "
                f"the {self.size}-byte region or already released (through {self.released})"
            )
        self.copied = max(self.copied, span.offset + span.length)
        return self.map[at:stop]

    def release_due(self) -> int | None:
        """The offset to release through now, if enough was copied since the last."""
        if self.copied - self.released < self.release_every:
            return None
        self.released = self.copied
        return self.copied


class _Protocol(asyncio.BufferedProtocol):
    """Parses the sidecar's frames as they arrive; see :class:`FramedStream`."""

    def __init__(
        self, max_frame_bytes: int, region: _Region | None = None, *, preface_read: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        self.max_frame_bytes = max_frame_bytes
        self.transport: asyncio.Transport | None = None
        #: Version 2's shared region, if the sidecar granted one.
        self.region = region
        self._take: TakeShared | None = region.take if region is not None else None
        #: "End of calls" was sent: the sidecar may no longer read releases.
        self.calls_ended = False
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
        if preface_read:
            # Version 2's handshake read the sidecar's preface off the bare socket.
            self.opened.set_result(None)
            self._need = _HEADER.size

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
        region = self.region
        if region is not None and not self.calls_ended and not self.closed:
            through = region.release_due()
            if through is not None:
                assert self.transport is not None
                self.transport.write(_RELEASE.pack(9, _KIND_RELEASED, through))
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
        if self.region is not None:
            # Every result was copied out as its frame was parsed; nothing views the map.
            self.region.map.close()
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
                try:
                    self.frames.append(parse_results(payload, self._take))
                except _SpanError as exc:
                    self._fail(str(exc))
                    return end
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

    def __init__(
        self,
        path: str,
        *,
        max_receive_bytes: int,
        preface_timeout: float = 10.0,
        shared_memory: bool = True,
    ) -> None:
        self.path = path
        self._max_receive_bytes = max_receive_bytes
        self._preface_timeout = preface_timeout
        self._shared_memory = shared_memory and SHARED_MEMORY_SUPPORTED
        self._protocol: _Protocol | None = None

    @property
    def shared_region_bytes(self) -> int:
        """The size of the stream's shared region; 0 without one."""
        protocol = self._protocol
        return protocol.region.size if protocol is not None and protocol.region else 0

    async def wait_for_connection(self) -> None:
        """Connect and exchange prefaces; :class:`FramedStreamError` if that fails."""
        if self._shared_memory:
            await self._open_shared()
            return
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

    async def _open_shared(self) -> None:
        """Version 2: the prefaces on the bare socket, since the region's descriptor comes
        with the sidecar's (asyncio's transports drop what comes beside the bytes); then
        the socket is handed to the event loop as version 1's would be."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        region: _Region | None = None
        try:
            try:
                await loop.sock_connect(sock, self.path)
            except OSError as exc:
                raise FramedStreamError(
                    f"UNAVAILABLE: cannot connect to frames:{self.path}: {exc.strerror or exc}"
                ) from exc
            try:
                async with asyncio.timeout(self._preface_timeout):
                    await loop.sock_sendall(sock, PREFACE_SHARED)
                    answer, fds = await _receive_preface(loop, sock)
            except TimeoutError:
                raise FramedStreamError(
                    f"UNAVAILABLE: no answer to the preface from frames:{self.path} in "
                    f"{self._preface_timeout:g}s (is it the sidecar's frames socket?)"
                ) from None
            except OSError as exc:
                raise FramedStreamError(
                    f"UNAVAILABLE: the frames preface with {self.path} failed: {exc}"
                ) from exc
            if answer == PREFACE_SHARED and len(fds) == 1:
                try:
                    region = _Region(fds[0])
                except (OSError, ValueError, _SpanError) as exc:
                    raise FramedStreamError(
                        f"UNAVAILABLE: cannot map the sidecar's shared region: {exc}"
                    ) from exc
            else:
                for fd in fds:
                    os.close(fd)
                if answer == PREFACE_SHARED:
                    raise FramedStreamError(
                        f"UNAVAILABLE: the sidecar at {self.path} answered version 2 without "
                        f"passing its shared region ({len(fds)} descriptors)"
                    )
                if answer != PREFACE:
                    raise FramedStreamError(
                        f"UNAVAILABLE: no tandem frames preface from the sidecar: {answer!r}"
                    )
            protocol = self._protocol = _Protocol(
                self._max_receive_bytes, region, preface_read=True
            )
            await loop.create_unix_connection(lambda: protocol, sock=sock)
        except BaseException:
            if region is not None:
                region.map.close()
            sock.close()
            raise

    async def write(self, frame: bytes) -> None:
        """Send one encoded ``DispatchFrame``; waits while the socket's buffer is full."""
        await self._send(_KIND_MESSAGE, frame)

    async def done_writing(self) -> None:
        """No more calls: the sidecar answers those in flight, then ends the stream."""
        if self._protocol is not None:
            self._protocol.calls_ended = True
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


async def _receive_preface(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> tuple[bytes, list[int]]:
    """The sidecar's 8-byte preface and any descriptors passed with it (closed again if
    this fails or is cancelled part way)."""
    data = b""
    fds: list[int] = []
    try:
        while len(data) < len(PREFACE):
            try:
                chunk, got, _flags, _addr = socket.recv_fds(sock, len(PREFACE) - len(data), 1)
            except BlockingIOError:
                readable: asyncio.Future[None] = loop.create_future()
                loop.add_reader(sock.fileno(), _resolve, readable)
                try:
                    await readable
                finally:
                    loop.remove_reader(sock.fileno())
                continue
            fds.extend(got)
            if not chunk:
                raise ConnectionResetError("the sidecar closed the connection during the preface")
            data += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return data, fds


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
