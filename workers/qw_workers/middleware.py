"""Cross-cutting concerns as hooks around the pure task bodies (dramatiq style): metrics, logs, test delay.

The runtime calls, for every delivery, `before_process` on the worker thread before decoding it and
`after_process` once its outcome is settled (acked or handed back), and `on_connection` on the I/O thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from qw_core.messages import TaskMessage

from qw_workers.context import Handler, Output, TaskContext
from qw_workers.metrics import WorkerMetrics


@dataclass(frozen=True)
class Delivery:
    """One message as the I/O thread received it (everything the worker thread needs; no pika objects)."""

    kind: str
    generation: int
    delivery_tag: int
    body: bytes
    message_id: str | None
    headers: dict[str, Any]
    redelivered: bool
    content_type: str | None = None


@dataclass(frozen=True)
class Result:
    outcome: str  # succeeded | retried | deferred | failed | dead | duplicate | requeued | delayed | cancelled
    task_id: str | None
    attempt: int
    duration_s: float
    reason: str | None = None  # dead-letter reason when dead-lettered
    error: str | None = None


class Middleware:
    def before_process(self, delivery: Delivery) -> None:
        pass

    def after_process(self, delivery: Delivery, result: Result) -> None:
        pass

    def on_connection(self, connected: bool) -> None:
        pass


class MetricsMiddleware(Middleware):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self.m = metrics

    def before_process(self, delivery: Delivery) -> None:
        self.m.in_progress.labels(delivery.kind).inc()

    def after_process(self, delivery: Delivery, result: Result) -> None:
        kind = delivery.kind
        self.m.in_progress.labels(kind).dec()
        self.m.tasks.labels(kind, result.outcome).inc()
        self.m.duration.labels(kind).observe(result.duration_s)
        if result.outcome == "retried":
            self.m.retries.labels(kind).inc()
        if result.reason:
            self.m.dead_letters.labels(kind, result.reason).inc()
        if result.outcome == "succeeded":
            self.m.last_success.labels(kind).set(time.time())

    def on_connection(self, connected: bool) -> None:
        self.m.connected.labels(self.m.kind).set(1 if connected else 0)


class LoggingMiddleware(Middleware):
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("qw_workers.tasks")

    def after_process(self, delivery: Delivery, result: Result) -> None:
        """One line a task: the JSON format carries the fields; the text format shows only the message, so the
        message itself names the task and says why it did not succeed."""
        quiet = ("succeeded", "duplicate", "retried", "deferred", "delayed", "cancelled")
        level = logging.INFO if result.outcome in quiet else logging.WARNING
        task_id = result.task_id or delivery.message_id
        fields: dict[str, Any] = {
            "task_id": task_id,
            "kind": delivery.kind,
            "attempt": result.attempt,
            "outcome": result.outcome,
            "duration_s": round(result.duration_s, 4),
        }
        if result.reason:
            fields["reason"] = result.reason
        if result.error:
            fields["error"] = result.error
        why = ": ".join(text for text in (result.reason, result.error) if text)
        self.log.log(
            level,
            "task %s %s (%s, attempt %d, %.3fs)%s",
            task_id,
            result.outcome,
            delivery.kind,
            result.attempt,
            result.duration_s,
            f": {why}" if why else "",
            extra=fields,
        )


def slowed(handler: Handler, seconds: float) -> Handler:
    """TEST ONLY (QW_TEST_TASK_DELAY): the handler sleeps first, so tests can catch a worker mid-task."""

    def slow(task: TaskMessage, ctx: TaskContext) -> str | Output | None:
        time.sleep(seconds)
        return handler(task, ctx)

    return slow
