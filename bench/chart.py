#!/usr/bin/env python3
"""Draws docs/benchmark.png from docs/benchmark.json (written by the `tuning` cargo bench).

One panel per workload, one group of bars per pod shape: the goodput of each seed formula, of
our static sizing and of the tuner, as a share of the sweep optimum; a line at 90 %.
Deterministic: same JSON, same matplotlib, same PNG (no timestamp or version in the file).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "benchmark.json"
TARGET = ROOT / "docs" / "benchmark.png"

FORMULA_COLORS = ["#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#08519c"]
STATIC_COLOR = "#fdae6b"
TUNED_COLOR = "#d94801"


def series(report):
    """(label, color, cells-of-a-row) for every bar of a group, in drawing order."""
    out = []
    for i, f in enumerate(report["formulas"]):
        out.append((f["name"], FORMULA_COLORS[i % len(FORMULA_COLORS)], lambda r, i=i: r["formulas"][i]))
    out.append(("our static sizing", STATIC_COLOR, lambda r: r["staticSizing"]))
    out.append(("our tuner (converged)", TUNED_COLOR, lambda r: r["tuner"]))
    return out


def main() -> int:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else TARGET
    report = json.loads(source.read_text())
    rows = report["rows"]
    workloads = []
    for r in rows:
        if r["workload"] not in [w[0] for w in workloads]:
            workloads.append((r["workload"], r["workloadName"], r["server"], r["latencyTarget"]))
    bars = series(report)
    width = 0.8 / len(bars)
    top = max(
        1.1,
        max(get(r).get("ratio", 0.0) for r in rows for _, _, get in bars) + 0.05,
    )

    fig, axes = plt.subplots(len(workloads), 1, figsize=(12, 3.0 * len(workloads)), sharey=True)
    if len(workloads) == 1:
        axes = [axes]
    for ax, (key, name, server, target_s) in zip(axes, workloads):
        group = [r for r in rows if r["workload"] == key]
        for b, (label, color, get) in enumerate(bars):
            xs = [g + (b - (len(bars) - 1) / 2) * width for g in range(len(group))]
            ys = [get(r)["ratio"] for r in group]
            ax.bar(xs, ys, width=width, color=color, edgecolor="white", linewidth=0.3)
            for x, r in zip(xs, group):
                if get(r).get("oom"):
                    ax.plot([x], [0.03], marker="x", color="#cb181d", markersize=5)
        ax.axhline(0.9, color="#333333", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels(
            [f"{r['cpu']:g} CPU, {r['memoryMib'] / 1024:g} GiB\noptimum {r['optimum']['goodput']:.3g}/s" for r in group],
            fontsize=8,
        )
        ax.set_ylim(0, top)
        ax.set_ylabel("goodput / optimum")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(f"{name} ({server}, p95 target {target_s:g} s)", fontsize=10, loc="left")
        ax.grid(axis="y", linewidth=0.3, alpha=0.5)
        ax.set_axisbelow(True)

    handles = [Patch(color=color, label=label) for label, color, _ in bars]
    handles.append(Line2D([], [], color="#333333", linestyle="--", linewidth=0.8, label="90 % of the optimum"))
    handles.append(Line2D([], [], color="#cb181d", marker="x", linestyle="none", label="OOM-killed (goodput 0)"))
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.975),
        ncol=5,
        fontsize=8,
        frameon=False,
    )
    h = report["headline"]
    fig.suptitle(
        f"Tuning quality: tuned goodput is {h['tunedVsOptimumMean']:.0%} of the sweep optimum on average "
        f"(min {h['tunedVsOptimumMin']:.0%}), load {report['loadShare']:.0%} of capacity",
        y=0.995,
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.955))
    fig.savefig(target, dpi=110, metadata={"Software": None})
    print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
