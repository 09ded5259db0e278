#!/usr/bin/env python3
"""CPU of one idle operator round at N QueueWorkers, in-process and without a broker or apiserver: the poller's
parse of a synthetic 3.10 answer (N queues: management API pages + Prometheus /metrics/detailed) and the
scheduler's round of N ticks (the real Scheduler and Ticker; Kubernetes writes go to a counting fake).

    python bench/profile_operator.py [--n 5000] [--rounds 10]

Prints one JSON object: CPU milliseconds per round, parse and ticks apart (median over --rounds). Meant for
profiling (`py-spy record -- python bench/profile_operator.py`); the real process is bench_operator_real.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import kopf
import orjson
from prometheus_client import CollectorRegistry
from qw_operator.metrics import OperatorMetrics
from qw_operator.observe import Replicas
from qw_operator.rabbitmq import BrokerPoller, ManagementReader, PrometheusReader
from qw_operator.reconcile import Ticker
from qw_operator.schedule import Scheduler


class CountingKube:
    def __init__(self) -> None:
        self.replicas = 0
        self.statuses = 0

    async def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        self.replicas += 1

    def queue_status(self, namespace: str, name: str, status: dict[str, Any]) -> asyncio.Future[None]:
        self.statuses += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def management_pages(n: int, vhost: str) -> list[bytes]:
    items = [
        {"name": f"q{i:05d}", "vhost": vhost, "messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0,
         "message_stats": {"publish": 15, "ack": 15, "publish_details": {"rate": 0.0}, "ack_details": {"rate": 0.0}}}
        for i in range(n)
    ]  # fmt: skip
    pages = [items[i : i + 500] for i in range(0, n, 500)]
    return [orjson.dumps({"items": p, "page_count": len(pages), "page": k + 1}) for k, p in enumerate(pages)]


def prometheus_text(n: int, vhost: str) -> str:
    lines = ['rabbitmq_build_info{rabbitmq_version="3.10.0"} 1', 'rabbitmq_identity_info{rabbitmq_node="rabbit@x"} 1']
    for name in ("messages_ready", "messages_unacked", "consumers"):
        lines.append(f"# TYPE rabbitmq_detailed_queue_{name} gauge")
        lines += [f'rabbitmq_detailed_queue_{name}{{vhost="{vhost}",queue="q{i:05d}"}} 0' for i in range(n)]
    return "\n".join(lines) + "\n"


class FakeReader:
    """ManagementReader's and PrometheusReader's parse of canned answers (the HTTP part is the broker's). The
    answers are copies each round, as from the network; `--cold` parses each as if it were new."""

    def __init__(self, pages: list[bytes], text: str, cold: bool) -> None:
        self.pages, self.text, self.calls, self.failed, self.cold = pages, text, 0, {}, cold
        self.management = ManagementReader("http://x", None)  # type: ignore[arg-type]
        self.prometheus = PrometheusReader("http://x", None)  # type: ignore[arg-type]

    async def fetch(self, vhost: str | None = None) -> Any:
        out = {}
        for k, raw in enumerate(self.pages):
            if self.cold:
                self.management._pages.clear()
            _, items = self.management.parse_page("/api/queues", k + 1, bytes(bytearray(raw)))
            out.update(items)
        return out

    async def fetch_all(self, vhost: str | None = None) -> Any:
        if self.cold:
            self.prometheus._last.clear()
        return [("rabbit@x", self.prometheus.parse("http://x", "".join(list(self.text))))]


async def run(n: int, rounds: int, cold: bool = False) -> dict[str, Any]:
    kopf.info = kopf.warn = lambda *a, **k: None  # type: ignore[assignment]
    vhost = "bench"
    reader = FakeReader(management_pages(n, vhost), prometheus_text(n, vhost), cold)
    poller = BrokerPoller("default", reader, 1.0, depth_reader=reader)  # type: ignore[arg-type]
    kube = CountingKube()
    metrics = OperatorMetrics(CollectorRegistry())

    def make(body: Any) -> Ticker:
        meta = body["metadata"]
        return Ticker(meta["namespace"], meta["name"], body, kube, metrics, lambda ns, d: Replicas(0, 0, 0))  # type: ignore[arg-type]

    sched = Scheduler({"default": poller}, make, metrics, 1.0)
    for i in range(n):
        body = {"metadata": {"name": f"qw{i}", "namespace": "bench", "generation": 1, "uid": f"u{i}"},
                "spec": {"queue": f"q{i:05d}", "vhost": vhost, "maxReplicas": 10, "pollingInterval": 1}}  # fmt: skip
        sched.upsert(f"u{i}", body)
    parse_ms, tick_ms = [], []
    for r in range(rounds + 2):
        c0 = time.process_time()
        snap = await poller.poll_once()
        c1 = time.process_time()
        for e in sched.entries.values():
            e.due = 0.0
        metrics.ticks.inc(sum(sched._start_tick(e, snap) for e in sched._due("default", 1.0)))
        pending = [e.task for e in sched.entries.values() if e.task is not None and not e.task.done()]
        if pending:
            await asyncio.gather(*pending)
        c2 = time.process_time()
        if r >= 2:  # the first rounds write every status
            parse_ms.append((c1 - c0) * 1000)
            tick_ms.append((c2 - c1) * 1000)
    return {"queueworkers": n, "rounds": rounds, "parse_cpu_ms": round(statistics.median(parse_ms), 1),
            "ticks_cpu_ms": round(statistics.median(tick_ms), 1), "status_writes": kube.statuses,
            "ticks": metrics.ticks._value.get()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cold", action="store_true", help="parse every answer as new (no parse cache)")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(run(a.n, a.rounds, a.cold))))


if __name__ == "__main__":
    main()
