"""Request bodies within bounds: too large gets 413, too slow 408, and neither is read
further; a body within bounds reaches the application whole, and the client's leaving
after it still reaches the application.

A real uvicorn server on loopback with the brain's protocol, :class:`BoundedBody` around
a tiny ASGI app that records what it received, and raw sockets for the clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest
from api_server import connect, serving
from prometheus_client import CollectorRegistry

from brain._api.body import BoundedBody
from brain._api.limits import HttpLimits
from brain._metrics import HttpMetrics

MAX_BYTES = 64 * 1024
BODY_TIMEOUT = 0.5
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Recorder:
    """The application: answers with the body's length; ``/watch`` then waits for the
    client to leave and records that it saw it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.left = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(
            {"type": "http.response.body", "body": str(len(body)).encode(), "more_body": True}
        )
        if scope["path"] == "/watch":
            message = await receive()
            if message["type"] == "http.disconnect":
                self.left.set()
            return
        await send({"type": "http.response.body", "body": b""})


class Served:
    def __init__(self, port: int, app: Recorder, registry: CollectorRegistry) -> None:
        self.port = port
        self.app = app
        self.registry = registry

    def refused(self, reason: str) -> float:
        value = self.registry.get_sample_value("brain_http_refused_total", {"reason": reason})
        return 0.0 if value is None else value


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    limits = HttpLimits(max_body_bytes=MAX_BYTES, body_timeout=BODY_TIMEOUT)
    recorder = Recorder()
    app = BoundedBody(recorder, limits=limits, refused=metrics.refused)
    async with serving(app, limits, metrics) as port:
        yield Served(port, recorder, registry)


def head(path: str, length: int | None = None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n".encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def answer_then_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent; fails unless it closes within 5 s."""
    return await asyncio.wait_for(reader.read(), 5)


async def test_a_body_within_bounds_arrives_whole_in_pieces(served: Served) -> None:
    body = bytes(range(256)) * (MAX_BYTES // 256)  # exactly the limit
    async with connect(served.port) as (reader, writer):
        writer.write(head("/", None))
        for i in range(0, len(body), 10_000):
            writer.write(chunk(body[i : i + 10_000]))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert answer.startswith(b"HTTP/1.1 200")
    assert served.app.bodies == [body]


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    served: Served,
) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(head("/", 300 * 1024 * 1024))
        await writer.drain()
        answer = await answer_then_close(reader)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in answer.lower()
    assert b"the request body is 314572800 bytes; at most 65536 are accepted" in answer
    assert served.app.bodies == []
    assert served.refused("body_too_large") == 1


async def test_a_chunked_body_is_refused_at_the_first_byte_past_the_limit(
    served: Served,
) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(head("/", None))
        writer.write(chunk(b"x" * MAX_BYTES))
        writer.write(chunk(b"y"))  # one past: no end of the body follows
        await writer.drain()
        answer = await answer_then_close(reader)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"over 65536 bytes" in answer
    assert served.app.bodies == []
    assert served.refused("body_too_large") == 1


async def test_a_body_still_arriving_at_its_deadline_gets_408(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(head("/", 100) + b"{")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), BODY_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within 0.5 s of its head" in answer
    assert served.app.bodies == []
    assert served.refused("body_timeout") == 1


async def test_a_client_leaving_mid_body_is_not_answered(served: Served) -> None:
    async with connect(served.port) as (_, writer):
        writer.write(head("/", 100) + b"{")
        await writer.drain()
    await asyncio.sleep(BODY_TIMEOUT * 2)
    assert served.app.bodies == []
    assert served.refused("body_timeout") == 0


async def test_after_the_body_the_application_sees_the_client_leave(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(head("/watch", 2) + b"{}")
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(served.app.left.wait(), 5)
    assert served.app.bodies == [b"{}"]


async def test_a_request_without_a_body_passes(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert answer.startswith(b"HTTP/1.1 200")
    assert served.app.bodies == [b""]
