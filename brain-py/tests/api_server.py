"""The brain's API server pieces on loopback, for the tests of its HTTP bounds: uvicorn
with the brain's protocol (:func:`~brain._api.protocol.api_protocol`) serving any ASGI
app, and raw connections for the clients that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

from brain._api.limits import HttpLimits
from brain._api.protocol import api_protocol
from brain._api.server import _Server
from brain._metrics import HttpMetrics


@contextlib.asynccontextmanager
async def serving(
    app: ASGIApp,
    limits: HttpLimits,
    metrics: HttpMetrics | None = None,
    *,
    keep_alive: int = 5,
) -> AsyncIterator[int]:
    """uvicorn serving ``app`` on 127.0.0.1 with the brain's protocol under ``limits``;
    yields its port, and stops it after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=keep_alive,
        http=api_protocol(limits, metrics),
    )
    server = _Server(config)  # the brain's: uvicorn's signal handlers left alone
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def connect(
    port: int, source: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to ``port`` from ``source`` (any of 127.0.0.0/8 reaches it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
