"""The operator's metrics reads on RabbitMQ 4.x as the official image ships it (management metrics collector off):
`/api/queues` lists names only, so a busy queue must read as unknown, never as empty; with the Prometheus
endpoint, depth and rates (4.x per-queue counters) come from there and the management API is not read at all."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import aiohttp
import pika
import pytest
from qw_operator.rabbitmq import BrokerPoller, ManagementReader, PrometheusReader, QueueMetrics

from tests.support.wait import wait_for_async

pytestmark = pytest.mark.integration


@pytest.fixture
def vhost4(broker4):
    name = f"t4-{time.monotonic_ns() % 10**9}"
    q = urllib.parse.quote(name, safe="")
    broker4.api(f"/api/vhosts/{q}", "PUT", {})
    broker4.api(f"/api/permissions/{q}/guest", "PUT", {"configure": ".*", "write": ".*", "read": ".*"})
    yield name, f"amqp://guest:guest@127.0.0.1:{broker4.port}/{q}"
    broker4.api(f"/api/vhosts/{q}", "DELETE")


def busy_queue(amqp_url: str, waiting: int) -> pika.BlockingConnection:
    """A quorum queue `jobs` with `waiting` ready messages and 3 consumers each holding one unacked."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.queue_declare("jobs", durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 10})
    ch.confirm_delivery()
    for _ in range(waiting + 3):
        ch.basic_publish("", "jobs", b"x", pika.BasicProperties(delivery_mode=2))
    for _ in range(3):
        c = conn.channel()
        c.basic_qos(prefetch_count=1)
        c.basic_consume("jobs", lambda *a: None)  # never acks: busy workers
    conn.process_data_events(time_limit=1.0)
    return conn


async def test_the_broker_really_lists_queues_without_depth(broker4, vhost4) -> None:
    vhost, url = vhost4
    conn = await asyncio.to_thread(busy_queue, url, 100)
    try:
        # The broker says its metrics collector is off: no stats emission will bring a depth later, so what it
        # lists now is what it will list (no sleep through a stats interval needed to show that)
        overview = broker4.api("/api/overview")
        assert overview["disable_stats"] is True and overview["enable_queue_totals"] is False, overview
        items = broker4.api(f"/api/queues/{urllib.parse.quote(vhost, safe='')}?columns=name,vhost,messages_ready")
        assert items == [{"name": "jobs", "vhost": vhost}]
        async with aiohttp.ClientSession() as s:
            poller = BrokerPoller("default", ManagementReader(broker4.management_url, s))
            poller.register("uid", vhost, "jobs", 1.0)
            snap = await poller.poll_once()
        # Not "0 ready, 0 consumers" (what scaled busy workers to zero before): unknown, with the fix named
        assert snap.error is None and (vhost, "jobs") not in snap.queues
        assert "metrics collector is off" in snap.unknown[(vhost, "jobs")]
    finally:
        await asyncio.to_thread(conn.close)


async def poll_until(what: str, poller: BrokerPoller, key: tuple[str, str], pred) -> QueueMetrics:
    """Poll until the queue's metrics satisfy `pred` (every field the test asserts) and return them."""
    last: list[QueueMetrics | None] = [None]

    async def probe() -> QueueMetrics | None:
        last[0] = m = (await poller.poll_once()).queues.get(key)
        return m if m is not None and pred(m) else None

    return await wait_for_async(what, probe, 20, 0.2, state=lambda: last[0])


async def test_depth_and_rates_from_the_prometheus_endpoint_alone(broker4, vhost4) -> None:
    vhost, url = vhost4
    key = (vhost, "jobs")
    conn = await asyncio.to_thread(busy_queue, url, 100)
    try:
        async with aiohttp.ClientSession() as s:
            mgmt = ManagementReader(broker4.management_url, s)
            prom = PrometheusReader(f"http://127.0.0.1:{broker4.prom_port}", s)
            poller = BrokerPoller("default", mgmt, depth_reader=prom)
            poller.register("uid", vhost, "jobs", 1.0)
            expected = (100, 3, 3, "Prometheus")
            m = await poll_until(
                "the depth from Prometheus",
                poller,
                key,
                lambda m: (m.ready, m.unacked, m.consumers, m.depth_source) == expected,
            )
            assert (m.ready, m.unacked, m.consumers, m.depth_source) == expected, m
            management_calls = mgmt.calls
            # Publish 40 more over ~2 s: the rate comes from 4.x's per-queue counters
            ch = conn.channel()
            ch.confirm_delivery()
            for _ in range(40):
                ch.basic_publish("", "jobs", b"x", pika.BasicProperties(delivery_mode=2))
                conn.process_data_events(time_limit=0.05)
            m = await poll_until(
                "a publish rate from the counters",
                poller,
                key,
                lambda m: m.rate_source == "Prometheus" and (m.publish_rate or 0) > 0,
            )
            assert m.rate_source == "Prometheus" and m.publish_rate and m.publish_rate > 0, m
            assert mgmt.calls == management_calls  # nothing left to ask the management API for
    finally:
        await asyncio.to_thread(conn.close)
