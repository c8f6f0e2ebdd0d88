"""Credentials never leave the sidecar, whatever a hostile upstream echoes back.

Upstreams on loopback echo the credentials they received in every encoding an echo takes
(:mod:`canary`), in OK bodies, 4xx/5xx bodies, headers, schema-violating values and keys,
and redirect URLs; the canary then searches every channel that leaves the sidecar.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc

from canary import Channels, echo_body, leaks
from harness import SidecarProcess, Upstream, tool, tools_file
from test_operations import Collector

Start = Callable[..., SidecarProcess]

#: Sent in headers (``Authorization: Bearer``, ``X-Api-Key``): printable ASCII with every
#: character an encoder treats specially.
HEADER_KEY = 'hk/Ab+Cd=Ef%2F"q\\ z~9&<x>-canary-0451'
#: Sent as a query value: unicode as well.
QUERY_KEY = 'qk/é✓+ x=1&y~"\\Ω€𝄞-canary-7302'
#: A key no encoder escapes.
PLAIN_KEY = "fsk-plain-0123456789abcdef"

JSON = "application/json"


def _received(request: web.Request) -> tuple[str, str]:
    """The credentials as the upstream received them."""
    return request.headers.get("X-Api-Key", ""), request.query.get("key", "")


async def _echo(request: web.Request, status: int) -> web.StreamResponse:
    return web.Response(body=echo_body(*_received(request)), status=status, content_type=JSON)


async def ok(request: web.Request) -> web.StreamResponse:
    return await _echo(request, 200)


async def unauthorized(request: web.Request) -> web.StreamResponse:
    return await _echo(request, 401)


async def unavailable(request: web.Request) -> web.StreamResponse:
    return await _echo(request, 503)


async def in_headers(request: web.Request) -> web.StreamResponse:
    header_key, query_key = _received(request)
    basic = base64.b64encode(f"user:{header_key}".encode()).decode()
    quoted = urllib.parse.quote(query_key, safe="")
    return web.Response(
        body=b'{"ok": true}',
        content_type=JSON,
        headers={
            "X-Echo": header_key,
            "WWW-Authenticate": f'Basic realm="{basic}"',
            "Set-Cookie": f"k={quoted}",
            "Link": f"<https://api.example/?key={quoted}>; rel=next",
        },
    )


async def violating(request: web.Request) -> web.StreamResponse:
    header_key, query_key = _received(request)
    body = {"k": f"Bearer {header_key}", "n": query_key, header_key: 1, query_key: 2}
    return web.Response(body=json.dumps(body, ensure_ascii=False).encode(), content_type=JSON)


async def not_json(request: web.Request) -> web.StreamResponse:
    header_key, query_key = _received(request)
    return web.Response(text=f"key={header_key} q={query_key}", content_type="text/plain")


async def redirect(request: web.Request) -> web.StreamResponse:
    header_key, query_key = _received(request)
    basic = base64.b64encode(f"u:{header_key}".encode()).decode()
    target = "/landing?" + urllib.parse.urlencode({"k": header_key, "q": query_key, "b": basic})
    raise web.HTTPFound(target)


async def landing(request: web.Request) -> web.StreamResponse:
    body = {"url": str(request.rel_url), "raw": request.raw_path, **dict(request.query)}
    return web.Response(body=json.dumps(body, ensure_ascii=False).encode(), content_type=JSON)


def _credentials(query_key_file: Path) -> dict[str, object]:
    return {
        "headers": {
            "Authorization": "Bearer ${env:CANARY_HEADER_KEY}",
            "X-Api-Key": "${env:CANARY_HEADER_KEY}",
        },
        "query": {"key": "${file:" + str(query_key_file) + "}"},
    }


def _config(upstream: Upstream, query_key_file: Path) -> str:
    credentials = _credentials(query_key_file)
    once = {"max_attempts": 1}
    schema = {
        "type": "object",
        "properties": {"k": {"enum": ["a"]}, "n": {"type": "integer"}},
        "additionalProperties": False,
    }
    return tools_file(
        tool("ok", f"{upstream.url}/ok", request=credentials),
        tool("unauthorized", f"{upstream.url}/unauthorized", request=credentials),
        tool("unavailable", f"{upstream.url}/unavailable", request=credentials, retry=once),
        tool("in_headers", f"{upstream.url}/in_headers", request=credentials),
        tool("violating", f"{upstream.url}/violating", request=credentials, output_schema=schema),
        tool("not_json", f"{upstream.url}/not_json", request=credentials),
        tool("redirect", f"{upstream.url}/redirect", request=credentials, follow_redirects=2),
    )


async def test_no_channel_carries_a_credential_in_any_encoding(
    start_sidecar: Start, tmp_path: Path
) -> None:
    upstream = Upstream().start()
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        for path, handler in {
            "/ok": ok,
            "/unauthorized": unauthorized,
            "/unavailable": unavailable,
            "/in_headers": in_headers,
            "/violating": violating,
            "/not_json": not_json,
            "/redirect": redirect,
            "/landing": landing,
        }.items():
            upstream.route("GET", path, handler)
        key_file = tmp_path / "query-key"
        key_file.write_text(QUERY_KEY + "\n")
        sidecar = start_sidecar(
            _config(upstream, key_file),
            "--otlp-endpoint",
            f"http://127.0.0.1:{otlp_port}",
            env={"CANARY_HEADER_KEY": HEADER_KEY, "RUST_LOG": "debug"},
        )
        channels = Channels()
        expected = {
            "ok": pb.STATUS_OK,
            "unauthorized": pb.STATUS_UPSTREAM_ERROR,
            "unavailable": pb.STATUS_UPSTREAM_ERROR,
            "in_headers": pb.STATUS_OK,
            "violating": pb.STATUS_INVALID_RESPONSE,
            "not_json": pb.STATUS_INVALID_RESPONSE,
            "redirect": pb.STATUS_OK,
        }
        results: dict[str, pb.ToolResult] = {}
        # gRPC core sends a unix socket's path as :authority unless told otherwise.
        options = [("grpc.default_authority", "localhost")]
        async with grpc.aio.insecure_channel(sidecar.unix_target, options=options) as channel:
            stub = pb_grpc.DispatcherStub(channel)
            for i, name in enumerate(expected):
                call = pb.ToolCall(call_id=f"c{i}", tool=name, agent_id="a1", arguments=b"{}")
                results[name] = await stub.Invoke(call, timeout=20)
                channels.add_result(results[name])
            channels.add_list_tools(await stub.ListTools(pb.ListToolsRequest(), timeout=10))
            # The sidecar still serves: another call after all of the above.
            again = await stub.Invoke(pb.ToolCall(call_id="again", tool="ok"), timeout=20)
            channels.add_result(again)
        statuses = {name: pb.Status.Name(r.status) for name, r in results.items()}
        assert statuses == {name: pb.Status.Name(s) for name, s in expected.items()}
        assert again.status == pb.STATUS_OK
        assert results["unauthorized"].upstream_status == 401
        assert results["unavailable"].upstream_status == 503
        assert results["violating"].violations, results["violating"]

        channels.scrape_metrics(sidecar.metrics_port)
        # Spans are flushed on shutdown at the latest; logs are complete once it exits.
        assert await asyncio.to_thread(sidecar.terminate) == 0
        channels.add_spans(collector.spans)
        channels.logs.extend(sidecar.raw_logs)
        assert [s for s in collector.spans if s.name == "tool_call"], "no spans exported"
        assert any('"level":"DEBUG"' in line for line in sidecar.raw_logs), "not at debug level"
        channels.assert_clean(HEADER_KEY, QUERY_KEY)
        # The canary was alive: the upstream did receive (and echo) both credentials.
        sent = [h for h in upstream.headers if h.get("x-api-key")]
        assert {h["x-api-key"] for h in sent} == {HEADER_KEY}
        assert {h["authorization"] for h in sent} == {f"Bearer {HEADER_KEY}"}
        assert b"[redacted]" in results["ok"].result
        assert b"[redacted]" in results["unauthorized"].result
    finally:
        await server.stop(None)
        upstream.stop()


async def test_header_credentials_do_not_follow_a_redirect_to_another_origin(
    start_sidecar: Start, tmp_path: Path
) -> None:
    """The HTTP client re-sends request headers on a redirect and strips only the standard
    credential headers when the host changes: ``X-Api-Key`` would reach whatever origin the
    upstream names. A same-origin redirect is still followed."""
    upstream, other = Upstream().start(), Upstream().start()
    try:

        async def away(_: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{other.url}/elsewhere")

        async def here(_: web.Request) -> web.StreamResponse:
            raise web.HTTPFound("/ok")

        upstream.route("GET", "/away", away)
        upstream.route("GET", "/here", here)
        upstream.route("GET", "/ok", ok)
        other.route("GET", "/elsewhere", ok)
        key_file = tmp_path / "query-key"
        key_file.write_text(QUERY_KEY)
        credentials = _credentials(key_file)
        sidecar = start_sidecar(
            tools_file(
                tool("away", f"{upstream.url}/away", request=credentials, follow_redirects=2),
                tool("here", f"{upstream.url}/here", request=credentials, follow_redirects=2),
                # Widened on purpose: the hop to the other origin is followed, and
                # the query credential must stay behind.
                tool(
                    "query_only",
                    f"{upstream.url}/away",
                    request={"query": credentials["query"]},
                    redirects={"max": 2, "allow_origins": ["*"]},
                ),
            ),
            env={"CANARY_HEADER_KEY": HEADER_KEY},
        )
        options = [("grpc.default_authority", "localhost")]
        async with grpc.aio.insecure_channel(sidecar.unix_target, options=options) as channel:
            stub = pb_grpc.DispatcherStub(channel)
            away_result = await stub.Invoke(pb.ToolCall(call_id="1", tool="away"), timeout=20)
            here_result = await stub.Invoke(pb.ToolCall(call_id="2", tool="here"), timeout=20)
            # A tool whose operator allows other origins is sent there, and its
            # query credential does not go along (neither in the URL nor a Referer).
            query_only = await stub.Invoke(pb.ToolCall(call_id="3", tool="query_only"), timeout=20)
        elsewhere = json.dumps(other.headers, ensure_ascii=False)
        assert not leaks(HEADER_KEY, elsewhere), elsewhere
        assert not leaks(QUERY_KEY, elsewhere), elsewhere
        assert pb.Status.Name(away_result.status) == "STATUS_EGRESS_DENIED", away_result
        assert "leaves this tool's origin" in away_result.error
        assert pb.Status.Name(here_result.status) == "STATUS_OK", here_result
        assert pb.Status.Name(query_only.status) == "STATUS_OK", query_only
        # Refused at once, not retried; the other two followed their redirect.
        assert upstream.requests["/away"] == 2
        assert upstream.requests["/ok"] == 1
        assert other.requests["/elsewhere"] == 1
    finally:
        upstream.stop()
        other.stop()


def test_the_canary_finds_every_form_it_echoes() -> None:
    """The canary's own check: each echoed form is found, and clean text is clean."""
    for secret in (HEADER_KEY, QUERY_KEY):
        body = echo_body(secret).decode()
        for name, fragment in json.loads(body).items():
            if isinstance(fragment, str):
                assert leaks(secret, fragment), (name, fragment)
        assert not leaks(secret, "[redacted] Bearer [redacted] https://api.example/?key=[redacted]")


