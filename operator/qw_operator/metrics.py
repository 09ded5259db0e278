"""Prometheus metrics, namespace `queueworker`, subsystem `operator`. Labels are bounded: a QueueWorker's
namespace and name (one series per CR, removed when the CR goes), a broker's configured name, a direction."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

NS, SUB = "queueworker", "operator"


def process_registry() -> CollectorRegistry:
    """A registry of the operator's own with the process_*, python_gc_* and python_info series that the
    prometheus_client global registry carried when the operator served that one (kept for whoever scrapes them)."""
    registry = CollectorRegistry()
    GCCollector(registry=registry)  # in the global registry's order
    PlatformCollector(registry=registry)
    ProcessCollector(registry=registry)
    return registry


class OperatorMetrics:
    """On the registry passed in (a new one when none is), never the global one: tests build many."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        on: dict[str, Any] = {"namespace": NS, "subsystem": SUB, "registry": self.registry}
        qw = ["namespace", "name"]
        self.queue_messages = Gauge("queue_messages", "Messages in the QueueWorker's queue as last read",
                                    [*qw, "state"], **on)  # fmt: skip
        self.queue_metrics_available = Gauge(
            "queue_metrics_available",
            "1 when the last tick had the queue's depth; 0 while it is unknown (replicas held)",
            qw,
            **on,
        )
        self.replicas_desired = Gauge("replicas_desired", "Replicas the policy asks for", qw, **on)
        self.replicas_max = Gauge("replicas_max", "spec.maxReplicas (alerts compare current to it)", qw, **on)
        self.replicas_current = Gauge(
            "replicas_current", "The Deployment's observed replicas (its status.replicas: pods that exist)", qw, **on
        )
        self.scale_events = Counter("scale_events_total", "Replica changes made", ["direction"], **on)
        self.broker_read_seconds = Histogram(
            "broker_read_duration_seconds",
            "One batched management API read (all pages)",
            ["broker"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            **on,
        )
        self.broker_read_errors = Counter("broker_read_errors_total", "Failed management API reads", ["broker"], **on)
        self.reconcile_errors = Counter("reconcile_errors_total", "Ticks that failed with an error", **on)
        self.kube_write_retries = Counter(
            "kube_write_retries_total",
            "Kubernetes writes retried after a 409, 429, 5xx or no answer (status 0: timeout, connection failed)",
            ["status"],
            **on,
        )
        self.kube_throttled = Counter(
            "kube_throttled_total", "Kubernetes writes the apiserver answered 429 Too Many Requests", **on
        )
        self.kube_writes = Counter(
            "kube_writes_total", "Kubernetes write requests sent (retries too), by what they write", ["kind"], **on
        )
        self.queueworkers = Gauge("queueworkers", "QueueWorkers the scheduler ticks", **on)
        self.ticks = Counter("ticks_total", "QueueWorker ticks (decisions) made, all QueueWorkers together", **on)
        self.ticks_skipped = Counter(
            "ticks_skipped_total", "Ticks not started because the QueueWorker's previous one was still running", **on
        )
        self.tick_interval = Histogram(
            "tick_interval_seconds",
            "Time between two ticks of one QueueWorker (its pollingInterval when every one is decided on time)",
            buckets=(0.5, 0.9, 1.1, 1.25, 1.5, 2, 3, 5, 7.5, 10, 30, 60),
            **on,
        )

    def broker_result(self, broker: str, seconds: float, error: BaseException | None) -> None:
        self.broker_read_seconds.labels(broker).observe(seconds)
        if error is not None:
            self.broker_read_errors.labels(broker).inc()

    def forget(self, namespace: str, name: str) -> None:
        for g in (self.replicas_desired, self.replicas_current, self.replicas_max, self.queue_metrics_available):
            try:
                g.remove(namespace, name)
            except KeyError:
                pass
        for state in ("ready", "unacked"):
            try:
                self.queue_messages.remove(namespace, name, state)
            except KeyError:
                pass
