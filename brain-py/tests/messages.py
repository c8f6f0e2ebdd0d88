"""Decoded results back as protobuf messages, to compare with what was encoded."""

from __future__ import annotations

from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._types import ToolResult


def whole(result: ToolResult) -> pb.ToolResult:
    """The message a result stands for: its fields and its JSON together (the frames
    transport keeps a large result's JSON apart from the message)."""
    msg = pb.ToolResult()
    msg.CopyFrom(result._msg)
    msg.result = result.result_bytes
    return msg


def as_frame(results: list[ToolResult]) -> pb.ResultFrame:
    """What ``_Protocol.next_frame`` returned, as the ``ResultFrame`` it was."""
    return pb.ResultFrame(results=[whole(r) for r in results])