async def _invoke(sidecar: SidecarProcess, *tools: str) -> dict[str, pb.ToolResult]:
    options = [("grpc.default_authority", "localhost")]
    async with grpc.aio.insecure_channel(sidecar.unix_target, options=options) as channel:
        stub = pb_grpc.DispatcherStub(channel)
        return {
            name: await stub.Invoke(pb.ToolCall(call_id=name, tool=name), timeout=20)
            for name in tools
        }


@pytest.mark.parametrize("header_key", [HEADER_KEY, PLAIN_KEY], ids=["hostile", "plain"])
async def test_schema_violations_never_quote_a_credential(
    upstream: Upstream, start_sidecar: Start, tmp_path: Path, header_key: str
) -> None:
    """Issue 16, defect 6: a violation's message quotes the offending value, and its path
    names an offending key (``/`` escaped as ``~1``): both are scrubbed. The plain key
    needs no escaping, so only the violations could carry it."""
    upstream.route("GET", "/violating", violating)
    key_file = tmp_path / "query-key"
    key_file.write_text(QUERY_KEY)
    schema = {
        "type": "object",
        "properties": {"k": {"enum": ["a"]}, "n": {"type": "integer"}},
        "additionalProperties": False,
    }
    per_key = {"type": "object", "additionalProperties": {"type": "string"}}
    credentials = _credentials(key_file)
    sidecar = start_sidecar(
        tools_file(
            tool(
                "violating", f"{upstream.url}/violating", request=credentials, output_schema=schema
            ),
            tool(
                "per_key", f"{upstream.url}/violating", request=credentials, output_schema=per_key
            ),
        ),
        env={"CANARY_HEADER_KEY": header_key},
    )
    results = await _invoke(sidecar, "violating", "per_key")
    for name, result in results.items():
        assert pb.Status.Name(result.status) == "STATUS_INVALID_RESPONSE", result
        assert result.violations, name
        # Violations first: the error was scrubbed before violations were.
        texts = [f"{v.message}\n{v.instance_path}\n{v.schema_path}" for v in result.violations]
        texts.append(result.error)
        for text in texts:
            assert not leaks(header_key, text), text
            assert not leaks(QUERY_KEY, text), text
    # The offending value is quoted, masked...
    messages = [v.message for v in results["violating"].violations]
    assert any("[redacted]" in m for m in messages), messages
    # ...and a key named like the credential shows in the path, masked.
    paths = [v.instance_path for v in results["per_key"].violations]
    assert "/[redacted]" in paths, paths


