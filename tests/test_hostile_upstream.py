"""The sidecar against an upstream that misbehaves at the byte level (tests/hostile/).

Every case asserts a specific typed status, that the sidecar still serves afterwards, and
that its resident memory stayed within RSS_BOUND of what it was before the case (the tools
cap bodies at 1 MB; several cases send 50 MB or would inflate to 100 MB).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from brain import SidecarClient, Status
from hostile.cases import ATTEMPTS, MB, RSS_BOUND, Case, case_tools
from hostile.upstream import HostileUpstream

from harness import SidecarProcess, scrape, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]


@pytest.fixture
def hostile() -> Iterator[Callable[[], HostileUpstream]]:
    started: list[HostileUpstream] = []

    def make() -> HostileUpstream:
        server = HostileUpstream().start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


CASES = [
    Case("truncated", Status.UPSTREAM_ERROR, 0, "body interrupted", ATTEMPTS),
    Case("drip", Status.TIMEOUT, 0, "", 1),
    Case("lying-length", Status.INVALID_RESPONSE, 200, "not valid JSON", 1),
    Case("gzip", Status.INVALID_RESPONSE, 200, "not valid JSON", 1),
    Case("gzip-bomb", Status.INVALID_RESPONSE, 200, "not valid JSON", 1),
    Case("br", Status.INVALID_RESPONSE, 200, "not valid JSON", 1),
    Case("reset-in-headers", Status.UPSTREAM_ERROR, 0, "", ATTEMPTS),
    Case("reset-in-body", Status.UPSTREAM_ERROR, 0, "body interrupted", ATTEMPTS),
    Case("reset-in-503-body", Status.UPSTREAM_ERROR, 503, "503", ATTEMPTS),
    Case("huge-503", Status.UPSTREAM_ERROR, 503, "503", ATTEMPTS),
    Case("huge-503-chunked", Status.UPSTREAM_ERROR, 503, "503", ATTEMPTS),
    Case("huge-200", Status.INVALID_RESPONSE, 200, "1048576", 1),
    Case("bad-status-line", Status.UPSTREAM_ERROR, 0, "", ATTEMPTS),
    Case("bad-header", Status.UPSTREAM_ERROR, 0, "", ATTEMPTS),
    Case("endless-head", Status.UPSTREAM_ERROR, 0, "too large", ATTEMPTS),
    Case("nan-retry-after", Status.UPSTREAM_ERROR, 429, "429", ATTEMPTS),
]


def config(server: HostileUpstream, *, breaker: bool = False) -> str:
    return tools_file(
        *case_tools(server.url, CASES),
        tool("ok", f"{server.url}/ok"),
        upstreams={
            server.url: {
                "circuit_breaker": {"enabled": breaker, "consecutive_failures": 3},
                "retry_budget": {"ratio": 1, "min_per_second": 100},
            }
        },
    )


@pytest.mark.parametrize("case", CASES, ids=[c.scenario for c in CASES])
async def test_a_hostile_upstream_gets_a_typed_status_and_bounded_memory(
    case: Case, hostile: Callable[[], HostileUpstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    server = hostile()
    sidecar = start_sidecar(config(server))
    client = client_for(sidecar.unix_target)
    warm = await client.call("ok", timeout=5)
    assert warm.status is Status.OK, warm
    before = sidecar.rss_bytes()

    started = time.monotonic()
    r = await client.call(case.scenario, timeout=10)
    assert r.status is case.status, r
    assert r.upstream_status == case.upstream_status, r
    assert case.error in r.error, r
    assert r.timing.attempts == case.attempts, r
    assert server.requests[case.scenario] == case.attempts
    assert time.monotonic() - started < 8, "every case ends well before its deadline"

    grown = sidecar.rss_bytes() - before
    assert grown < RSS_BOUND, f"RSS grew by {grown / MB:.1f} MB"
    after = await client.call("ok", timeout=5)
    assert after.status is Status.OK, after


async def test_huge_error_pages_count_as_breaker_failures(
    hostile: Callable[[], HostileUpstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    server = hostile()
    sidecar = start_sidecar(config(server, breaker=True))
    client = client_for(sidecar.unix_target)
    before = sidecar.rss_bytes()
    # 2 calls x 2 attempts: the third consecutive failure opens the circuit.
    first = await client.call("huge-503", timeout=10)
    assert first.status is Status.UPSTREAM_ERROR, first
    assert first.upstream_status == 503
    second = await client.call("huge-503-chunked", timeout=10)
    assert second.status is Status.CIRCUIT_OPEN, second
    assert server.requests["huge-503"] + server.requests["huge-503-chunked"] == 3
    samples = scrape(sidecar.metrics_port)
    assert samples["sidecar_circuit_state"][(("upstream", server.url),)] == 1
    assert sidecar.rss_bytes() - before < RSS_BOUND


async def test_absurd_quota_headers_hold_at_most_the_maximum(
    hostile: Callable[[], HostileUpstream], start_sidecar: Start, client_for: MakeClient
) -> None:
    server = hostile()
    sidecar = start_sidecar(
        tools_file(
            tool("absurd-quota", f"{server.url}/absurd-quota"),
            tool("ok", f"{server.url}/ok"),
        ),
        "--max-upstream-hold",
        "2s",
    )
    client = client_for(sidecar.unix_target)
    first = await client.call("absurd-quota", timeout=5)
    assert first.status is Status.OK, first
    held = await client.call("ok", timeout=0.5)
    assert held.status is Status.RATE_LIMITED, held
    assert 1000 < held.retry_after_ms <= 2000, held.retry_after_ms
    # Once the clamped hold is over, the origin is served again.
    after = await client.call("ok", timeout=5)
    assert after.status is Status.OK, after
    assert server.requests["ok"] == 1
