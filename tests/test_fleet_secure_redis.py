"""Fleet mode against Redis as production runs it: TLS only (`rediss://`), a password,
and an ACL user allowed only the commands, keys and channel the sidecar uses (the rules
docs/operations.md gives). The Redis URL, password included, reaches the sidecar as an
operator's Secret would, in `SIDECAR_REDIS_URL`, and must never come out again: not in
its log (at debug level), not in `/metrics`, not in an error."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from brain import SidecarClient, Status
from fleet_support import quota_tool, wait_held, wait_live, wait_subscribed

from harness import (
    RedisServer,
    SidecarProcess,
    Upstream,
    scrape,
    sidecar_binary,
    tool,
    tools_file,
)

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

USER = "tandem"
PASSWORD = "Fleet-Secret-9d2e41"
#: What docs/operations.md tells operators to grant the sidecar's user.
ACL_RULES = (
    "~tandem:*",
    "&tandem:*",
    "+@connection",
    "+evalsha",
    "+eval",
    "+script|load",
    "+publish",
    "+subscribe",
    "+time",
    "+hmget",
    "+hset",
    "+pexpire",
    "+pexpireat",
    "+zadd",
    "+zrem",
    "+zremrangebyscore",
    "+zcard",
    "+zscore",
    "+zrange",
    "+zrevrange",
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def secure_redis(
    tmp_path: Path, ca: trustme.CA, *extra_args: str, rules: tuple[str, ...] = ACL_RULES
) -> RedisServer:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    user = ("--user", USER, "on", f">{PASSWORD}", *rules)
    return RedisServer(workdir, *user, *extra_args, password="admin-only", tls_ca=ca).start()


@pytest.fixture
def redis(tmp_path: Path, ca: trustme.CA) -> Iterator[RedisServer]:
    server = secure_redis(tmp_path, ca)
    yield server
    server.kill()


def env_for(redis: RedisServer, url: str) -> dict[str, str]:
    """The sidecar's environment: the URL as from a Secret, trusting the test CA."""
    return {"SIDECAR_REDIS_URL": url, "SSL_CERT_FILE": str(redis.ca_file), "RUST_LOG": "debug"}


def assert_never_told(sidecar: SidecarProcess, secret: str) -> None:
    assert secret not in sidecar.log_text()
    import urllib.request

    url = f"http://127.0.0.1:{sidecar.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert secret not in response.read().decode()


async def test_fleet_mode_over_tls_as_a_least_privileged_user(
    upstream: Upstream, redis: RedisServer, start_sidecar: Start, client_for: MakeClient
) -> None:
    """Two sidecars over TLS as the ACL user: they see each other (heartbeat script),
    share a fleet limit (lease script), and a quota one learns is pushed to the other
    (RESP3 subscription, same TLS and login) with no command refused."""
    upstream.json("GET", "/shared", {"ok": True})
    limit = {"scope": "fleet", "rate": 100, "per": "1s", "burst": 20}
    q, times = quota_tool(upstream, reset_s=5)
    config = tools_file(tool("shared", f"{upstream.url}/shared", rate_limits=[limit]), q)
    env = env_for(redis, redis.url_for(USER, PASSWORD))
    a, b = start_sidecar(config, env=env), start_sidecar(config, env=env)
    client_a, client_b = client_for(a.unix_target), client_for(b.unix_target)
    await wait_live(a, 2)
    await wait_subscribed(redis, 2)
    results = await asyncio.gather(*(client_a.call("shared", agent_id="x") for _ in range(30)))
    statuses = {r.status for r in results}
    assert statuses == {Status.OK, Status.RATE_LIMITED}, statuses  # burst 20 fleet-wide
    assert (await client_a.call("q")).ok
    await asyncio.sleep(0.3)
    held = await client_b.call("q", timeout=0.5)
    assert held.status is Status.RATE_LIMITED, held
    assert held.limited_by == f"upstream:{upstream.url}"
    assert len(times) == 1
    for sidecar in (a, b):
        samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
        assert samples["sidecar_fleet_connected"][()] == 1
        errors = samples.get("sidecar_fleet_redis_errors_total", {})
        assert not any(errors.values()), errors
        log = sidecar.log_text()
        assert "NOPERM" not in log
        assert "RESP3" not in log
        assert_never_told(sidecar, PASSWORD)