async def test_echoes_in_any_encoding_are_masked_in_ok_and_error_results(
    upstream: Upstream, start_sidecar: Start, tmp_path: Path
) -> None:
    """Issue 16, defect 8: an upstream echoing the key JSON-escaped, percent-encoded or as
    base64 of a Basic credential, in a 200 or a 4xx/5xx body."""
    upstream.route("GET", "/ok", ok)
    upstream.route("GET", "/unauthorized", unauthorized)
    upstream.route("GET", "/unavailable", unavailable)
    key_file = tmp_path / "query-key"
    key_file.write_text(QUERY_KEY)
    credentials = _credentials(key_file)
    once = {"max_attempts": 1}
    sidecar = start_sidecar(
        tools_file(
            tool("ok", f"{upstream.url}/ok", request=credentials),
            tool("unauthorized", f"{upstream.url}/unauthorized", request=credentials),
            tool("unavailable", f"{upstream.url}/unavailable", request=credentials, retry=once),
        ),
        env={"CANARY_HEADER_KEY": HEADER_KEY},
    )
    results = await _invoke(sidecar, "ok", "unauthorized", "unavailable")
    statuses = {name: pb.Status.Name(r.status) for name, r in results.items()}
    assert statuses == {
        "ok": "STATUS_OK",
        "unauthorized": "STATUS_UPSTREAM_ERROR",
        "unavailable": "STATUS_UPSTREAM_ERROR",
    }
    for name, result in results.items():
        body = result.result.decode()
        for secret in (HEADER_KEY, QUERY_KEY):
            assert not leaks(secret, body), (name, leaks(secret, body))
            assert not leaks(secret, result.error), result.error
        # Masking keeps the document JSON, and every echoed field was masked.
        echoed = json.loads(body)
        unmasked = [k for k, v in echoed.items() if isinstance(v, str) and "[redacted]" not in v]
        assert not unmasked, {k: echoed[k] for k in unmasked}
