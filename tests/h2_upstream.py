"""A real HTTP/2 upstream on loopback: h2c with prior knowledge, on the ``h2`` package's
protocol state machine, in its own thread and event loop.

aiohttp (the harness's :class:`harness.Upstream`) speaks only HTTP/1.1, and what the
sidecar does with an HTTP/2 origin is visible only at the protocol's level: how many
connections it opens, how many streams it keeps open at once, and which streams it
resets (a cancelled call must reset its stream, not leave it running upstream). This
server counts all three, and answers each route with a fixed body after an optional
delay, or never (``hold``), so a test can cancel a call mid-flight.

Its counters are written on the server's thread; read them from a test's event loop
without blocking it (``asyncio.to_thread(hostile.streams.wait_until, ...)``).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from loop_server import LoopServer


@dataclass(frozen=True)
class Route:
    body: bytes
    status: int = 200
    delay: float = 0.0
    #: Never answer: the stream stays open until the client resets it.
    hold: bool = False
    #: Drop the whole connection instead of answering (a peer restarting).
    drop: bool = False
    #: Answer with this instead (what a misbehaving origin writes; tests/hostile/h2_origin.py).
    script: Callable[[_Connection, int], Awaitable[None]] | None = None


class H2Upstream(LoopServer):
    """An h2c server whose routes a test defines (path without the query → answer)."""

    def __init__(
        self, *, max_concurrent_streams: int = 1000, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: speak TLS (its context should offer ALPN ``h2``) instead of h2c."""
        super().__init__(tls=tls)
        self.max_concurrent_streams = max_concurrent_streams
        self.connections = 0
        self.requests: collections.Counter[str] = collections.Counter()
        #: Streams the client reset (RST_STREAM), by path.
        self.resets: collections.Counter[str] = collections.Counter()
        #: The most streams open at once on any one connection.
        self.max_open = 0

        self._routes: dict[str, Route] = {}
        #: Requests still to refuse (RST_STREAM with REFUSED_STREAM), by path.
        self._refusals: collections.Counter[str] = collections.Counter()
        self._refusal_code = h2.errors.ErrorCodes.REFUSED_STREAM
        #: Streams refused, by path.
        self.refused: collections.Counter[str] = collections.Counter()
        #: Requests still to answer with a graceful shutdown of their connection, by path.
        self._shutdowns: collections.Counter[str] = collections.Counter()
        self._open: set[_Connection] = set()

    def json(self, path: str, body: bytes, *, status: int = 200, delay: float = 0.0) -> None:
        self._routes[path] = Route(body, status, delay)

    def hold(self, path: str) -> None:
        self._routes[path] = Route(b"", hold=True)

    def drop(self, path: str) -> None:
        self._routes[path] = Route(b"", drop=True)

    def script(self, path: str, script: Callable[[_Connection, int], Awaitable[None]]) -> None:
        """Answer ``path`` with ``script(connection, stream_id)``: it writes through the
        connection's ``h2`` state machine and :meth:`_Connection.flush`."""
        self._routes[path] = Route(b"", script=script)

    def refuse(
        self,
        path: str,
        times: int,
        code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.REFUSED_STREAM,
    ) -> None:
        """Reset the next ``times`` requests for ``path`` with ``code``: by default
        REFUSED_STREAM, unprocessed, as a server over its stream limit does; its route
        answers the ones after."""
        self._refusals[path] = times
        self._refusal_code = code

    def shut_down_on(self, path: str, times: int) -> None:
        """Answer the next ``times`` requests for ``path`` by shutting their connection
        down gracefully before taking them (GOAWAY with NO_ERROR and a last stream before
        theirs, as a server restarting does), then closing it."""
        self._shutdowns[path] = times

    def paths_open(self) -> list[str]:
        """The paths of the streams still open, on every connection."""
        return [path for conn in list(self._open) for path in list(conn.paths.values())]

    def route(self, path: str) -> Route:
        return self._routes.get(path) or Route(b'{"error": "no route"}', status=404)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = _Connection(self, writer)
        self._open.add(conn)
        try:
            await conn.serve(reader)
        except ConnectionError:
            pass
        finally:
            self._open.discard(conn)
            conn.close()


class _Connection:
    """One client connection: its streams, and the handlers answering them."""

    def __init__(self, server: H2Upstream, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        # In the first SETTINGS frame, as servers announce it. A stream over it is a
        # connection error here (h2 raises TooManyStreamsError); nginx refuses the stream.
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_concurrent_streams
            },
        )
        self.paths: dict[int, str] = {}
        self.handlers: dict[int, asyncio.Task[None]] = {}
        #: Set when the client opens flow-control windows (a large body waits on it).
        self.window = asyncio.Event()

    async def room(self, sid: int) -> int:
        """Bytes ``sid`` may send now (flow control and frame size), waiting for a window
        update while there are none."""
        while True:
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room > 0:
                return room
            self.window.clear()
            self.flush()
            await self.window.wait()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        self.h2.initiate_connection()
        self.flush()
        while data := await reader.read(65536):
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.flush()
                return
            for event in events:
                self.on_event(event)
            self.flush()

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or [])
            path = str(headers.get(":path", "/")).split("?", 1)[0]
            sid = event.stream_id
            self.server.requests[path] += 1
            if self.server._refusals[path] > 0:
                self.server._refusals[path] -= 1
                self.server.refused[path] += 1
                self.h2.reset_stream(sid, self.server._refusal_code)
                return
            if self.server._shutdowns[path] > 0:
                self.server._shutdowns[path] -= 1
                self.server.refused[path] += 1
                self.h2.close_connection(h2.errors.ErrorCodes.NO_ERROR, last_stream_id=sid - 2)
                self.flush()
                self.writer.close()
                return
            self.paths[sid] = path
            self.server.max_open = max(self.server.max_open, len(self.paths))
            self.handlers[sid] = asyncio.create_task(self.answer(sid, path))
        elif isinstance(event, h2.events.StreamReset):
            path = self.paths.pop(event.stream_id, None)
            if path is not None:
                self.server.resets[path] += 1
            handler = self.handlers.pop(event.stream_id, None)
            if handler is not None:
                handler.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            self.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.writer.close()

    async def answer(self, sid: int, path: str) -> None:
        route = self.server.route(path)
        if route.drop:
            self.writer.transport.abort()
            return
        if route.script is not None:
            try:
                await route.script(self, sid)
            except h2.exceptions.StreamClosedError:
                pass  # the client reset it
            finally:
                self.paths.pop(sid, None)
                self.handlers.pop(sid, None)
                self.flush()
            return
        if route.hold:
            await asyncio.Event().wait()
        if route.delay:
            await asyncio.sleep(route.delay)
        try:
            self.h2.send_headers(
                sid,
                [
                    (":status", str(route.status)),
                    ("content-type", "application/json"),
                    ("content-length", str(len(route.body))),
                ],
                end_stream=not route.body,
            )
            body = memoryview(route.body)
            while body:
                room = await self.room(sid)
                chunk, body = body[:room], body[room:]
                self.h2.send_data(sid, bytes(chunk), end_stream=not body)
                self.flush()
        except h2.exceptions.StreamClosedError:
            pass  # the client reset it meanwhile
        finally:
            self.paths.pop(sid, None)
            self.handlers.pop(sid, None)
            self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        for handler in self.handlers.values():
            handler.cancel()
        self.writer.close()
