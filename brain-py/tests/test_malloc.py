"""``brain._malloc``: glibc keeps freed large results' pages instead of returning them and
faulting them back in, measured as minor page faults in a child process (a count, not a
time: the same on a busy machine)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

#: A frame's ten 100 KB results taken in, then freed together: what the brain does.
_CHILD = """
import resource
from brain._malloc import tune_malloc
print(tune_malloc())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(300):
    batch = [b"x" * 100_000 for _ in range(10)]
    del batch
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3000)
"""


def _faults_per_result(tuning: str) -> tuple[bool, float]:
    # glibc's own knobs from the environment would change what "untuned" means.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    env["BRAIN_MALLOC_TUNING"] = tuning
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_large_results_no_longer_fault_their_pages_back_in() -> None:
    untuned = _faults_per_result("0")
    tuned = _faults_per_result("1")
    assert untuned[0] is False
    assert tuned[0] is True
    # glibc's defaults return the pages and fault them back: about one fault per page.
    assert untuned[1] > 5, untuned
    assert tuned[1] < 1, tuned
