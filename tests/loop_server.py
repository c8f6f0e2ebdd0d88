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
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