@pytest.mark.parametrize("case", ["wrong password", "untrusted certificate"])
async def test_a_refused_login_keeps_fleet_mode_off_and_says_why(
    upstream: Upstream,
    redis: RedisServer,
    start_sidecar: Start,
    client_for: MakeClient,
    tmp_path: Path,
    case: str,
) -> None:
    """Redis refuses the login, or its certificate is not one the sidecar trusts: the
    sidecar starts on the limits' fallback, says why, and keeps the password it was given
    to itself."""
    upstream.json("GET", "/shared", {"ok": True})
    limit = {"scope": "fleet", "rate": 100, "per": "1s", "burst": 20}
    config = tools_file(tool("shared", f"{upstream.url}/shared", rate_limits=[limit]))
    if case == "wrong password":
        secret, why = "Not-The-Password-5b7c", "authentication failed"
        env = env_for(redis, redis.url_for(USER, secret))
    else:
        secret, why = PASSWORD, "UnknownIssuer"
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        env = {**env_for(redis, redis.url_for(USER, secret)), "SSL_CERT_FILE": str(other)}
    sidecar = start_sidecar(config, env=env)
    client = client_for(sidecar.unix_target)
    assert (await client.call("shared", agent_id="x")).ok  # the local share
    said = [line for line in sidecar.log_text().splitlines() if "fleet mode is off" in line]
    assert len(said) == 1, said
    assert why in said[0], said
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    assert samples["sidecar_fleet_connected"][()] == 0
    assert_never_told(sidecar, secret)


async def test_a_redis_without_hello_never_hears_the_password_back(
    upstream: Upstream, tmp_path: Path, ca: trustme.CA, start_sidecar: Start
) -> None:
    """redis-rs logs in to a RESP3 connection with `HELLO 3 AUTH user password`. A server
    without HELLO answers `unknown command 'HELLO', with args beginning with: ...`, the
    password among them: the sidecar's WARN about it must not repeat the reply as is."""
    redis = secure_redis(tmp_path, ca, "--rename-command", "HELLO", '""')
    try:
        upstream.json("GET", "/shared", {"ok": True})
        config = tools_file(tool("shared", f"{upstream.url}/shared"))
        sidecar = start_sidecar(config, env=env_for(redis, redis.url_for(USER, PASSWORD)))
        await wait_live(sidecar, 1)
        for _ in range(100):
            if "RESP3" in sidecar.log_text():
                break
            await asyncio.sleep(0.05)
        said = [line for line in sidecar.log_text().splitlines() if "RESP3" in line]
        assert len(said) == 1, said
        assert_never_told(sidecar, PASSWORD)
    finally:
        redis.kill()


async def test_an_acl_without_the_channel_gets_holds_read_every_second(
    upstream: Upstream, tmp_path: Path, ca: trustme.CA, start_sidecar: Start, client_for: MakeClient
) -> None:
    """An operator who leaves `&tandem:*` out of the ACL: Redis refuses the subscription
    (NOPERM). The sidecar says so once, reads the stored holds every second instead, and a
    hold one sidecar learns still reaches the other."""
    rules = tuple(rule for rule in ACL_RULES if rule != "&tandem:*")
    redis = secure_redis(tmp_path, ca, rules=rules)
    try:
        q, _ = quota_tool(upstream, reset_s=5)
        env = env_for(redis, redis.url_for(USER, PASSWORD))
        a, b = start_sidecar(tools_file(q), env=env), start_sidecar(tools_file(q), env=env)
        client_a, client_b = client_for(a.unix_target), client_for(b.unix_target)
        await wait_live(a, 2)
        assert (await client_a.call("q")).ok
        held = await wait_held(client_b, "q")
        assert held.status is Status.RATE_LIMITED, held
        assert held.limited_by == f"upstream:{upstream.url}"
        for sidecar in (a, b):
            said = [line for line in sidecar.log_text().splitlines() if "no subscription" in line]
            assert len(said) == 1, said
            assert "no permissions to access one of the channels" in said[0], said
            assert_never_told(sidecar, PASSWORD)
    finally:
        redis.kill()


def test_a_redis_url_that_does_not_parse_is_refused_without_repeating_it(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tools.yaml"
    config.write_text(tools_file(tool("x", "http://127.0.0.1:9/x")))
    for url in (
        f"rediss://{USER}:{PASSWORD}@127.0.0.1:notaport/0",
        f"redis://{USER}:{PASSWORD}@/0",
        f"http://{USER}:{PASSWORD}@127.0.0.1:6379",
    ):
        proc = subprocess.run(
            [str(sidecar_binary()), "--config", str(config), "--listen", f"unix:{tmp_path}/s"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "SIDECAR_REDIS_URL": url},
        )
        assert proc.returncode != 0, url
        assert "--redis-url" in proc.stderr, proc.stderr
        assert PASSWORD not in proc.stderr + proc.stdout, proc.stderr
