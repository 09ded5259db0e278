"""Timelines of real runs: the closed loop's drain (autoscaling beside fixed minimum replicas) and `make demo`'s
run, three panels on one time axis. Drawn from closed-loop.json's and the demo's recorded samples."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from . import caption, from_zero, new_figure, stacked, style

SIZE = (8.0, 7.0)  # inches: 800 x 700 px
DEMO_STATUSES = ("queued", "processing", "succeeded", "failed", "dead")


def closed_loop_figure(data: dict[str, Any]) -> Figure:
    """Each run (autoscaling, fixed min) one line style in every panel: queue depth, worker processes, tasks done."""
    fig = new_figure(*SIZE)
    axes = stacked(fig, ["queue depth (ready tasks)", "workers (processes)", "completed tasks"])
    for i, run in enumerate(data["runs"]):
        tl, label = run["timeline"], run["figures"]["mode"]
        for ax, key in zip(axes, ("depth", "workers", "completed"), strict=True):
            ax.plot(tl["t_s"], tl[key], drawstyle="steps-post", label=label, **style(i + 1, len(tl["t_s"])))
    from_zero(axes)
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"Closed loop: {data['tasks']:,} email tasks through the API; autoscaling between "
                 f"{data['min_replicas']} and {data['max_replicas']} workers", fontsize=11)  # fmt: skip
    fig.subplots_adjust(top=0.93, bottom=0.1, left=0.1, right=0.97, hspace=0.12)
    caption(fig, f"Real API, broker, operator, PostgreSQL and SMTP ({data['smtp_latency_s']:g} s per mail); "
            "time from the first post", data)  # fmt: skip
    return fig


def demo_figure(data: dict[str, Any]) -> Figure:
    """The demo's run: the image queue's depth, its consumers, and the uploaded tasks by status."""
    tl = data["timeline"]
    t = tl["t_s"]
    fig = new_figure(*SIZE)
    ax_q, ax_w, ax_s = stacked(fig, ["queue depth (ready tasks)", "workers (consumers)", "tasks by status"])
    ax_q.plot(t, tl["depth"], drawstyle="steps-post", label="queue depth", **style(1, len(t)))
    ax_w.plot(t, tl["workers"], drawstyle="steps-post", label="workers", **style(0, len(t)))
    for i, status in enumerate(DEMO_STATUSES):
        ax_s.plot(t, tl["tasks"][status], drawstyle="steps-post", label=status, **style(i, len(t)))
    from_zero([ax_q, ax_w, ax_s])
    ax_w.yaxis.get_major_locator().set_params(integer=True)
    ax_s.legend(loc="center right", fontsize=8)
    fig.suptitle(f"make demo: {data['count']} images uploaded, queue {data['queue']}", fontsize=11)
    fig.subplots_adjust(top=0.94, bottom=0.1, left=0.1, right=0.97, hspace=0.12)
    caption(fig, "Depth and consumers read over AMQP, statuses from the API; time from the first upload", data)
    return fig
