"""The public surface is deliberate: adding or removing a name is a reviewed change."""

import brain


def test_all_is_pinned() -> None:
    assert sorted(brain.__all__) == [
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
    for name in brain.__all__:
        assert getattr(brain, name) is not None


def test_exception_tree() -> None:
    assert issubclass(brain.SidecarUnavailable, brain.SidecarError)
    assert issubclass(brain.ClientClosed, brain.SidecarError)
    assert issubclass(brain.SidecarError, brain.BrainError)
    assert issubclass(brain.ToolCallError, brain.BrainError)
