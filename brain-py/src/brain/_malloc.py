"""glibc's malloc, set for a process that takes in large results all the time.

Each 100 KB result becomes a fresh ``bytes`` of 100 KB, lives while its agent reads it,
and is freed. glibc serves such a block from the top of its heap and, once more than
128 KiB at the top is free, gives those pages back to the kernel; the next result takes
them again, and the kernel zeroes every page on the way (a page fault per 4 KiB). perf on
the brain at 256 agents calling a 100 KB tool put that, page faults, zeroing and unmapping,
at a fifth of the process's CPU (docs/performance.md). Keeping some free heap instead of
returning it at once removes it: :data:`SETTINGS` are the three knobs glibc documents for
this (``mallopt(3)``, also settable as ``MALLOC_*_`` environment variables), at the cost
of up to :data:`TRIM_THRESHOLD` of freed memory the process keeps.

Only the brain's command line applies them (a library does not change its host's malloc);
``BRAIN_MALLOC_TUNING=0`` (or ``false``, ``no``, ``off``) leaves glibc's defaults. Other C
libraries are left alone. A ``MALLOC_*_`` variable or ``GLIBC_TUNABLES`` in the environment
is overridden by these (``mallopt`` runs after glibc reads them).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["SETTINGS", "TRIM_THRESHOLD", "tune_malloc"]

#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Free memory at the heap's top kept rather than returned to the kernel.
TRIM_THRESHOLD = 32 << 20
#: Extra heap asked for whenever the heap grows, so growth comes in steps.
TOP_PAD = 16 << 20
#: Blocks at least this large get their own mapping (and are returned when freed); below
#: it they come from the heap. Setting it also stops glibc from moving it (and the trim
#: threshold) by itself.
MMAP_THRESHOLD = 4 << 20

SETTINGS = {
    "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    "M_TOP_PAD": (_M_TOP_PAD, TOP_PAD),
    "M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
}


def tune_malloc() -> bool:
    """Applies :data:`SETTINGS` to this process's glibc malloc. False when it did not: not
    glibc, or turned off with ``BRAIN_MALLOC_TUNING=0``."""
    setting = os.environ.get("BRAIN_MALLOC_TUNING", "1").strip().lower()
    if setting in {"0", "false", "no", "off"} or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    # gnu_get_libc_version exists only in glibc; musl also has no mallopt to speak of.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.values())
