"""``instructions_per_call.py`` on the real sidecar under callgrind (no speed is asserted).

The count must come out of a real dump, per call, within what a tiny call can cost: an
instruction count of zero or of the whole run (a dump taken before the zeroing, or the
calls not divided) would land outside the range.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import instructions_per_call as ipc
from benchlib.nginx import Nginx
from benchlib.runner import built_sidecar

pytestmark = pytest.mark.skipif(
    shutil.which("valgrind") is None
    or (shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists()),
    reason="needs valgrind and nginx (make bench-tools installs them)",
)


def test_totals_are_read_from_a_dump(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.x.1"
    dump.write_text("# callgrind format\nevents: Ir\nsummary: 123456\n\nfn=(1) main\n1 5\n")
    assert ipc.total_ir(dump) == 123456
    dump.write_text("# callgrind format\nevents: Ir\n")
    with pytest.raises(RuntimeError, match="no totals"):
        ipc.total_ir(dump)


def test_a_tiny_call_costs_thousands_of_instructions(tmp_path: Path) -> None:
    sidecar = built_sidecar()
    if sidecar is None:
        pytest.skip("the sidecar is not built")
    with Nginx(workers=1) as nginx:
        per_call = ipc.instructions_per_call(nginx, "smoke", sidecar, "ping", 300, tmp_path)
    # About 56,000 in the release build, several times that in the debug build.
    assert 5_000 < per_call < 5_000_000, per_call
    assert list(tmp_path.glob("callgrind.out.smoke.ping.*"))
