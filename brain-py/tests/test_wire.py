"""The Dispatch stream's hand-written wire code (``brain._wire``) against protobuf's own:
every generated call parses back to exactly the message protobuf would build from the same
values, alone and joined into a frame, and bad values fail clearly; every generated
``ResultFrame`` decodes to exactly the results protobuf parses, whatever the order of the
fields, and what the sidecar never writes is left to protobuf."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from messages import whole

from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._types import ToolResult
from brain._wire import (
    CALLS_TAG,
    CANCEL_TAG,
    LARGE_RESULT,
    MAX_TIMEOUT_MS,
    _common,
    decode_results,
    encode_call,
    frame_field,
    timeout_ms,
    varint,
)

# Protobuf strings are UTF-8: no lone surrogates.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
calls = st.fixed_dictionaries(
    {
        "call_id": text.filter(bool),
        "tool": text,
        "arguments": st.one_of(
            st.binary(max_size=300),
            # Lengths past one and two varint bytes.
            st.integers(100, 70_000).map(lambda n: b"x" * n),
        ),
        "agent_id": text,
        "timeout": st.one_of(
            st.floats(0, 1.0),
            st.integers(1, MAX_TIMEOUT_MS).map(lambda ms: ms / 1000),
        ),
        "metadata": st.dictionaries(text, text, max_size=4),
        "select": st.lists(text, max_size=4),
    }
)


def expected(c: dict[str, object]) -> pb.ToolCall:
    msg = pb.ToolCall(
        call_id=c["call_id"],
        agent_id=c["agent_id"],
        tool=c["tool"],
        arguments=c["arguments"],
        timeout_ms=timeout_ms(c["timeout"]),  # type: ignore[arg-type]
    )
    msg.metadata.update(c["metadata"])  # type: ignore[call-overload]
    msg.select.extend(c["select"])  # type: ignore[call-overload]
    return msg


def encode(c: dict[str, object]) -> bytes:
    return encode_call(**c)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(calls)
def test_a_call_parses_back_to_the_message_protobuf_builds(c: dict[str, object]) -> None:
    frame = pb.DispatchFrame.FromString(encode(c))
    assert list(frame.calls) == [expected(c)]


@settings(max_examples=100, deadline=None)
@given(st.lists(calls, min_size=1, max_size=6), st.lists(text.filter(bool), max_size=3))
def test_calls_and_cancels_joined_are_one_frame(
    batch: list[dict[str, object]], cancels: list[str]
) -> None:
    wire = b"".join(frame_field(CANCEL_TAG, c.encode()) for c in cancels)
    wire += b"".join(encode(c) for c in batch)
    frame = pb.DispatchFrame.FromString(wire)
    assert list(frame.calls) == [expected(c) for c in batch]
    assert list(frame.cancel_call_ids) == cancels


@given(st.integers(1, 2**64 - 1))
def test_varint_matches_protobuf(n: int) -> None:
    assert varint(n) == pb.Timing(queued_us=n).SerializeToString()[1:]


def test_calls_to_one_tool_share_one_cache_entry_whatever_the_agent() -> None:
    _common.cache_clear()
    c: dict[str, object] = dict(
        call_id="1", tool="search", arguments=b"{}", timeout=0.5, metadata=None, select=()
    )
    wires = [encode({**c, "call_id": str(i), "agent_id": f"agent-{i}"}) for i in range(5000)]
    # Thousands of agents, one tool and one timeout: one entry, every later call a hit.
    assert (_common.cache_info().currsize, _common.cache_info().hits) == (1, 4999)
    assert [pb.DispatchFrame.FromString(w).calls[0].agent_id for w in wires[:3]] == [
        "agent-0",
        "agent-1",
        "agent-2",
    ]


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        ({"tool": 7}, TypeError, "tool must be a str, not int"),
        ({"agent_id": b"a"}, TypeError, "agent_id must be a str, not bytes"),
        ({"timeout": (MAX_TIMEOUT_MS + 1) / 1000}, ValueError, "out of range"),
        ({"timeout": float("nan")}, ValueError, "NaN"),
        ({"metadata": {"k": 1}}, TypeError, "metadata value must be a str, not int"),
        ({"select": "/a"}, TypeError, "not one str"),
        ({"select": [None]}, TypeError, "select entry must be a str, not NoneType"),
    ],
)
def test_bad_values_fail_clearly(change: dict[str, object], error: type, says: str) -> None:
    c: dict[str, object] = dict(
        call_id="1", tool="t", arguments=b"{}", agent_id="a", timeout=0.005, metadata=None
    )
    c["select"] = ()
    with pytest.raises(error, match=says):
        encode({**c, **change})


# ---------------------------------------------------------------- results

results = st.builds(
    pb.ToolResult,
    call_id=text,
    status=st.integers(0, 15),
    result=st.one_of(
        st.binary(max_size=64),
        # Past LARGE_RESULT, so taken out by hand.
        st.integers(LARGE_RESULT, 3 * LARGE_RESULT).map(lambda n: b"[" + b"1," * n + b"1]"),
    ),
    upstream_status=st.integers(0, 599),
    error=text,
    violations=st.lists(st.builds(pb.Violation, instance_path=text, message=text), max_size=2),
    retry_after_ms=st.integers(0, 2**64 - 1),
    timing=st.builds(pb.Timing, total_us=st.integers(0, 2**40), attempts=st.integers(0, 9)),
    limited_by=text,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(results, max_size=5))
def test_decoded_results_are_what_protobuf_parses(batch: list[pb.ToolResult]) -> None:
    buffer = bytearray(pb.ResultFrame(results=batch).SerializeToString())
    decoded = decode_results(memoryview(buffer))
    # The results own their bytes: the read buffer is reused for the next frame.
    buffer[:] = bytes(len(buffer))
    assert [whole(r) for r in decoded] == batch
    for r, msg in zip(decoded, batch, strict=True):
        large = msg.ByteSize() >= LARGE_RESULT
        assert (r._result is not None) == large
        assert r.result_bytes is r.result_bytes or not large


@settings(max_examples=100, deadline=None)
@given(results, st.randoms(use_true_random=False))
def test_fields_in_any_order(msg: pb.ToolResult, rnd: random.Random) -> None:
    fields = [pb.ToolResult(**{f.name: v}) for f, v in msg.ListFields()]
    for f in fields:
        if f.HasField("timing"):
            f.timing.SetInParent()
    rnd.shuffle(fields)
    encoded = b"".join(f.SerializeToString() for f in fields)
    frame = frame_field(CALLS_TAG, encoded)  # tag 0x0a: ResultFrame.results
    [decoded] = decode_results(memoryview(frame))
    assert whole(decoded) == msg


def large(call_id: str) -> pb.ToolResult:
    return pb.ToolResult(call_id=call_id, status=pb.STATUS_OK, result=b"7" * LARGE_RESULT)


@pytest.mark.parametrize(
    "wire",
    [
        # The result field twice: protobuf keeps the last.
        frame_field(
            CALLS_TAG,
            large("a").SerializeToString() + pb.ToolResult(result=b"[]").SerializeToString(),
        ),
        # A field ResultFrame does not have (number 2) before the results.
        frame_field(b"\x12", b"?") + frame_field(CALLS_TAG, large("b").SerializeToString()),
    ],
    ids=["repeated-result-field", "unknown-frame-field"],
)
def test_what_the_sidecar_does_not_write_is_left_to_protobuf(wire: bytes) -> None:
    expected = [ToolResult(m) for m in pb.ResultFrame.FromString(wire).results]
    decoded = decode_results(memoryview(wire))
    assert [whole(r) for r in decoded] == [whole(r) for r in expected]


@pytest.mark.parametrize("cut", [1, 2, 40, LARGE_RESULT // 2, -1])
def test_a_truncated_frame_fails_as_protobuf_does(cut: int) -> None:
    wire = pb.ResultFrame(results=[large("x"), large("y")]).SerializeToString()[:-cut]
    with pytest.raises(DecodeError):
        pb.ResultFrame.FromString(wire)
    with pytest.raises(DecodeError):
        decode_results(memoryview(wire))
