"""CPython's garbage collector, set for a process that runs thousands of agents.

CPython collects its youngest generation whenever container allocations outnumber
deallocations by 700, and every tenth of those collections also walks the next
generation. Each agent step allocates dozens of containers (its coroutine's frame, a
future, the result's wrapper), so a brain running thousands of agents collects hundreds of
times a second, and each collection stops every agent for as long as it runs: at 6,400
agents calling a tool every 800 ms, the collections' pauses were the tail of the tool-call
latency the agents saw (p99 41-50 ms with CPython's thresholds, 7-28 ms with these;
docs/performance.md). :data:`THRESHOLDS` collect the youngest generation every 50,000
allocations instead, the older ones proportionally as often as before, at the cost of
garbage in reference cycles living that much longer (a few MB at most).

Only the brain's command line applies them (a library does not change its host's
collector); ``BRAIN_GC_TUNING=0`` (or ``false``, ``no``, ``off``) leaves CPython's defaults.
"""

from __future__ import annotations

import gc
import os

__all__ = ["THRESHOLDS", "tune_gc"]

#: ``gc.set_threshold``: the youngest generation every 50,000 net allocations, the middle
#: one every 20 of those, the oldest every 100 of the middle's (CPython still skips a full
#: collection until the objects that survived it grew by a quarter).
THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> bool:
    """Applies :data:`THRESHOLDS`. False when turned off with ``BRAIN_GC_TUNING=0``."""
    setting = os.environ.get("BRAIN_GC_TUNING", "1").strip().lower()
    if setting in {"0", "false", "no", "off"}:
        return False
    gc.set_threshold(*THRESHOLDS)
    return True
