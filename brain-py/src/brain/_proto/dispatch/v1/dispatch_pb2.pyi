from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_OK: _ClassVar[Status]
    STATUS_INVALID_ARGUMENTS: _ClassVar[Status]
    STATUS_UNKNOWN_TOOL: _ClassVar[Status]
    STATUS_RATE_LIMITED: _ClassVar[Status]
    STATUS_TIMEOUT: _ClassVar[Status]
    STATUS_UPSTREAM_ERROR: _ClassVar[Status]
    STATUS_INVALID_RESPONSE: _ClassVar[Status]
    STATUS_CANCELLED: _ClassVar[Status]
    STATUS_OVERLOADED: _ClassVar[Status]
    STATUS_INTERNAL: _ClassVar[Status]
    STATUS_INVALID_REQUEST: _ClassVar[Status]
    STATUS_DRAINING: _ClassVar[Status]
    STATUS_EGRESS_DENIED: _ClassVar[Status]
    STATUS_CIRCUIT_OPEN: _ClassVar[Status]
    STATUS_LIMITER_UNAVAILABLE: _ClassVar[Status]
STATUS_UNSPECIFIED: Status
STATUS_OK: Status
STATUS_INVALID_ARGUMENTS: Status
STATUS_UNKNOWN_TOOL: Status
STATUS_RATE_LIMITED: Status
STATUS_TIMEOUT: Status
STATUS_UPSTREAM_ERROR: Status
STATUS_INVALID_RESPONSE: Status
STATUS_CANCELLED: Status
STATUS_OVERLOADED: Status
STATUS_INTERNAL: Status
STATUS_INVALID_REQUEST: Status
STATUS_DRAINING: Status
STATUS_EGRESS_DENIED: Status
STATUS_CIRCUIT_OPEN: Status
STATUS_LIMITER_UNAVAILABLE: Status

class DispatchFrame(_message.Message):
    __slots__ = ("calls", "cancel_call_ids")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_CALL_IDS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    cancel_call_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., cancel_call_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ResultFrame(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ToolResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ToolResult, _Mapping]]] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("call_id", "agent_id", "tool", "arguments", "timeout_ms", "metadata", "select")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    agent_id: str
    tool: str
    arguments: bytes
    timeout_ms: int
    metadata: _containers.ScalarMap[str, str]
    select: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, call_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., tool: _Optional[str] = ..., arguments: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., select: _Optional[_Iterable[str]] = ...) -> None: ...

class Violation(_message.Message):
    __slots__ = ("instance_path", "schema_path", "message")
    INSTANCE_PATH_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    instance_path: str
    schema_path: str
    message: str
    def __init__(self, instance_path: _Optional[str] = ..., schema_path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queued_us", "upstream_us", "validation_us", "total_us", "attempts", "cache_hit", "coalesced")
    QUEUED_US_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_US_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    queued_us: int
    upstream_us: int
    validation_us: int
    total_us: int
    attempts: int
    cache_hit: bool
    coalesced: bool
    def __init__(self, queued_us: _Optional[int] = ..., upstream_us: _Optional[int] = ..., validation_us: _Optional[int] = ..., total_us: _Optional[int] = ..., attempts: _Optional[int] = ..., cache_hit: _Optional[bool] = ..., coalesced: _Optional[bool] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("call_id", "status", "result", "upstream_status", "error", "violations", "retry_after_ms", "timing", "limited_by", "shared_result")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    LIMITED_BY_FIELD_NUMBER: _ClassVar[int]
    SHARED_RESULT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    status: Status
    result: bytes
    upstream_status: int
    error: str
    violations: _containers.RepeatedCompositeFieldContainer[Violation]
    retry_after_ms: int
    timing: Timing
    limited_by: str
    shared_result: SharedSpan
    def __init__(self, call_id: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., result: _Optional[bytes] = ..., upstream_status: _Optional[int] = ..., error: _Optional[str] = ..., violations: _Optional[_Iterable[_Union[Violation, _Mapping]]] = ..., retry_after_ms: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., limited_by: _Optional[str] = ..., shared_result: _Optional[_Union[SharedSpan, _Mapping]] = ...) -> None: ...

class SharedSpan(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class StreamEnd(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[ToolInfo]
    def __init__(self, tools: _Optional[_Iterable[_Union[ToolInfo, _Mapping]]] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("scope", "rate", "period_ms", "burst", "on_limit", "key", "unit", "enforce")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    ON_LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ENFORCE_FIELD_NUMBER: _ClassVar[int]
    scope: str
    rate: int
    period_ms: int
    burst: int
    on_limit: str
    key: str
    unit: str
    enforce: bool
    def __init__(self, scope: _Optional[str] = ..., rate: _Optional[int] = ..., period_ms: _Optional[int] = ..., burst: _Optional[int] = ..., on_limit: _Optional[str] = ..., key: _Optional[str] = ..., unit: _Optional[str] = ..., enforce: _Optional[bool] = ...) -> None: ...

class ToolInfo(_message.Message):
    __slots__ = ("name", "description", "input_schema", "output_schema", "timeout_ms", "rate_limits", "input_schema_inlined")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_INLINED_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    input_schema: str
    output_schema: str
    timeout_ms: int
    rate_limits: _containers.RepeatedCompositeFieldContainer[RateLimit]
    input_schema_inlined: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., input_schema: _Optional[str] = ..., output_schema: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., rate_limits: _Optional[_Iterable[_Union[RateLimit, _Mapping]]] = ..., input_schema_inlined: _Optional[str] = ...) -> None: ...
