"""The reaction benchmark as distributions: for each probe, the share of bursts (y) that had reached it within x
seconds (an empirical CDF), drawn from reaction.json's per-burst samples ("all")."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from . import caption, new_figure, style

SIZE = (8.0, 6.0)  # inches: 800 x 600 px
# The probes drawn, in the order of STYLES, with their legend text; those a result lacks are left out.
SERIES = (
    ("operator_management_depth", "baseline, the same operator with depth from the management API: spec.replicas >= 2"),
    ("operator_prometheus_depth", "queueworker, depth from the Prometheus endpoint, RabbitMQ 3.10: spec.replicas >= 2"),
    ("operator_rabbitmq4_prometheus_only", "queueworker, RabbitMQ 4.x (Prometheus endpoint only): spec.replicas >= 2"),
    ("management_api_sees_burst", "floor: the management API shows the burst"),
    ("prometheus_endpoint_sees_burst", "floor: the Prometheus endpoint shows the burst"),
)


def ecdf(samples: list[float]) -> tuple[list[float], list[float]]:
    xs = sorted(samples)
    return xs, [(i + 1) / len(xs) for i in range(len(xs))]


def reaction_figure(data: dict[str, Any]) -> Figure:
    fig = new_figure(*SIZE)
    ax = fig.subplots()
    for i, (key, label) in enumerate(SERIES):
        if key not in data:
            continue
        xs, ys = ecdf(data[key]["all"])
        thin = key.endswith("_sees_burst")
        ax.plot(xs, ys, drawstyle="steps-post", label=label,
                **{**style(i, len(xs), markers=len(xs)), "linewidth": 0.9 if thin else 1.6})  # fmt: skip
    ax.set_xlabel(f"time since a {data['burst_messages']}-message burst was published (s)")
    ax.set_ylabel("share of bursts (cumulative)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(True, color="0.88", linewidth=0.6)
    fig.legend(loc="upper center", fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.945))
    title = f"Scaling reaction over {data['bursts']} bursts, operator polling every {data['polling_interval_s']} s"
    fig.suptitle(title, fontsize=11, y=0.99)
    fig.subplots_adjust(top=0.75, bottom=0.13, left=0.09, right=0.97)
    caption(fig, "Real control plane and brokers, quorum queues, each burst to every side at once", data)
    return fig
