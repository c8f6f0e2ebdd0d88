"""The Dispatch stream's hot path, by hand: each call's ``DispatchFrame.calls`` entry, and
the large results of a ``ResultFrame``.

``SidecarClient.call`` runs once per tool call in the process the GIL binds, and building
a ``ToolCall`` message to serialize it cost about 4 µs of that process's time per call
(message object, five field assignments, ``SerializeToString``; upb, measured on this
project's 2-core machine), against about 2 µs for the bytes written here. The protobuf
runtime has no cheaper way to produce an encoded submessage, so the few lines of the
wire format this needs are written here; ``brain-py/tests/test_wire.py`` checks, on
generated calls, that protobuf parses them back to exactly the message it would build.

The encoding is protobuf's: each field a tag, then a varint, or a varint length and the
bytes. Fields may come in any order (parsers must accept that), so the part that repeats
from call to call, a tool's name and the call's ``timeout_ms``, is encoded once and
cached, and the per-call fields follow it.

Results go the other way (:func:`parse_results`, for both transports): protobuf copies a
100 KB result twice
on its way to the agent (the frame from the read buffer into a ``bytes``, the field into
its arena) before reading the field copies it a third time. A large result is instead
sliced out of the read buffer once, and protobuf parses the rest of its message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from ._proto.dispatch.v1 import dispatch_pb2 as pb
from ._types import ToolResult

__all__ = [
    "CALLS_TAG",
    "CANCEL_TAG",
    "LARGE_RESULT",
    "MAX_TIMEOUT_MS",
    "TakeShared",
    "decode_results",
    "encode_call",
    "frame_field",
    "parse_results",
    "timeout_ms",
    "varint",
]

#: Tags of ``DispatchFrame.calls`` (field 1) and ``cancel_call_ids`` (field 2).
CALLS_TAG = b"\x0a"
CANCEL_TAG = b"\x12"
#: ``ToolCall`` field tags (field number << 3 | wire type; 2 = length-delimited, 0 = varint).
_CALL_ID = b"\x0a"
_AGENT_ID = b"\x12"
_TOOL = b"\x1a"
_ARGUMENTS = b"\x22"
_TIMEOUT_MS = b"\x28"
_METADATA = b"\x32"
_SELECT = b"\x3a"
#: A ``metadata`` map entry's key (1) and value (2).
_KEY = b"\x0a"
_VALUE = b"\x12"
#: ``timeout_ms`` is a uint32.
MAX_TIMEOUT_MS = 2**32 - 1
_SHORT = [bytes([n]) for n in range(128)]


def varint(n: int) -> bytes:
    """``n`` (0 <= n < 2**64) as a protobuf varint."""
    if n < 128:
        return _SHORT[n]
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame_field(tag: bytes, value: bytes) -> bytes:
    """One length-delimited field: tag, varint length, bytes. A repeated message field is
    its entries' encodings one after another, so a ``DispatchFrame`` is these joined."""
    n = len(value)
    if n < 128:
        return tag + _SHORT[n] + value
    return tag + varint(n) + value


