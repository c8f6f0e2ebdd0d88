"""The sidecar against HTTP/2 origins (``upstreams.<origin>.http: http2``), through the
real binary, against a real h2c server (:mod:`h2_upstream`).

HTTP/2 is how the sidecar holds many calls to one origin cheaply: every call is a stream
on one connection instead of a connection each. What must hold with it: the calls share
one connection, the origin's limit on concurrent streams queues calls instead of failing
them, a call that is cancelled or runs out of time resets its stream (the origin stops
working on it), and an origin that does not speak HTTP/2 gets a clear error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import h2.errors
import pytest

from brain import SidecarClient, Status, ToolResult
from hostile.streams import wait_until

from h2_upstream import H2Upstream
from harness import SidecarProcess, Upstream, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

ANSWER = json.dumps({"items": [{"id": i, "title": f"result {i}"} for i in range(50)]}).encode()


@pytest.fixture
def h2_upstream() -> Iterator[Callable[..., H2Upstream]]:
    started: list[H2Upstream] = []

    def make(**options: int) -> H2Upstream:
        server = H2Upstream(**options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` without blocking the loop the client's calls run on."""
    return await asyncio.to_thread(wait_until, predicate, timeout)


async def burst(client: SidecarClient, calls: int) -> list[ToolResult]:
    """One call, then ``calls`` at once; all must be OK.

    The first call sets the connection up: before the client has read the server's first
    SETTINGS, HTTP/2 lets it open streams up to its own initial bound (hyper: 100), which
    is not what these tests are about (a cold burst has its own test)."""
    warm = await client.call("answer", {}, timeout=10)
    assert warm.status is Status.OK, warm
    results = await asyncio.gather(*(client.call("answer", {}, timeout=10) for _ in range(calls)))
    assert all(r.status is Status.OK for r in results), [r for r in results if not r.ok][:3]
    return results


def config(url: str, http: str = "http2", **fields: object) -> str:
    return tools_file(
        tool("answer", f"{url}/answer", **fields),
        tool("held", f"{url}/held", **fields),
        upstreams={url: {"http": http}},
    )


