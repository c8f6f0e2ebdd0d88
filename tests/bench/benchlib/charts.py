"""PNG charts (matplotlib, no display) for each scenario's results."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from .scenarios import ScenarioResult

COLORS = {"tandem": "#2a7de1", "python-naive": "#d9534f", "python-tuned": "#f0ad4e"}
#: python-tuned xN (any N).
MULTI_COLOR = "#8a5a00"


def _color(label: str) -> str:
    if label.startswith("python-tuned x"):
        return MULTI_COLOR
    return COLORS.get(label, "#5cb85c")


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _bars(ax: Axes, labels: list[str], values: list[float], ylabel: str, title: str) -> None:
    colors = [_color(label) for label in labels]
    ax.bar(range(len(values)), [v or 0 for v in values], color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.annotate(f"{v or 0:,.1f}", (i, v or 0), ha="center", va="bottom", fontsize=8)


def capacity(result: ScenarioResult, out: Path) -> list[str]:
    """Every step of every search: p99 and calls/s against agents (a point per step)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    slo = result.detail["slo_p99_ms"]
    for name, steps in result.detail["ramps"].items():
        color = _color(name)
        agents = [s["agents"] for s in steps]
        p99 = [s["p99_ms"] for s in steps]
        markers = ["o" if s["holds_slo"] else "x" for s in steps]
        for marker in ("o", "x"):
            pick = [i for i, m in enumerate(markers) if m == marker]
            left.scatter(
                [agents[i] for i in pick],
                [p99[i] for i in pick],
                marker=marker,
                color=color,
                s=18,
                label=name if marker == "o" else None,
            )
        right.scatter(agents, [s["calls_per_s"] for s in steps], color=color, s=14, label=name)
    left.axhline(slo, color="grey", linestyle="--", label=f"SLO {slo:g} ms")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("agents (800 ms think time)")
        ax.legend(fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("tool-call p99 (ms)")
    left.set_title("p99 at every search step (x: over the SLO)")
    right.set_ylabel("calls/s")
    right.set_title("throughput at every search step")
    return [_save(fig, out / "1_capacity.png")]


def headline(result: ScenarioResult, out: Path) -> list[str]:
    """Calls/s under the SLO per stack, error bars from the repeated searches."""
    rows = [r for r in result.rows if r.get("calls_per_s") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    labels = [r["dispatcher"] for r in rows]
    values = [float(r["calls_per_s"]) for r in rows]
    low = [max(0.0, v - float(r["calls_per_s_low"])) for v, r in zip(values, rows, strict=True)]
    # No failure seen (the search hit its ceiling): no upper bar.
    high = [
        max(0.0, float(r["calls_per_s_high"]) - v) if math.isfinite(r["calls_per_s_high"]) else 0.0
        for v, r in zip(values, rows, strict=True)
    ]
    ax.bar(range(len(rows)), values, color=[_color(label) for label in labels])
    ax.errorbar(range(len(rows)), values, yerr=[low, high], fmt="none", ecolor="black", capsize=6)
    ax.set_xticks(range(len(rows)), labels, rotation=15, ha="right")
    ax.set_ylabel("calls/s under the SLO")
    cores, slo = result.detail.get("measured_cores"), result.detail.get("slo_p99_ms")
    ax.set_title(f"Capacity under p99 <= {slo:g} ms, 100 KB validated calls, {cores} cores")
    for i, (v, r) in enumerate(zip(values, rows, strict=True)):
        # ">=": the search met its ceiling without one failure, so no upper bound.
        bound = "" if math.isfinite(r["calls_per_s_high"]) else ">= "
        ax.annotate(f"{bound}{v:,.0f}", (i, v + high[i]), ha="center", va="bottom", fontsize=8)
    return [_save(fig, out / "headline.png")]


def transport(result: ScenarioResult, out: Path) -> list[str]:
    rows = [r for r in result.rows if r["concurrency"] > 1]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels = [r["client"] for r in rows]
    bottom = [0.0] * len(rows)
    for role, color in (("brain", "#2a7de1"), ("sidecar", "#5cb85c"), ("upstream", "#999999")):
        values = [r.get(f"{role}_us_per_call") or 0.0 for r in rows]
        ax.bar(range(len(rows)), values, bottom=bottom, label=role, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(rows)), labels, rotation=15, ha="right")
    ax.set_ylabel("CPU µs per call")
    ax.set_title("Tiny document, 32 in flight: CPU per call by process")
    ax.legend()
    return [_save(fig, out / "2_transport.png")]


def memory(result: ScenarioResult, out: Path) -> list[str]:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _bars(
        ax,
        [r["dispatcher"] for r in result.rows],
        [r["brain_sidecar_rss_mib"] for r in result.rows],
        "MiB (brain + sidecar)",
        result.title.split(": ", 1)[-1],
    )
    return [_save(fig, out / "3_memory.png")]


def python_cost(result: ScenarioResult, out: Path) -> list[str]:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _bars(
        ax,
        [r["case"] for r in result.rows],
        [r["brain_us_per_call"] for r in result.rows],
        "brain CPU µs per call",
        "The Python side's cost per tool call",
    )
    return [_save(fig, out / "4_python_cost.png")]


def floor(result: ScenarioResult, out: Path) -> list[str]:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _bars(
        ax,
        [r["what"].replace("criterion: ", "") for r in result.rows],
        [r["us_per_call"] for r in result.rows],
        "CPU µs per 100 KB document",
        "Sidecar CPU per call vs the parse + validate floor",
    )
    return [_save(fig, out / "5_floor.png")]


def batching(result: ScenarioResult, out: Path) -> list[str]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, color in (("DynamicBatcher", "#2a7de1"), ("one at a time", "#d9534f")):
        rows = sorted((r for r in result.rows if r["mode"] == mode), key=lambda r: r["concurrency"])
        c = [r["concurrency"] for r in rows]
        left.plot(c, [r["items_per_s"] for r in rows], "o-", label=mode, color=color)
        right.plot(c, [r["p99_ms"] for r in rows], "o-", label=mode, color=color)
    for ax, label in ((left, "embeddings/s"), (right, "p99 ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    left.set_title("throughput")
    right.set_title("p99 latency")
    return [_save(fig, out / "6_batching.png")]


CHARTS: dict[str, Callable[[ScenarioResult, Path], list[str]]] = {
    "0_headline": headline,
    "1_capacity": capacity,
    "2_transport": transport,
    "3_memory": memory,
    "4_python_cost": python_cost,
    "5_floor": floor,
    "6_batching": batching,
}


def draw(result: ScenarioResult, out: Path) -> list[str]:
    """The PNG files drawn for ``result`` (names relative to ``out``)."""
    chart = CHARTS.get(result.key)
    return chart(result, out) if chart else []
