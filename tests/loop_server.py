"""A raw asyncio TCP server on 127.0.0.1 in its own thread and event loop.

The tests' loopback upstreams (:class:`harness.Upstream` on aiohttp,
:mod:`hostile.upstream`'s misbehaving HTTP/1.1, :mod:`h2_upstream`'s HTTP/2) share this
much: a test's client load never stalls them, they start on a free port, and stopping
them cancels whatever they are still serving. A subclass answers each connection in
:meth:`LoopServer._handle`, or starts a server of its own in :meth:`LoopServer._start`.
With ``tls`` (a server-side ``ssl.SSLContext``) it speaks TLS and its URL is https.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Self


class LoopServer:
    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.port = 0
        self.tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Connections before the subclass's own shutdown: aiohttp's cleanup waits (up to
        # a minute) on a connection that has not sent its request yet, and one accepted
        # just before the listener closed may register after that cleanup has looked.
        await _abort_open_connections()
        await self._shutdown()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await _abort_open_connections()

    async def _shutdown(self) -> None:
        """A subclass's own shutdown, run once its connections are aborted."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


async def _abort_open_connections() -> None:
    """Abort every connection still open on the running loop, and let their sockets close.

    Stopping the server and cancelling its handlers is not enough: a connection accepted
    as the server stopped (the sidecar's pool connects ahead of need, thousands at once in
    the 10,000-call test), or one a killed client left half closed, can still be open when
    the loop closes. Its transport, garbage-collected later, then failed another test's
    teardown with an unraisable ResourceWarning; a fixed sleep before closing the loop only
    made that rarer on a busy machine. asyncio 3.11 has no public list of a server's
    connections (``Server.close_clients`` is 3.13), so this reads the selector loop's own
    registry of transports by file descriptor.
    """
    registry = getattr(asyncio.get_running_loop(), "_transports", None)
    if registry is None:
        return
    # A pass can start more work (a handler ending, a cancelled accept closing the
    # transport it made), so pass until one finds no socket open. A transport that is
    # closing is not done either: close() waits for its write buffer to drain, which a
    # client that does not read never lets happen. abort() closes the socket in a
    # callback it schedules at once, which runs before this resumes.
    # Each pass first yields, so that an accept already scheduled makes its transport
    # before the pass looks (a pass that looked first and found nothing returned while
    # such a transport was being made).
    for _ in range(100):
        await asyncio.sleep(0)
        still_open = [t for t in list(registry.values()) if _socket_open(t)]
        if not still_open:
            return
        for transport in still_open:
            transport.abort()


def _socket_open(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.fileno() != -1
