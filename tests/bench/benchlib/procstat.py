"""CPU time and memory of processes, read from ``/proc`` (Linux only).

CPU is ``utime + stime`` of every thread of a process (``/proc/PID/stat``) and of its
descendants that are still alive, in clock ticks (usually 100 per second). Memory is
``VmRSS`` (now) and ``VmHWM`` (the peak) from ``/proc/PID/status``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: CPU times in /proc are counted in these ticks per second.
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads); 0 if it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def descendants(pid: int) -> list[int]:
    """``pid``'s living children, grandchildren, ... (e.g. nginx's workers)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{tid}/children").read_text()
            except FileNotFoundError:
                continue
            kids = [int(k) for k in text.split()]
            out.extend(kids)
            todo.extend(kids)
    return out


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds of these processes plus their living descendants."""
    total = 0.0
    for pid in pids:
        total += cpu_seconds(pid)
        total += sum(cpu_seconds(child) for child in descendants(pid))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (``/proc/stat``),
    to tell how much of a window went to processes outside the benchmark."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(f) for f in fields[:8])
    # Interrupt time is left out: loopback traffic of the measured processes lands there.
    # Steal is in: time the hypervisor gave to other guests is interference too.
    return (user + nice + system + steal) / TICKS_PER_S


def _status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS:") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory."""
    return _status_kib(pid, "VmHWM:") * 1024
