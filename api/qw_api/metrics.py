"""The API's Prometheus metrics, on a registry of its own per app (tests build many apps)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from qw_core.messages import KINDS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NS, SUB = "queueworker", "api"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        on: dict[str, Any] = {"namespace": NS, "subsystem": SUB, "registry": self.registry}
        self.requests = Counter(
            "requests", "HTTP requests by route template and status code.", ["method", "route", "status"], **on
        )
        self.request_duration = Histogram(
            "request_duration_seconds", "HTTP request latency.", ["method", "route"], buckets=LATENCY_BUCKETS, **on
        )
        self.tasks_submitted = Counter("tasks_submitted", "Tasks accepted (broker-confirmed) by kind.", ["kind"], **on)
        self.publish_failures = Counter(
            "publish_failures", "Publishes the broker did not confirm, by kind.", ["kind"], **on
        )
        self.publish_duration = Histogram(
            "publish_duration_seconds", "Publish-to-confirm latency.", ["kind"], buckets=LATENCY_BUCKETS, **on
        )
        self.rejected_uploads = Counter(
            "rejected_uploads", "Uploads refused by validation, by reason.", ["reason"], **on
        )
        self.broker_connected = Gauge("broker_connected", "1 while the publisher holds a broker connection.", **on)
        self.sse_streams = Gauge("sse_streams", "Open server-sent-event streams.", **on)
        self.push_lag = Histogram(
            "push_lag_seconds",
            "From the store's write of a status change to this process's hub receiving it (broker and consumer).",
            buckets=LATENCY_BUCKETS,
            **on,
        )
        self.push_events = Counter(
            "push_events", "Status changes this process's event queue received (only subscribed tenants').", **on
        )
        # Zero series for every kind, so dashboards and rate() see 0 rather than no data before the first event.
        for kind in KINDS:
            self.tasks_submitted.labels(kind)
            self.publish_failures.labels(kind)


class StorageUsage(Collector):
    """Bytes used and free on the volume of QW_STORAGE_DIR, read at scrape time. Unreadable: no sample (unknown,
    never 0)."""

    def __init__(self, usage: Callable[[], tuple[int, int]]) -> None:
        self.usage = usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            used, free = self.usage()
        except OSError:
            return
        yield GaugeMetricFamily(f"{NS}_{SUB}_storage_used_bytes", "Bytes used on the storage volume.", used)
        yield GaugeMetricFamily(
            f"{NS}_{SUB}_storage_free_bytes", "Bytes free (to the API) on the storage volume.", free
        )


class ObserveRequests:
    """Pure ASGI (no BaseHTTPMiddleware task per request): counts and times requests by route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Label children by their values, looked up once: `labels()` validates and locks on every call.
        self._counts: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")  # bounded label: the template, never the raw path
            method = scope["method"]
            count = self._counts.get((method, template, status))
            if count is None:
                count = self._counts[(method, template, status)] = self.metrics.requests.labels(
                    method, template, str(status)
                )
            count.inc()
            duration = self._durations.get((method, template))
            if duration is None:
                duration = self._durations[(method, template)] = self.metrics.request_duration.labels(method, template)
            duration.observe(time.perf_counter() - start)


class StoreTransactions(Collector):
    """Transactions (reads and writes) this process ran on the task store: what its event streams cost the
    database (a polled stream reads every QW_SSE_POLL_INTERVAL; a pushed one only when it opens or resyncs)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(f"{NS}_{SUB}_store_transactions", "Task store transactions run.", self.count())
