"""What a misbehaving HTTP/2 origin writes, as scripts for :meth:`h2_upstream.H2Upstream.script`.

:mod:`hostile.upstream` does this for HTTP/1.1 on raw sockets; on HTTP/2 the interesting
failures are per stream or per connection, and one origin's connection carries every call
to it, so what one bad answer does to the calls beside it matters as much as its own
result. Each script answers one stream through the connection's ``h2`` state machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import h2.errors

if TYPE_CHECKING:
    from h2_upstream import _Connection

Script = Callable[["_Connection", int], Awaitable[None]]

MB = 1024 * 1024
JSON_HEAD = [(":status", "200"), ("content-type", "application/json")]
#: A piece of a JSON array that never ends: ``[0,0,0,...``.
ENDLESS_PIECE = b"0," * 8192


async def endless(conn: _Connection, sid: int) -> None:
    """A 200 whose body never ends, sent as fast as flow control lets it."""
    conn.h2.send_headers(sid, JSON_HEAD)
    conn.h2.send_data(sid, b"[")
    while True:
        room = await conn.room(sid)
        conn.h2.send_data(sid, ENDLESS_PIECE[:room])
        conn.flush()
        await asyncio.sleep(0)  # let the client's frames (a reset) in


async def huge_headers(conn: _Connection, sid: int) -> None:
    """Response headers of 256 KiB (HPACK cannot shrink random-looking values much)."""
    junk = [(f"x-junk-{i}", f"{i:08x}" * 64) for i in range(512)]
    conn.h2.send_headers(sid, [*JSON_HEAD, ("content-length", "2"), *junk])
    conn.h2.send_data(sid, b"{}", end_stream=True)


async def many_headers(conn: _Connection, sid: int) -> None:
    """800 one-byte headers: 6 KiB on the wire, one frame, but 30 KiB by HTTP/2's count
    (each field counts 32 bytes more than its name and value)."""
    junk = [(f"x-{i}", "1") for i in range(800)]
    conn.h2.send_headers(sid, [*JSON_HEAD, ("content-length", "2"), *junk])
    conn.h2.send_data(sid, b"{}", end_stream=True)


async def long_body_for_its_length(conn: _Connection, sid: int) -> None:
    """``content-length: 2`` and then 1 KiB of data (a protocol error per RFC 9113 8.1.1)."""
    conn.h2.send_headers(sid, [*JSON_HEAD, ("content-length", "2")])
    # h2 checks its own peer's lengths, not what it sends: write the frames below it.
    conn.h2.send_data(sid, b'{"padding": "' + b"x" * 1000 + b'"}', end_stream=True)


async def drip(conn: _Connection, sid: int) -> None:
    """Headers at once, then one byte of the body every 50 ms."""
    conn.h2.send_headers(sid, [*JSON_HEAD, ("content-length", "1000")])
    conn.flush()
    while True:
        await asyncio.sleep(0.05)
        conn.h2.send_data(sid, b" ")
        conn.flush()


async def reset_in_body(conn: _Connection, sid: int) -> None:
    """Half a body, then RST_STREAM with INTERNAL_ERROR."""
    conn.h2.send_headers(sid, [*JSON_HEAD, ("content-length", "1000")])
    conn.h2.send_data(sid, b'{"items": [' + b"1," * 200)
    conn.flush()
    await asyncio.sleep(0.05)
    conn.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)


async def goaway_in_body(conn: _Connection, sid: int) -> None:
    """Half a body, then GOAWAY with INTERNAL_ERROR and the connection closed: every
    stream on it ends."""
    conn.h2.send_headers(sid, [*JSON_HEAD, ("content-length", "1000")])
    conn.h2.send_data(sid, b'{"items": [' + b"1," * 200)
    conn.flush()
    await asyncio.sleep(0.05)
    conn.h2.close_connection(h2.errors.ErrorCodes.INTERNAL_ERROR, last_stream_id=sid)
    conn.flush()
    conn.writer.close()


async def huge_error_page(conn: _Connection, sid: int) -> None:
    """A 503 with a 50 MB body, as fast as flow control lets it."""
    conn.h2.send_headers(
        sid, [(":status", "503"), ("content-type", "text/html"), ("content-length", str(50 * MB))]
    )
    left = 50 * MB
    page = b"<p>down</p>" * 2000
    while left:
        room = min(await conn.room(sid), left, len(page))
        left -= room
        conn.h2.send_data(sid, page[:room], end_stream=not left)
        conn.flush()
        await asyncio.sleep(0)


SCRIPTS: dict[str, Script] = {
    "endless": endless,
    "huge-headers": huge_headers,
    "many-headers": many_headers,
    "long-body-for-its-length": long_body_for_its_length,
    "drip": drip,
    "reset-in-body": reset_in_body,
    "goaway-in-body": goaway_in_body,
    "huge-503": huge_error_page,
}
