"""Prometheus metrics of a worker: namespace `queueworker`, subsystem `worker`, base units, bounded labels.

Labels are the task kind (image|email, or an SDK kind: the kinds of the deployed task module), the outcome
(succeeded|retried|deferred|failed|dead|duplicate|requeued|delayed: sent back to wait, not due|cancelled) and the
dead-letter reason (undecodable|permanent|exhausted|delivery-limit, and an SDK kind's invalid-payload from its first
count): never task ids or tenants.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NS, SUB = "queueworker", "worker"
_KIND = ["kind"]
OUTCOMES = ("succeeded", "retried", "deferred", "failed", "dead", "duplicate", "requeued", "delayed", "cancelled")
REASONS = ("undecodable", "permanent", "exhausted", "delivery-limit")


class WorkerMetrics:
    def __init__(self, kind: str, registry: CollectorRegistry | None = None) -> None:
        self.kind = kind
        self.registry = registry if registry is not None else CollectorRegistry()
        on: dict[str, Any] = {"namespace": NS, "subsystem": SUB, "registry": self.registry}
        self.tasks = Counter("tasks_processed", "Tasks handled, by outcome", ["kind", "outcome"], **on)
        self.duration = Histogram(
            "task_duration_seconds",
            "Time spent in the handler and its status write",
            _KIND,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            **on,
        )
        self.in_progress = Gauge("tasks_in_progress", "Tasks being handled now", _KIND, **on)
        self.retries = Counter("retries", "Tasks sent to a retry delay queue", _KIND, **on)
        self.dead_letters = Counter("dead_letters", "Dead-lettered messages", [*_KIND, "reason"], **on)
        self.last_success = Gauge("last_success_timestamp_seconds", "Unix time of the last succeeded task", _KIND, **on)
        self.connected = Gauge("broker_connected", "1 when connected and consuming", _KIND, **on)
        self.store_errors = Counter(
            "store_unavailable",
            "Store calls that failed because the store was unreachable (each backs off)",
            _KIND,
            **on,
        )
        self.store_up = Gauge("store_up", "0 from a failed store call until one succeeds", _KIND, **on)
        # Initialise every bounded series so dashboards and rate() see zeros, not gaps.
        for outcome in OUTCOMES:
            self.tasks.labels(kind, outcome)
        for reason in REASONS:
            self.dead_letters.labels(kind, reason)
        self.retries.labels(kind)
        self.in_progress.labels(kind)
        self.connected.labels(kind).set(0)
        self.store_errors.labels(kind)
        self.store_up.labels(kind).set(1)

    def store_event(self, up: bool) -> None:
        """settle.StoreBackoff's listener: a failed store call (False) or the first success after one (True)."""
        if not up:
            self.store_errors.labels(self.kind).inc()
        self.store_up.labels(self.kind).set(1 if up else 0)
