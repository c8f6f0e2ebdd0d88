"""Resilience against real flaky upstreams: retries, budgets, breakers, coalescing, caps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from brain import SidecarClient, Status

from harness import SidecarProcess, Upstream, scrape, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

FAST_RETRY = {"max_attempts": 3, "backoff_initial": "10ms", "backoff_max": "50ms"}


def failing_then_ok(failures: int, status: int = 503, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """A handler that fails `failures` times, then answers 200."""
    seen = 0

    async def handler(_: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        if seen <= failures:
            return web.json_response({"error": "try again"}, status=status, headers=headers)
        return web.json_response({"ok": True, "after": seen})

    return handler


async def test_idempotent_call_is_retried_and_non_idempotent_is_not(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.route("GET", "/flaky", failing_then_ok(2))
    upstream.route("POST", "/flaky-post", failing_then_ok(2))
    sidecar = start_sidecar(
        tools_file(
            tool("get", f"{upstream.url}/flaky", retry=FAST_RETRY),
            tool("post", f"{upstream.url}/flaky-post", method="POST", retry=FAST_RETRY),
        )
    )
    client = client_for(sidecar.unix_target)
    r = await client.call("get", timeout=5)
    assert r.status is Status.OK, r
    assert r.timing.attempts == 3
    assert r.json() == {"ok": True, "after": 3}
    assert upstream.requests["/flaky"] == 3

    r = await client.call("post", {"x": 1}, timeout=5)
    assert r.status is Status.UPSTREAM_ERROR
    assert r.upstream_status == 503
    assert r.timing.attempts == 1
    assert upstream.requests["/flaky-post"] == 1
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    assert samples["sidecar_retries_total"][(("tool", "get"),)] == 2


async def test_retry_budget_caps_load_during_an_outage(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("GET", "/down", {"error": "down"}, status=503)
    sidecar = start_sidecar(
        tools_file(
            tool(
                "down",
                f"{upstream.url}/down",
                retry={"max_attempts": 5, "backoff_initial": "1ms", "backoff_max": "5ms"},
            ),
            upstreams={
                upstream.url: {
                    "circuit_breaker": {"enabled": False},
                    "retry_budget": {"ratio": 0.2, "min_per_second": 0},
                }
            },
        )
    )
    client = client_for(sidecar.unix_target)
    results = await asyncio.gather(*(client.call("down", timeout=5) for _ in range(200)))
    assert {r.status for r in results} == {Status.UPSTREAM_ERROR}
    # Without a budget: 200 x 5 = 1,000 requests. With a 20% budget: <= 200 + 40.
    assert 200 < upstream.requests["/down"] <= 240, upstream.requests["/down"]


async def test_retry_after_from_a_429_is_honoured_within_the_deadline(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.route("GET", "/busy", failing_then_ok(1, status=429, headers={"Retry-After": "1"}))
    upstream.route(
        "GET",
        "/very-busy",
        failing_then_ok(100, status=429, headers={"Retry-After": "30"}),
    )
    sidecar = start_sidecar(
        tools_file(
            tool("busy", f"{upstream.url}/busy", retry=FAST_RETRY),
            tool("very_busy", f"{upstream.url}/very-busy", retry=FAST_RETRY),
        )
    )
    client = client_for(sidecar.unix_target)
    started = time.monotonic()
    r = await client.call("busy", timeout=5)
    assert r.status is Status.OK, r
    assert r.timing.attempts == 2
    assert time.monotonic() - started >= 1.0  # waited as asked, not the 10-50 ms backoff

    # Asked to wait 30 s with a 2 s budget: give up at once and pass the wait on.
    started = time.monotonic()
    r = await client.call("very_busy", timeout=2)
    assert r.status is Status.UPSTREAM_ERROR
    assert r.upstream_status == 429
    assert r.retry_after_ms == 30_000
    assert r.timing.attempts == 1
    assert time.monotonic() - started < 1.5


async def test_circuit_opens_then_a_probe_closes_it(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    healthy = False

    async def handler(_: web.Request) -> web.StreamResponse:
        if healthy:
            return web.json_response({"ok": True})
        return web.json_response({"error": "boom"}, status=500)

    upstream.route("GET", "/svc", handler)
    sidecar = start_sidecar(
        tools_file(
            tool("svc", f"{upstream.url}/svc", retry={"max_attempts": 1}),
            upstreams={
                upstream.url: {
                    "circuit_breaker": {"consecutive_failures": 5, "open_for": "1s"},
                }
            },
        )
    )
    client = client_for(sidecar.unix_target)
    for _ in range(5):
        assert (await client.call("svc")).status is Status.UPSTREAM_ERROR
    assert upstream.requests["/svc"] == 5

    refused = await asyncio.gather(*(client.call("svc") for _ in range(20)))
    assert {r.status for r in refused} == {Status.CIRCUIT_OPEN}
    assert all(0 < r.retry_after_ms <= 1000 for r in refused)
    assert upstream.requests["/svc"] == 5  # nothing reached the upstream
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    assert samples["sidecar_circuit_state"][(("upstream", upstream.url),)] == 1

    healthy = True
    await asyncio.sleep(max(r.retry_after_ms for r in refused) / 1000 + 0.05)
    probe = await client.call("svc")
    assert probe.status is Status.OK
    after = await asyncio.gather(*(client.call("svc") for _ in range(5)))
    assert {r.status for r in after} == {Status.OK}
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    assert samples["sidecar_circuit_state"][(("upstream", upstream.url),)] == 0
    assert "circuit opened" in sidecar.log_text()


async def test_identical_concurrent_calls_share_one_request_and_cache_expires(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    gate = upstream.gate()
    served = 0

    async def slow_answer(request: web.Request) -> web.StreamResponse:
        nonlocal served
        await gate.wait()
        served += 1
        return web.json_response({"q": request.query["q"], "served": served})

    upstream.route("GET", "/lookup", slow_answer)
    schema = {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}}
    sidecar = start_sidecar(
        tools_file(
            tool(
                "lookup",
                f"{upstream.url}/lookup",
                input_schema=schema,
                request={"query": {"q": "{q}", "n": "{n}"}},
                coalesce=True,
                cache={"ttl": "1s", "jitter": 0.0},
            )
        )
    )
    client = client_for(sidecar.unix_target)
    # Key order differs between callers; the canonical key does not.
    calls = [
        client.call("lookup", {"q": "x", "n": 1} if i % 2 else {"n": 1, "q": "x"}, timeout=10)
        for i in range(200)
    ]
    tasks = [asyncio.create_task(c) for c in calls]
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/lookup"] == 1)
    await asyncio.sleep(0.2)  # everyone has joined the flight by now
    upstream.open(gate)
    results = await asyncio.gather(*tasks)
    assert {r.status for r in results} == {Status.OK}
    assert {r.result_bytes for r in results} == {b'{"q": "x", "served": 1}'}
    assert upstream.requests["/lookup"] == 1
    assert sum(r.timing.coalesced for r in results) == 199

    hit = await client.call("lookup", {"q": "x", "n": 1})
    assert hit.timing.cache_hit
    assert hit.timing.attempts == 0
    assert upstream.requests["/lookup"] == 1
    await asyncio.sleep(1.1)
    fresh = await client.call("lookup", {"q": "x", "n": 1})
    assert not fresh.timing.cache_hit
    assert fresh.json()["served"] == 2
    assert upstream.requests["/lookup"] == 2
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    cache = samples["sidecar_cache_requests_total"]
    assert cache[(("result", "coalesced"), ("tool", "lookup"))] == 199
    assert cache[(("result", "hit"), ("tool", "lookup"))] == 1


async def test_errors_are_not_cached_unless_negative_caching_is_on(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("GET", "/missing", {"error": "nope"}, status=404)
    sidecar = start_sidecar(
        tools_file(
            tool("plain", f"{upstream.url}/missing", cache={"ttl": "60s"}),
            tool(
                "negative",
                f"{upstream.url}/missing",
                cache={"ttl": "60s", "negative_ttl": "60s"},
            ),
        )
    )
    client = client_for(sidecar.unix_target)
    for _ in range(3):
        assert (await client.call("plain")).status is Status.UPSTREAM_ERROR
    assert upstream.requests["/missing"] == 3
    for _ in range(3):
        assert (await client.call("negative")).status is Status.UPSTREAM_ERROR
    assert upstream.requests["/missing"] == 4


async def test_select_returns_only_the_pointed_parts(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    document: dict[str, Any] = {
        "city": "Oslo",
        "current": {"temp": -3.5, "wind": 12},
        "forecast": [{"high": 1}, {"high": 2}],
        "padding": "x" * 100_000,
    }
    upstream.json("GET", "/doc", document)
    sidecar = start_sidecar(tools_file(tool("doc", f"{upstream.url}/doc")))
    client = client_for(sidecar.unix_target)
    r = await client.call("doc", select=["/current/temp", "/forecast/1/high", "/nope"])
    assert r.status is Status.OK
    assert r.json() == {"/current/temp": -3.5, "/forecast/1/high": 2, "/nope": None}
    assert len(r.result_bytes) < 100
    bad = await client.call("doc", select=["current"])
    assert bad.status is Status.INVALID_ARGUMENTS
    assert "JSON Pointer" in bad.error


async def test_oversized_response_is_aborted_without_buffering_it(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    chunk = b"[" + b"1," * 512 * 1024  # ~1 MiB of an endless JSON array

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        for _ in range(50):  # 50 MiB, no Content-Length
            await response.write(chunk)
        await response.write(b"1]")
        return response

    upstream.route("GET", "/huge", huge)
    upstream.json("GET", "/small", {"ok": True})
    sidecar = start_sidecar(
        tools_file(
            tool("huge", f"{upstream.url}/huge", max_response_bytes=1024 * 1024),
            tool("small", f"{upstream.url}/small"),
        )
    )
    client = client_for(sidecar.unix_target)
    assert (await client.call("small")).ok
    baseline = sidecar.rss_bytes()
    results = await asyncio.gather(*(client.call("huge", timeout=20) for _ in range(4)))
    growth = sidecar.rss_bytes() - baseline
    for r in results:
        assert r.status is Status.INVALID_RESPONSE
        assert "too large" in r.error
    # Four 50 MB bodies read to the end would need 200 MB; capped reads need ~4 MB.
    assert growth < 40 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"
    assert (await client.call("small")).ok


async def test_argument_caps_have_their_own_messages(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("POST", "/echo", {"ok": True})
    sidecar = start_sidecar(
        tools_file(
            tool(
                "echo",
                f"{upstream.url}/echo",
                method="POST",
                max_argument_bytes=1000,
                max_json_depth=8,
            )
        )
    )
    client = client_for(sidecar.unix_target)
    big = await client.call("echo", {"blob": "x" * 2000})
    assert big.status is Status.INVALID_ARGUMENTS
    assert "at most 1000" in big.error
    deep = await client.call("echo", b'{"a":' + b"[" * 20 + b"]" * 20 + b"}")
    assert deep.status is Status.INVALID_ARGUMENTS
    assert "deeper than 8" in deep.error
    assert (await client.call("echo", {"a": [[1]]})).ok
    assert upstream.requests["/echo"] == 1


async def test_tool_concurrency_limit_waits_within_the_deadline_then_sheds(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    gate = upstream.gate()

    async def held(_: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"ok": True})

    upstream.route("GET", "/held", held)
    sidecar = start_sidecar(tools_file(tool("held", f"{upstream.url}/held", max_concurrency=2)))
    client = client_for(sidecar.unix_target)
    first = [asyncio.create_task(client.call("held", timeout=10)) for _ in range(2)]
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/held"] == 2)
    shed = await client.call("held", timeout=0.3)
    assert shed.status is Status.OVERLOADED
    assert "concurrency limit" in shed.error
    waiting = asyncio.create_task(client.call("held", timeout=10))
    upstream.open(gate)
    assert {r.status for r in await asyncio.gather(*first, waiting)} == {Status.OK}
    assert upstream.requests["/held"] == 3


async def test_connections_to_a_busy_upstream_are_kept_not_churned(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    """A wave of calls above the old idle-pool bound (256) leaves its connections in the
    pool, and the next wave of the same size reuses them instead of opening new ones
    (each new one costs both sides a TCP handshake and leaves a socket in TIME_WAIT)."""
    wave = 400
    peers: set[tuple[str, int]] = set()
    gate = upstream.gate()

    async def held(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        await gate.wait()
        return web.json_response({"ok": True})

    upstream.route("GET", "/held", held)
    sidecar = start_sidecar(tools_file(tool("held", f"{upstream.url}/held", timeout="20s")))
    client = client_for(sidecar.unix_target)

    async def one_wave(target: int) -> None:
        nonlocal gate
        gate = upstream.gate()
        calls = [asyncio.create_task(client.call("held", timeout=20)) for _ in range(wave)]
        # Every call holds a connection of its own until the gate opens.
        assert await asyncio.to_thread(
            upstream.wait_for, lambda: upstream.requests["/held"] >= target, 15
        )
        upstream.open(gate)
        results = await asyncio.gather(*calls)
        assert {r.status for r in results} == {Status.OK}

    await one_wave(wave)
    assert len(peers) == wave
    # A connection goes back to the pool just after its response; give that a moment.
    await asyncio.sleep(0.5)
    await one_wave(2 * wave)
    # With 256 idle connections kept per host, the second wave had to open >= 144.
    new = len(peers) - wave
    assert new < 40, f"the second wave opened {new} new connections"
