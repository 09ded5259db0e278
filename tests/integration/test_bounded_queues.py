"""Bounded queues on a real RabbitMQ (3.10 and 4.x): a full task queue refuses (503 from the API, PublishRefused
from the SDK Client, nothing stored), dead letters are kept for a while and the newest first, and services started
on a broker whose queues were declared by an older version (no limits) keep running and say how to migrate."""

from __future__ import annotations

import logging
import time

import pika
import pytest
from queueworker import Client, PublishRefused
from qw_core.settings import ClientSettings
from qw_core.topology import (
    DEAD_EXCHANGE,
    NOTIFICATIONS_QUEUE,
    TASKS_EXCHANGE,
    QueueSpec,
    Topology,
    build_topology,
    dead_queue_name,
    declare_with_pika,
    queue_name,
)

from tests.support import sdk_tasks  # noqa: F401 - registers the kinds, so the client validates them
from tests.support.api import client, running_api
from tests.support.wait import wait_for
from tests.support.workers import running_worker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi"}
ORDER = {"order_id": "o-1", "items": [{"sku": "A", "qty": 1}]}
LIMIT_ARGS = ("x-max-length", "x-max-length-bytes")


@pytest.fixture
def channel(amqp_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    yield ch
    if conn.is_open:
        conn.close()


def _depth(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def test_a_full_task_queue_is_503_with_retry_after_never_202_and_nothing_stored(api_settings, channel):
    settings = api_settings.model_copy(update={"queue_max_length": 3, "retry_after_seconds": 9})
    with running_api(settings) as (base, app), client(base) as http:
        wait_for("API ready", lambda: http.get("/readyz").status_code == 200, 20)
        codes = [http.post("/v1/emails", json=EMAIL).status_code for _ in range(4)]
        # A quorum queue takes the publish that reaches limit + 1 (3.10 and 4.x alike), then refuses.
        assert codes in ([202, 202, 202, 503], [202, 202, 202, 202])
        accepted = codes.count(202)
        for _ in range(3):
            r = http.post("/v1/emails", json=EMAIL)
            assert r.status_code == 503 and r.headers["retry-after"] == "9"
            assert "nothing was queued" in r.json()["detail"]
        assert app.state.services.store.counts() == {"queued": accepted}
        assert _depth(channel, queue_name("email")) == accepted
        assert not [p for p in app.state.services.storage.root.rglob("*") if p.is_file()]


def test_a_full_queue_refuses_an_sdk_client_and_leaves_no_row(amqp_url, tmp_path):
    settings = ClientSettings(rabbitmq_url=amqp_url, database_url=f"sqlite:///{tmp_path}/qw.db", queue_max_length=2)
    with Client(settings=settings) as c:
        accepted = 0
        with pytest.raises(PublishRefused, match="queue may be full"):
            for _ in range(4):
                c.enqueue("inventory", ORDER)
                accepted += 1
        assert accepted in (2, 3)  # a quorum queue takes the publish that reaches limit + 1
        store, _ = c._connections()
        assert store.counts() == {"queued": accepted}


def _limits_topology(**limits):
    settings = ClientSettings(**limits)
    return build_topology(["email"], 2, limits=settings.queue_limits())


def test_a_dead_letter_queue_keeps_the_newest_past_its_length(channel):
    declare_with_pika(channel, _limits_topology(dead_letter_max_length=3))
    for i in range(5):
        channel.basic_publish(DEAD_EXCHANGE, "email", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    bodies = []
    while (got := channel.basic_get(dead_queue_name("email"), auto_ack=True))[0]:
        bodies.append(got[2])
    assert bodies == [b"2", b"3", b"4"]  # the oldest two were dropped, nothing refused


def test_a_dead_letter_older_than_the_retention_is_gone(channel):
    declare_with_pika(channel, _limits_topology(dead_letter_ttl_seconds=1, notifications_log_ttl_seconds=1))
    channel.basic_publish(DEAD_EXCHANGE, "email", b"old", pika.BasicProperties(delivery_mode=2))
    channel.basic_publish("qw.notifications", "", b"old", pika.BasicProperties(delivery_mode=2))
    assert _depth(channel, dead_queue_name("email")) == 1
    time.sleep(1.5)
    channel.basic_publish(DEAD_EXCHANGE, "email", b"new", pika.BasicProperties(delivery_mode=2))
    got = channel.basic_get(dead_queue_name("email"), auto_ack=True)
    assert got[2] == b"new"  # "old" expired at the head
    assert channel.basic_get(NOTIFICATIONS_QUEUE, auto_ack=True)[0] is None
    assert _depth(channel, dead_queue_name("email")) == 0


# Upgrades: the queues exist, declared by the previous version without limits.


def _as_before(topology: Topology) -> Topology:
    """What the version before bounded queues declared: no length limits; nothing but the type on the queues
    nobody consumes. The delay ladder came later: it is declared as this version does."""

    def old(q: QueueSpec) -> QueueSpec:
        if q.name.startswith("qw.delay."):
            return q
        if q.name.endswith(".dead") or q.name == NOTIFICATIONS_QUEUE:
            return QueueSpec(q.name, {"x-queue-type": "quorum"}, q.bindings)
        return QueueSpec(q.name, {k: v for k, v in q.arguments.items() if k not in LIMIT_ARGS}, q.bindings)

    return Topology(topology.exchanges, tuple(old(q) for q in topology.queues))


def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "qw_core.topology"]


def test_declaring_over_queues_of_an_older_version_uses_them_and_logs_one_error_per_queue(channel, caplog):
    new = build_topology(["email"], 2)
    declare_with_pika(channel, _as_before(new))
    caplog.set_level(logging.ERROR, "qw_core.topology")
    declare_with_pika(channel, new)  # no exception: the queues are there, only their arguments differ
    errors = _errors(caplog)
    older = [q.name for q in new.queues if not q.name.startswith("qw.delay.")]
    assert sorted(r.queue for r in errors) == sorted(older)  # type: ignore[attr-defined]
    message = next(r.getMessage() for r in errors if r.queue == queue_name("email"))  # type: ignore[attr-defined]
    assert "queue qw.email" in message and "x-max-length" in message
    assert "delete_queue qw.email --if-empty" in message and "set_policy" in message
    # The caller's channel is untouched and the queue still routes.
    channel.basic_publish(TASKS_EXCHANGE, "email", b"x", pika.BasicProperties(delivery_mode=2), mandatory=True)
    assert _depth(channel, queue_name("email")) == 1


def test_the_api_and_the_sdk_client_start_over_queues_of_an_older_version(api_settings, channel, tmp_path, caplog):
    kinds = ("image", "email")
    declare_with_pika(channel, _as_before(build_topology(kinds, 10)))
    declare_with_pika(channel, _as_before(build_topology(("inventory",), 10)))
    caplog.set_level(logging.ERROR, "qw_core.topology")
    with running_api(api_settings) as (base, _), client(base) as http:
        wait_for("API ready", lambda: http.get("/readyz").status_code == 200, 20)
        assert http.post("/v1/emails", json=EMAIL).status_code == 202
    assert queue_name("email") in {r.queue for r in _errors(caplog)}  # type: ignore[attr-defined]
    settings = ClientSettings(rabbitmq_url=api_settings.rabbitmq_url, database_url=f"sqlite:///{tmp_path}/c.db")
    with Client(settings=settings) as c:
        c.enqueue("inventory", ORDER)
    assert queue_name("inventory") in {r.queue for r in _errors(caplog)}  # type: ignore[attr-defined]
    assert _depth(channel, queue_name("email")) == 1 and _depth(channel, queue_name("inventory")) == 1


def test_a_worker_starts_over_queues_of_an_older_version_and_says_how_to_migrate(amqp_url, channel, tmp_path):
    declare_with_pika(channel, _as_before(build_topology(("email",), 10)))
    env = worker_env(amqp_url, f"sqlite:///{tmp_path}/qw.db", tmp_path / "storage")
    with running_worker("email", env, tmp_path / "logs") as worker:  # ready: it consumes, no crash loop
        log = worker.log()
    assert "queue qw.email already exists on the broker with a different x-max-length" in log
    assert "delete_queue qw.email --if-empty" in log
