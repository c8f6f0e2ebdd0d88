"""The API's HTTP protocol: late request heads close the connection, answers are never cut.

A real uvicorn server on loopback (the brain runs on uvloop, so both loops), a tiny ASGI
app, and raw sockets for the clients that misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import uvicorn

from brain._api.protocol import head_deadline_protocol
from brain._api.server import _Server

HEAD_TIMEOUT = 0.5
KEEP_ALIVE = 2.0
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/slow``: an answer that streams for three head timeouts; anything else: ``ok``."""
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"] == "/slow":
        for _ in range(6):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(HEAD_TIMEOUT / 2)
    await send({"type": "http.response.body", "body": b"ok\n"})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=int(KEEP_ALIVE),
        http=head_deadline_protocol(HEAD_TIMEOUT),
    )
    server = _Server(config)  # the brain's: uvicorn's signal handlers left alone
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    yield sock.getsockname()[1]
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before closing; fails if it has not closed in ``seconds``."""
    return await asyncio.wait_for(reader.read(), seconds)


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


async def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    async with connect(port) as (reader, _):
        assert await closed_within(reader, HEAD_TIMEOUT + 2) == b""


async def test_a_head_begun_and_never_finished_is_closed(port: int) -> None:
    async with connect(port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHo")
        await writer.drain()
        assert await closed_within(reader, HEAD_TIMEOUT + 2) == b""


async def test_a_long_answer_is_not_cut_and_the_connection_is_kept_alive(port: int) -> None:
    async with connect(port) as (reader, writer):
        writer.write(request("/slow"))
        await writer.drain()
        body = b""
        while not body.endswith(b"0\r\n\r\n"):
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            assert chunk, "closed while answering"
            body += chunk
        assert body.count(b"tick") == 6
        # Kept alive after the answer: a next request, past the first head's deadline
        # but within the keep-alive time.
        await asyncio.sleep(HEAD_TIMEOUT * 1.2)
        writer.write(request("/"))
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 200")


async def test_after_an_answer_a_partial_head_is_closed_at_the_keep_alive_time(
    port: int,
) -> None:
    async with connect(port) as (reader, writer):
        writer.write(request("/"))
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        writer.write(b"GET / HT")
        await writer.drain()
        assert await closed_within(reader, KEEP_ALIVE + 2) == b""
