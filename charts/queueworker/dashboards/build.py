"""Writes the Grafana dashboards of the chart (api.json, workers.json, operator.json) next to this file.

    .venv/bin/python charts/queueworker/dashboards/build.py

The JSON is generated so panels stay uniform and the queries live in one reviewable place; the files are
committed (the chart loads them with .Files.Get). tests/unit/test_dashboards.py checks they are up to date and
tests/integration/test_monitoring.py checks every query returns data on a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RATE = "$__rate_interval"
# Per-queue RabbitMQ series (rabbitmq_prometheus /metrics/per-object) of the work queues only: qw.image,
# qw.email; not the retry, dead-letter or notification queues. Prometheus anchors the regex.
WORK_QUEUES = 'queue=~"qw\\\\.[a-z]+"'
DEAD_QUEUES = 'queue=~"qw\\\\.[a-z]+\\\\.dead"'


def quantiles(metric: str, by: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in qs
    ]


def panel(title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries") -> dict[str, Any]:
    """A panel: (expr, legend) targets; the grid position is set by `dashboard`."""
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    for i, p in enumerate(panels):
        p["id"] = i + 1
        p["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)}
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["queueworker"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def api() -> dict[str, Any]:
    req = "queueworker_api_requests_total"
    return dashboard(
        "queueworker-api",
        "queueworker / API",
        "Request rate, latency, errors and publishes of the queueworker API.",
        [
            panel(
                "Requests by route and status",
                [(f"sum by (route, status) (rate({req}[{RATE}]))", "{{route}} {{status}}")],
                "reqps",
            ),
            panel("Request latency", quantiles("queueworker_api_request_duration_seconds", "route"), "s"),
            panel(
                "Error ratio",
                [
                    (f'(sum(rate({req}{{status=~"5.."}}[{RATE}])) or vector(0)) / sum(rate({req}[{RATE}]))', "5xx"),
                    (f'(sum(rate({req}{{status=~"4.."}}[{RATE}])) or vector(0)) / sum(rate({req}[{RATE}]))', "4xx"),
                ],
                "percentunit",
            ),
            panel(
                "Tasks accepted by kind",
                [(f"sum by (kind) (rate(queueworker_api_tasks_submitted_total[{RATE}]))", "{{kind}}")],
                "ops",
            ),
            panel(
                "Publish failures by kind",
                [(f"sum by (kind) (rate(queueworker_api_publish_failures_total[{RATE}]))", "{{kind}}")],
                "ops",
            ),
            panel("Publish-to-confirm latency", quantiles("queueworker_api_publish_duration_seconds", "kind"), "s"),
            panel(
                "Rejected uploads by reason",
                [(f"sum by (reason) (increase(queueworker_api_rejected_uploads_total[{RATE}]))", "{{reason}}")],
            ),
            panel(
                "Broker connection and event streams",
                [
                    ("min(queueworker_api_broker_connected)", "API pods connected (min)"),
                    ("sum(queueworker_api_sse_streams)", "open SSE streams"),
                ],
            ),
        ],
    )


def workers() -> dict[str, Any]:
    return dashboard(
        "queueworker-workers",
        "queueworker / Workers",
        "Throughput, duration, retries, dead letters and queue depth of the image and email workers.",
        [
            panel(
                "Tasks by kind and outcome",
                [
                    (
                        f"sum by (kind, outcome) (rate(queueworker_worker_tasks_processed_total[{RATE}]))",
                        "{{kind}} {{outcome}}",
                    )
                ],
                "ops",
            ),
            panel("Task duration", quantiles("queueworker_worker_task_duration_seconds", "kind"), "s"),
            panel(
                "Retries by kind",
                [(f"sum by (kind) (rate(queueworker_worker_retries_total[{RATE}]))", "{{kind}}")],
                "ops",
            ),
            panel(
                "Dead letters by kind and reason",
                [
                    (
                        f"sum by (kind, reason) (increase(queueworker_worker_dead_letters_total[{RATE}]))",
                        "{{kind}} {{reason}}",
                    )
                ],
            ),
            panel("Tasks in progress", [("sum by (kind) (queueworker_worker_tasks_in_progress)", "{{kind}}")]),
            panel(
                "Connected workers and time since last success",
                [
                    ("sum by (kind) (queueworker_worker_broker_connected)", "{{kind}} connected"),
                    (
                        "time() - max by (kind) (queueworker_worker_last_success_timestamp_seconds)",
                        "{{kind}} s since success",
                    ),
                ],
            ),
            panel(
                "Work queues: ready and consumers (RabbitMQ)",
                [
                    (f"sum by (queue) (rabbitmq_queue_messages_ready{{{WORK_QUEUES}}})", "{{queue}} ready"),
                    (f"sum by (queue) (rabbitmq_queue_consumers{{{WORK_QUEUES}}})", "{{queue}} consumers"),
                ],
            ),
            panel(
                "Dead-letter queues (RabbitMQ)",
                [(f"sum by (queue) (rabbitmq_queue_messages_ready{{{DEAD_QUEUES}}})", "{{queue}}")],
            ),
        ],
    )


def operator() -> dict[str, Any]:
    op = "queueworker_operator"
    return dashboard(
        "queueworker-operator",
        "queueworker / Operator",
        "Queue depth against replicas per QueueWorker, scaling decisions and broker reads of the operator.",
        [
            panel(
                "Queue depth vs replicas per QueueWorker",
                [
                    (
                        f'sum by (namespace, name) ({op}_queue_messages{{state="ready"}})',
                        "{{namespace}}/{{name}} ready",
                    ),
                    (f"max by (namespace, name) ({op}_replicas_desired)", "{{namespace}}/{{name}} desired replicas"),
                    (f"max by (namespace, name) ({op}_replicas_current)", "{{namespace}}/{{name}} current replicas"),
                ],
            ),
            panel(
                "Unacknowledged messages per QueueWorker",
                [(f'sum by (namespace, name) ({op}_queue_messages{{state="unacked"}})', "{{namespace}}/{{name}}")],
            ),
            panel(
                "Scale events",
                [(f"sum by (direction) (increase({op}_scale_events_total[{RATE}]))", "{{direction}}")],
            ),
            panel(
                "Broker read and reconcile errors",
                [
                    (f"sum by (broker) (increase({op}_broker_read_errors_total[{RATE}]))", "broker {{broker}}"),
                    (f"sum(increase({op}_reconcile_errors_total[{RATE}]))", "reconcile"),
                ],
            ),
            panel("Broker read latency", quantiles(f"{op}_broker_read_duration_seconds", "broker", (0.5, 0.95)), "s"),
        ],
    )


def main() -> None:
    for name, build in (("api", api), ("workers", workers), ("operator", operator)):
        (HERE / f"{name}.json").write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
