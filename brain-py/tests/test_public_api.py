"""The public surface is deliberate: adding or removing a name is a reviewed change."""

import brain


def test_all_is_pinned() -> None:
    assert sorted(brain.__all__) == [
        "AdmissionRefused",
        "BatcherClosed",
        "BatcherError",
        "BatcherOptions",
        "BatcherOverloaded",
        "Brain",
        "BrainError",
        "BrainOptions",
        "ClientClosed",
        "ClientOptions",
        "DynamicBatcher",
        "LocalOptions",
        "LocalPlanner",
        "Observation",
        "OpenAIOptions",
        "OpenAIPlanner",
        "Planner",
        "PlannerError",
        "PlannerOutputError",
        "PlanningState",
        "RateLimitInfo",
        "RouterPlanner",
        "RunError",
        "RunNotFound",
        "RunSpec",
        "RunState",
        "SidecarClient",
        "SidecarError",
        "SidecarUnavailable",
        "Status",
        "Step",
        "Timing",
        "ToolCallError",
        "ToolCallRequest",
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
    assert issubclass(brain.BatcherOverloaded, brain.BatcherError)
    assert issubclass(brain.BatcherClosed, brain.BatcherError)
    assert issubclass(brain.PlannerOutputError, brain.PlannerError)
    assert issubclass(brain.AdmissionRefused, brain.RunError)
    assert issubclass(brain.RunNotFound, brain.RunError)
    for error in (brain.BatcherError, brain.PlannerError, brain.RunError):
        assert issubclass(error, brain.BrainError)


def test_importing_brain_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, brain; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
