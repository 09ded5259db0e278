"""Every picture of bench/results: drawn from the JSON there, written beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import save
from .reaction import reaction_figure
from .replay import replay_figure
from .timelines import closed_loop_figure

RESULTS = Path(__file__).resolve().parents[1] / "results"


def draw_all(results: Path) -> list[Path]:
    """The PNGs of every result present (a result without the series a picture needs is skipped)."""

    def load(name: str) -> dict[str, Any] | None:
        p = results / f"{name}.json"
        data = json.loads(p.read_text()) if p.exists() else None
        return data if isinstance(data, dict) and "error" not in data else None

    written = []
    replay = load("policy-replay") or {}
    for trace in replay.get("timelines", {}):
        written.append(save(replay_figure(replay, trace), results / f"policy-replay-{trace}.png"))
    reaction = load("reaction")
    if reaction and "operator_prometheus_depth" in reaction:
        written.append(save(reaction_figure(reaction), results / "reaction.png"))
    loop = load("closed-loop")
    if loop and loop.get("runs"):
        written.append(save(closed_loop_figure(loop), results / "closed-loop.png"))
    return written
