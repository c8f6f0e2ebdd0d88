"""Typed views of the sidecar's messages.

:class:`ToolResult` wraps the protobuf message instead of copying it field by field:
the brain handles thousands of results per second and most fields are never read.
The JSON result stays ``bytes`` until :meth:`ToolResult.json` is called.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import orjson

from ._exceptions import ToolCallError
from ._proto.dispatch.v1 import dispatch_pb2 as pb

__all__ = ["RateLimitInfo", "Status", "Timing", "ToolInfo", "ToolResult", "Violation"]


class Status(enum.IntEnum):
    """Outcome of a tool call; mirrors ``dispatch.v1.Status`` (see the proto for meanings)."""

    UNSPECIFIED = pb.STATUS_UNSPECIFIED
    OK = pb.STATUS_OK
    INVALID_ARGUMENTS = pb.STATUS_INVALID_ARGUMENTS
    UNKNOWN_TOOL = pb.STATUS_UNKNOWN_TOOL
    RATE_LIMITED = pb.STATUS_RATE_LIMITED
    TIMEOUT = pb.STATUS_TIMEOUT
    UPSTREAM_ERROR = pb.STATUS_UPSTREAM_ERROR
    INVALID_RESPONSE = pb.STATUS_INVALID_RESPONSE
    CANCELLED = pb.STATUS_CANCELLED
    OVERLOADED = pb.STATUS_OVERLOADED
    INTERNAL = pb.STATUS_INTERNAL
    INVALID_REQUEST = pb.STATUS_INVALID_REQUEST
    DRAINING = pb.STATUS_DRAINING
    EGRESS_DENIED = pb.STATUS_EGRESS_DENIED
    CIRCUIT_OPEN = pb.STATUS_CIRCUIT_OPEN
    LIMITER_UNAVAILABLE = pb.STATUS_LIMITER_UNAVAILABLE


_STATUSES = {s.value: s for s in Status}


@dataclass(frozen=True, slots=True)
class Violation:
    """One JSON Schema violation: where (JSON Pointer) and why."""

    instance_path: str
    schema_path: str
    message: str


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a call's time went, in microseconds (measured by the sidecar)."""

    queued_us: int
    upstream_us: int
    validation_us: int
    total_us: int
    attempts: int
    cache_hit: bool = False
    coalesced: bool = False


class ToolResult:
    """The result of one tool call.

    ``result_bytes`` is the upstream's JSON, byte for byte; :meth:`json` parses it on
    first use and caches the value. ``result``, when given, is that JSON taken from the
    wire apart from ``msg`` (whose ``result`` field is then empty): the frames transport
    does that for large results, which protobuf would otherwise copy twice more, and
    reading ``result_bytes`` then returns the same object every time.
    """

    __slots__ = ("_json", "_msg", "_result")

    _UNPARSED: Any = object()

    def __init__(self, msg: pb.ToolResult, result: bytes | None = None) -> None:
        self._msg = msg
        self._result = result
        self._json: Any = ToolResult._UNPARSED

    @classmethod
    def local(cls, call_id: str, status: Status, error: str, retry_after_ms: int = 0) -> ToolResult:
        """A result made by the client itself (e.g. its own deadline passed)."""
        return cls(
            pb.ToolResult(
                call_id=call_id,
                status=pb.Status.Name(status.value),
                error=error,
                retry_after_ms=retry_after_ms,
            )
        )

    @property
    def call_id(self) -> str:
        return self._msg.call_id

    @property
    def status(self) -> Status:
        return _STATUSES.get(self._msg.status, Status.UNSPECIFIED)

    @property
    def ok(self) -> bool:
        return self._msg.status == pb.STATUS_OK

    @property
    def result_bytes(self) -> bytes:
        result = self._result
        return self._msg.result if result is None else result

    @property
    def upstream_status(self) -> int:
        return self._msg.upstream_status

    @property
    def error(self) -> str:
        return self._msg.error

    @property
    def retry_after_ms(self) -> int:
        return self._msg.retry_after_ms

    @property
    def limited_by(self) -> str:
        return self._msg.limited_by

    @property
    def violations(self) -> list[Violation]:
        return [Violation(v.instance_path, v.schema_path, v.message) for v in self._msg.violations]

    @property
    def timing(self) -> Timing:
        t = self._msg.timing
        return Timing(
            t.queued_us,
            t.upstream_us,
            t.validation_us,
            t.total_us,
            t.attempts,
            t.cache_hit,
            t.coalesced,
        )

    @property
    def tool_hint(self) -> str:
        """Prefix for messages; the result itself does not carry the tool name."""
        return f"call {self.call_id}: " if self.call_id else ""

    def json(self) -> Any:
        """The result parsed as JSON (``None`` when there is no result)."""
        if self._json is ToolResult._UNPARSED:
            raw = self.result_bytes
            self._json = orjson.loads(raw) if raw else None
        return self._json

    def raise_for_status(self) -> ToolResult:
        """Return ``self`` if OK, else raise :class:`ToolCallError`."""
        if not self.ok:
            raise ToolCallError(self)
        return self

    def __repr__(self) -> str:
        detail = f", error={self.error!r}" if self.error else ""
        return (
            f"ToolResult(call_id={self.call_id!r}, status={self.status.name}, "
            f"bytes={len(self.result_bytes)}{detail})"
        )


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """A configured limit: ``rate`` per ``period_ms``, bursts up to ``burst``.

    ``key`` is ``tool`` or ``agent``; ``scope`` is ``pod`` or ``fleet``; ``unit`` is
    ``requests`` or ``tokens``; ``enforce`` is false in shadow mode.
    """

    scope: str
    rate: int
    period_ms: int
    burst: int
    on_limit: str
    key: str = "tool"
    unit: str = "requests"
    enforce: bool = True


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """A tool as ListTools describes it; schemas are parsed JSON."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    timeout_ms: int
    rate_limits: tuple[RateLimitInfo, ...]
    #: ``input_schema`` with its ``$ref``s inlined, for function-calling APIs that
    #: cannot resolve ``$ref``; None when it has none.
    input_schema_inlined: dict[str, Any] | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        """The arguments' schema for an LLM's function definition: inlined when the
        schema has ``$ref``s, as written otherwise."""
        return self.input_schema_inlined or self.input_schema

    @classmethod
    def from_pb(cls, t: pb.ToolInfo) -> ToolInfo:
        return cls(
            name=t.name,
            description=t.description,
            input_schema=_schema(t.input_schema),
            output_schema=_schema(t.output_schema) if t.output_schema else None,
            timeout_ms=t.timeout_ms,
            rate_limits=tuple(
                RateLimitInfo(
                    r.scope, r.rate, r.period_ms, r.burst, r.on_limit, r.key, r.unit, r.enforce
                )
                for r in t.rate_limits
            ),
            input_schema_inlined=(
                _schema(t.input_schema_inlined) if t.input_schema_inlined else None
            ),
        )


def _schema(text: str) -> dict[str, Any]:
    """A schema's JSON text, parsed with the standard library rather than orjson: orjson
    reads an integer beyond 64 bits (``minimum: -18446744073709551615``) as a float, and
    ListTools is rare enough that speed does not matter here."""
    schema: dict[str, Any] = json.loads(text)
    return schema
