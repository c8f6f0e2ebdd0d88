"""An HTTP upstream that misbehaves on purpose, written on raw asyncio sockets.

aiohttp (the harness's :class:`harness.Upstream`) only speaks correct HTTP; this server
writes whatever bytes a scenario says, so tests can send what real upstreams and
middleboxes sometimes do: bodies shorter or longer than announced, bodies that drip,
encodings nobody asked for, resets in the middle of headers or body, error pages of
50 MB, malformed status lines and headers, absurd quota headers.

The server runs in its own thread and event loop on 127.0.0.1. A scenario is chosen by
the request path (``/<scenario>``); :attr:`HostileUpstream.requests` counts requests per
scenario, and :attr:`HostileUpstream.sent` the bytes each scenario managed to write.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gzip
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from loop_server import LoopServer

Scenario = Callable[[asyncio.StreamWriter], Awaitable[None]]

MB = 1024 * 1024


def head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class HostileUpstream(LoopServer):
    def __init__(self) -> None:
        super().__init__()
        self.requests: collections.Counter[str] = collections.Counter()
        self.sent: collections.Counter[str] = collections.Counter()
        self._scenarios: dict[str, Scenario] = {
            "truncated": self.truncated,
            "drip": self.drip,
            "lying-length": self.lying_length,
            "gzip": self.gzip_json,
            "gzip-bomb": self.gzip_bomb,
            "br": self.brotli,
            "reset-in-headers": self.reset_in_headers,
            "reset-in-body": self.reset_in_body,
            "reset-in-503-body": self.reset_in_503_body,
            "huge-503": self.huge_503,
            "huge-503-chunked": self.huge_503_chunked,
            "huge-200": self.huge_200,
            "bad-status-line": self.bad_status_line,
            "bad-header": self.bad_header,
            "endless-head": self.endless_head,
            "absurd-quota": self.absurd_quota,
            "nan-retry-after": self.nan_retry_after,
            "ok": self.ok,
        }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one scenario per request
                request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                target = request.split(b" ", 2)[1].decode()
                length = 0
                for line in request.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                name = target.split("?", 1)[0].strip("/")
                self.requests[name] += 1
                scenario = self._scenarios.get(name)
                if scenario is None:
                    writer.write(head("404 Not Found", {"Content-Length": "0"}))
                    await writer.drain()
                    continue
                await scenario(writer)
                if writer.is_closing():
                    return
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.transport.abort()

    async def _send(self, name: str, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.sent[name] += len(data)

    # ------------------------------------------------------------------ scenarios

    async def ok(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"ok":true}'
        await self._send("ok", writer, head("200 OK", _json(len(body))) + body)

    async def truncated(self, writer: asyncio.StreamWriter) -> None:
        """Announces 1000 bytes, sends 10, closes."""
        await self._send("truncated", writer, head("200 OK", _json(1000)) + b'{"partial"')
        writer.close()

    async def drip(self, writer: asyncio.StreamWriter) -> None:
        """One byte every 100 ms, far past any deadline; stops when the client leaves."""
        await self._send("drip", writer, head("200 OK", _json(10_000)))
        for _ in range(10_000):
            await self._send("drip", writer, b" ")
            await asyncio.sleep(0.1)

    async def lying_length(self, writer: asyncio.StreamWriter) -> None:
        """Content-Length 5 with a longer JSON body: the reader stops at 5 bytes."""
        body = b'{"ok": true, "padding": "xxxxxxxx"}'
        await self._send("lying-length", writer, head("200 OK", _json(5)) + body)
        writer.close()

    async def gzip_json(self, writer: asyncio.StreamWriter) -> None:
        """Valid JSON, gzip-encoded, though the sidecar never sent Accept-Encoding."""
        body = gzip.compress(json.dumps({"ok": True}).encode())
        headers = {**_json(len(body)), "Content-Encoding": "gzip"}
        await self._send("gzip", writer, head("200 OK", headers) + body)

    async def gzip_bomb(self, writer: asyncio.StreamWriter) -> None:
        """~100 KB that would inflate to 100 MB."""
        body = _bomb()
        headers = {**_json(len(body)), "Content-Encoding": "gzip"}
        await self._send("gzip-bomb", writer, head("200 OK", headers) + body)

    async def brotli(self, writer: asyncio.StreamWriter) -> None:
        body = os.urandom(256)
        headers = {**_json(len(body)), "Content-Encoding": "br"}
        await self._send("br", writer, head("200 OK", headers) + body)

    async def reset_in_headers(self, writer: asyncio.StreamWriter) -> None:
        await self._send("reset-in-headers", writer, b"HTTP/1.1 200 OK\r\nContent-Le")
        reset(writer)

    async def reset_in_body(self, writer: asyncio.StreamWriter) -> None:
        await self._send("reset-in-body", writer, head("200 OK", _json(1000)) + b'{"a":')
        await asyncio.sleep(0.05)
        reset(writer)

    async def reset_in_503_body(self, writer: asyncio.StreamWriter) -> None:
        await self._send(
            "reset-in-503-body", writer, head("503 Service Unavailable", _json(1000)) + b'{"a":'
        )
        await asyncio.sleep(0.05)
        reset(writer)

    async def huge_503(self, writer: asyncio.StreamWriter) -> None:
        """A 50 MB error page with its length announced."""
        await self._huge("huge-503", writer, "503 Service Unavailable", chunked=False)

    async def huge_503_chunked(self, writer: asyncio.StreamWriter) -> None:
        """A 50 MB error page, chunked: the size shows only while reading."""
        await self._huge("huge-503-chunked", writer, "503 Service Unavailable", chunked=True)

    async def huge_200(self, writer: asyncio.StreamWriter) -> None:
        await self._huge("huge-200", writer, "200 OK", chunked=True)

    async def _huge(
        self, name: str, writer: asyncio.StreamWriter, status: str, *, chunked: bool
    ) -> None:
        total = 50 * MB
        block = b"x" * (64 * 1024)
        if chunked:
            headers = {"Content-Type": "text/html", "Transfer-Encoding": "chunked"}
        else:
            headers = {"Content-Type": "text/html", "Content-Length": str(total)}
        await self._send(name, writer, head(status, headers))
        for _ in range(total // len(block)):
            data = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
            await self._send(name, writer, data)
        if chunked:
            await self._send(name, writer, b"0\r\n\r\n")

    async def bad_status_line(self, writer: asyncio.StreamWriter) -> None:
        await self._send("bad-status-line", writer, b"HTTP/1.1 TWO-HUNDRED OK\r\n\r\n{}")
        writer.close()

    async def bad_header(self, writer: asyncio.StreamWriter) -> None:
        data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nNo colon here\r\n\r\n{}"
        await self._send("bad-header", writer, data)
        writer.close()

    async def endless_head(self, writer: asyncio.StreamWriter) -> None:
        """A status line, then header lines without end (up to 4 MiB, ten times what a
        client should hold of a response's head); the client must give up, not buffer."""
        await self._send("endless-head", writer, b"HTTP/1.1 200 OK\r\n")
        lines = (b"X-Pad: " + b"a" * 1017 + b"\r\n") * 64
        for _ in range(64):
            await self._send("endless-head", writer, lines)
        writer.close()

    async def absurd_quota(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"ok":true}'
        headers = {
            **_json(len(body)),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": "1e30",
        }
        await self._send("absurd-quota", writer, head("200 OK", headers) + body)

    async def nan_retry_after(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"error":"slow down"}'
        headers = {**_json(len(body)), "Retry-After": "nan"}
        await self._send("nan-retry-after", writer, head("429 Too Many Requests", headers) + body)


@functools.cache
def _bomb() -> bytes:
    return gzip.compress(b"[" + b"0," * (50 * MB) + b"0]", compresslevel=9)


def _json(length: int) -> dict[str, str]:
    return {"Content-Type": "application/json", "Content-Length": str(length)}
