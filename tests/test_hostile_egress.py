"""Egress stays where the operator put it (issue 16, defects 7, 9, 10 and 11).

Every test starts the real sidecar binary against real loopback upstreams: the tool's
own origin, and a second loopback server on another port standing in for what a hostile
redirect would like to reach (another service, a local Redis, the sidecar's own metrics
port). That second server records everything it receives.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from brain import SidecarClient, Status

from harness import SidecarProcess, Upstream, sidecar_binary, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

HEADER_KEY = "hdr-key-5f1d2c3b4a"
QUERY_KEY = "qry-key-9e8d7c6b5a"
SECRET_ENV = {"TANDEM_EGRESS_HEADER_KEY": HEADER_KEY, "TANDEM_EGRESS_QUERY_KEY": QUERY_KEY}
SECRET_REQUEST = {
    "headers": {"X-Api-Key": "${env:TANDEM_EGRESS_HEADER_KEY}", "X-Trace": "fixed"},
    "query": {"api_key": "${env:TANDEM_EGRESS_QUERY_KEY}"},
}


class Recorder:
    """What a loopback server received, per path: headers and query string."""

    def __init__(self, server: Upstream) -> None:
        self.server = server
        self.seen: list[tuple[str, dict[str, str], str]] = []

    def record(self, path: str, body: Any = None) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.seen.append((request.path, headers, request.query_string))
            return web.json_response(body if body is not None else {"at": request.path})

        self.server.route("*", path, handler)

    def everything(self) -> str:
        return repr(self.seen)


def redirect(server: Upstream, path: str, location: Callable[[], str], status: int = 302) -> None:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location()})

    server.route("*", path, handler)


@pytest.fixture
def other() -> Iterator[Upstream]:
    """A second loopback server, on another port: another origin."""
    server = Upstream().start()
    yield server
    server.stop()


def check_config(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.yaml"
    path.write_text(config)
    return subprocess.run(
        [str(sidecar_binary()), "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def still_serves(client: SidecarClient, tool_name: str) -> None:
    r = await client.call(tool_name, timeout=5)
    assert r.status is Status.OK, r


# --- 7: credentials go to their own origin only ---------------------------------------


async def test_secret_headers_and_query_never_follow_a_redirect_to_another_origin(
    upstream: Upstream, other: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    landed = Recorder(other)
    landed.record("/landing")
    home = Recorder(upstream)
    home.record("/here")
    # A hostile upstream sends the call elsewhere, even copying the key into the query.
    redirect(upstream, "/away", lambda: f"{other.url}/landing?api_key={QUERY_KEY}&keep=1")
    redirect(upstream, "/away-307", lambda: f"{other.url}/landing?k={HEADER_KEY}", status=307)
    redirect(upstream, "/away-in-path", lambda: f"{other.url}/landing/{HEADER_KEY}")
    redirect(upstream, "/same", lambda: f"{upstream.url}/here")

    # As configured before this fix: follow_redirects with a loopback allowlist.
    legacy = start_sidecar(
        tools_file(
            tool("away", f"{upstream.url}/away", request=SECRET_REQUEST, follow_redirects=3),
            tool("same", f"{upstream.url}/same", request=SECRET_REQUEST, follow_redirects=3),
        ),
        env=SECRET_ENV,
    )
    client = client_for(legacy.unix_target)
    r = await client.call("away", timeout=5)
    assert HEADER_KEY not in landed.everything()
    assert QUERY_KEY not in landed.everything()
    # Redirects stay in the tool's origin unless the operator widens them.
    assert r.status is Status.EGRESS_DENIED, r
    assert "redirects.allow_origins" in r.error
    assert landed.seen == []
    # Within the origin, the credentials go along.
    assert (await client.call("same", timeout=5)).json() == {"at": "/here"}
    assert home.seen[-1][1]["x-api-key"] == HEADER_KEY
    assert f"api_key={QUERY_KEY}" not in home.seen[-1][2]  # the Location chose the query

    # Widened to the other origin: the call arrives there without the credentials.
    widened: dict[str, Any] = {"redirects": {"max": 3, "allow_origins": [other.url]}}
    sidecar = start_sidecar(
        tools_file(
            tool("away", f"{upstream.url}/away", request=SECRET_REQUEST, **widened),
            tool(
                "away307",
                f"{upstream.url}/away-307",
                method="POST",
                request=SECRET_REQUEST,
                **widened,
            ),
            tool("in_path", f"{upstream.url}/away-in-path", request=SECRET_REQUEST, **widened),
            tool("same", f"{upstream.url}/same", request=SECRET_REQUEST, **widened),
        ),
        env=SECRET_ENV,
    )
    client = client_for(sidecar.unix_target)
    r = await client.call("away", timeout=5)
    assert r.status is Status.OK, r
    path, headers, query = landed.seen[-1]
    assert path == "/landing"
    assert "x-api-key" not in headers
    assert "authorization" not in headers
    assert "referer" not in headers
    assert headers["x-trace"] == "fixed"  # non-secret headers still go
    assert query == "keep=1"
    r = await client.call("away307", {"n": 1}, timeout=5)
    assert r.status is Status.OK, r
    assert landed.seen[-1][2] == ""
    assert "x-api-key" not in landed.seen[-1][1]
    r = await client.call("in_path", timeout=5)
    assert r.status is Status.EGRESS_DENIED, r
    assert "credentials" in r.error
    assert len(landed.seen) == 2
    assert HEADER_KEY not in landed.everything()
    assert QUERY_KEY not in landed.everything()
    # The tool's own origin still gets them, and the sidecar still serves.
    assert (await client.call("same", timeout=5)).json() == {"at": "/here"}
    assert home.seen[-1][1]["x-api-key"] == HEADER_KEY
    for log in (legacy.log_text(), sidecar.log_text()):
        assert HEADER_KEY not in log
        assert QUERY_KEY not in log


# --- 9: arguments never choose the host -----------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["Host", "host", "X-Forwarded-Host", "X-Forwarded-For", "Forwarded", "X-Original-URL"],
)
def test_arguments_cannot_fill_host_or_routing_headers(tmp_path: Path, header: str) -> None:
    schema = {"type": "object", "properties": {"h": {"type": "string"}}}
    templated = tool(
        "h", "http://api.example.com/x", input_schema=schema, request={"headers": {header: "{h}"}}
    )
    proc = check_config(tmp_path, tools_file(templated))
    assert proc.returncode != 0, proc.stderr
    assert f'tool "h": request.headers.{header}' in proc.stderr
    assert "argument" in proc.stderr
    # The operator may still fix the value.
    fixed = tool(
        "h", "http://api.example.com/x", input_schema=schema, request={"headers": {header: "v"}}
    )
    proc = check_config(tmp_path, tools_file(fixed))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (":authority", "pseudo-header"),
        ("Transfer-Encoding", "HTTP client"),
        ("Content-Length", "HTTP client"),
        ("Connection", "HTTP client"),
    ],
)
def test_templates_cannot_set_framing_or_pseudo_headers(
    tmp_path: Path, header: str, says: str
) -> None:
    config = tools_file(
        tool("h", "http://api.example.com/x", request={"headers": {header: "chunked"}})
    )
    proc = check_config(tmp_path, config)
    assert proc.returncode != 0, proc.stderr
    assert f'tool "h": request.headers.{header}' in proc.stderr
    assert says in proc.stderr


# --- 10: redirects stay in the origin; allow rules can name ports ---------------------


async def test_a_redirect_cannot_reach_other_ports_on_an_allowlisted_range(
    upstream: Upstream, other: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    stand_in = Recorder(other)  # a local Redis, say
    stand_in.record("/")
    upstream.json("GET", "/ok", {"ok": True})
    metrics_port = 0
    redirect(upstream, "/to-metrics", lambda: f"http://127.0.0.1:{metrics_port}/metrics")
    redirect(upstream, "/to-other-port", lambda: f"{other.url}/")
    sidecar = start_sidecar(
        tools_file(
            tool("to_metrics", f"{upstream.url}/to-metrics", follow_redirects=3),
            tool("to_other_port", f"{upstream.url}/to-other-port", follow_redirects=3),
            tool("ok", f"{upstream.url}/ok"),
        )
    )
    metrics_port = sidecar.metrics_port
    client = client_for(sidecar.unix_target)
    rss_before = sidecar.rss_bytes()
    for _ in range(50):
        for name in ("to_metrics", "to_other_port"):
            r = await client.call(name, timeout=5)
            assert r.status is Status.EGRESS_DENIED, r
            assert "leaves this tool's origin" in r.error
    assert stand_in.seen == []
    await still_serves(client, "ok")
    assert sidecar.rss_bytes() - rss_before < 64 << 20


async def test_allow_rules_name_ports_and_redirects_widen_explicitly(
    upstream: Upstream,
    other: Upstream,
    start_sidecar: Start,
    client_for: MakeClient,
    tmp_path: Path,
) -> None:
    landed = Recorder(other)
    landed.record("/x")
    upstream.json("GET", "/ok", {"ok": True})
    redirect(upstream, "/to-other", lambda: f"{other.url}/x")
    redirect(upstream, "/to-other-by-name", lambda: f"http://localhost:{other.port}/x")
    a, b = upstream.port, other.port
    both_ports = [{"cidr": "127.0.0.1", "ports": [a, b]}, {"cidr": "::1", "ports": [a, b]}]
    sidecar = start_sidecar(
        tools_file(
            tool(
                "pinned", f"{upstream.url}/ok", loopback=False, egress={"allow": [f"127.0.0.1:{a}"]}
            ),
            tool(
                "pinned_by_name",
                f"http://localhost:{a}/ok",
                loopback=False,
                egress={"allow": [f"127.0.0.1:{a}", f"[::1]:{a}"]},
            ),
            # A name on a port the rules do not open is refused at connect time.
            tool(
                "other_port_by_name",
                f"http://localhost:{b}/x",
                loopback=False,
                egress={"allow": [f"127.0.0.0/8:{a}", f"[::1]:{a}"]},
            ),
            # Redirects widened to another origin, whose port egress does not open.
            tool(
                "widened_not_allowed",
                f"{upstream.url}/to-other",
                loopback=False,
                egress={"allow": [f"127.0.0.1:{a}"]},
                redirects={"max": 2, "allow_origins": [other.url]},
            ),
            # Widened, and both opened: by address and by name.
            tool(
                "widened",
                f"{upstream.url}/to-other",
                loopback=False,
                egress={"allow": both_ports},
                redirects={"max": 2, "allow_origins": [other.url]},
            ),
            tool(
                "widened_by_name",
                f"http://localhost:{a}/to-other-by-name",
                loopback=False,
                egress={"allow": both_ports},
                redirects={"max": 2, "allow_origins": [f"http://localhost:{b}"]},
            ),
        )
    )
    client = client_for(sidecar.unix_target)
    assert (await client.call("pinned", timeout=5)).json() == {"ok": True}
    assert (await client.call("pinned_by_name", timeout=5)).json() == {"ok": True}
    for name in ("other_port_by_name", "widened_not_allowed"):
        r = await client.call(name, timeout=5)
        assert r.status is Status.EGRESS_DENIED, r
        assert str(b) in r.error
    assert landed.seen == []
    assert (await client.call("widened", timeout=5)).json() == {"at": "/x"}
    assert (await client.call("widened_by_name", timeout=5)).json() == {"at": "/x"}
    assert len(landed.seen) == 2
    await still_serves(client, "pinned")

    # An IP-literal URL on a port its rule does not open is a config error.
    proc = check_config(
        tmp_path,
        tools_file(
            tool(
                "t", f"http://127.0.0.1:{b}/x", loopback=False, egress={"allow": [f"127.0.0.1:{a}"]}
            )
        ),
    )
    assert proc.returncode != 0
    assert 'tool "t": request.url' in proc.stderr
    assert "egress.allow" in proc.stderr


# --- 11: the IANA special-purpose ranges, and IPv4 embedded in IPv6 --------------------


@pytest.mark.parametrize(
    "host",
    [
        "198.18.0.1",  # benchmarking
        "198.19.255.1",
        "240.0.0.1",  # reserved
        "192.0.0.170",  # NAT64 discovery
        "[64:ff9b::a9fe:a9fe]",  # NAT64 well-known prefix -> 169.254.169.254
        "[64:ff9b::7f00:1]",  # -> 127.0.0.1
        "[64:ff9b:1::a9fe:a9fe]",  # NAT64 local-use prefix
        "[2002:a9fe:a9fe::1]",  # 6to4 -> 169.254.169.254
        "[2001:0:4136:e378:8000:63bf:5601:5601]",  # Teredo, client 169.254.169.254
        "[::169.254.169.254]",  # IPv4-compatible
        "[::ffff:169.254.169.254]",  # IPv4-mapped
        "[::ffff:0:a9fe:a9fe]",  # IPv4-translated
        "[100::1]",  # discard-only
        "[2001:db8::1]",  # documentation
    ],
)
def test_special_purpose_and_embedded_addresses_are_refused_at_load(
    tmp_path: Path, host: str
) -> None:
    proc = check_config(tmp_path, tools_file(tool("meta", f"http://{host}/x", loopback=False)))
    assert proc.returncode != 0, f"{host} was accepted"
    assert 'tool "meta": request.url' in proc.stderr
    assert "egress.allow" in proc.stderr


def test_public_addresses_are_still_accepted(tmp_path: Path) -> None:
    for host in ("93.184.216.34", "[2606:4700::1111]", "[64:ff9b::808:808]"):
        proc = check_config(tmp_path, tools_file(tool("pub", f"http://{host}/x", loopback=False)))
        assert proc.returncode == 0, (host, proc.stderr)


async def test_redirects_to_embedded_metadata_addresses_are_refused(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    targets = {
        "/nat64": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "/6to4": "http://[2002:a9fe:a9fe::1]/latest/meta-data/",
        "/teredo": "http://[2001:0:4136:e378:8000:63bf:5601:5601]/latest/meta-data/",
        "/bench": "http://198.18.0.1/",
        "/reserved": "http://240.0.0.1/",
    }
    for path, target in targets.items():
        redirect(upstream, path, lambda target=target: target)  # type: ignore[misc]
    upstream.json("GET", "/ok", {"ok": True})
    any_origin: dict[str, Any] = {"redirects": {"max": 2, "allow_origins": ["*"]}}
    sidecar = start_sidecar(
        tools_file(
            *(tool(path.strip("/"), f"{upstream.url}{path}", **any_origin) for path in targets),
            tool("ok", f"{upstream.url}/ok"),
        )
    )
    client = client_for(sidecar.unix_target)
    results = await asyncio.gather(*(client.call(path.strip("/"), timeout=5) for path in targets))
    for (path, target), r in zip(targets.items(), results, strict=True):
        assert r.status is Status.EGRESS_DENIED, (path, r)
        host = target.split("//")[1].split("/")[0].strip("[]")
        assert host in r.error, (path, r.error)
    await still_serves(client, "ok")
