"""The HTTP protocol the API is served with: uvicorn's h11, with connection caps and a
deadline on request heads (the bounds are :class:`~.limits.HttpLimits`).

**Connection caps.** uvicorn accepts every connection and keeps it until the client or a
timeout ends it; ``limit_concurrency`` only answers 503 once a request has arrived, so a
flood of connections that send nothing still held a file descriptor and a protocol object
each. Here a connection past ``max_connections``, or past ``max_connections_per_peer``
from its address, is answered 503 (``Retry-After: 1``, ``Connection: close``) and closed
as it is accepted, before anything of it is read: what refused connections cost ends
there. (A client still sending its request when the close comes may see a reset instead
of the 503; either way it is told at once.)

**Head deadline.** uvicorn closes a connection only while it idles after a response
(``timeout_keep_alive``), and any byte received cancels that timer, so a connection that
sends nothing, or a few bytes of a request head and then nothing, stayed open for good.
Here the first request head must arrive within ``head_timeout`` of the connection
opening, and each later one within uvicorn's ``timeout_keep_alive`` of the previous
response ending (the idle time clients and load balancers already expect, now also for a
head begun and never finished); a request being answered (an event stream that follows a
run included) is never cut. The body's own deadline is :mod:`.body`'s.

uvicorn has neither setting (h11 and httptools alike), so this is a small subclass; the
tests in ``tests/test_api_protocol.py`` pin its behaviour to the uvicorn version in the
constraints.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from uvicorn.protocols.http.h11_impl import H11Protocol

from .._metrics import HttpMetrics
from .limits import HttpLimits

__all__ = ["api_protocol"]

_BUSY_BODY = b'{"detail":"too many connections to the brain; retry after Retry-After seconds"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


def api_protocol(limits: HttpLimits, metrics: HttpMetrics | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with ``limits``' connection caps and head deadline.

    One class per server: the per-address counts live in its closure.
    """
    # Admitted connections only: uvicorn's own set also holds refused ones until their
    # close completes, which under a flood would refuse more than the caps say.
    per_peer: Counter[str] = Counter()
    admitted = 0
    head_timeout = limits.head_timeout

    class GuardedH11(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None
        _peer: str | None = None  # set while this connection counts against its address

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal admitted
            super().connection_made(transport)  # type: ignore[arg-type]
            peer = self.client[0] if self.client else ""
            if (
                admitted >= limits.max_connections
                or per_peer[peer] >= limits.max_connections_per_peer
            ):
                if metrics is not None:
                    metrics.refused("connections")
                self.transport.write(_BUSY)
                self.transport.close()
                return
            self._peer = peer
            per_peer[peer] += 1
            admitted += 1
            if metrics is not None:
                metrics.connections.inc()
            self._arm(head_timeout)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._answering():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._answering():
                self._arm(self.timeout_keep_alive)

        def connection_lost(self, exc: Exception | None) -> None:
            nonlocal admitted
            self._disarm()
            if self._peer is not None:
                admitted -= 1
                per_peer[self._peer] -= 1
                if not per_peer[self._peer]:
                    del per_peer[self._peer]
                self._peer = None
                if metrics is not None:
                    metrics.connections.dec()
            super().connection_lost(exc)

        def _answering(self) -> bool:
            """Whether a request's head has arrived and its response has not ended."""
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._head_deadline = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _late(self) -> None:
            self._head_deadline = None
            # An upgraded connection (a WebSocket) belongs to another protocol now.
            if self.transport.get_protocol() is self and not self._answering():
                if metrics is not None:
                    metrics.refused("head_timeout")
                self.transport.close()

    return GuardedH11
