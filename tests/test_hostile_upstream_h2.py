"""The sidecar against an HTTP/2 origin that misbehaves (tests/hostile/h2_origin.py),
through the real binary and a real h2c server (:mod:`h2_upstream`).

On HTTP/2 every call to an origin is a stream on one connection, so each case asks two
things: the hostile call gets one specific, typed result well before its deadline with the
sidecar's memory bounded, and what it did stays with its stream: a call beside it on the
same connection is answered as usual (a connection-level failure, GOAWAY, may end the
streams on that connection; the next call must then get a new one).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import pytest

from brain import SidecarClient, Status
from hostile.cases import ATTEMPTS, MB, RSS_BOUND, Case, case_tools
from hostile.h2_origin import SCRIPTS
from hostile.streams import wait_until

from h2_upstream import H2Upstream
from harness import SidecarProcess, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

ANSWER = json.dumps({"items": [{"id": i} for i in range(20)]}).encode()


CASES = [
    Case("endless", Status.INVALID_RESPONSE, 200, "1048576"),
    Case(
        "huge-headers", Status.UPSTREAM_ERROR, 0, "over the 16 KiB", ATTEMPTS, connection_level=True
    ),
    Case("many-headers", Status.UPSTREAM_ERROR, 0, "response head breaks HTTP/2's rules", ATTEMPTS),
    Case(
        "long-body-for-its-length",
        Status.UPSTREAM_ERROR,
        0,
        "response body breaks HTTP/2's rules",
        ATTEMPTS,
    ),
    Case("drip", Status.TIMEOUT, 0, "deadline of 1000ms exceeded"),
    Case("reset-in-body", Status.UPSTREAM_ERROR, 0, "body interrupted", ATTEMPTS),
    Case(
        "goaway-in-body",
        Status.UPSTREAM_ERROR,
        0,
        "body interrupted",
        ATTEMPTS,
        connection_level=True,
    ),
    Case("huge-503", Status.UPSTREAM_ERROR, 503, "503", ATTEMPTS),
]


@pytest.fixture
def origin() -> Iterator[H2Upstream]:
    server = H2Upstream().start()
    for name, script in SCRIPTS.items():
        server.script(f"/{name}", script)
    server.json("/ok", ANSWER)
    server.json("/beside", ANSWER, delay=0.5)
    yield server
    server.stop()


def config(url: str) -> str:
    return tools_file(
        *case_tools(url, CASES),
        tool("ok", f"{url}/ok"),
        tool("beside", f"{url}/beside"),
        upstreams={url: {"http": "http2"}},
    )


@pytest.mark.parametrize("case", CASES, ids=[c.scenario for c in CASES])
async def test_a_hostile_http2_origin_gets_a_typed_status_and_spares_the_calls_beside(
    case: Case, origin: H2Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    sidecar = start_sidecar(config(origin.url))
    client = client_for(sidecar.unix_target)
    warm = await client.call("ok", timeout=5)
    assert warm.status is Status.OK, warm
    before = sidecar.rss_bytes()

    started = time.monotonic()
    beside = asyncio.ensure_future(client.call("beside", timeout=10))
    r = await client.call(case.scenario, timeout=10)
    elapsed = time.monotonic() - started
    assert r.status is case.status, r
    assert r.upstream_status == case.upstream_status, r
    assert case.error in r.error, r
    assert r.timing.attempts == case.attempts, r
    assert origin.requests[f"/{case.scenario}"] == case.attempts
    assert elapsed < 8, "every case ends well before its deadline"

    next_to_it = await beside
    if not case.connection_level:
        assert next_to_it.status is Status.OK, f"the call beside it: {next_to_it}"
        assert origin.connections == 1, "a stream's misbehaviour kept to its stream"
    grown = sidecar.rss_bytes() - before
    assert grown < RSS_BOUND, f"RSS grew by {grown / MB:.1f} MB"
    after = await client.call("ok", timeout=5)
    assert after.status is Status.OK, after
    # Nothing of the hostile stream is left open on the origin's side.
    assert await asyncio.to_thread(wait_until, lambda: not origin.paths_open(), 5.0)


async def test_a_first_answer_that_breaks_http2s_rules_is_named_not_taken_for_http1(
    origin: H2Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    """An origin's very first answer carries too many headers: the stream is reset on a
    connection that spoke HTTP/2, so the error says what the origin did, and not that it
    may speak only HTTP/1.1 (what a connection that fails before any answer suggests)."""
    sidecar = start_sidecar(config(origin.url))
    client = client_for(sidecar.unix_target)

    r = await client.call("many-headers", timeout=10)

    assert r.status is Status.UPSTREAM_ERROR, r
    assert "response head breaks HTTP/2's rules" in r.error, r
    assert "HTTP/1.1" not in r.error, r
    after = await client.call("ok", timeout=5)
    assert after.status is Status.OK, after
    assert origin.connections == 1
