"""The worker runtime without a broker: what /readyz reports while the store is down, and the store metrics."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry
from qw_core.settings import WorkerSettings
from qw_core.storage import LocalStorage
from qw_core.store import SqliteStore
from qw_workers.metrics import WorkerMetrics
from qw_workers.middleware import MetricsMiddleware
from qw_workers.runtime import Worker


class FlakyStore(SqliteStore):
    """A real store whose ping fails while `up` is False."""

    up = False

    def ping(self) -> bool:
        return self.up and super().ping()


def test_not_ready_while_the_store_is_down_and_ready_again_once_a_ping_gets_through(tmp_path):
    """Given a consuming worker whose store call just failed, then /readyz says not ready (and the store_up gauge
    0); with no delivery to notice the store's return, a background ping (after the backoff) makes it ready."""
    reg = CollectorRegistry()
    store = FlakyStore(":memory:")
    middleware = [MetricsMiddleware(WorkerMetrics("email", reg))]
    w = Worker("email", lambda task, ctx: None, WorkerSettings(), store, LocalStorage(tmp_path), middleware)
    w._ready.set()  # as if consuming
    assert w.ready
    w.store_backoff.failed()
    assert not w.ready
    assert reg.get_sample_value("queueworker_worker_store_up", {"kind": "email"}) == 0
    time.sleep(0.6)  # the first backoff (at most 0.5 s) is over: a ping may go, and fails
    assert not w.ready
    errors = lambda: reg.get_sample_value("queueworker_worker_store_unavailable_total", {"kind": "email"})  # noqa: E731
    deadline = time.monotonic() + 5
    while errors() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert errors() == 2 and w.store_backoff.down  # the failed ping counted, and kept it down
    store.up = True
    deadline = time.monotonic() + 5
    while not w.ready and time.monotonic() < deadline:
        time.sleep(0.1)
    assert w.ready
    assert reg.get_sample_value("queueworker_worker_store_up", {"kind": "email"}) == 1
    assert errors() == 2
    w._pool.shutdown()
