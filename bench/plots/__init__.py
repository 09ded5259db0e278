"""Pictures of what the benchmarks, the closed loop and `make demo` measured, drawn only from the JSON their tables
are made of (bench/results/*.json): each figure function takes that JSON dict and returns a matplotlib Figure whose
lines carry the JSON's numbers as they are (no second computation), so a test can compare them.

Figures are made with the object API and the Agg backend (no display, no pyplot state, safe in threads), readable
in grey-scale (each series has its own line style and marker, not only a colour), with labelled axes and units and
a one-line caption naming the machine and the date of the measurement. `python -m bench.plots` redraws every PNG
from the JSON in bench/results/.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 100
# Series styles in drawing order: colour for the screen, line style and marker for grey-scale print.
STYLES: tuple[dict[str, Any], ...] = (
    {"color": "#b2182b", "linestyle": "--", "marker": "s"},
    {"color": "#2166ac", "linestyle": "-", "marker": "o"},
    {"color": "#1b7837", "linestyle": ":", "marker": "^"},
    {"color": "#762a83", "linestyle": "-.", "marker": "D"},
    {"color": "#000000", "linestyle": (0, (1, 3)), "marker": "v"},
)


def machine() -> str:
    """This machine as the captions name it (the same words bench/__main__ writes into each result)."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def measured_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def style(i: int, points: int, markers: int = 12) -> dict[str, Any]:
    """The i-th series' style, with about `markers` markers along a line of `points` points."""
    return {**STYLES[i % len(STYLES)], "markevery": max(1, points // markers), "markersize": 4, "linewidth": 1.4}


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI)


def stacked(fig: Figure, ylabels: Sequence[str], xlabel: str = "time (s)") -> list[Axes]:
    """Panels stacked on one time axis, each with its y label (units in brackets)."""
    axes = list(fig.subplots(len(ylabels), 1, sharex=True, squeeze=False)[:, 0])
    for ax, label in zip(axes, ylabels, strict=True):
        ax.set_ylabel(label)
        ax.grid(True, color="0.88", linewidth=0.6)
    axes[-1].set_xlabel(xlabel)
    return axes


def from_zero(axes: Sequence[Axes]) -> None:
    """Counts start at 0 on the y axis (call after drawing: autoscaling would move it)."""
    for ax in axes:
        ax.set_ylim(bottom=0)


def caption(fig: Figure, what: str, data: dict[str, Any]) -> None:
    """One line under the figure: what it shows, the machine and the date of the measurement, as the JSON recorded
    them (bench/__main__, the closed loop and the demo write both; a result that predates them says so)."""
    where = data.get("machine") or "machine not recorded"
    when = str(data["measured"])[:10] if data.get("measured") else "date not recorded"
    fig.text(0.01, 0.008, f"{what}. {where}; {when}.", fontsize=7.5, color="0.25")


def save(fig: Figure, path: Path) -> Path:
    """The PNG at exactly the figure's size (width x height inches at DPI), so its pixel size is known up front."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def pixel_size(fig: Figure) -> tuple[int, int]:
    w, h = fig.get_size_inches()
    return round(w * DPI), round(h * DPI)
