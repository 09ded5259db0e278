"""Prometheus metrics, namespace `queueworker`, subsystem `operator`. Labels are bounded: a QueueWorker's
namespace and name (one series per CR, removed when the CR goes), a broker's configured name, a direction."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

NS, SUB = "queueworker", "operator"


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        qw = ["namespace", "name"]
        self.queue_messages = Gauge(
            "queue_messages",
            "Messages in the QueueWorker's queue as last read",
            [*qw, "state"],
            namespace=NS,
            subsystem=SUB,
            registry=registry,
        )
        self.queue_metrics_available = Gauge(
            "queue_metrics_available",
            "1 when the last tick had the queue's depth; 0 while it is unknown (replicas held)",
            qw,
            namespace=NS,
            subsystem=SUB,
            registry=registry,
        )
        self.replicas_desired = Gauge(
            "replicas_desired", "Replicas the policy asks for", qw, namespace=NS, subsystem=SUB, registry=registry
        )
        self.replicas_max = Gauge(
            "replicas_max",
            "spec.maxReplicas (alerts compare current to it)",
            qw,
            namespace=NS,
            subsystem=SUB,
            registry=registry,
        )
        self.replicas_current = Gauge(
            "replicas_current", "The Deployment's spec.replicas", qw, namespace=NS, subsystem=SUB, registry=registry
        )
        self.scale_events = Counter(
            "scale_events_total", "Replica changes made", ["direction"], namespace=NS, subsystem=SUB, registry=registry
        )
        self.broker_read_seconds = Histogram(
            "broker_read_duration_seconds",
            "One batched management API read (all pages)",
            ["broker"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            namespace=NS,
            subsystem=SUB,
            registry=registry,
        )
        self.broker_read_errors = Counter(
            "broker_read_errors_total",
            "Failed management API reads",
            ["broker"],
            namespace=NS,
            subsystem=SUB,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "reconcile_errors_total", "Ticks that failed with an error", namespace=NS, subsystem=SUB, registry=registry
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
