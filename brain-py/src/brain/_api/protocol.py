"""The HTTP protocol the API is served with: uvicorn's h11, with a deadline on request heads.

The API's port is open to the cluster. uvicorn closes a connection only while it idles
after a response (``timeout_keep_alive``), and any byte received cancels that timer, so a
connection that sends nothing, or a few bytes of a request head and then nothing, stayed
open for good: a file descriptor and a protocol object each, without bound. Here the first
request head must arrive within ``head_timeout`` of the connection opening, and each later
one within uvicorn's ``timeout_keep_alive`` of the previous response ending (the idle time
clients and load balancers already expect, now also for a head begun and never finished);
a request being answered (an event stream that follows a run included) is never cut.

uvicorn has no such setting (h11 and httptools alike), so it is a small subclass; the tests
in ``tests/test_api_protocol.py`` pin its behaviour to the uvicorn version in the
constraints.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["REQUEST_HEAD_TIMEOUT", "head_deadline_protocol"]

#: Seconds a new connection may take to send its first request head.
REQUEST_HEAD_TIMEOUT = 10.0


def head_deadline_protocol(head_timeout: float = REQUEST_HEAD_TIMEOUT) -> type[H11Protocol]:
    """uvicorn's h11 protocol class, closing connections whose request head is late."""

    class HeadDeadlineH11(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
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
            self._disarm()
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
                self.transport.close()

    return HeadDeadlineH11
