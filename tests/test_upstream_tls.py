"""The sidecar against origins over TLS, through the real binary, against real TLS servers
on loopback: aiohttp (HTTP/1.1) and the ``h2`` server (HTTP/2, chosen by ALPN).

Real tool upstreams are reached over https. What must hold: a certificate the platform's
trust store vouches for is accepted (the sidecar trusts the platform's store, so the
tests point it at their own CA with ``SSL_CERT_FILE``, as an operator would with a
private CA); HTTP/2 is negotiated by ALPN where the origin offers it; a certificate from
an unknown issuer, or one for another name, fails the call with an error that says so,
and never reaches the origin's handler.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from brain import SidecarClient, Status

from h2_upstream import H2Upstream
from harness import SidecarProcess, Upstream, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

ANSWER = {"items": [{"id": i, "title": f"result {i}"} for i in range(20)]}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    context.set_alpn_protocols(alpn)
    return context


def trusting(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """The sidecar's environment with ``ca`` as the whole trust store."""
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return {"SSL_CERT_FILE": str(pem)}


@pytest.fixture
def tls_upstream(ca: trustme.CA) -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def make(*names: str) -> Upstream:
        server = Upstream(tls=server_context(ca, *names, alpn=["http/1.1"])).start()
        server.json("GET", "/answer", ANSWER)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def config(url: str) -> str:
    return tools_file(tool("answer", f"{url}/answer"))


async def test_a_tls_origin_with_a_trusted_certificate_answers(
    ca: trustme.CA,
    tls_upstream: Callable[..., Upstream],
    start_sidecar: Start,
    client_for: MakeClient,
    tmp_path: Path,
) -> None:
    server = tls_upstream("localhost")
    # By name: the resolver's guard, SNI and the name check all take part.
    sidecar = start_sidecar(config(f"https://localhost:{server.port}"), env=trusting(ca, tmp_path))
    client = client_for(sidecar.unix_target)

    results = [await client.call("answer", {}, timeout=10) for _ in range(3)]

    assert all(r.status is Status.OK for r in results), results
    assert json.loads(results[0].result_bytes) == ANSWER
    assert server.requests["/answer"] == 3
    seen = server.headers[0]
    assert seen["user-agent"].startswith("tandem-sidecar/"), seen
    assert seen["accept"] == "*/*", seen
    assert seen["host"] == f"localhost:{server.port}", seen


@pytest.mark.parametrize(
    ("names", "host", "says"),
    [
        pytest.param(("localhost",), "localhost", "UnknownIssuer", id="unknown-issuer"),
        pytest.param(("other.example",), "localhost", "not valid for name", id="another-name"),
    ],
)
async def test_an_untrusted_certificate_fails_the_call_and_says_why(
    ca: trustme.CA,
    tls_upstream: Callable[..., Upstream],
    start_sidecar: Start,
    client_for: MakeClient,
    tmp_path: Path,
    names: tuple[str, ...],
    host: str,
    says: str,
) -> None:
    server = tls_upstream(*names)
    # Unknown issuer: the sidecar trusts another CA only.
    trusted = trustme.CA() if says == "UnknownIssuer" else ca
    sidecar = start_sidecar(
        config(f"https://{host}:{server.port}"), env=trusting(trusted, tmp_path)
    )
    client = client_for(sidecar.unix_target)

    r = await client.call("answer", {}, timeout=10)

    assert r.status is Status.UPSTREAM_ERROR, r
    assert "connection failed" in r.error, r.error
    assert says in r.error, r.error
    assert server.requests["/answer"] == 0, "the origin's handler must not be reached"


async def test_http2_is_negotiated_by_alpn_and_carries_every_call(
    ca: trustme.CA, start_sidecar: Start, client_for: MakeClient, tmp_path: Path
) -> None:
    server = H2Upstream(tls=server_context(ca, "localhost", alpn=["h2", "http/1.1"])).start()
    try:
        body = json.dumps(ANSWER).encode()
        server.json("/answer", body, delay=0.2)
        # No `http:` setting: the origin's ALPN answer decides.
        sidecar = start_sidecar(
            config(f"https://localhost:{server.port}"), env=trusting(ca, tmp_path)
        )
        client = client_for(sidecar.unix_target)
        warm = await client.call("answer", {}, timeout=10)
        assert warm.status is Status.OK, warm

        results = await asyncio.gather(*(client.call("answer", {}, timeout=10) for _ in range(20)))

        assert all(r.status is Status.OK for r in results), [r for r in results if not r.ok]
        assert all(json.loads(r.result_bytes) == ANSWER for r in results)
        assert server.requests["/answer"] == 21
        assert server.connections == 1, "every call a stream on the one TLS connection"
        assert server.max_open > 1
    finally:
        server.stop()


async def test_an_origin_set_to_http2_over_tls_gets_one_connection_for_a_cold_burst(
    ca: trustme.CA, start_sidecar: Start, client_for: MakeClient, tmp_path: Path
) -> None:
    """``http: http2`` on an https origin: TLS offering only ``h2``, every call a stream on
    one connection, even the calls that arrive together before any connection exists
    (they wait for the same connect)."""
    server = H2Upstream(tls=server_context(ca, "localhost", alpn=["h2"])).start()
    try:
        body = json.dumps(ANSWER).encode()
        server.json("/answer", body, delay=0.2)
        url = f"https://localhost:{server.port}"
        sidecar = start_sidecar(
            tools_file(tool("answer", f"{url}/answer"), upstreams={url: {"http": "http2"}}),
            env=trusting(ca, tmp_path),
        )
        client = client_for(sidecar.unix_target)

        results = await asyncio.gather(*(client.call("answer", {}, timeout=10) for _ in range(30)))

        assert all(r.status is Status.OK for r in results), [r for r in results if not r.ok]
        assert all(json.loads(r.result_bytes) == ANSWER for r in results)
        assert server.requests["/answer"] == 30
        assert server.connections == 1, "one connect, shared by the whole burst"
    finally:
        server.stop()