def _text(tag: bytes, value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return frame_field(tag, value.encode())


def timeout_ms(timeout: float) -> int:
    """A call's timeout in seconds as ``ToolCall.timeout_ms`` (at least 1)."""
    return max(1, int(timeout * 1000))


@functools.lru_cache(maxsize=1024)
def _common(tool: str, timeout: float) -> bytes:
    """The fields the calls to one tool with one timeout share: a pod's tools times the
    timeouts its agents use, a handful (agent ids are per call: a pod runs thousands of
    agents). Bounded all the same; a miss only costs the encoding again."""
    ms = timeout_ms(timeout)
    if ms > MAX_TIMEOUT_MS:
        raise ValueError(f"a timeout of {timeout} s is out of range (at most {MAX_TIMEOUT_MS} ms)")
    return _text(_TOOL, tool, "tool") + _TIMEOUT_MS + varint(ms)


def encode_call(
    call_id: str,
    tool: str,
    arguments: bytes,
    agent_id: str,
    timeout: float,
    metadata: Mapping[str, str] | None,
    select: Sequence[str],
) -> bytes:
    """A ``DispatchFrame.calls`` entry (tag and length included) for this ``ToolCall``;
    ``timeout`` in seconds."""
    body = _common(tool, timeout) + frame_field(_CALL_ID, call_id.encode())
    if agent_id:
        body += _text(_AGENT_ID, agent_id, "agent_id")
    if arguments:
        body += frame_field(_ARGUMENTS, arguments)
    if metadata:
        body += b"".join(
            frame_field(
                _METADATA, _text(_KEY, key, "metadata key") + _text(_VALUE, value, "metadata value")
            )
            for key, value in metadata.items()
        )
    if select:
        if isinstance(select, str):
            raise TypeError("select must be a sequence of JSON Pointers, not one str")
        body += b"".join(_text(_SELECT, pointer, "select entry") for pointer in select)
    return frame_field(CALLS_TAG, body)


# ---------------------------------------------------------------- results

#: A result message at least this long has its ``result`` taken from the frame by hand;
#: below it protobuf's parser is cheaper than Python's walk over the fields.
LARGE_RESULT = 16 * 1024
#: A frame longer than this may carry large results and goes to :func:`decode_results`;
#: shorter ones go to protobuf's parser whole, which costs less per result when the
#: results are small.
LARGE_FRAME = 4 * LARGE_RESULT
#: ``ResultFrame.results`` (field 1, length-delimited) and ``ToolResult.result`` (3).
_RESULTS_KEY = 0x0A
_RESULT_FIELD = 3


#: Copies a result's bytes out of a framed stream's shared region (``_frames``).
TakeShared = Callable[[pb.SharedSpan], bytes]


class _NotPlain(Exception):
    """The bytes are not what the sidecar writes; protobuf's parser decides what they are."""


def parse_results(frame: bytes | memoryview, take: TakeShared | None = None) -> list[ToolResult]:
    """The results of an encoded ``ResultFrame``, whichever transport brought it. On a
    stream with a shared region, ``take`` copies out the results that lie there."""
    if len(frame) > LARGE_FRAME:
        return decode_results(memoryview(frame), take)
    messages = pb.ResultFrame.FromString(cast(bytes, frame)).results
    if take is None:
        return [ToolResult(m) for m in messages]
    return [_result(m, take) for m in messages]


def _result(message: pb.ToolResult, take: TakeShared | None) -> ToolResult:
    if take is not None and message.HasField("shared_result"):
        return ToolResult(message, take(message.shared_result))
    return ToolResult(message)


def decode_results(frame: memoryview, take: TakeShared | None = None) -> list[ToolResult]:
    """The results of an encoded ``ResultFrame``, exactly as protobuf would parse them;
    those of at least :data:`LARGE_RESULT` bytes keep their JSON as a separate ``bytes``
    (one copy from ``frame``). Anything unexpected (another field, a malformed length)
    goes to protobuf's parser, which then decides, or raises ``DecodeError``."""
    results: list[ToolResult] = []
    pos, end = 0, len(frame)
    try:
        while pos < end:
            if frame[pos] != _RESULTS_KEY:
                raise _NotPlain
            length, pos = _varint_at(frame, pos + 1)
            stop = pos + length
            if stop > end:
                raise _NotPlain
            message = frame[pos:stop]
            if length < LARGE_RESULT:
                results.append(_result(pb.ToolResult.FromString(_bytes(message)), take))
            else:
                results.append(_large_result(message, take))
            pos = stop
    except _NotPlain:
        return [_result(m, take) for m in pb.ResultFrame.FromString(_bytes(frame)).results]
    return results


def _large_result(message: memoryview, take: TakeShared | None) -> ToolResult:
    """One ``ToolResult``: its ``result`` field copied out once, the rest (call id,
    status, timing...) parsed by protobuf. One without a ``result`` field (a shared one
    with a very long call id, say) is protobuf's to parse, and ``take``'s to complete."""
    pos, end = 0, len(message)
    body: tuple[int, int, int] | None = None
    try:
        while pos < end:
            key, at = _varint_at(message, pos)
            wire = key & 7
            if wire == 2:
                length, at = _varint_at(message, at)
                stop = at + length
                if key >> 3 == _RESULT_FIELD:
                    if body is not None:
                        raise _NotPlain  # repeated: protobuf keeps the last
                    body = (pos, at, stop)
            elif wire == 0:
                stop = _varint_at(message, at)[1]
            elif wire == 1:
                stop = at + 8
            elif wire == 5:
                stop = at + 4
            else:
                raise _NotPlain
            if stop > end:
                raise _NotPlain
            pos = stop
        if body is None:
            raise _NotPlain
    except _NotPlain:
        return _result(pb.ToolResult.FromString(_bytes(message)), take)
    field, start, stop = body
    rest = b"".join((message[:field], message[stop:]))
    return ToolResult(pb.ToolResult.FromString(rest), bytes(message[start:stop]))


def _bytes(view: memoryview) -> bytes:
    """For protobuf's parser, which takes any buffer (the stubs say ``bytes``)."""
    return cast(bytes, view)


def _varint_at(data: memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    shift = result = 0
    end = len(data)
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _NotPlain
