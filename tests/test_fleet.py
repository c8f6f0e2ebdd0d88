"""Fleet-wide limits: several real sidecars sharing a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from brain import SidecarClient, Status
from fleet_support import quota_tool, wait_held, wait_live, wait_subscribed

from harness import RedisServer, SidecarProcess, Upstream, scrape, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

RATE = 100
BURST = 20


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


class Arrivals:
    """Upstream request times for one path."""

    def __init__(self, upstream: Upstream, path: str, headers: dict[str, str] | None = None):
        self.times: list[float] = []

        async def handler(_: web.Request) -> web.StreamResponse:
            self.times.append(time.monotonic())
            return web.json_response({"ok": True}, headers=headers)

        upstream.route("GET", path, handler)

    def within(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t < end)


def fleet_config(upstream: Upstream, **limit: Any) -> str:
    spec = {"scope": "fleet", "rate": RATE, "per": "1s", "burst": BURST, **limit}
    return tools_file(tool("shared", f"{upstream.url}/shared", rate_limits=[spec]))


async def drive(client: SidecarClient, seconds: float, per_second: int) -> dict[Status, int]:
    """Calls at a steady rate for `seconds`, without waiting for answers to pace."""
    statuses: dict[Status, int] = {}
    tasks: set[asyncio.Task[Any]] = set()
    interval = 1 / per_second
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        task = asyncio.create_task(client.call("shared", agent_id="a", timeout=5))
        tasks.add(task)
        task.add_done_callback(
            lambda t: statuses.__setitem__(
                t.result().status, statuses.get(t.result().status, 0) + 1
            )
        )
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*tasks)
    return statuses


@pytest.fixture
def fleet_of(
    start_sidecar: Start, client_for: MakeClient
) -> Callable[..., tuple[SidecarProcess, SidecarClient]]:
    def make(config: str, redis: RedisServer) -> tuple[SidecarProcess, SidecarClient]:
        sidecar = start_sidecar(config, "--redis-url", redis.url)
        return sidecar, client_for(sidecar.unix_target)

    return make


async def test_three_sidecars_share_one_limit_fairly(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    arrivals = Arrivals(upstream, "/shared")
    config = fleet_config(upstream)
    members = [fleet_of(config, redis) for _ in range(3)]
    await wait_live(members[0][0], 3)
    started = time.monotonic()
    results = await asyncio.gather(*(drive(client, 10, 2 * RATE) for _, client in members))
    elapsed = time.monotonic() - started
    ok = [r.get(Status.OK, 0) for r in results]
    assert all(set(r) <= {Status.OK, Status.RATE_LIMITED} for r in results), results
    total = sum(ok)
    # Documented bound: rate x elapsed + burst, for the whole fleet.
    assert total <= RATE * elapsed + BURST, (total, elapsed)
    assert total >= RATE * 10 * 0.8, total  # and the limit is actually usable
    assert len(arrivals.times) == total
    # Equal demand, equal shares (within 25% of a third each).
    for share in ok:
        assert abs(share - total / 3) <= total / 3 * 0.25, ok
    # The hot path stays in memory: far fewer Redis commands than calls.
    samples = await asyncio.to_thread(scrape, members[0][0].metrics_port)
    leases = samples["sidecar_fleet_redis_commands_total"][(("op", "lease"),)]
    calls = sum(results[0].values())
    assert leases < calls / 5, (leases, calls)


async def test_scale_up_and_down_mid_run_stays_within_the_bound(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    arrivals = Arrivals(upstream, "/shared")
    config = fleet_config(upstream)
    members = [fleet_of(config, redis) for _ in range(3)]
    started = time.monotonic()
    runs = [asyncio.create_task(drive(client, 9, 2 * RATE)) for _, client in members]
    await asyncio.sleep(3)
    joiner = fleet_of(config, redis)  # scale-up
    runs.append(asyncio.create_task(drive(joiner[1], 6, 2 * RATE)))
    await asyncio.sleep(3)
    leaving, _ = members[2]
    assert await asyncio.to_thread(leaving.terminate) == 0  # scale-down
    results = await asyncio.gather(*runs, return_exceptions=True)
    elapsed = time.monotonic() - started
    # The leaver's calls in flight ended cleanly or its stream closed; count the upstream.
    assert all(not isinstance(r, Exception) or "broke" in str(r) for r in results), results
    assert len(arrivals.times) <= RATE * elapsed + BURST, (len(arrivals.times), elapsed)
    assert len(arrivals.times) >= RATE * 9 * 0.75


async def test_redis_outage_falls_back_to_a_local_share_and_recovers(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    arrivals = Arrivals(upstream, "/shared")
    config = fleet_config(upstream)
    members = [fleet_of(config, redis) for _ in range(2)]
    await wait_live(members[0][0], 2)
    runs = [asyncio.create_task(drive(client, 9, 2 * RATE)) for _, client in members]
    await asyncio.sleep(3)
    redis.kill()
    outage_start = time.monotonic()
    await asyncio.sleep(3)
    outage_end = time.monotonic()
    redis.start()  # same port: the sidecars reconnect by themselves
    results = await asyncio.gather(*runs)
    # Only RATE_LIMITED besides OK, throughout.
    for r in results:
        assert set(r) <= {Status.OK, Status.RATE_LIMITED}, r
    # During the outage each of the 2 sidecars enforced RATE / 2.
    during = arrivals.within(outage_start + 0.5, outage_end)
    assert during <= RATE * (outage_end - outage_start - 0.5) + BURST, during
    assert during >= RATE * 2.5 * 0.6, during  # traffic did continue
    for sidecar, _ in members:
        samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
        assert samples["sidecar_fleet_connected"][()] == 1  # fleet mode resumed
        assert sum(samples["sidecar_fleet_redis_errors_total"].values()) >= 1
        assert "Redis unreachable" in sidecar.log_text()
        assert "fleet mode on" in sidecar.log_text()


async def test_a_redis_that_stops_answering_costs_no_call_more_than_a_command_timeout(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    """Redis keeps its connections but answers nothing (a frozen process, a partition
    without resets): the first lease waits out the command timeout (250 ms) and the
    sidecar falls back to its local share. Calls that were already queued for that lease
    must not each wait out a timeout of their own in turn; none may come near its
    deadline. Fleet mode resumes once Redis answers again."""
    Arrivals(upstream, "/shared")
    sidecar, client = fleet_of(fleet_config(upstream), redis)
    assert (await client.call("shared")).ok
    took: list[float] = []
    statuses: dict[Status, int] = {}

    async def timed() -> None:
        started = time.monotonic()
        r = await client.call("shared", agent_id="a", timeout=5)
        took.append(time.monotonic() - started)
        statuses[r.status] = statuses.get(r.status, 0) + 1

    # Spend the local tokens, so the calls below need a lease, and let the wait Redis
    # announced for the next one pass.
    await asyncio.gather(*(timed() for _ in range(BURST * 2)))
    await asyncio.sleep(1.2)
    took.clear()
    statuses.clear()
    redis.freeze()
    try:
        calls = [asyncio.create_task(timed()) for _ in range(100)]
        await asyncio.sleep(1.5)  # more calls after the fallback
        calls += [asyncio.create_task(timed()) for _ in range(50)]
        await asyncio.gather(*calls)
        samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
        assert samples["sidecar_fleet_connected"][()] == 0
    finally:
        redis.thaw()

    assert set(statuses) <= {Status.OK, Status.RATE_LIMITED}, statuses
    slowest = max(took)
    assert slowest < 1.5, f"a call waited {slowest:.2f} s on a Redis that answers nothing"
    for _ in range(50):
        samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
        if samples["sidecar_fleet_connected"][()] == 1:
            break
        await asyncio.sleep(0.1)
    assert samples["sidecar_fleet_connected"][()] == 1, "fleet mode resumed"


async def test_deny_mode_refuses_with_a_clear_status_while_redis_is_down(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    Arrivals(upstream, "/shared")
    _, client = fleet_of(fleet_config(upstream, on_redis_error="deny"), redis)
    assert (await client.call("shared")).ok
    redis.kill()
    for _ in range(50):
        r = await client.call("shared")
        if r.status is Status.LIMITER_UNAVAILABLE:
            break
        await asyncio.sleep(0.1)
    assert r.status is Status.LIMITER_UNAVAILABLE, r
    assert "on_redis_error: deny" in r.error


async def steady(client: SidecarClient, name: str, seconds: float) -> list[Any]:
    """Calls `name` 40 times a second (under every limit here) for `seconds`."""
    results = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        results.append(await client.call(name, agent_id="a", timeout=5))
        await asyncio.sleep(0.025)
    return results


async def connected_samples(sidecar: SidecarProcess, seconds: float) -> list[float]:
    """`sidecar_fleet_connected` scraped ten times a second for `seconds`."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
        seen.append(samples["sidecar_fleet_connected"][()])
        await asyncio.sleep(0.1)
    return seen


