"""ToolResult is a lazy view over the protobuf message."""

from __future__ import annotations

import pytest

from brain import Status, ToolCallError, ToolResult
from brain._proto.dispatch.v1 import dispatch_pb2 as pb


def test_status_mirrors_every_proto_value() -> None:
    proto = {name.removeprefix("STATUS_"): value for name, value in pb.Status.items()}
    assert {s.name: s.value for s in Status} == proto


def test_json_is_parsed_lazily_and_cached() -> None:
    r = ToolResult(pb.ToolResult(call_id="7", status=pb.STATUS_OK, result=b'{"n": 1}'))
    assert r.ok
    assert r.result_bytes == b'{"n": 1}'
    first = r.json()
    assert first == {"n": 1}
    assert r.json() is first
    assert r.raise_for_status() is r


def test_errors_and_violations() -> None:
    msg = pb.ToolResult(
        call_id="8",
        status=pb.STATUS_INVALID_ARGUMENTS,
        error="bad",
        violations=[pb.Violation(instance_path="/a", schema_path="/properties/a", message="m")],
        timing=pb.Timing(total_us=5, attempts=0),
    )
    r = ToolResult(msg)
    assert r.status is Status.INVALID_ARGUMENTS
    assert r.violations[0].instance_path == "/a"
    assert r.timing.total_us == 5
    assert r.json() is None
    with pytest.raises(ToolCallError, match="INVALID_ARGUMENTS: bad") as info:
        r.raise_for_status()
    assert info.value.result is r


def test_unknown_future_status_is_unspecified() -> None:
    assert ToolResult(pb.ToolResult(status=999)).status is Status.UNSPECIFIED


def test_local_result() -> None:
    r = ToolResult.local("9", Status.TIMEOUT, "late", retry_after_ms=3)
    assert (r.call_id, r.status, r.error, r.retry_after_ms) == ("9", Status.TIMEOUT, "late", 3)


def test_tool_info_keeps_big_integers_and_prefers_the_inlined_schema() -> None:
    from brain import ToolInfo
    from brain._client import _encode_arguments

    written = '{"type":"object","properties":{"n":{"$ref":"urn:n"}}}'
    inlined = '{"type":"object","properties":{"n":{"minimum":-18446744073709551615}}}'
    info = ToolInfo.from_pb(
        pb.ToolInfo(name="t", input_schema=written, input_schema_inlined=inlined)
    )
    assert info.input_schema["properties"]["n"] == {"$ref": "urn:n"}
    assert info.parameters["properties"]["n"]["minimum"] == -18446744073709551615
    plain = ToolInfo.from_pb(pb.ToolInfo(name="p", input_schema='{"type":"object"}'))
    assert plain.input_schema_inlined is None
    assert plain.parameters == {"type": "object"}
    # An LLM request carrying such a schema still encodes, every digit kept.
    body = _encode_arguments({"tools": [info.parameters]})
    assert b"-18446744073709551615" in body
    with pytest.raises(TypeError):
        _encode_arguments({"x": object()})
