"""Limits and upstream signals cannot be turned into an outage; config mistakes are refused.

Real sidecar, real loopback upstreams, real redis-server (issue 16, items 12 and 15-17).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from brain import SidecarClient, Status

from harness import (
    RedisServer,
    SidecarProcess,
    Upstream,
    replace_file,
    scrape,
    sidecar_binary,
    tool,
    tools_file,
)

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

FAST_RETRY = {"max_attempts": 2, "backoff_initial": "10ms", "backoff_max": "20ms"}
#: The default --max-upstream-hold.
MAX_HOLD_MS = 600_000


@pytest.fixture
def origins() -> Iterator[Callable[[], Upstream]]:
    """Extra loopback upstreams: a hold is per origin, so each scenario gets its own."""
    started: list[Upstream] = []

    def make() -> Upstream:
        server = Upstream().start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def answering(status: int, headers: dict[str, str], then: int = 200) -> Any:
    """A handler: the first request gets `status` with `headers`, later ones `then`."""
    seen = 0

    async def handler(_: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        if seen == 1:
            return web.json_response({"first": True}, status=status, headers=headers)
        return web.json_response({"ok": True}, status=then)

    return handler


async def assert_serving(client: SidecarClient, upstream: Upstream) -> None:
    upstream.json("GET", "/alive", {"alive": True})
    r = await client.call("alive", timeout=5)
    assert r.status is Status.OK, r


# ---------------------------------------------------------------- 12: absurd quota signals


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
async def test_a_non_finite_retry_after_is_ignored_not_a_crash(
    value: str, upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.route("GET", "/limited", answering(429, {"Retry-After": value}, then=429))
    sidecar = start_sidecar(
        tools_file(
            tool("limited", f"{upstream.url}/limited", retry=FAST_RETRY, timeout="5s"),
            tool("alive", f"{upstream.url}/alive"),
        )
    )
    client = client_for(sidecar.unix_target)
    r = await client.call("limited", timeout=5)
    # Retried as a 429 (the header is ignored), not INTERNAL from a panic.
    assert r.status is Status.UPSTREAM_ERROR, r
    assert r.upstream_status == 429
    assert r.timing.attempts == 2
    assert upstream.requests["/limited"] == 2
    assert any(
        e.get("header") == "retry-after" and e.get("value") == value for e in sidecar.logs
    ), sidecar.log_text()
    await assert_serving(client, upstream)


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "4102444800"}),  # 2100-01-01
        (200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1e30"}),
        (503, {"Retry-After": "1e30"}),
        (429, {"Retry-After": "86400"}),
        (200, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "876000h"}),
    ],
)
async def test_an_absurd_reset_holds_the_origin_no_longer_than_the_maximum(
    status: int,
    headers: dict[str, str],
    origins: Callable[[], Upstream],
    start_sidecar: Start,
    client_for: MakeClient,
) -> None:
    held, other = origins(), origins()
    held.route("GET", "/q", answering(status, headers))
    sidecar = start_sidecar(
        tools_file(
            tool("q", f"{held.url}/q", retry={"max_attempts": 1}),
            tool("alive", f"{other.url}/alive"),
        )
    )
    client = client_for(sidecar.unix_target)
    await client.call("q", timeout=5)
    r = await client.call("q", timeout=1)
    assert r.status is Status.RATE_LIMITED, r
    assert r.limited_by == f"upstream:{held.url}"
    # Held for at most --max-upstream-hold (10 min by default), not for a day or 74 years.
    assert MAX_HOLD_MS - 60_000 < r.retry_after_ms <= MAX_HOLD_MS, r.retry_after_ms
    assert held.requests["/q"] == 1
    assert any("clamped" in str(e.get("message")) for e in sidecar.logs), sidecar.log_text()
    await assert_serving(client, other)


async def test_max_upstream_hold_is_a_flag(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.route("GET", "/q", answering(429, {"Retry-After": "99999"}))
    sidecar = start_sidecar(
        tools_file(tool("q", f"{upstream.url}/q", retry={"max_attempts": 1}, timeout="5s")),
        "--max-upstream-hold",
        "300ms",
    )
    client = client_for(sidecar.unix_target)
    first = await client.call("q", timeout=5)
    assert first.status is Status.UPSTREAM_ERROR, first
    assert first.upstream_status == 429
    started = time.monotonic()
    r = await client.call("q", timeout=5)  # waits out the clamped hold, then goes through
    assert r.status is Status.OK, r
    assert time.monotonic() - started < 2.0
    assert upstream.requests["/q"] == 2


# ---------------------------------------------------------------- 12: holds kept in Redis


async def test_a_hold_reaches_a_sidecar_started_after_it_was_learned(
    upstream: Upstream,
    redis: RedisServer,
    start_sidecar: Start,
    client_for: MakeClient,
) -> None:
    upstream.route(
        "GET", "/quota", answering(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "30"})
    )
    config = tools_file(tool("q", f"{upstream.url}/quota", timeout="5s"))
    first = start_sidecar(config, "--redis-url", redis.url)
    r = await client_for(first.unix_target).call("q", timeout=5)
    assert r.status is Status.OK, r
    # Stored in Redis with its expiry ...
    assert redis.cli("ZSCORE", "tandem:holds", upstream.url) != ""
    ttl_ms = int(redis.cli("PTTL", "tandem:holds"))
    assert 25_000 < ttl_ms <= 30_000, ttl_ms
    # ... so a sidecar that starts afterwards (and missed the broadcast) is held too.
    later = start_sidecar(config, "--redis-url", redis.url)
    r = await client_for(later.unix_target).call("q", timeout=0.5)
    assert r.status is Status.RATE_LIMITED, r
    assert r.limited_by == f"upstream:{upstream.url}"
    assert 20_000 < r.retry_after_ms <= 30_000, r.retry_after_ms
    assert upstream.requests["/quota"] == 1


# ---------------------------------------------------------------- 15: numbers kept exactly

EXACT = {
    "big": "18446744073709551617",  # 2^64 + 1
    "neg": "-18446744073709551617",
    "forty": "1234567890123456789012345678901234567890",
    "huge": "1e400",
    "precise": "0.1000000000000000055511151231257827",
    "upper": "2.50E-3",
    "signed": "7e+2",
}


async def test_numbers_reach_the_upstream_exactly_as_written(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    received: list[bytes] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        received.append(await request.read())
        return web.json_response({"ok": True})

    upstream.route("POST", "/echo", echo)
    upstream.route("POST", "/field", echo)
    sidecar = start_sidecar(
        tools_file(
            tool("echo", f"{upstream.url}/echo", method="POST"),
            tool(
                "field",
                f"{upstream.url}/field",
                method="POST",
                input_schema={"type": "object", "properties": {"big": {}, "huge": {}}},
                request={"body": {"value": "{big}", "nested": {"n": "{huge}"}}},
            ),
        )
    )
    client = client_for(sidecar.unix_target)
    raw = "{" + ",".join(f'"{k}":{v}' for k, v in EXACT.items()) + "}"
    r = await client.call("echo", raw.encode(), timeout=5)
    assert r.status is Status.OK, r
    body = json.loads(received[0], parse_float=Decimal, parse_int=int)
    for key, text in EXACT.items():
        assert body[key] == (Decimal(text) if "." in text or "e" in text else int(text)), (
            key,
            received[0],
        )
    # A whole-arguments body is the caller's bytes: every number spelt as written.
    assert received[0] == raw.encode(), received[0]

    # ...which is why a key given twice is refused: the schema would check its last
    # value, and an upstream may read the first.
    twice = await client.call("echo", b'{"amount": 1000000, "amount": 1}', timeout=5)
    assert twice.status is Status.INVALID_ARGUMENTS, twice
    assert "appears twice" in twice.error, twice.error
    assert len(received) == 1

    r = await client.call("field", raw.encode(), timeout=5)
    assert r.status is Status.OK, r
    body = json.loads(received[1], parse_float=Decimal, parse_int=int)
    assert body == {"value": 2**64 + 1, "nested": {"n": Decimal("1e400")}}, received[1]


async def test_huge_numbers_are_validated_not_crashed_on(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("POST", "/n", {"ok": True})
    schema = {
        "type": "object",
        "properties": {"count": {"type": "integer", "minimum": 0, "maximum": 100}},
    }
    sidecar = start_sidecar(
        tools_file(tool("n", f"{upstream.url}/n", method="POST", input_schema=schema))
    )
    client = client_for(sidecar.unix_target)
    for text in (EXACT["big"], EXACT["forty"], "1e400"):
        r = await client.call("n", f'{{"count":{text}}}'.encode(), timeout=5)
        assert r.status is Status.INVALID_ARGUMENTS, (text, r)
        assert [v.instance_path for v in r.violations] == ["/count"], (text, r.violations)
        assert "maximum" in r.violations[0].schema_path, (text, r.violations)
    r = await client.call("n", f'{{"count":{EXACT["neg"]}}}'.encode(), timeout=5)
    assert r.status is Status.INVALID_ARGUMENTS, r
    assert "minimum" in r.violations[0].schema_path
    r = await client.call("n", f'{{"count":{EXACT["precise"]}}}'.encode(), timeout=5)
    assert r.status is Status.INVALID_ARGUMENTS, r
    assert "type" in r.violations[0].schema_path
    r = await client.call("n", b'{"count":100}', timeout=5)
    assert r.status is Status.OK, r
    assert upstream.requests["/n"] == 1


# ---------------------------------------------------------------- 16: config mistakes


def check_config(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(sidecar_binary()), "--config", str(path), "--check-config", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


API = "https://api.example.com"


@pytest.mark.parametrize(
    ("policy", "path"),
    [
        ({"max_concurrency": 0}, f'upstreams."{API}".max_concurrency'),
        (
            {"circuit_breaker": {"failure_ratio": 1.5}},
            f'upstreams."{API}".circuit_breaker.failure_ratio',
        ),
        (
            {"circuit_breaker": {"failure_ratio": 0}},
            f'upstreams."{API}".circuit_breaker.failure_ratio',
        ),
        (
            {"circuit_breaker": {"half_open_probes": 0}},
            f'upstreams."{API}".circuit_breaker.half_open_probes',
        ),
        (
            {"circuit_breaker": {"min_requests": 0}},
            f'upstreams."{API}".circuit_breaker.min_requests',
        ),
        ({"retry_budget": {"ratio": -1}}, f'upstreams."{API}".retry_budget.ratio'),
    ],
)
def test_bad_upstream_policies_are_refused_naming_the_field(
    policy: dict[str, Any], path: str, tmp_path: Path
) -> None:
    config = tmp_path / "tools.yaml"
    config.write_text(tools_file(tool("t", f"{API}/x", loopback=False), upstreams={API: policy}))
    proc = check_config(config)
    assert proc.returncode != 0, proc.stdout
    assert path in proc.stderr, proc.stderr
    config.write_text(
        tools_file(tool("t", f"{API}/x", loopback=False), upstreams={API: {"max_concurrency": 8}})
    )
    proc = check_config(config)
    assert proc.returncode == 0, proc.stderr


def test_an_upstreams_key_no_tool_calls_is_refused_with_the_origins_in_use(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tools.yaml"
    config.write_text(
        tools_file(
            tool("t", f"{API}/x", loopback=False),
            upstreams={f"{API}:443": {"max_concurrency": 8}},
        )
    )
    proc = check_config(config)
    assert proc.returncode != 0, proc.stdout
    assert f'upstreams."{API}:443"' in proc.stderr, proc.stderr
    assert f'did you mean "{API}"?' in proc.stderr, proc.stderr
    config.write_text(
        tools_file(
            tool("t", f"{API}/x", loopback=False),
            upstreams={"https://typo.example.com": {"max_concurrency": 8}},
        )
    )
    proc = check_config(config)
    assert proc.returncode != 0, proc.stdout
    assert f'the tools call "{API}"' in proc.stderr, proc.stderr


# ---------------------------------------------------------------- 17: reload and --check-config


class Fifo:
    """A named pipe used as a `${file:...}` secret: reading it blocks until the test writes,
    so the test decides exactly when the sidecar's read (and the compile around it) ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)

    def open_in(self, pid: int) -> bool:
        """Whether process `pid` has the pipe open."""
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) == str(self.path):
                    return True
            except OSError:
                continue
        return False

    def feed(self, data: str = "secret-value", then: Callable[[], None] | None = None) -> None:
        """Wait (bounded) until a reader opens the pipe, run `then`, then write and close."""
        done = threading.Event()

        def opener() -> None:
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader is there
            try:
                if then is not None:
                    then()
                os.write(fd, data.encode())
            finally:
                os.close(fd)
                done.set()

        threading.Thread(target=opener, daemon=True).start()
        if not done.wait(20):
            # Unblock the opener so the thread ends, then fail.
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
            raise AssertionError("nobody read the fifo")


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_a_write_that_lands_while_compiling_is_loaded(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient, tmp_path: Path
) -> None:
    upstream.json("GET", "/v", {"ok": True})
    fifo = Fifo(tmp_path / "slow-secret")

    def config(name: str, slow: bool) -> str:
        headers = {"x-key": f"${{file:{fifo.path}}}"} if slow else {}
        return tools_file(tool(name, f"{upstream.url}/v", request={"headers": headers}))

    sidecar = start_sidecar(config("v0", slow=False))
    client = client_for(sidecar.unix_target)
    reloads = lambda: scrape(sidecar.metrics_port).get("sidecar_config_reloads_total", {})  # noqa: E731

    # v1 names the fifo: its compile blocks on reading it. The reloader reads it once to
    # fingerprint the file and once more while compiling; v2 lands during that second read.
    replace_file(sidecar.config_path, config("v1", slow=True))
    await asyncio.to_thread(fifo.feed)  # the fingerprint's read
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    await wait_for(lambda: not fifo.open_in(pid))  # that reader is gone: the next is the compile
    await asyncio.to_thread(
        fifo.feed, then=lambda: replace_file(sidecar.config_path, config("v2", slow=False))
    )  # the compile's read; v2 is written while it blocks
    # v1 finished compiling after v2 was written; v2 must still be loaded.
    await wait_for(lambda: reloads().get((("result", "success"),), 0) >= 2)
    r = await client.call("v2", timeout=5)
    assert r.status is Status.OK, r
    r = await client.call("v1", timeout=5)
    assert r.status is Status.UNKNOWN_TOOL, r


async def test_check_config_with_redis_joins_nothing(redis: RedisServer, tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "slow-secret")
    config = tmp_path / "tools.yaml"
    config.write_text(
        tools_file(
            tool(
                "f",
                "http://127.0.0.1:9/f",
                rate_limits=[{"scope": "fleet", "rate": 10}],
                request={"headers": {"x-key": f"${{file:{fifo.path}}}"}},
            )
        )
    )
    proc = await asyncio.create_subprocess_exec(
        str(sidecar_binary()),
        "--config",
        str(config),
        "--check-config",
        "--redis-url",
        redis.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # While the check is held compiling, watch Redis: a live sidecar would register
        # within its first heartbeat (immediately) and then every second.
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            assert await asyncio.to_thread(redis.cli, "ZCARD", "tandem:sidecars") == "0"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(fifo.feed)
        out_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out, err = out_bytes.decode(), err_bytes.decode()
    assert proc.returncode == 0, err
    assert "OK, 1 tools: f" in out
    assert redis.cli("ZCARD", "tandem:sidecars") == "0"
    assert redis.cli("KEYS", "tandem:*") == ""
