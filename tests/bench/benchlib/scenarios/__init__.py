"""The scenarios of ``make bench``, in the order they run.

Each module has ``run(ctx: Context) -> ScenarioResult``. To add one (issue 6 adds a
fleet-limit hot-path micro-benchmark here: the sidecar with a ``scope: fleet`` limit versus
a ``scope: pod`` limit, counting Redis commands per 1,000 calls), write a module with that
function, give its tool the limit through ``ToolSpec.sidecar_extra`` (see
:mod:`benchlib.tools`), and list it in :data:`SCENARIOS`; ``run.py --only KEY`` selects it.
"""

from __future__ import annotations

from collections.abc import Callable

from . import (
    batching,
    capacity,
    cpu_per_call,
    fleet_limit,
    floor,
    memory,
    python_cost,
    transport,
)
from .base import Context, ScenarioResult, Target

__all__ = ["SCENARIOS", "Context", "ScenarioResult", "Target"]

#: key -> run function; the key is also the results file's name.
SCENARIOS: dict[str, Callable[[Context], ScenarioResult]] = {
    "1_capacity": capacity.run,
    "2_transport": transport.run,
    "3_memory": memory.run,
    "4_python_cost": python_cost.run,
    "5_floor": floor.run,
    "6_batching": batching.run,
    "7_fleet_limit": fleet_limit.run,  # issue 6: fleet vs pod limit on the hot path
    "8_cpu_per_call": cpu_per_call.run,  # issues 11, 12: both ~100 KB documents
}
