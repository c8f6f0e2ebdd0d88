"""The demo tool service as a child process, for the tests and the eval."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: What ``python -m demo_tools`` prints once its socket is bound, before the URL.
LISTENING = "demo-tools listening on "


@contextmanager
def running() -> Iterator[str]:
    """The demo tool service on a free loopback port; yields its base URL and stops it
    on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "demo_tools", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(LISTENING):
            raise RuntimeError(f"the demo tool service did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
