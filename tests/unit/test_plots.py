"""The pictures (bench/plots) draw the JSON their tables are made of, as it is: each figure's lines carry the JSON's
series, every series can be told apart in grey-scale, and the PNG has the size the figure promises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from bench import replay
from bench.jsonfmt import dumps
from bench.plots import pixel_size, save
from bench.plots.reaction import SERIES, reaction_figure
from bench.plots.replay import replay_figure
from bench.plots.results import draw_all
from bench.plots.timelines import DEMO_STATUSES, closed_loop_figure, demo_figure
from tests.support.timeline import Sampler, png_size
from tests.support.wait import wait_for

MACHINE = {"machine": "x86_64, 2 cores, Python 3.11.7", "measured": "2026-12-02T06:00:00Z"}


def ydata(fig: Figure, panel: int) -> dict[str, list[float]]:
    return {str(line.get_label()): list(line.get_ydata()) for line in fig.axes[panel].get_lines()}  # type: ignore[arg-type]


def assert_greyscale_distinct(fig: Figure) -> None:
    """Within a panel, no two series share both line style and marker: they differ without colour."""
    for ax in fig.axes:
        looks = [(str(line.get_linestyle()), str(line.get_marker())) for line in ax.get_lines()]
        assert len(looks) == len(set(looks)), looks


def caption(fig: Figure) -> str:
    return fig.texts[-1].get_text()


@pytest.fixture(scope="module")
def replay_json() -> dict[str, Any]:
    """A small replay run (a 10 s burst in 240 s, at most 60 points a series), through the results file's format."""
    burst = {"burst": (lambda t: 300.0 if 20 <= t < 30 else 0.5, 240)}
    return {**json.loads(dumps(replay.run(burst, max_points=60))), **MACHINE}


def test_replay_timeline_draws_each_autoscalers_series_from_the_json(replay_json, tmp_path) -> None:
    fig = replay_figure(replay_json, "burst")
    runs, rows = replay_json["timelines"]["burst"]["runs"], replay_json["traces"]["burst"]
    for panel, key in ((0, "backlog"), (1, "replicas"), (2, "wait_s")):
        assert ydata(fig, panel) == {run["name"]: run[key] for run in runs}
    assert ydata(fig, 3) == {"arrivals (tasks/s)": runs[0]["arrivals_per_s"]}  # the twin axis of the top panel
    for run, row in zip(runs, rows, strict=True):  # the lines' peaks are the table's figures, not recomputed
        assert (max(run["backlog"]), max(run["wait_s"])) == (row["max_backlog"], row["max_wait"])
        assert run["step_s"] == 4 and len(run["backlog"]) >= 60
    assert_greyscale_distinct(fig)
    assert "x86_64, 2 cores" in caption(fig) and "2026-12-02" in caption(fig)
    assert png_size(save(fig, tmp_path / "burst.png")) == pixel_size(fig) == (800, 800)


def test_reaction_distribution_is_each_probes_samples_sorted(tmp_path) -> None:
    data = {"bursts": 4, "burst_messages": 15, "polling_interval_s": 1, **MACHINE}
    for i, (key, _) in enumerate(SERIES):
        data[key] = {"p50": 1.0, "all": [3.0 + i, 0.5 + i, 2.0 + i, 1.0 + i]}
    fig = reaction_figure(data)
    lines = fig.axes[0].get_lines()
    assert [str(line.get_label()) for line in lines] == [label for _, label in SERIES]
    for line, (key, _) in zip(lines, SERIES, strict=True):
        assert list(line.get_xdata()) == sorted(data[key]["all"])  # type: ignore[arg-type]
        assert list(line.get_ydata()) == [0.25, 0.5, 0.75, 1.0]  # type: ignore[arg-type]
    assert_greyscale_distinct(fig)
    assert png_size(save(fig, tmp_path / "reaction.png")) == pixel_size(fig) == (800, 600)


def timeline(n: int, **series: list[int]) -> dict[str, list[int] | list[float]]:
    return {"t_s": [0.5 * i for i in range(n)], **series}


