"""``brain._gc``: the collector runs far less often for an agent-like workload, counted by
CPython's own statistics in a child process (a count, not a time: the same on a busy
machine)."""

from __future__ import annotations

import os
import subprocess
import sys

#: Short-lived containers, as agent steps make them (a frame, a future, a dict): 400,000,
#: taken in batches of 10,000 that are then dropped together, like a frame's results.
_CHILD = """
import gc
from brain._gc import tune_gc
print(tune_gc(), *gc.get_threshold())
before = [s["collections"] for s in gc.get_stats()]
batch = []
for i in range(400_000):
    batch.append({"call": i})
    if len(batch) == 10_000:
        batch = []
print(*(s["collections"] - b for s, b in zip(gc.get_stats(), before)))
"""


def _collections(tuning: str) -> tuple[list[str], list[int]]:
    env = {**os.environ, "BRAIN_GC_TUNING": tuning}
    lines = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return lines[0].split(), [int(n) for n in lines[1].split()]


def test_the_youngest_generation_is_collected_far_less_often() -> None:
    (applied, *thresholds), tuned = _collections("1")
    assert (applied, thresholds) == ("True", ["50000", "20", "100"])
    (applied, *thresholds), default = _collections("0")
    assert applied == "False"
    # 40 batches of 10,000: 14 young collections each with CPython's 700, none with 50,000.
    assert default[0] >= 400, default
    assert tuned[0] <= 2, tuned
