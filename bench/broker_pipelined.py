"""The broker's side of the publish path's ceiling: confirmed, persistent, mandatory publishes to a quorum queue
with 64 in flight on one channel (a new publish as each confirm comes back), no HTTP and no store.

- `pika_pipelined`: pika's AsyncioConnection driven from its callbacks, no future per message: the leanest client
  this project has, so the figure is the broker's (and one Python process's) limit, not a library's.
- `aio_pika_64`: 64 coroutines each awaiting its own confirm through aio-pika (the API's publisher before this
  change): what a coroutine-per-publish design costs with that library;
- `api_publisher_64`: the same through the API's own publisher (qw_api.publisher, pika underneath).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import pika
from pika.adapters.asyncio_connection import AsyncioConnection

IN_FLIGHT = 64
QUEUE = "pipelined"
BODY = json.dumps({"task_id": "x" * 32, "to": "bench@example.com", "subject": "bench", "text": "hello"}).encode()
ARGS = {"x-queue-type": "quorum"}


def _rate(n: int, elapsed: float, lat: list[float], cpu: float) -> dict[str, Any]:
    lat.sort()
    return {
        "in_flight": IN_FLIGHT,
        "confirmed_per_s": round(n / elapsed, 1),
        # the client's own CPU per confirmed message (this process; the broker is another): the AMQP share of a
        # request's cost in the API, with nothing else around it
        "client_cpu_us_per_message": round(cpu * 1e6 / max(n, 1), 1),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
    }


async def pika_pipelined(url: str, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Any] = loop.create_future()
    done: asyncio.Future[None] = loop.create_future()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    sent: dict[int, float] = {}  # tag -> when published
    lat: list[float] = []
    state = {"tag": 0, "confirmed": 0, "stop": 0.0}

    def publish(ch: Any) -> None:
        state["tag"] += 1
        sent[state["tag"]] = time.perf_counter()
        ch.basic_publish("", QUEUE, BODY, props, mandatory=True)

    def on_confirm(frame: Any) -> None:
        m = frame.method
        tags = [t for t in sent if t <= m.delivery_tag] if m.multiple else [m.delivery_tag]
        now = time.perf_counter()
        for t in tags:
            lat.append(now - sent.pop(t))
        state["confirmed"] += len(tags)
        if now < state["stop"]:
            for _ in tags:
                publish(ch)
        elif not sent and not done.done():
            done.set_result(None)

    conn = AsyncioConnection(
        pika.URLParameters(url), on_open_callback=lambda c: ready.set_result(c), custom_ioloop=loop
    )
    await ready
    opened: asyncio.Future[Any] = loop.create_future()
    conn.channel(on_open_callback=lambda c: opened.set_result(c))
    ch = await opened
    declared: asyncio.Future[Any] = loop.create_future()
    ch.queue_declare(QUEUE, durable=True, arguments=ARGS, callback=lambda f: declared.set_result(f))
    await declared
    confirming: asyncio.Future[Any] = loop.create_future()
    ch.confirm_delivery(on_confirm, callback=lambda f: confirming.set_result(f))
    await confirming
    start, cpu = time.perf_counter(), time.process_time()
    state["stop"] = start + seconds
    for _ in range(IN_FLIGHT):
        publish(ch)
    await done
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return _rate(int(state["confirmed"]), elapsed, lat, cpu)


async def aio_pika_64(url: str, seconds: float) -> dict[str, Any]:
    conn = await aio_pika.connect(url)
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    await ch.declare_queue(QUEUE, durable=True, arguments=ARGS)
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def one() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            msg = aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await ch.default_exchange.publish(msg, QUEUE, mandatory=True)
            lat.append(time.perf_counter() - t)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await conn.close()
    return _rate(len(lat), elapsed, lat, cpu)


async def api_publisher_64(url: str, seconds: float) -> dict[str, Any]:
    """The API's own publisher (qw_api.publisher) alone: 64 coroutines, each awaiting its confirm, to the email
    queue the API uses (its topology declared as the API does). The AMQP share of POST /v1/emails, isolated."""
    from qw_api.publisher import Publisher
    from qw_core.topology import TASKS_EXCHANGE, QueueLimits, build_topology

    # Its cap raised: at ~10,000 confirms/s a 10 s round fills the email queue's default 100,000 and the broker
    # refuses the rest (reject-publish), which measures the cap, not the path
    publisher = Publisher(url, build_topology(["email"], 5, QueueLimits(work_max_length=10_000_000)))
    await publisher.start()
    if not await publisher.wait_connected(15):
        raise RuntimeError("the API's publisher did not connect")
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            t = time.perf_counter()
            n += 1
            await publisher.publish(TASKS_EXCHANGE, "email", BODY, f"{i}-{n}")
            lat.append(time.perf_counter() - t)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(IN_FLIGHT)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await publisher.stop()
    return _rate(len(lat), elapsed, lat, cpu)
