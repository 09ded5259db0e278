"""Producing from asyncio code on the real broker: `Client.enqueue_async` over one AsyncioConnection per event loop
(qw_core.aio_publishing), with the same refusals as the blocking path, each leaving no task row behind."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import pika
import pytest
from queueworker import BrokerUnavailable, Client, PublishRefused, Unroutable, set_default_client
from qw_core.topology import TASKS_EXCHANGE, queue_name
from rabbitmq import SBIN, Broker, free_broker_ports

from tests.support import sdk_tasks
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
matrix = pytest.mark.broker_matrix  # on RabbitMQ 3.10 and 4.x
ORDER = {"order_id": "o-1", "items": [{"sku": "A", "qty": 1}]}


@pytest.fixture
async def client(amqp_url, tmp_path):
    c = Client(amqp_url, database_url=f"sqlite:///{tmp_path}/qw.db", tenant="acme")
    yield c
    await c.aclose()


def rows(c: Client) -> dict[str, int]:
    return c._open_store().counts()


def depth(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def vhost_connections(broker, vhost: str) -> list[dict]:
    return [c for c in broker.api("/api/connections") if c.get("vhost") == vhost]


@matrix
async def test_many_concurrent_enqueues_share_one_connection_and_each_is_confirmed(client, broker, vhost, amqp_url):
    ids = await asyncio.gather(
        *(client.enqueue_async("inventory", {**ORDER, "order_id": f"o-{i}"}) for i in range(200))
    )
    assert len(set(ids)) == 200 and rows(client) == {"queued": 200}
    conns = wait_for("the broker listing the connections", lambda: len(vhost_connections(broker, vhost)) >= 2
                     and vhost_connections(broker, vhost), 10)  # fmt: skip
    assert len(conns) == 2  # one for every task, one for the status changes it writes (qw_core.events)
    names = {c.get("client_properties", {}).get("connection_name") for c in conns}
    assert names in ({"qw-client", "qw-status-events"}, {None})  # 4.x without the metrics collector: no properties
    assert depth(amqp_url, queue_name("inventory")) == 200


@matrix
async def test_task_send_async_goes_through_the_default_client(client):
    previous = set_default_client(client)
    try:
        task_id = await sdk_tasks.reserve_stock.send_async(order_id="o-9", items=[{"sku": "A", "qty": 1}])
    finally:
        set_default_client(previous)
    assert client.status(task_id).status == "queued"


@matrix
async def test_an_unroutable_kind_is_unroutable_and_leaves_no_row(client, broker, vhost):
    await client.enqueue_async("inventory", ORDER)  # declares the kind's queues and binding
    v, q = urllib.parse.quote(vhost, safe=""), urllib.parse.quote(queue_name("inventory"), safe="")
    broker.api(f"/api/bindings/{v}/e/{TASKS_EXCHANGE}/q/{q}/inventory", "DELETE")
    with pytest.raises(Unroutable, match="no queue for kind 'inventory'"):
        await client.enqueue_async("inventory", ORDER)
    assert rows(client) == {"queued": 1}
    await client.enqueue_async("summarise", {"values": [1]})  # the connection goes on for other kinds


@matrix
async def test_a_full_queue_is_publish_refused_and_each_confirm_reaches_its_own_publish(client, broker, vhost):
    await client.enqueue_async("inventory", ORDER)
    await client.enqueue_async("summarise", {"values": [1]})
    v = urllib.parse.quote(vhost, safe="")
    broker.api(f"/api/policies/{v}/cap", "PUT",
               {"pattern": "^qw\\.inventory$", "definition": {"max-length": 1}, "apply-to": "queues"})  # fmt: skip
    deadline = time.monotonic() + 20
    with pytest.raises(PublishRefused, match="queue may be full"):  # the policy applies asynchronously
        while time.monotonic() < deadline:
            await client.enqueue_async("inventory", ORDER)
            await asyncio.sleep(0.1)
    before = rows(client)["queued"]
    # Interleaved on the one channel: the full kind's publishes are nacked, the other kind's acked, each to its own.
    kinds = ["inventory", "summarise"] * 5
    payloads = {"inventory": ORDER, "summarise": {"values": [2]}}
    outcomes = await asyncio.gather(*(client.enqueue_async(k, payloads[k]) for k in kinds), return_exceptions=True)
    assert [type(o) for o in outcomes[0::2]] == [PublishRefused] * 5
    assert all(isinstance(o, str) for o in outcomes[1::2])
    assert rows(client) == {"queued": before + 5}


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test's own: it is stopped and started again."""
    assert (SBIN / "rabbitmq-server").exists(), "rabbitmq-server is not installed (scripts/install-system-deps.sh)"
    amqp, mgmt, prom = free_broker_ports()
    b = Broker(name=f"qwaio-{amqp}", port=amqp, mgmt_port=mgmt, prom_port=prom, base=tmp_path / "b")
    b.start()
    yield b
    b.destroy()


async def test_broker_stopped_is_broker_unavailable_then_the_next_enqueue_reconnects(own_broker, tmp_path):
    b = own_broker
    c = Client(f"amqp://guest:guest@127.0.0.1:{b.port}/%2F", database_url=f"sqlite:///{tmp_path}/qw.db")
    try:
        await c.enqueue_async("inventory", ORDER)
        assert (await asyncio.to_thread(b.ctl, "stop_app")).returncode == 0
        with pytest.raises(BrokerUnavailable):
            await c.enqueue_async("inventory", ORDER)
        assert rows(c) == {"queued": 1}
        assert (await asyncio.to_thread(b.ctl, "start_app")).returncode == 0
        deadline = time.monotonic() + 30
        while True:  # the node takes a moment to accept connections again
            try:
                await c.enqueue_async("inventory", ORDER)
                break
            except BrokerUnavailable:
                assert time.monotonic() < deadline, "no reconnect within 30 s of the restart"
                await asyncio.sleep(0.5)
        assert rows(c) == {"queued": 2}
    finally:
        await c.aclose()


@matrix
async def test_async_sends_take_the_same_idempotency_keys_and_delays_as_the_blocking_ones(client, amqp_url):
    """The asyncio path is the blocking one's twin: one key gives one task across both paths (concurrent coroutines
    included), and a delayed task is `scheduled` and waits in the delay ladder, not in the kind's queue."""
    keyed = await asyncio.gather(*(client.enqueue_async("inventory", ORDER, idempotency_key="k-1") for _ in range(8)))
    assert len(set(keyed)) == 1
    assert await asyncio.to_thread(client.enqueue, "inventory", ORDER, idempotency_key="k-1") == keyed[0]
    later = await client.enqueue_async("inventory", ORDER, delay=3600)
    st = client.status(later)
    assert st.status == "scheduled" and st.not_before is not None
    assert 3590 < st.not_before.timestamp() - time.time() <= 3600
    assert depth(amqp_url, queue_name("inventory")) == 1  # only the keyed task; the delayed one is on the ladder
    assert rows(client) == {"queued": 1, "scheduled": 1}
    assert await asyncio.to_thread(client.cancel, later) and client.status(later).status == "cancelled"
