"""The policy replay as timelines: one figure per trace, three panels on one time axis (arrivals and queue depth,
replicas, task wait), each autoscaler of the replay one line style. Drawn from policy-replay.json's "timelines"."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from . import caption, from_zero, new_figure, stacked, style

SIZE = (8.0, 8.0)  # inches: 800 x 800 px


def replay_figure(data: dict[str, Any], trace: str) -> Figure:
    timeline = data["timelines"][trace]
    runs = timeline["runs"]
    fig = new_figure(*SIZE)
    ax_q, ax_r, ax_w = stacked(fig, ["queue depth (tasks)", "replicas", "task wait (s)"])
    step = runs[0]["step_s"]
    arrivals = runs[0]["arrivals_per_s"]  # the same trace and seed for every autoscaler
    ax_a = ax_q.twinx()
    at = [i * step for i in range(len(arrivals))]
    ax_a.fill_between(at, arrivals, step="post", color="0.88", linewidth=0)
    ax_a.plot(at, arrivals, drawstyle="steps-post", color="0.55", linewidth=0.8, label="arrivals (tasks/s)")
    ax_a.set_ylabel("arrivals (tasks/s)", color="0.4")
    ax_a.set_ylim(bottom=0)
    ax_q.set_zorder(ax_a.get_zorder() + 1)  # the depth lines above the arrivals' grey
    ax_q.patch.set_visible(False)
    for i, run in enumerate(runs):
        t = [k * step for k in range(len(run["backlog"]))]
        for ax, key in ((ax_q, "backlog"), (ax_r, "replicas"), (ax_w, "wait_s")):
            ax.plot(t, run[key], drawstyle="steps-post", label=run["name"], **style(i, len(t)))
    from_zero([ax_q, ax_r, ax_w])
    ax_r.yaxis.get_major_locator().set_params(integer=True)
    handles, labels = ax_q.get_legend_handles_labels()
    handles += ax_a.get_lines()
    labels += ["arrivals (tasks/s, right axis)"]
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.955))
    fig.suptitle(f"Policy replay, {trace} trace: queue depth, replicas and task wait", fontsize=11, y=0.99)
    ax_w.set_xlim(0, max(len(r["backlog"]) for r in runs) * step)
    fig.subplots_adjust(top=0.86, bottom=0.09, left=0.1, right=0.9, hspace=0.12)
    caption(
        fig,
        f"Simulated in 1 s steps, {data['service_rate_per_replica']:g} tasks/s per replica, {data['start_delay_s']:g} s"
        f" start-up; wait: longest of the tasks started per {step} s",
        data,
    )
    return fig
