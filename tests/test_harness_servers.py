"""The tests' loopback servers stop cleanly, whatever their clients are doing.

A server stopped with a connection still open leaves a transport that is garbage-collected
later and fails whichever test is running then with an unraisable ResourceWarning (seen
once in a full ``make test``, at the teardown of the 10,000-call test, where the
sidecar's pool had just opened thousands of connections to the aiohttp upstream). And
aiohttp's cleanup waits up to a minute on a connection that has not sent its request.
Here the aiohttp upstream is stopped while hundreds of clients have just connected and
sent nothing: stopping must take seconds at most and leave no socket open.

Not here: the raw ``asyncio.start_server`` servers (``HostileUpstream``, ``H2Upstream``)
still leave a transport open now and then under this stress on Python 3.11 (a handler
task cancelled before its first step; 3.11's ``start_server`` then never closes its
transport). No test stops them mid-accept; the issue note says what is left.
"""

from __future__ import annotations

import gc
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from harness import Upstream

CLIENTS = 200


@pytest.fixture
def unraisable() -> Iterator[list[str]]:
    """What the interpreter could not raise (a ResourceWarning from a finalizer) while the
    test ran, collected here instead of failing a later test."""
    seen: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(repr(u.exc_value))
    try:
        yield seen
    finally:
        sys.unraisablehook = previous


def test_stopping_the_upstream_closes_every_connection_at_once(unraisable: list[str]) -> None:
    for _round in range(3):
        server = Upstream().start()
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(CLIENTS)]
        try:
            started = time.monotonic()
            server.stop()
            took = time.monotonic() - started
        finally:
            for client in clients:
                client.close()
        # Not a speed assertion: the bound is aiohttp's one-minute wait, which a server
        # that closes its connections itself never reaches.
        assert took < 20, f"stop took {took:.1f} s with {CLIENTS} idle clients"
        gc.collect()
        assert not unraisable, unraisable[:3]
