"""Every status change the store makes is published to qw.events (qw_core.events), numbered by the store, and
publishing never holds up or fails the store write. Real SQLite and PostgreSQL, the real broker."""

from __future__ import annotations

import json
import time

import pika
import pytest
from qw_core.events import EVENTS_EXCHANGE, EventPublisher, publish_changes

from tests.support.util import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def bound(amqp_url):
    """A queue of our own bound to qw.events for tenant acme, as an API process binds it."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True)
    queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(queue, EVENTS_EXCHANGE, "acme.#")
    got: list[tuple[str, dict]] = []

    def take():
        while (m := ch.basic_get(queue, auto_ack=True))[0] is not None:
            got.append((m[0].routing_key, json.loads(m[2])))
        return got

    yield take
    conn.close()


def test_each_status_change_is_published_with_the_seq_the_store_gave_it(store, amqp_url, bound):
    events = publish_changes(store, [amqp_url])
    try:
        store.create_pending("t1", "acme", "email")  # pending: nobody sees it yet, nothing published
        store.create_pending("t2", "globex", "email")
        assert store.confirm_queued("t1") and store.confirm_queued("t2")
        assert store.start_attempt("t1", 1)
        assert store.schedule_retry("t1", 1, "smtp down", time.time())
        assert store.start_attempt("t1", 2)
        assert store.succeed("t1")
        assert not store.succeed("t1")  # no change, no event
        got = wait_for("five events", lambda: len(bound()) >= 5 and bound(), 15)
    finally:
        events.close()
    assert [(k, e["seq"], e["status"]) for k, e in got] == [
        ("acme.email.t1", 1, "queued"),
        ("acme.email.t1", 2, "processing"),
        ("acme.email.t1", 3, "queued"),
        ("acme.email.t1", 4, "processing"),
        ("acme.email.t1", 5, "succeeded"),
    ]  # globex's change went to no queue of acme's
    assert store.get("t1").seq == 5 and "source_key" not in got[0][1]


def test_the_api_batch_confirm_and_the_janitor_publish_too(store, amqp_url, bound):
    events = publish_changes(store, [amqp_url])
    try:
        for t in ("a", "b", "c"):
            store.create_pending(t, "acme", "image", now=1.0)
        store.confirm_queued_many(["a", "b"])
        assert store.fail_stuck_pending(before=2.0, error="never published", limit=10) == 1
        got = wait_for("three events", lambda: len(bound()) >= 3 and bound(), 15)
    finally:
        events.close()
    assert sorted((e["task_id"], e["status"], e["seq"]) for _, e in got) == [
        ("a", "queued", 1), ("b", "queued", 1), ("c", "failed", 1)
    ]  # fmt: skip


def test_with_the_broker_away_store_writes_go_on_and_events_are_dropped_and_counted(store):
    events = EventPublisher([f"amqp://guest:guest@127.0.0.1:{free_port()}/"], capacity=50).start().attach(store)
    try:
        for i in range(200):
            store.create_pending(f"t{i}", "acme", "email")
            assert store.confirm_queued(f"t{i}")
        wait_for("the events dropped", lambda: events.dropped >= 150, 15)
    finally:
        events.close()
    assert store.get("t199").status == "queued" and events.published == 0


def test_a_listener_that_raises_never_fails_the_store_write(store):
    def broken(_records):
        raise RuntimeError("boom")

    store.on_change = broken
    store.create_pending("t1", "acme", "email")
    assert store.confirm_queued("t1") and store.get("t1").status == "queued"
