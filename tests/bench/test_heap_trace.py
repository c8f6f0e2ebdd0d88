"""benchlib.heap_trace on a recording small enough to count by hand."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.heap_trace import Transient, transients

# Two sites: 16-byte allocations at a.rs:10, three alive together and all freed early
# (the burst), and 256-byte allocations at b.rs:20 that grow to ten, the heap's peak.
RECORDING = (
    """\
s 4 a.rs
s 4 b.rs
i 1000 1 1 1 a
i 2000 1 2 2 14
t 1 0
t 2 0
a 10 1
a 100 2
c 1
+ 0
+ 0
+ 0
+ 1
- 0
- 0
- 0
c 2
"""
    + "+ 1\n" * 9
)


def test_a_burst_freed_before_the_peak_is_reported_beyond_it(tmp_path: Path) -> None:
    recording = tmp_path / "heap.txt"
    recording.write_text(RECORDING)
    found = transients(recording, top=2)
    assert found[0] == Transient(
        size=16, allocated=3, most_alive=3, alive_at_peak=0, where="a.rs:10"
    )
    assert found[0].bytes_beyond_peak == 48
    # Everything of the other site is alive at the peak: nothing beyond it.
    assert found[1] == Transient(
        size=256, allocated=10, most_alive=10, alive_at_peak=10, where="b.rs:20"
    )
    assert found[1].bytes_beyond_peak == 0
