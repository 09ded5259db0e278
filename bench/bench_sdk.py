#!/usr/bin/env python3
"""The SDK's overhead as ratios measured in the same run, with a no-op task:

- producing: `task.send()` (validate, pending row, confirmed mandatory publish, queued row) versus a bare pika loop
  publishing the same bodies with confirms on one channel; and `await task.send_async()` from many coroutines of one
  event loop at once (one AsyncioConnection, the row writes in threads) versus that `send()`;
- consuming: the worker runtime (decode, validate, run, status rows, ack; `python -m qw_workers` minus the process)
  versus a bare pika consumer that only acks, both with the worker's prefetch.

    python bench/bench_sdk.py --tasks 1000

RabbitMQ 3.10 as a private node on free ports (started and removed here); SQLite store. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from queueworker import Client, set_default_client, task  # noqa: E402
from qw_core.registry import Registry  # noqa: E402
from qw_core.settings import WorkerSettings  # noqa: E402
from qw_core.storage import LocalStorage  # noqa: E402
from qw_core.store import open_store  # noqa: E402
from qw_core.topology import H_ATTEMPT, TASKS_EXCHANGE, build_topology, declare_with_pika, queue_name  # noqa: E402
from qw_workers.handlers import make_handler  # noqa: E402
from qw_workers.runtime import Worker  # noqa: E402
from rabbitmq import Broker, free_broker_ports  # noqa: E402

REGISTRY = Registry()
PREFETCH = 4  # the worker's default (QW_PREFETCH)


@task(kind="noop", registry=REGISTRY)
def noop(n: int) -> None:
    return None


@contextmanager
def vhost(broker: Broker) -> Iterator[str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(name, safe="")
    broker.api(f"/api/vhosts/{q}", "PUT", {})
    broker.api(f"/api/permissions/{q}/guest", "PUT", {"configure": ".*", "write": ".*", "read": ".*"})
    try:
        yield f"amqp://guest:guest@127.0.0.1:{broker.port}/{q}"
    finally:
        broker.api(f"/api/vhosts/{q}", "DELETE")


def bare_publish(url: str, n: int) -> float:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    declare_with_pika(ch, build_topology(("noop",), 10))
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json", headers={H_ATTEMPT: 0})
    body = json.dumps({"kind": "noop", "args": {"n": 0}}).encode()
    start = time.perf_counter()
    for _ in range(n):
        ch.basic_publish(TASKS_EXCHANGE, "noop", body, props, mandatory=True)
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def bare_consume(url: str, n: int) -> float:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    acked = 0

    def on_message(channel: object, method: object, _props: object, _body: bytes) -> None:
        nonlocal acked
        ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
        acked += 1

    start = time.perf_counter()
    ch.basic_consume(queue_name("noop"), on_message)
    while acked < n:
        conn.process_data_events(time_limit=0.1)
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def sdk_send(client: Client, n: int) -> float:
    previous = set_default_client(client)
    try:
        noop.send(n=-1)  # connects and declares: start-up, not throughput
        start = time.perf_counter()
        for i in range(n):
            noop.send(n=i)
        return n / (time.perf_counter() - start)
    finally:
        set_default_client(previous)


def sdk_send_async(client: Client, n: int, concurrency: int = 64) -> float:
    """`concurrency` coroutines sending at once, `n` tasks in all, on one event loop."""

    async def sends() -> float:
        await noop.send_async(n=-1)  # connects and declares
        left = iter(range(n))

        async def sender() -> None:
            for i in left:
                await noop.send_async(n=i)

        start = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        await client.aclose()
        return n / elapsed

    previous = set_default_client(client)
    try:
        return asyncio.run(sends())
    finally:
        set_default_client(previous)


def sdk_worker(url: str, work: Path, n: int) -> float:
    settings = WorkerSettings(
        rabbitmq_url=url, database_url=f"sqlite:///{work}/bench.db", storage_dir=work / "storage", prefetch=PREFETCH
    )  # type: ignore[arg-type]
    store = open_store(settings.database_url)
    spec = REGISTRY.get("noop")
    assert spec is not None
    worker = Worker("noop", make_handler(spec), settings, store, LocalStorage(settings.storage_dir), policy=spec.policy)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while not worker.ready:  # connecting and declaring are start-up, not throughput
        time.sleep(0.001)
    start = time.perf_counter()
    while store.counts().get("succeeded", 0) < n:
        if time.perf_counter() - start > 600:
            raise TimeoutError(f"only {store.counts()} after 600s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    worker.request_stop()
    thread.join(30)
    store.close()
    return n / elapsed


def run(broker: Broker, n: int) -> dict[str, float | int]:
    with vhost(broker) as url:
        publish = bare_publish(url, n)
        consume = bare_consume(url, n)
    with vhost(broker) as url, tempfile.TemporaryDirectory(prefix="qw-bench-sdk-") as tmp:
        client = Client(url, database_url=f"sqlite:///{tmp}/bench.db", registry=REGISTRY)
        send = sdk_send(client, n)
        client.close()
        worker = sdk_worker(url, Path(tmp), n + 1)  # the start-up send too
    with vhost(broker) as url, tempfile.TemporaryDirectory(prefix="qw-bench-sdk-") as tmp:
        send_async = sdk_send_async(Client(url, database_url=f"sqlite:///{tmp}/bench.db", registry=REGISTRY), n)
    return {
        "tasks": n,
        "send_per_s": round(send, 1),
        "bare_publish_per_s": round(publish, 1),
        "send_to_bare_ratio": round(send / publish, 3),
        "send_async_per_s": round(send_async, 1),
        "send_async_to_send_ratio": round(send_async / send, 3),
        "worker_per_s": round(worker, 1),
        "bare_consumer_per_s": round(consume, 1),
        "worker_to_bare_ratio": round(worker / consume, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=1000)
    a = p.parse_args()
    amqp, mgmt, prom = free_broker_ports()
    with tempfile.TemporaryDirectory(prefix="qw-bench-rmq-") as base:
        broker = Broker(name=f"qwbench-{amqp}", port=amqp, mgmt_port=mgmt, prom_port=prom, base=Path(base))
        broker.start()
        try:
            print(json.dumps(run(broker, a.tasks)))
        finally:
            broker.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
