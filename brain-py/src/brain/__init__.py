"""tandem's brain: agents that plan in Python and run every tool call through the sidecar.

The public surface is re-exported here; everything else is private (``_*`` modules).
"""

from ._client import ClientOptions, SidecarClient
from ._exceptions import (
    BrainError,
    ClientClosed,
    SidecarError,
    SidecarUnavailable,
    ToolCallError,
)
from ._types import RateLimitInfo, Status, Timing, ToolInfo, ToolResult, Violation

__all__ = [
    "BrainError",
    "ClientClosed",
    "ClientOptions",
    "RateLimitInfo",
    "SidecarClient",
    "SidecarError",
    "SidecarUnavailable",
    "Status",
    "Timing",
    "ToolCallError",
    "ToolInfo",
    "ToolResult",
    "Violation",
]