async def test_calls_to_an_http2_origin_share_one_connection(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    server = h2_upstream()
    server.json("/answer", ANSWER, delay=0.3)
    sidecar = start_sidecar(config(server.url))

    results = await burst(client_for(sidecar.unix_target), 50)

    assert all(json.loads(r.result_bytes) == json.loads(ANSWER) for r in results)
    assert server.requests["/answer"] == 51
    assert server.connections == 1, "every call is a stream on the one connection"
    assert server.max_open > 1, "the streams were open at the same time"


async def test_a_burst_on_a_cold_origin_opens_one_connection(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    """Calls that arrive before any connection to the origin exists wait for the same
    connect instead of each opening one."""
    server = h2_upstream()
    server.json("/answer", ANSWER, delay=0.3)
    sidecar = start_sidecar(config(server.url))
    client = client_for(sidecar.unix_target)

    results = await asyncio.gather(*(client.call("answer", {}, timeout=10) for _ in range(50)))

    assert all(r.status is Status.OK for r in results), [r for r in results if not r.ok][:3]
    assert server.requests["/answer"] == 50
    assert server.connections == 1


async def test_the_origins_stream_limit_queues_calls_instead_of_failing_them(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    server = h2_upstream(max_concurrent_streams=4)
    server.json("/answer", ANSWER, delay=0.1)
    sidecar = start_sidecar(config(server.url))

    await burst(client_for(sidecar.unix_target), 20)

    assert server.requests["/answer"] == 21
    assert server.max_open <= 4, f"{server.max_open} streams open against a limit of 4"


async def test_a_call_cancelled_or_out_of_time_resets_its_stream(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    server = h2_upstream()
    server.hold("/held")
    server.json("/answer", ANSWER)
    sidecar = start_sidecar(config(server.url))
    client = client_for(sidecar.unix_target)
    warm = await client.call("answer", {}, timeout=10)  # the connection, set up
    assert warm.status is Status.OK, warm

    timed_out = await client.call("held", {}, timeout=0.5)
    assert timed_out.status is Status.TIMEOUT, timed_out
    assert await until(lambda: server.resets["/held"] == 1), server.resets

    cancelled = asyncio.create_task(client.call("held", {}, timeout=30))
    assert await until(lambda: server.requests["/held"] == 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await until(lambda: server.resets["/held"] == 2), server.resets

    after = await client.call("answer", {}, timeout=5)
    assert after.status is Status.OK, after
    assert server.connections == 1, "a reset stream leaves the connection to the others"


async def post_tools(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> tuple[H2Upstream, SidecarClient]:
    """An origin whose two routes answer, tools that POST to them (never retried), and a
    client whose connection is set up (by a call to ``/held``)."""
    server = h2_upstream()
    server.json("/answer", ANSWER)
    server.json("/held", ANSWER)
    sidecar = start_sidecar(config(server.url, method="POST"))
    client = client_for(sidecar.unix_target)
    warm = await client.call("held", {}, timeout=10)
    assert warm.status is Status.OK, warm
    return server, client


async def test_a_stream_the_origin_refuses_unprocessed_is_sent_again(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    """REFUSED_STREAM means the origin did nothing with the request (RFC 9113 §8.7), so
    it is sent again whatever its method, and that is not one of the tool's attempts:
    a POST tool (never retried) still succeeds. Past two refusals the call fails."""
    server, client = await post_tools(h2_upstream, start_sidecar, client_for)

    server.refuse("/answer", 2)
    r = await client.call("answer", {}, timeout=10)

    assert r.status is Status.OK, r
    assert json.loads(r.result_bytes) == json.loads(ANSWER)
    assert server.refused["/answer"] == 2
    assert server.requests["/answer"] == 3

    server.refuse("/answer", 3)
    refused = await client.call("answer", {}, timeout=10)

    assert refused.status is Status.UPSTREAM_ERROR, refused
    assert "refused" in refused.error.lower(), refused
    assert server.refused["/answer"] == 5, "sent three times, then given up"
    assert server.connections == 1


async def test_a_stream_reset_for_any_other_reason_is_not_sent_again(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    """INTERNAL_ERROR says nothing about whether the origin acted on the request: a POST
    tool's call fails, sent once."""
    server, client = await post_tools(h2_upstream, start_sidecar, client_for)

    server.refuse("/answer", 1, code=h2.errors.ErrorCodes.INTERNAL_ERROR)
    r = await client.call("answer", {}, timeout=10)

    assert r.status is Status.UPSTREAM_ERROR, r
    assert server.requests["/answer"] == 1


async def test_a_request_the_origin_shut_down_before_taking_is_sent_again(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    """A graceful GOAWAY whose last stream is before the request's says the origin did
    not take it: it goes again on a new connection, whatever the tool's method."""
    server, client = await post_tools(h2_upstream, start_sidecar, client_for)

    server.shut_down_on("/answer", 1)
    r = await client.call("answer", {}, timeout=10)

    assert r.status is Status.OK, r
    assert json.loads(r.result_bytes) == json.loads(ANSWER)
    assert server.refused["/answer"] == 1
    assert server.requests["/answer"] == 2
    assert server.connections == 2, "the request went again on a new connection"


async def test_a_connection_lost_after_answers_gets_no_hint_about_the_version(
    h2_upstream: Callable[..., H2Upstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    server = h2_upstream()
    server.json("/answer", ANSWER)
    server.drop("/held")
    sidecar = start_sidecar(config(server.url))
    client = client_for(sidecar.unix_target)
    warm = await client.call("answer", {}, timeout=10)
    assert warm.status is Status.OK, warm

    r = await client.call("held", {}, timeout=5)

    assert r.status is Status.UPSTREAM_ERROR, r
    assert "http2" not in r.error, "the origin has spoken HTTP/2: the version is not the fault"
    after = await client.call("answer", {}, timeout=5)
    assert after.status is Status.OK, after


async def test_http2_to_an_origin_that_speaks_only_http1_fails_clearly(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("GET", "/answer", {"ok": True})
    sidecar = start_sidecar(config(upstream.url))
    client = client_for(sidecar.unix_target)

    r = await client.call("answer", {}, timeout=5)

    assert r.status is Status.UPSTREAM_ERROR, r
    # The error page read as frames, or the connection closed before it was read.
    assert "under `upstreams` is http2, which it must speak" in r.error, r

    told_the_truth = start_sidecar(config(upstream.url, http="http1"))
    ok = await client_for(told_the_truth.unix_target).call("answer", {}, timeout=5)
    assert ok.status is Status.OK, ok
