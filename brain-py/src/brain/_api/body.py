"""``BoundedBody``: ASGI middleware that reads each request's body whole, within bounds,
before the application sees the request.

Starlette (under FastAPI) reads a body whole into memory whatever its size, and waits for
it without a deadline; neither it nor uvicorn has a setting for either (Starlette bounds
multipart parts only). The API's bodies are small JSON documents, so reading one whole
here costs nothing extra: FastAPI would read it whole anyway. A body over
``max_body_bytes`` is answered 413 (at once when its ``Content-Length`` says so, else at
the first byte past the limit) and one still arriving ``body_timeout`` after its head
408, each with ``Connection: close`` (the rest of the body is never read). The
application then receives the body in one message and, after it, the client's own
messages (its disconnect), so a handler that watches for the client leaving still sees
it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .limits import HttpLimits

__all__ = ["BoundedBody"]

log = logging.getLogger("brain.api")


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class BoundedBody:
    """Reads the body within ``limits``; ``refused(reason)`` counts each refusal
    (``body_too_large``, ``body_timeout``)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: HttpLimits,
        refused: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = limits.max_body_bytes
        self.timeout = limits.body_timeout
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(
                send,
                413,
                "body_too_large",
                f"the request body is {declared} bytes; at most {self.max_bytes} are accepted",
            )
            return
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(receive)
        except _TooLarge:
            await self._refuse(
                send,
                413,
                "body_too_large",
                f"the request body is over {self.max_bytes} bytes; at most {self.max_bytes} "
                "are accepted",
            )
            return
        except TimeoutError:
            await self._refuse(
                send,
                408,
                "body_timeout",
                f"the request body did not arrive within {self.timeout:g} s of its head",
            )
            return
        except _ClientGone:
            return  # nobody to answer
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _refuse(self, send: Send, status: int, reason: str, detail: str) -> None:
        if self.refused is not None:
            self.refused(reason)
        log.debug("request refused reason=%s status=%d", reason, status)
        body = orjson.dumps({"detail": detail})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The declared body size; ``None`` when there is none (h11 has already refused a
    malformed one with 400)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the application: the body in one message, then the client's."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
