"""The management-API reader against the real RabbitMQ: > 500 queues in a throwaway vhost take two pages, the
counts and rates are the broker's, a stopped management listener is a BrokerError; depth from the Prometheus
per-object endpoint merges in, and falls back to the management API when that endpoint is down."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pika
import pytest
from qw_operator.rabbitmq import BrokerError, BrokerPoller, ManagementReader, PrometheusReader, Snapshot

from tests.support.util import free_port
from tests.support.wait import wait_for_async

pytestmark = pytest.mark.integration


def declare(amqp_url: str, n: int) -> None:
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        ch = conn.channel()
        for i in range(n):
            ch.queue_declare(f"q{i:04d}")
        ch.confirm_delivery()
        for _ in range(7):
            ch.basic_publish("", "q0042", b"x")


async def test_pagination_over_600_queues_on_the_real_broker(broker, vhost, amqp_url) -> None:
    await asyncio.to_thread(declare, amqp_url, 600)
    async with aiohttp.ClientSession() as s:
        reader = ManagementReader(broker.management_url, s)
        queues = await reader.fetch(vhost)
        assert reader.calls == 2  # 500 + 100
        assert len(queues) == 600
        # Counts reach the management API with the next stats emission (1 s here); until then a new queue is
        # listed without depth: None (unknown), never 0
        seen: list[object] = []

        async def counted() -> bool:
            page = await reader.fetch(vhost)
            q42, q1 = page[(vhost, "q0042")], page[(vhost, "q0001")]
            seen[:] = [q42, q1]
            return q42 is not None and q42.ready == 7 and q1 is not None and q1.ready == 0

        await wait_for_async("q0042 at 7 ready and q0001 at 0", counted, 10, 0.2, state=lambda: seen)
        # The unfiltered read (every vhost) pages the same way
        everything = await reader.fetch()
        assert (vhost, "q0599") in everything


async def test_publish_rate_shows_up(broker, vhost, amqp_url) -> None:
    def publish_for(seconds: float) -> None:
        with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
            ch = conn.channel()
            ch.queue_declare("rated")
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                ch.basic_publish("", "rated", b"x")
                time.sleep(0.01)

    publisher = asyncio.create_task(asyncio.to_thread(publish_for, 12.0))
    async with aiohttp.ClientSession() as s:
        poller = BrokerPoller("default", ManagementReader(broker.management_url, s))
        poller.register("uid", vhost, "rated", 1.0)
        last: list[Snapshot] = []

        async def rate_and_depth() -> Snapshot | None:
            last[:] = [snap := await poller.poll_once()]
            m = snap.queues.get((vhost, "rated"))
            return snap if m is not None and (m.publish_rate or 0) > 0 and m.ready > 0 else None

        # Queue stats reach the API every collect_statistics_interval (or later, under load), and depth and rates
        # on separate emissions (queue stats, channel stats): wait for both
        snap = await wait_for_async("a publish rate and a depth", rate_and_depth, 12, 0.2, lambda: last)
    await publisher
    m = snap.queues[(vhost, "rated")]
    assert m.ready > 0 and (m.publish_rate or 0) > 0 and snap.calls == 1


async def test_closed_management_port_is_a_broker_error() -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(BrokerError, match="ClientConnectorError|Cannot connect"):
            await ManagementReader(f"http://guest:guest@127.0.0.1:{free_port()}", s).fetch()


def hold_two_unacked(amqp_url: str, ready: int) -> pika.BlockingConnection:
    """A quorum queue `dq` with `ready + 2` messages and one consumer holding 2 of them unacked."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.queue_declare("dq", durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    for _ in range(ready + 2):
        ch.basic_publish("", "dq", b"x", pika.BasicProperties(delivery_mode=2))
    ch.basic_qos(prefetch_count=2)
    ch.basic_consume("dq", lambda *a: None)  # never acks
    conn.process_data_events(time_limit=1.0)
    return conn


async def poll_until_depth(poller: BrokerPoller, key: tuple[str, str], want: tuple[int, int, int]) -> Snapshot:
    """Poll until the queue shows (ready, unacked, consumers) == want (stats arrive on the broker's ticks, and
    the management API learns of consumers and of messages on separate schedules) and return that snapshot."""
    last: list[Snapshot] = []

    async def probe() -> Snapshot | None:
        last[:] = [snap := await poller.poll_once()]
        m = snap.queues.get(key)
        return snap if m is not None and (m.ready, m.unacked, m.consumers) == want else None

    return await wait_for_async(f"{key[1]} at {want} (ready, unacked, consumers)", probe, 10, 0.1, lambda: last)


async def test_depth_from_the_prometheus_endpoint_with_rates_from_the_management_api(broker, vhost, amqp_url) -> None:
    conn = await asyncio.to_thread(hold_two_unacked, amqp_url, 7)
    try:
        async with aiohttp.ClientSession() as s:
            depth = PrometheusReader(f"http://127.0.0.1:{broker.prom_port}", s)
            poller = BrokerPoller("default", ManagementReader(broker.management_url, s), depth_reader=depth)
            poller.register("uid", vhost, "dq", 1.0)
            snap = await poll_until_depth(poller, (vhost, "dq"), (7, 2, 1))
            m = snap.queues.get((vhost, "dq"))
            assert m is not None and (m.ready, m.unacked, m.consumers) == (7, 2, 1), m
            assert snap.error is None and snap.calls == 2  # one management API page and one Prometheus read
            assert depth.calls >= 1
            # the vhost filter holds on the Prometheus side too: only this vhost's queues
            assert {v for v, _ in await depth.fetch(vhost)} == {vhost}

            # rates (and the published count) still come from the management API
            async def nine_published() -> int | None:
                n = (await poller.poll_once()).queues[(vhost, "dq")].published
                return n if n >= 9 else None

            assert await wait_for_async("9 published", nine_published, 12, 0.2) == 9
    finally:
        await asyncio.to_thread(conn.close)


async def test_unreachable_prometheus_endpoint_falls_back_to_management_depth(broker, vhost, amqp_url) -> None:
    conn = await asyncio.to_thread(hold_two_unacked, amqp_url, 3)
    try:
        async with aiohttp.ClientSession() as s:
            down = PrometheusReader(f"http://127.0.0.1:{free_port()}", s)
            poller = BrokerPoller("default", ManagementReader(broker.management_url, s), depth_reader=down)
            poller.register("uid", vhost, "dq", 1.0)
            snap = await poll_until_depth(poller, (vhost, "dq"), (3, 2, 1))
            m = snap.queues.get((vhost, "dq"))
            assert snap.error is None, snap.error  # scaling goes on from the management API's figures
            assert m is not None and (m.ready, m.unacked, m.consumers) == (3, 2, 1), m
            assert down.calls >= 1
    finally:
        await asyncio.to_thread(conn.close)