async def test_a_key_of_another_type_sends_only_its_own_bucket_to_the_fallback(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    """Another program wrote a list where one bucket lives (or data the lease script
    cannot read): Redis answers every lease for that key with WRONGTYPE. That is the
    bucket's problem, not an outage: it falls back per its on_redis_error, says why
    once, asks Redis again once a second (not per call), and leases again once the key
    is free; the other buckets stay in fleet mode and `sidecar_fleet_connected` stays 1.
    (Before, each refusal turned fleet mode off as "Redis unreachable" and the next
    heartbeat on again: a log line pair and a metric flap every second.)"""
    for path in ("/shared", "/strict", "/other"):
        upstream.json("GET", path, {"ok": True})
    spec = {"scope": "fleet", "rate": RATE, "per": "1s", "burst": BURST}
    config = tools_file(
        tool("shared", f"{upstream.url}/shared", rate_limits=[spec]),
        tool("strict", f"{upstream.url}/strict", rate_limits=[{**spec, "on_redis_error": "deny"}]),
        tool("other", f"{upstream.url}/other", rate_limits=[spec]),
    )
    sidecar, client = fleet_of(config, redis)
    for name in ("shared", "strict", "other"):
        assert (await client.call(name, agent_id="a")).ok
    keys = {name: f"tandem:rl:{name}" for name in ("shared", "strict", "other")}
    assert set(redis.cli("KEYS", "tandem:rl:*").split()) == set(keys.values())
    for name in ("shared", "strict"):
        redis.cli("DEL", keys[name])
        redis.cli("RPUSH", keys[name], "someone-else's-list")
    errors_before = (
        (await asyncio.to_thread(scrape, sidecar.metrics_port))
        .get("sidecar_fleet_redis_errors_total", {})
        .get((("op", "lease"),), 0)
    )

    seconds = 3.0
    shared, strict, other, connected = await asyncio.gather(
        steady(client, "shared", seconds),
        steady(client, "strict", seconds),
        steady(client, "other", seconds),
        connected_samples(sidecar, seconds),
    )
    assert set(connected) == {1}, "one bucket refused is not a fleet outage"
    assert {r.status for r in shared} == {Status.OK}, "local_share: served on the local share"
    assert {r.status for r in other} == {Status.OK}
    refused = [r for r in strict if r.status is Status.LIMITER_UNAVAILABLE]
    assert len(refused) >= len(strict) - 2, [r.status for r in strict]  # lease tokens left
    assert "WRONGTYPE" in refused[-1].error
    assert keys["strict"] in refused[-1].error
    assert "on_redis_error: deny" in refused[-1].error
    # The untouched bucket kept leasing from Redis.
    assert redis.cli("TYPE", keys["other"]) == "hash"
    # A refusal costs a round trip per bucket per second, not one per call.
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    errors = samples["sidecar_fleet_redis_errors_total"][(("op", "lease"),)] - errors_before
    assert 2 <= errors <= 2 * (seconds + 2), errors
    log = sidecar.log_text()
    for name in ("shared", "strict"):
        said = [line for line in log.splitlines() if "refused this bucket's lease" in line]
        assert sum(keys[name] in line for line in said) == 1, said
    assert "WRONGTYPE" in log
    assert "unreachable" not in log
    assert log.count("fleet mode on") == 1, "fleet mode never went off"

    # The key is freed: both buckets lease from Redis again within a retry interval.
    for name in ("shared", "strict"):
        redis.cli("DEL", keys[name])
    await asyncio.sleep(1.2)
    strict = await steady(client, "strict", 0.5)
    assert {r.status for r in strict} == {Status.OK}
    await steady(client, "shared", 0.5)
    for name in ("shared", "strict"):
        assert redis.cli("TYPE", keys[name]) == "hash", name
    assert sidecar.log_text().count("leases this bucket again") == 2


async def test_a_redis_out_of_memory_is_named_and_fleet_mode_resumes_after(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    """Redis at its maxmemory refuses every write with OOM: the heartbeat as well as
    the leases. Fleet mode goes off once, and the log says Redis refuses, not that it is
    unreachable; calls go on at the local share; fleet mode resumes when memory is
    freed."""
    upstream.json("GET", "/shared", {"ok": True})
    sidecar, client = fleet_of(fleet_config(upstream), redis)
    assert (await client.call("shared", agent_id="a")).ok
    redis.cli("CONFIG", "SET", "maxmemory", "1")
    try:
        results, connected = await asyncio.gather(
            steady(client, "shared", 3.0), connected_samples(sidecar, 3.0)
        )
    finally:
        redis.cli("CONFIG", "SET", "maxmemory", "0")
    assert {r.status for r in results} == {Status.OK}
    assert connected[-10:] == [0] * 10, connected
    log = sidecar.log_text()
    assert "Redis refuses the heartbeat" in log
    assert "OOM" in log
    assert "unreachable" not in log
    off = [line for line in log.splitlines() if "falling back per on_redis_error" in line]
    assert len(off) == 1, off
    for _ in range(50):  # the next heartbeat, within a second
        if (await connected_samples(sidecar, 0.1))[-1] == 1:
            break
    assert (await connected_samples(sidecar, 0.1))[-1] == 1, "fleet mode resumed"
    assert sidecar.log_text().count("fleet mode on") == 2


async def dropped_throttles(sidecar: SidecarProcess) -> dict[str, float]:
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    return {
        dict(labels)["reason"]: value
        for labels, value in samples.get("sidecar_fleet_throttles_dropped_total", {}).items()
    }


async def test_a_flood_of_throttles_costs_cpu_not_memory_and_loses_no_real_hold(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    """Anything that can publish to Redis can send throttles, as fast as it likes.
    Origins longer than any a tool calls are dropped on arrival: 400 messages with 64 KiB
    origins, which the unbounded subscription of old kept whole (a hold each, 25 MiB),
    leave RSS within 8 MiB. Messages pass a bounded queue; the excess is dropped and the
    stored holds read instead: 20,000 junk messages published while the sidecar is
    stopped arrive at once when it resumes, more than it can apply, and a hold stored
    amid them with no message of its own (so only that read can deliver it) still holds
    its origin. (Holds for the unknown origins that are applied are kept up to 1,024: the
    unit test in `upstream/origins.rs`.)"""
    upstream.json("GET", "/shared", {"ok": True})
    # Redis must not drop the subscriber for its backlog: the flood is the sidecar's.
    redis.cli("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
    sidecar, client = fleet_of(fleet_config(upstream), redis)
    assert (await client.call("shared", agent_id="a")).ok
    await wait_subscribed(redis, 1)
    before = sidecar.rss_bytes()
    huge = "".join(
        f"PUBLISH tandem:throttle 600000|http://big-{i}-{'x' * 65536}.example:80\n"
        for i in range(400)
    )
    await asyncio.to_thread(redis.cli, commands=huge)
    for _ in range(400):
        if (await dropped_throttles(sidecar)).get("malformed") == 400:
            break
        await asyncio.sleep(0.05)
    assert (await dropped_throttles(sidecar)).get("malformed") == 400
    grown = sidecar.rss_bytes() - before
    assert grown < 8 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"

    seconds, micros = (await asyncio.to_thread(redis.cli, "TIME")).split()
    until_ms = int(seconds) * 1000 + int(micros) // 1000 + 60_000
    junk = [
        f"PUBLISH tandem:throttle 600000|http://junk-{i}-{'x' * 200}.example:80\n"
        for i in range(20_000)
    ]
    junk.insert(10_000, f"ZADD tandem:holds {until_ms} {upstream.url}\n")
    assert sidecar.proc is not None
    # Stopped, the sidecar leaves the flood in its socket and in Redis's output buffer; on
    # SIGCONT redis-rs's reader parses it in long runs (many reads per poll, none waiting)
    # while applying each message scans the 1,024 kept holds: far more than the queue's
    # 256 arrive before the applier catches up, so some are dropped.
    sidecar.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.to_thread(redis.cli, commands="".join(junk))
    finally:
        sidecar.proc.send_signal(signal.SIGCONT)
    held = await wait_held(client, "shared", timeout=15, agent_id="a")
    assert held.status is Status.RATE_LIMITED, held
    assert held.limited_by == f"upstream:{upstream.url}"
    assert (await dropped_throttles(sidecar)).get("queue_full", 0) > 0
    # One WARN per run of drops (a flood that pauses a second and resumes is two runs).
    assert "arrive faster than they are applied" in sidecar.log_text()


async def test_stored_holds_are_read_bounded_whatever_else_wrote_them(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    """A starting sidecar reads the stored holds once its config is loaded. Something
    else writing `tandem:holds` costs it no more than the bound: the 4,096 longest holds,
    origins over 512 bytes skipped in Redis. Here 200 holds with 64 KiB origins, 3,000
    short junk origins (more than the 1,024 unknown origins kept) and 20,000 shorter
    ones: its RSS stays within 12 MiB of a sidecar that started before them (by hand: 3.7
    to 4.2 MiB; 54.6 MiB when the whole set was read), and the real hold amid the junk
    (read after 3,000 junk ones) applies from the first call."""
    upstream.json("GET", "/shared", {"ok": True})
    config = fleet_config(upstream)
    control, _ = fleet_of(config, redis)
    seconds, micros = (await asyncio.to_thread(redis.cli, "TIME")).split()
    now_ms = int(seconds) * 1000 + int(micros) // 1000

    def holds(count: int, ends_in_ms: int, name: str, length: int) -> list[str]:
        return [
            f"ZADD tandem:holds {now_ms + ends_in_ms} http://{name}-{i}-{'x' * length}.example\n"
            for i in range(count)
        ]

    junk = holds(200, 120_000, "big", 65536) + holds(3000, 60_000, "junk", 200)
    junk += holds(20_000, 10_000, "short", 20)
    junk.append(f"ZADD tandem:holds {now_ms + 50_000} {upstream.url}\n")
    await asyncio.to_thread(redis.cli, commands="".join(junk))
    sidecar, client = fleet_of(config, redis)
    held = await client.call("shared", agent_id="a", timeout=0.5)
    assert held.status is Status.RATE_LIMITED, held
    assert held.limited_by == f"upstream:{upstream.url}"
    await asyncio.sleep(1)  # the subscription's read of the same holds
    grown = sidecar.rss_bytes() - control.rss_bytes()
    assert grown < 12 * 2**20, f"RSS {grown / 2**20:.1f} MiB above the control"


async def test_without_resp3_throttles_are_read_from_the_stored_holds(
    upstream: Upstream, tmp_path: Path, fleet_of: Callable[..., Any]
) -> None:
    """A Redis that refuses HELLO (before 6, or with the command renamed away, as here)
    cannot push throttles on a RESP3 connection: each sidecar says so once and reads the
    stored holds every second, so a hold one learns reaches the others within about a
    second, and fleet limits work as before."""
    redis = RedisServer(tmp_path, "--rename-command", "HELLO", '""').start()
    try:
        q, times = quota_tool(upstream, reset_s=5)
        config = tools_file(q)
        (a, client_a), (b, client_b) = fleet_of(config, redis), fleet_of(config, redis)
        await wait_live(a, 2)
        assert (await client_a.call("q")).ok
        held = await wait_held(client_b, "q")  # within a poll of the stored holds
        assert held.status is Status.RATE_LIMITED, held
        assert held.limited_by == f"upstream:{upstream.url}"
        assert times[-1] - times[0] < 4, "reached B after more than three polls"
        for sidecar in (a, b):
            said = [line for line in sidecar.log_text().splitlines() if "RESP3" in line]
            assert len(said) == 1, said
            samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
            assert samples["sidecar_fleet_connected"][()] == 1
    finally:
        redis.kill()


async def test_announced_upstream_quota_is_held_fleet_wide_until_reset(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    q, times = quota_tool(upstream, reset_s=2)
    config = tools_file(q)
    (a, client_a), (_, client_b) = fleet_of(config, redis), fleet_of(config, redis)
    await wait_live(a, 2)
    await wait_subscribed(redis, 2)
    first = await client_a.call("q")
    assert first.ok
    reset_at = times[0] + 2
    # Both sidecars hold (wait-within-deadline) or refuse; none reaches the upstream early.
    short = await client_b.call("q", timeout=0.5)
    assert short.status is Status.RATE_LIMITED
    assert short.limited_by == f"upstream:{upstream.url}"
    held = await asyncio.gather(client_a.call("q", timeout=5), client_b.call("q", timeout=5))
    assert {r.status for r in held} == {Status.OK}
    assert len(times) == 3
    assert min(times[1:]) >= reset_at - 0.05, [t - times[0] for t in times]


async def test_llm_token_limit_is_corrected_by_usage(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    usage_total = 0
    sent: list[float] = []

    async def llm(_: web.Request) -> web.StreamResponse:
        nonlocal usage_total
        usage_total += 100
        sent.append(time.monotonic())
        return web.json_response({"choices": [], "usage": {"total_tokens": 100}})

    upstream.route("POST", "/v1/chat/completions", llm)
    limit = {"unit": "tokens", "rate": 1000, "per": "1s", "burst": 200}
    sidecar = start_sidecar(
        tools_file(
            tool(
                "llm",
                f"{upstream.url}/v1/chat/completions",
                method="POST",
                rate_limits=[limit],
            )
        )
    )
    client = client_for(sidecar.unix_target)
    started = time.monotonic()
    # Each request estimates ~10 tokens (max_tokens 1 + a short prompt) but uses 100.
    request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    statuses: dict[Status, int] = {}
    end = started + 4
    while time.monotonic() < end:
        batch = await asyncio.gather(*(client.call("llm", request) for _ in range(10)))
        for r in batch:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {Status.OK, Status.RATE_LIMITED}, statuses
    # Tokens actually used stay within rate x time + burst + one call's overshoot;
    # charging estimates alone would have let ~10x more through.
    assert usage_total <= 1000 * elapsed + 200 + 100, (usage_total, elapsed)
    assert usage_total >= 1000 * 4 * 0.5, usage_total


async def test_shadow_mode_limits_nothing_and_counts(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    Arrivals(upstream, "/shared")
    limit = {"rate": 1, "per": "1h", "enforce": False}
    sidecar = start_sidecar(
        tools_file(tool("shared", f"{upstream.url}/shared", rate_limits=[limit]))
    )
    client = client_for(sidecar.unix_target)
    results = await asyncio.gather(*(client.call("shared") for _ in range(10)))
    assert {r.status for r in results} == {Status.OK}
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    assert samples["sidecar_rate_limit_shadow_total"][(("scope", "pod"), ("tool", "shared"))] == 9
    assert "shadow mode" in sidecar.log_text()


async def test_an_upstream_keyed_limit_is_shared_by_every_tool_calling_it(
    upstream: Upstream, redis: RedisServer, fleet_of: Callable[..., Any]
) -> None:
    arrivals = Arrivals(upstream, "/shared")
    limit = {"key": "upstream", "scope": "fleet", "rate": RATE, "per": "1s", "burst": BURST}
    config = tools_file(
        tool("shared", f"{upstream.url}/shared", rate_limits=[limit]),
        tool("also_shared", f"{upstream.url}/shared", rate_limits=[limit]),
    )
    (a, client_a), (_, client_b) = fleet_of(config, redis), fleet_of(config, redis)
    await wait_live(a, 2)

    async def hammer(client: SidecarClient, name: str) -> None:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            await asyncio.gather(*(client.call(name) for _ in range(10)))
            await asyncio.sleep(0.02)

    started = time.monotonic()
    await asyncio.gather(hammer(client_a, "shared"), hammer(client_b, "also_shared"))
    elapsed = time.monotonic() - started
    # Two tools, two sidecars, one bucket for the upstream.
    assert len(arrivals.times) <= RATE * elapsed + BURST, (len(arrivals.times), elapsed)
    limited = await client_a.call("shared")
    if limited.status is Status.RATE_LIMITED:
        assert limited.limited_by == f"fleet:upstream:{upstream.url}"


async def test_tenant_keyed_limits_isolate_tenants(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    Arrivals(upstream, "/shared")
    limit = {"key": "tenant", "rate": 2, "per": "1h"}
    sidecar = start_sidecar(
        tools_file(tool("shared", f"{upstream.url}/shared", rate_limits=[limit]))
    )
    client = client_for(sidecar.unix_target)
    acme = [await client.call("shared", metadata={"tenant": "acme"}) for _ in range(3)]
    assert [r.status for r in acme] == [Status.OK, Status.OK, Status.RATE_LIMITED]
    assert acme[2].limited_by == "pod:shared:tenant:acme"
    assert (await client.call("shared", metadata={"tenant": "globex"})).ok
