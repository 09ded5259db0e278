"""Producing from Python on the real broker: what `Client.enqueue` promises when the broker says no, and sharing.

Each refusal is a distinct exception and leaves no task row behind (nothing claims a task is queued).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from queueworker import BrokerUnavailable, Client, MessageTooLarge, PublishRefused, Unroutable
from qw_core.settings import ClientSettings
from qw_core.topology import TASKS_EXCHANGE, queue_name

from tests.support import sdk_tasks  # noqa: F401 - registers the kinds, so the client validates them
from tests.support.util import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
ORDER = {"order_id": "o-1", "items": [{"sku": "A", "qty": 1}]}


@pytest.fixture
def client(amqp_url, tmp_path):
    c = Client(amqp_url, database_url=f"sqlite:///{tmp_path}/qw.db", tenant="acme")
    yield c
    c.close()


def rows(c: Client) -> dict[str, int]:
    store, _ = c._connections()
    return store.counts()


def test_no_broker_is_broker_unavailable_and_leaves_no_row(tmp_path):
    with Client(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", database_url=f"sqlite:///{tmp_path}/qw.db") as c:
        with pytest.raises(BrokerUnavailable, match="not reachable"):
            c.enqueue("inventory", ORDER)
        assert rows(c) == {}


def test_an_unroutable_kind_is_unroutable_and_leaves_no_row(client, broker, vhost):
    client.enqueue("inventory", ORDER)  # declares the kind's queues and binding
    v, q = urllib.parse.quote(vhost, safe=""), urllib.parse.quote(queue_name("inventory"), safe="")
    broker.api(f"/api/bindings/{v}/e/{TASKS_EXCHANGE}/q/{q}/inventory", "DELETE")
    with pytest.raises(Unroutable, match="no queue for kind 'inventory'"):
        client.enqueue("inventory", ORDER)
    assert rows(client) == {"queued": 1}


def test_a_full_queue_is_publish_refused_and_leaves_no_row(client, broker, vhost):
    v = urllib.parse.quote(vhost, safe="")
    client.enqueue("inventory", ORDER)
    broker.api(f"/api/policies/{v}/cap", "PUT",
               {"pattern": "^qw\\.inventory$", "definition": {"max-length": 1}, "apply-to": "queues"})  # fmt: skip
    deadline = time.monotonic() + 20
    with pytest.raises(PublishRefused, match="queue may be full"):  # the policy applies asynchronously
        while time.monotonic() < deadline:
            client.enqueue("inventory", ORDER)
            time.sleep(0.1)
    queued = rows(client)["queued"]
    assert rows(client) == {"queued": queued} and queued >= 1
    client.enqueue("summarise", {"values": [1]})  # the connection survives a nack: other kinds still go through


def test_an_oversize_message_is_refused_before_it_is_published(amqp_url, tmp_path):
    settings = ClientSettings(rabbitmq_url=amqp_url, database_url=f"sqlite:///{tmp_path}/qw.db", max_message_bytes=500)
    with Client(settings=settings) as c:
        with pytest.raises(MessageTooLarge, match="at most 500"):
            c.enqueue("summarise", {"values": [1.0] * 200})
        assert rows(c) == {}


def test_one_client_is_shared_by_threads_over_one_connection(client, broker, vhost):
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: client.enqueue("inventory", {**ORDER, "order_id": f"o-{i}"}), range(200)))
    assert len(set(ids)) == 200 and rows(client) == {"queued": 200}
    assert all(client.status(t).status == "queued" for t in ids[:5])

    def connections():
        return [c for c in broker.api("/api/connections") if c.get("vhost") == vhost]

    conns = wait_for("the broker listing the connections", lambda: len(connections()) >= 2 and connections(), 10)
    # One for the tasks of every thread; one more for the status changes it makes (qw_core.events)
    assert sorted(c["client_properties"]["connection_name"] for c in conns) == ["qw-client", "qw-status-events"]


async def test_enqueue_async_does_not_block_the_event_loop(client):
    task_ids = await asyncio.gather(*(client.enqueue_async("summarise", {"values": [i]}) for i in range(20)))
    assert len(set(task_ids)) == 20 and rows(client) == {"queued": 20}


def test_a_connection_the_broker_closed_is_replaced_on_the_next_enqueue(client, broker, vhost):
    """An idle producer's connection may be closed (heartbeats missed, a broker restart): the next call reconnects."""
    client.enqueue("inventory", ORDER)
    [conn] = wait_for(
        "the broker listing the connection",
        lambda: [
            c
            for c in broker.api("/api/connections")
            if c.get("vhost") == vhost and c["client_properties"].get("connection_name") == "qw-client"
        ],
        20,
    )
    broker.api(f"/api/connections/{urllib.parse.quote(conn['name'], safe='')}", "DELETE")
    time.sleep(0.5)  # the close frame is waiting on the client's socket
    client.enqueue("inventory", ORDER)
    assert rows(client) == {"queued": 2}