def test_closed_loop_draws_autoscaling_beside_fixed_min(tmp_path) -> None:
    auto = timeline(
        4, depth=[0, 900, 100, 0], workers=[1, 5, 5, 1], spec_replicas=[1, 5, 5, 1], completed=[0, 100, 900, 1000]
    )
    fixed = timeline(
        4, depth=[0, 950, 700, 0], workers=[1, 1, 1, 1], spec_replicas=[1, 1, 1, 1], completed=[0, 50, 300, 1000]
    )
    data = {"tasks": 1000, "smtp_latency_s": 0.05, "min_replicas": 1, "max_replicas": 5, **MACHINE,
            "runs": [{"figures": {"mode": "autoscaling"}, "timeline": auto},
                     {"figures": {"mode": "fixed min"}, "timeline": fixed}]}  # fmt: skip
    fig = closed_loop_figure(data)
    for panel, key in enumerate(("depth", "workers", "completed")):
        assert ydata(fig, panel) == {"autoscaling": auto[key], "fixed min": fixed[key]}
        assert [list(line.get_xdata()) for line in fig.axes[panel].get_lines()] == [auto["t_s"], fixed["t_s"]]  # type: ignore[arg-type]
    assert_greyscale_distinct(fig)
    assert png_size(save(fig, tmp_path / "loop.png")) == pixel_size(fig) == (800, 700)


def test_demo_timeline_draws_depth_workers_and_each_status(tmp_path) -> None:
    tasks = {s: [0, i, 2 * i] for i, s in enumerate(DEMO_STATUSES)}
    series = {"t_s": [0.0, 0.5, 1.0], "depth": [0, 40, 3], "workers": [0, 2, 3], "tasks": tasks}
    data = {"count": 60, "queue": "qw.image", **MACHINE, "timeline": series}
    fig = demo_figure(data)
    assert ydata(fig, 0) == {"queue depth": [0, 40, 3]}
    assert ydata(fig, 1) == {"workers": [0, 2, 3]}
    assert ydata(fig, 2) == tasks
    assert_greyscale_distinct(fig)
    assert png_size(save(fig, tmp_path / "demo.png")) == pixel_size(fig) == (800, 700)


def test_draw_all_writes_a_picture_per_result_present_and_skips_failed_ones(replay_json, tmp_path) -> None:
    (tmp_path / "policy-replay.json").write_text(dumps(replay_json))
    (tmp_path / "reaction.json").write_text(json.dumps({"error": "exit 1"}))
    assert [p.name for p in draw_all(tmp_path)] == ["policy-replay-burst.png"]
    assert png_size(tmp_path / "policy-replay-burst.png") == (800, 800)


def test_results_json_keeps_series_on_one_line_and_reads_back_equal(replay_json) -> None:
    text = dumps(replay_json)
    assert json.loads(text) == replay_json
    backlog = replay_json["timelines"]["burst"]["runs"][0]["backlog"]
    assert f'"backlog": {json.dumps(backlog)},' in [line.strip() for line in text.splitlines()]


def test_a_figure_that_could_not_be_measured_is_null_and_every_saved_result_is_strict_json() -> None:
    """A percentile of no samples is NaN in Python; JSON has no NaN, and strict readers (jq, browsers) refuse it."""
    text = dumps({"p99_ms": float("nan"), "rows": [{"max": float("inf")}], "series": [1.5, float("-inf")]})
    assert json.loads(text, parse_constant=refuse) == {"p99_ms": None, "rows": [{"max": None}], "series": [1.5, None]}
    results = Path(__file__).parents[2] / "bench" / "results"
    for path in sorted(results.glob("*.json")):
        json.loads(path.read_text(), parse_constant=refuse)  # raises on NaN / Infinity


def refuse(constant: str) -> None:
    raise ValueError(f"not JSON: {constant}")


def test_png_size_refuses_a_file_that_is_not_a_png(tmp_path) -> None:
    (tmp_path / "x.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(AssertionError, match="not a PNG"):
        png_size(tmp_path / "x.png")


def test_sampler_keeps_each_probe_value_as_a_series_skips_failed_samples_and_closes() -> None:
    """The closed loop's timeline recorder: a probe that fails (a broker restarting) loses that sample only."""
    calls: list[int] = []
    closed: list[bool] = []

    def probe() -> dict[str, int] | None:
        calls.append(1)
        n = len(calls)
        if n == 2:
            raise ConnectionError("broker restarting")
        return None if n == 3 else {"depth": 10 * n, "workers": n}

    with Sampler(probe, every=0.01, close=lambda: closed.append(True)) as sampler:
        wait_for("a few samples", lambda: len(calls) >= 6, 30, 0.01)
    series = sampler.series()
    kept = [n for n in range(1, len(calls) + 1) if n not in (2, 3)]  # the last one taken at the block's end
    assert series["depth"] == [10 * n for n in kept] and series["workers"] == kept
    assert len(series["t_s"]) == len(kept) and series["t_s"] == sorted(series["t_s"])
    assert closed == [True]
