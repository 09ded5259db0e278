"""The management-API reader against the real RabbitMQ: > 500 queues in a throwaway vhost take two pages, the
counts and rates are the broker's, and a stopped management listener is a BrokerError."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pika
import pytest
from qw_operator.rabbitmq import BrokerError, BrokerPoller, ManagementReader

from tests.support.util import free_port

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
        for _ in range(30):  # counts reach the management API with the next stats emission (1 s here)
            if queues[(vhost, "q0042")].ready == 7:
                break
            await asyncio.sleep(0.2)
            queues = await reader.fetch(vhost)
        assert queues[(vhost, "q0042")].ready == 7 and queues[(vhost, "q0001")].ready == 0
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
        for _ in range(60):  # queue stats reach the API every collect_statistics_interval (or later, under load)
            await asyncio.sleep(0.2)
            snap = await poller.poll_once()
            m = snap.queues.get((vhost, "rated"))
            if m is not None and m.publish_rate > 0:
                break
    await publisher
    assert m is not None and m.ready > 0 and m.publish_rate > 0 and snap.calls == 1


async def test_closed_management_port_is_a_broker_error() -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(BrokerError, match="ClientConnectorError|Cannot connect"):
            await ManagementReader(f"http://guest:guest@127.0.0.1:{free_port()}", s).fetch()
