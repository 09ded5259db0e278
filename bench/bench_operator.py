#!/usr/bin/env python3
"""Operator tick cost with N QueueWorkers on one broker: the shared batched poller vs a per-QueueWorker read
(KEDA's pattern: every ScaledObject's scaler calls GET /api/queues/{vhost}/{queue} on each poll).

    python bench/bench_operator.py [--sizes 1000,5000] [--ticks 3]

Against the real local RabbitMQ (a throwaway vhost with N queues). Per tick, both sides read the metrics and
run every QueueWorker's decision (the real Ticker: decide(), status diff, metrics; Kubernetes writes go to a
counting fake). Reported per N: management API calls, wall time, operator CPU seconds, broker CPU seconds
(the Erlang VM's utime+stime, when its pid is readable) and reconcile latency (snapshot -> all N decided),
with ratios per-QueueWorker / batched. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pika
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from qw_operator.metrics import OperatorMetrics  # noqa: E402
from qw_operator.observe import Replicas  # noqa: E402
from qw_operator.rabbitmq import BrokerPoller, ManagementReader, Snapshot, parse_queue, split_credentials  # noqa: E402
from qw_operator.reconcile import Ticker  # noqa: E402
from rabbitmq import Broker  # noqa: E402


class CountingKube:
    def __init__(self) -> None:
        self.calls = 0

    async def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        self.calls += 1

    def queue_status(self, namespace: str, name: str, status: dict[str, Any]) -> asyncio.Future[None]:
        self.calls += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def broker_cpu(broker: Broker) -> float | None:
    pid = broker._pid()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def make_queues(amqp_url: str, n: int) -> None:
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        ch = conn.channel()
        for i in range(n):
            ch.queue_declare(f"q{i:05d}")
        for i in range(0, n, 7):  # some backlog, so decisions differ
            ch.basic_publish("", f"q{i:05d}", b"x" * 10)


def tickers(n: int, vhost: str, kube: CountingKube) -> list[Ticker]:
    metrics = OperatorMetrics(CollectorRegistry())
    out = []
    for i in range(n):
        body = {
            "metadata": {"name": f"qw{i}", "namespace": "bench", "generation": 1, "annotations": {}},
            "spec": {"queue": f"q{i:05d}", "vhost": vhost, "maxReplicas": 10, "scaleTargetRef": {"name": f"d{i}"}},
        }
        out.append(Ticker("bench", f"qw{i}", body, kube, metrics, lambda ns, name: Replicas(1, 1, 1)))  # type: ignore[arg-type]
    return out


async def measure(label: str, broker: Broker, fn: Any) -> dict[str, float | int | None]:
    b0, c0, w0 = broker_cpu(broker), time.process_time(), time.perf_counter()
    calls, latency = await fn()
    b1, c1, w1 = broker_cpu(broker), time.process_time(), time.perf_counter()
    return {
        "calls": calls,
        "wall_s": round(w1 - w0, 4),
        "cpu_s": round(c1 - c0, 4),
        "broker_cpu_s": None if b0 is None or b1 is None else round(b1 - b0, 3),
        "reconcile_latency_s": round(latency, 4),
    }


async def run_size(broker: Broker, n: int, ticks: int) -> dict[str, Any]:
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(vhost, safe="")
    broker.api(f"/api/vhosts/{q}", "PUT", {})
    broker.api(f"/api/permissions/{q}/guest", "PUT", {"configure": ".*", "write": ".*", "read": ".*"})
    try:
        await asyncio.to_thread(make_queues, f"amqp://guest:guest@127.0.0.1:{broker.port}/{q}", n)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
            kube = CountingKube()
            batched_tickers = tickers(n, vhost, kube)
            poller = BrokerPoller("bench", ManagementReader(broker.management_url, session))
            for t in batched_tickers:
                poller.register(t.name, vhost, t.spec["queue"], 5.0)

            async def batched() -> tuple[int, float]:
                snap = await poller.poll_once()
                t0 = time.perf_counter()
                await asyncio.gather(*(t.tick(snap) for t in batched_tickers))
                return snap.calls, time.perf_counter() - t0

            base, headers = split_credentials(broker.management_url)
            per_tickers = tickers(n, vhost, CountingKube())

            async def one(t: Ticker, seq: int) -> None:
                path = f"{base}/api/queues/{q}/{urllib.parse.quote(t.spec['queue'], safe='')}"
                async with session.get(path, headers=headers) as resp:
                    item = await resp.json()
                key, m = parse_queue(item)  # None: listed without depth (unknown), as the batched read treats it
                queues, unknown = ({key: m}, {}) if m is not None else ({}, {key: "no depth"})
                await t.tick(Snapshot(seq, time.time(), queues, unknown=unknown))

            async def per_queueworker() -> tuple[int, float]:
                t0 = time.perf_counter()
                await asyncio.gather(*(one(t, 1) for t in per_tickers))
                return n, time.perf_counter() - t0

            results: dict[str, list[dict[str, Any]]] = {"batched": [], "per_queueworker": []}
            for _ in range(ticks):
                results["batched"].append(await measure("batched", broker, batched))
                results["per_queueworker"].append(await measure("per", broker, per_queueworker))
    finally:
        broker.api(f"/api/vhosts/{q}", "DELETE")

    def median(side: str, key: str) -> float:
        vals = sorted(float(r[key] or 0) for r in results[side])
        return vals[len(vals) // 2]

    summary = {
        side: {k: median(side, k) for k in ("calls", "wall_s", "cpu_s", "broker_cpu_s", "reconcile_latency_s")}
        for side in results
    }
    ratios = {
        k: round(summary["per_queueworker"][k] / summary["batched"][k], 1) if summary["batched"][k] else None
        for k in ("calls", "wall_s", "cpu_s", "broker_cpu_s")
    }
    return {"queueworkers": n, "median_per_tick": summary, "ratio_per_queueworker_over_batched": ratios}


async def main_async(sizes: list[int], ticks: int) -> dict[str, Any]:
    broker = Broker()
    if broker.start():  # a node this run started stops with it; one already running is left
        atexit.register(broker.stop)
    # The Tickers post kopf events on scale; outside an operator there is no event queue, so count nothing.
    kopf.info = lambda *a, **k: None  # type: ignore[assignment]
    kopf.warn = lambda *a, **k: None  # type: ignore[assignment]
    return {
        "bench": "operator tick: shared batched poller vs per-QueueWorker reads",
        "broker": "local RabbitMQ 3.10 (management API)",
        "ticks": ticks,
        "results": [await run_size(broker, n, ticks) for n in sizes],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,5000")
    p.add_argument("--ticks", type=int, default=3)
    a = p.parse_args()
    out = asyncio.run(main_async([int(s) for s in a.sizes.split(",")], a.ticks))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
