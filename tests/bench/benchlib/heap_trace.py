"""What a heaptrack recording says about allocations that came and went before the peak.

``heaptrack_print --print-peaks`` lists what is alive when the heap is at its largest. With
10,000 calls started at once, RSS peaks higher than that: state that lives only while a
call connects or waits for its response head (thousands alive together during the burst,
none at the heap's peak) leaves allocator pages behind that the peak still counts. This
replays the recording (heaptrack's interpreted format: ``a`` allocation sites, ``+``/``-``
allocations and frees by site, ``t``/``i``/``s`` traces, frames and length-prefixed
strings; numbers in hex) and reports, per allocation site and size, the most alive at
once against the number alive at the heap's peak.

heaptrack_print has no such view: its "temporary" allocations are those freed right after
being made, and its peak list shows one moment only.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Frames of the standard library and the allocator's plumbing, skipped when naming a site.
SKIP = ("/rustc/", "alloc/src", "raw_vec", "bytes_mut.rs", "sys/alloc")


@dataclass(frozen=True)
class Transient:
    size: int
    allocated: int
    most_alive: int
    alive_at_peak: int
    where: str

    @property
    def bytes_beyond_peak(self) -> int:
        return (self.most_alive - self.alive_at_peak) * self.size


def _lines(recording: Path) -> list[str]:
    """The recording's lines: heaptrack writes it zstd-compressed (``.zst``)."""
    if recording.suffix != ".zst":
        return recording.read_text().splitlines()
    out = subprocess.run(
        ["zstdcat", str(recording)], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    return out.splitlines()


def transients(recording: Path, top: int = 10) -> list[Transient]:
    """The allocation sites whose most alive at once most exceeds their count at the peak."""
    lines = _lines(recording)
    strings = [""]
    frames: list[list[tuple[int, int]]] = [[]]
    traces = [(0, 0)]
    sites: list[tuple[int, int]] = []
    # First pass: the event at which the heap is largest.
    heap = best = best_at = 0
    for n, line in enumerate(lines):
        kind = line[:1]
        if kind == "+":
            heap += sites[int(line[2:], 16)][0]
            if heap > best:
                best, best_at = heap, n
        elif kind == "-":
            heap -= sites[int(line[2:], 16)][0]
        elif kind == "a":
            _, size_hex, trace_hex = line.split()
            sites.append((int(size_hex, 16), int(trace_hex, 16)))
        elif kind == "t":
            _, ip_hex, parent_hex = line.split()
            traces.append((int(ip_hex, 16), int(parent_hex, 16)))
        elif kind == "i":
            rest = line.split()[3:]
            frames.append(
                [(int(rest[k + 1], 16), int(rest[k + 2], 16)) for k in range(0, len(rest) - 2, 3)]
            )
        elif kind == "s":
            # "s <length> <text>"
            strings.append(line[2:].partition(" ")[2])
    # Second pass: counts alive over time, and at the peak.
    alive: Counter[int] = Counter()
    most: Counter[int] = Counter()
    made: Counter[int] = Counter()
    at_peak: Counter[int] = Counter()
    for n, line in enumerate(lines):
        kind = line[:1]
        if kind == "+":
            site = int(line[2:], 16)
            alive[site] += 1
            made[site] += 1
            most[site] = max(most[site], alive[site])
        elif kind == "-":
            alive[int(line[2:], 16)] -= 1
        if n == best_at:
            at_peak = alive.copy()

    def where(trace: int) -> str:
        names: list[str] = []
        while trace and len(names) < 3:
            ip, trace = traces[trace]
            for file, line_no in frames[ip]:
                name = strings[file] if file < len(strings) else "?"
                if not any(s in name for s in SKIP) and len(names) < 3:
                    names.append(f"{name.split('/src/')[-1]}:{line_no}")
        return " <- ".join(names)

    merged: dict[tuple[str, int], list[int]] = {}
    for site, count in made.items():
        size, trace = sites[site]
        entry = merged.setdefault((where(trace), size), [0, 0, 0])
        entry[0] += count
        entry[1] += most[site]
        entry[2] += at_peak[site]
    found = [
        Transient(size, allocated, most_alive, alive_peak, name)
        for (name, size), (allocated, most_alive, alive_peak) in merged.items()
    ]
    found.sort(key=lambda t: t.bytes_beyond_peak, reverse=True)
    return found[:top]
