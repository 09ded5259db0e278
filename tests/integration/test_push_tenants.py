"""Per-tenant binding of the API's event queue (`<tenant>.#` only while the process has a subscriber of that tenant)
and the WebSocket's limits, with the real API, broker and store."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from qw_core.events import EventPublisher
from qw_core.store import open_store
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.support.api import client, running_api
from tests.support.events import sse, ws_url
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"}


@pytest.fixture
def push_settings(api_settings):
    return api_settings.model_copy(
        update={"sse_keepalive_seconds": 0.5, "tenant_rate": 0.0, "events_unbind_seconds": 0.0}
    )


class Churn:
    """A worker's side: tasks of `tenant` retried over and over (processing, queued, processing, ...) through a
    store that publishes its changes as a worker's does, until stopped; then each succeeds."""

    def __init__(self, settings, tenant: str, tasks: int) -> None:
        self.store = open_store(settings.database_url)
        self.ids = [uuid.uuid4().hex for _ in range(tasks)]
        self.store.create_pending_many([(t, tenant, "email", None) for t in self.ids])
        self.store.confirm_queued_many(self.ids)
        self.events = EventPublisher(settings.rabbitmq_urls()).start().attach(self.store)
        assert self.events.connected.wait(30)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            for task_id in self.ids:
                self.store.start_attempt(task_id, attempt)
                self.store.schedule_retry(task_id, attempt, "again")
            time.sleep(0.005)
        for task_id in self.ids:
            self.store.succeed(task_id)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.events.close()
        self.store.close()


def test_a_stream_opened_while_its_tasks_change_misses_no_change(push_settings):
    """Given acme's tasks changing every few milliseconds and no acme subscriber here (so acme is not bound), when a
    task stream opens (binding acme anew) and reads the stored state: every later change follows it, numbered
    without a gap. Twelve times, each stream alone, so each binds again."""
    with running_api(push_settings) as (base, app), Churn(push_settings, "acme", 4) as churn:
        consumer = app.state.event_consumer
        wait_for("the consumer bound", consumer.bound.is_set, 30)
        for task_id in churn.ids * 3:
            wait_for("acme unbound", lambda: not consumer.bound_tenants(), 15, 0.02)
            with sse(base, f"/v1/tasks/{task_id}/events") as live:
                wait_for("a few changes", lambda: len(live.frames) >= 6 or live.ended, 15)
            seqs = [int(f.id) for f in list(live.frames)]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        assert consumer.binds >= 12


def test_another_tenants_changes_no_longer_reach_this_process(push_settings):
    """Given globex's tasks changing all along: while nobody here follows any tenant, none of the changes reach
    this process's queue (counted by queueworker_api_push_events_total); while an acme stream is open, acme's do
    and globex's still do not; after acme's last subscriber left, acme's binding goes too."""
    with running_api(push_settings) as (base, app), Churn(push_settings, "globex", 3):
        registry, consumer = app.state.services.metrics.registry, app.state.event_consumer

        def received() -> float:
            return registry.get_sample_value("queueworker_api_push_events_total") or 0.0

        def quiet(seconds: float) -> bool:
            time.sleep(0.3)  # what was already on its way
            before = received()
            time.sleep(seconds)
            return received() == before

        wait_for("the consumer connected", consumer.bound.is_set, 30)
        assert quiet(1.0) and received() == 0
        with sse(base, "/v1/events") as acme:
            wait_for("subscribed", lambda: acme.comments, 10)
            with Churn(push_settings, "acme", 1) as ours:
                wait_for("acme's changes", lambda: len(acme.statuses()) >= 10, 15)
            wait_for("acme's task ended", lambda: acme.statuses()[-1]["status"] == "succeeded", 15)
            assert {v["task_id"] for v in acme.statuses()} == set(ours.ids) and received() >= 10
            assert quiet(1.0), "another tenant's changes reach this process"
        wait_for("acme unbound", lambda: not consumer.bound_tenants(), 15, 0.02)


def test_a_websocket_is_closed_after_its_lifetime_with_a_code_that_says_reconnect(push_settings):
    settings = push_settings.model_copy(update={"ws_max_seconds": 1.0})
    with running_api(settings) as (base, _app), ws_connect(ws_url(base)) as ws:
        ws.send(json.dumps({"type": "auth", "key": "key-acme"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        began = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "connection lifetime reached: reconnect")
        assert time.monotonic() - began < 5


def test_a_tenant_over_its_stream_cap_gets_its_extra_socket_closed_with_4429(push_settings):
    settings = push_settings.model_copy(update={"max_streams_per_tenant": 1})
    with running_api(settings) as (base, _app), ws_connect(ws_url(base)) as first:
        first.send(json.dumps({"type": "auth", "key": "key-acme"}))
        assert json.loads(first.recv(timeout=10))["type"] == "ready"
        with ws_connect(ws_url(base)) as extra:
            extra.send(json.dumps({"type": "auth", "key": "key-acme"}))
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=10)
            assert closed.value.rcvd.code == 4429
        assert client(base).get("/v1/events").status_code == 429  # the SSE cap counts the socket too
        with ws_connect(ws_url(base), subprotocols=["queueworker", "bearer.key-globex"]) as other:
            assert json.loads(other.recv(timeout=10))["type"] == "ready"  # another tenant is not affected
