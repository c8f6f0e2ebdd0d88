"""The API's HTTP protocol: connections past a cap are refused at once, late request heads
close the connection, answers are never cut.

A real uvicorn server on loopback (the brain runs on uvloop, so both loops), a tiny ASGI
app, and raw sockets for the clients that misbehave; other peers come from 127.0.0.2 and
127.0.0.3 (any of 127.0.0.0/8 reaches a loopback port).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest
from api_server import connect, serving
from prometheus_client import CollectorRegistry

from brain._api.limits import HttpLimits
from brain._metrics import HttpMetrics

HEAD_TIMEOUT = 0.5
KEEP_ALIVE = 2.0
#: The caps of the connection tests (their head deadline is long: they hold connections).
MAX_CONNECTIONS = 6
PER_PEER = 4
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


def running(
    limits: HttpLimits, metrics: HttpMetrics | None = None
) -> contextlib.AbstractAsyncContextManager[int]:
    return serving(app, limits, metrics, keep_alive=int(KEEP_ALIVE))


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with running(HttpLimits(head_timeout=HEAD_TIMEOUT)) as p:
        yield p


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before closing; fails if it has not closed in ``seconds``."""
    return await asyncio.wait_for(reader.read(), seconds)


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


async def served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether a request on this open connection is answered 200."""
    writer.write(request("/"))
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    return answer.startswith(b"HTTP/1.1 200")


async def refused_busy(port: int, source: str) -> bool:
    """Whether a new connection from ``source`` is answered 503 and closed without having
    sent anything."""
    async with connect(port, source) as (reader, _):
        answer = await closed_within(reader, 5)
    return answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()


def count(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def settles(value: Callable[[], float], expected: float) -> None:
    """Waits (up to 5 s) for ``value()`` to be ``expected``: the server sees a client's
    close on its next loop turn, not at once."""
    for _ in range(500):
        if value() == expected:
            return
        await asyncio.sleep(0.01)
    assert value() == expected


async def test_one_address_gets_its_share_and_the_others_are_still_served() -> None:
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    limits = HttpLimits(
        head_timeout=30, max_connections=MAX_CONNECTIONS, max_connections_per_peer=PER_PEER
    )
    async with running(limits, metrics) as port, contextlib.AsyncExitStack() as held:
        flood = [await held.enter_async_context(connect(port)) for _ in range(PER_PEER)]
        assert await refused_busy(port, "127.0.0.1")
        assert await refused_busy(port, "127.0.0.1")
        # Every admitted connection is served, and so is another address.
        for reader, writer in flood:
            assert await served(reader, writer)
        async with connect(port, "127.0.0.2") as other:
            assert await served(*other)
        assert count(registry, "brain_http_refused_total", {"reason": "connections"}) == 2
        # The other address's connection has ended, the flood's are open.
        await settles(lambda: count(registry, "brain_http_connections"), PER_PEER)
    await settles(lambda: count(registry, "brain_http_connections"), 0)


async def test_past_the_cap_every_address_is_refused_until_a_connection_ends() -> None:
    limits = HttpLimits(
        head_timeout=30, max_connections=MAX_CONNECTIONS, max_connections_per_peer=PER_PEER
    )
    async with running(limits) as port, contextlib.AsyncExitStack() as held:
        mine = [await held.enter_async_context(connect(port)) for _ in range(PER_PEER)]
        others = [
            await held.enter_async_context(connect(port, "127.0.0.2"))
            for _ in range(MAX_CONNECTIONS - PER_PEER)
        ]
        assert await refused_busy(port, "127.0.0.3")
        # One ends: its place is free again, for anyone.
        _, writer = mine.pop()
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            async with connect(port, "127.0.0.3") as (r, w):
                w.write(request("/"))
                await w.drain()
                answer = await asyncio.wait_for(r.readuntil(b"\r\n"), 5)
            if answer.startswith(b"HTTP/1.1 200"):
                break
            assert answer.startswith(b"HTTP/1.1 503")
            await asyncio.sleep(0.01)  # the server has not seen the close yet
        else:
            raise AssertionError("the freed place was never given out")
        for connection in [*mine, *others]:
            assert await served(*connection)


async def test_a_head_timeout_is_counted() -> None:
    registry = CollectorRegistry()
    limits = HttpLimits(head_timeout=HEAD_TIMEOUT)
    async with running(limits, HttpMetrics(registry)) as port, connect(port) as (reader, _):
        assert await closed_within(reader, HEAD_TIMEOUT + 2) == b""
    assert count(registry, "brain_http_refused_total", {"reason": "head_timeout"}) == 1
