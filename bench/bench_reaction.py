#!/usr/bin/env python3
"""Scaling reaction on the real control plane and a real broker: a burst published -> the worker Deployment's
spec.replicas changed, over repeated bursts (p50/p99).

    python bench/bench_reaction.py [--bursts 12]

Two operators run side by side on the same control plane and broker, each in its own namespace and vhost, and
every burst goes to both at the same moment: the operator as shipped (queue depth from the rabbitmq_prometheus
per-object endpoint, rates from the management API) and, as the baseline, the same operator reading everything
from the management API (what KEDA's rabbitmq scaler reads in its HTTP mode). Also recorded in the same bursts:
when the management API and the Prometheus endpoint first show the burst (the floor under any scaler reading
them). A third operator, as shipped, reads a RabbitMQ 4.x broker configured as the official image ships it
(management metrics collector off: depth and rates from the Prometheus endpoint only), so 4.x is measured beside
3.10 in the same bursts. The queues are quorum queues, as the product's are; both brokers run with the test
config (collect_statistics_interval 1 s, quorum_tick_interval 1 s).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
sys.path.insert(0, str(ROOT))

import cluster as control_plane  # noqa: E402
from qw_operator.rabbitmq import parse_prometheus_depth  # noqa: E402
from rabbitmq import Broker, Broker4, free_broker_ports  # noqa: E402

from tests.e2e.harness import drop_env, make_env, queueworker, stop  # noqa: E402

BURST = 15  # messages; 10 per replica -> 2 replicas
TEMPLATE = {"metadata": {"labels": {"app": "rt"}}, "spec": {"containers": [{"name": "w", "image": "busybox"}]}}


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 2)


def summary(xs: list[float]) -> dict[str, Any]:
    return {"p50": pct(xs, 50), "p99": pct(xs, 99), "mean": round(statistics.mean(xs), 2), "all": xs}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bursts", type=int, default=12)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qw-reaction-"))
    amqp, mgmt, prom = free_broker_ports()
    broker = Broker(name="qwreact", port=amqp, mgmt_port=mgmt, prom_port=prom, base=tmp / "rmq")
    broker.start()
    amqp4, mgmt4, prom4 = free_broker_ports()
    broker4 = Broker4(name="qwreact4", port=amqp4, mgmt_port=mgmt4, prom_port=prom4, base=tmp / "rmq4")
    broker4.start()
    cluster_dir = tmp / "k8s"
    cluster = control_plane.start(cluster_dir, control_plane.build(), die_with_parent=True)
    operators: list[Any] = []
    try:
        # Two namespaces and vhosts on one broker and one control plane: the operator as shipped (depth from the
        # Prometheus endpoint) and the same operator reading the management API only. Every burst goes to both.
        sides = {
            "prometheus": make_env(cluster, broker, tmp / "p"),
            "management": make_env(cluster, broker, tmp / "m"),
            "rabbitmq4": make_env(cluster, broker4, tmp / "4"),
        }
        for side, env in sides.items():
            with pika.BlockingConnection(pika.URLParameters(env.amqp)) as conn:
                conn.channel().queue_declare(
                    "rt", durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 10}
                )
            operators.append(env.start_operator("operator", prometheus=side != "management"))
        for env in sides.values():
            wait(lambda env=env: "Resuming operations" in env.log("operator"), 60, "the operator to lead")
            env.apply(queueworker("rt", env, "rt", template=TEMPLATE,
                                  scaling={"scaleDownStabilizationSeconds": 0, "cooldownSeconds": 0}))  # fmt: skip
            wait(lambda env=env: env.replicas("rt-worker") == 0, 60, "the owned Deployment at 0")
        ref = sides["management"]
        vq = urllib.parse.quote(ref.vhost, safe="")

        def mgmt_ready() -> int:
            item = broker.api(f"/api/queues/{vq}/rt?columns=messages_ready")
            return int(item.get("messages_ready") or 0) if isinstance(item, dict) else 0

        def prom_ready(b: Broker = broker, vhost: str = ref.vhost) -> int:
            q = urllib.parse.quote(vhost, safe="")
            url = f"http://127.0.0.1:{b.prom_port}/metrics/detailed?vhost={q}&family=queue_coarse_metrics"
            with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - 127.0.0.1
                depth = parse_prometheus_depth(r.read().decode())  # the operator's own parser
            return depth.get((vhost, "rt"), (0, 0, 0))[0]

        probes = {
            "operator_prometheus_depth": lambda: (sides["prometheus"].replicas("rt-worker") or 0) >= 2,
            "operator_management_depth": lambda: (ref.replicas("rt-worker") or 0) >= 2,
            "management_api_sees_burst": lambda: mgmt_ready() >= BURST,
            "prometheus_endpoint_sees_burst": lambda: prom_ready() >= BURST,
            "operator_rabbitmq4_prometheus_only": lambda: (sides["rabbitmq4"].replicas("rt-worker") or 0) >= 2,
            "rabbitmq4_prometheus_endpoint_sees_burst": lambda: prom_ready(broker4, sides["rabbitmq4"].vhost) >= BURST,
        }
        seen: dict[str, list[float]] = {k: [] for k in probes}
        rnd = random.Random(7)
        conns = [pika.BlockingConnection(pika.URLParameters(env.amqp)) for env in sides.values()]
        try:
            chans = [c.channel() for c in conns]
            for ch in chans:
                ch.confirm_delivery()
            for _ in range(args.bursts):
                time.sleep(1 + rnd.random())  # land anywhere within the stats and polling ticks
                for ch in chans:
                    for i in range(BURST):
                        ch.basic_publish("", "rt", str(i).encode(), pika.BasicProperties(delivery_mode=2))
                t0 = time.monotonic()
                got: dict[str, float] = {}
                while len(got) < len(probes) and time.monotonic() - t0 < 60:
                    for name, probe in probes.items():
                        if name not in got and probe():
                            got[name] = round(time.monotonic() - t0, 3)
                    time.sleep(0.02)
                assert len(got) == len(probes), f"burst not seen within 60 s: {got}"
                for k, v in got.items():
                    seen[k].append(v)
                for ch in chans:
                    ch.queue_purge("rt")
                for env in sides.values():
                    wait(lambda env=env: env.replicas("rt-worker") == 0, 60, "scale back to zero")
        finally:
            for c in conns:
                c.close()
        p50 = {k: pct(v, 50) for k, v in seen.items()}
        out = {
            "bursts": args.bursts,
            "burst_messages": BURST,
            "polling_interval_s": 1,
            "broker": "RabbitMQ 3.10 quorum queue; collect_statistics_interval 1 s, quorum_tick_interval 1 s",
            "broker4": f"RabbitMQ {broker4.version} quorum queue, management metrics collector off; same settings",
            **{k: summary(v) for k, v in seen.items()},
            "ratios": {
                "prometheus_over_management_reaction_p50": round(
                    p50["operator_prometheus_depth"] / max(p50["operator_management_depth"], 1e-3), 2
                ),
                "prometheus_over_management_reaction_p99": round(
                    pct(seen["operator_prometheus_depth"], 99) / max(pct(seen["operator_management_depth"], 99), 1e-3),
                    2,
                ),
                "rabbitmq4_over_3_10_reaction_p50": round(
                    p50["operator_rabbitmq4_prometheus_only"] / max(p50["operator_prometheus_depth"], 1e-3), 2
                ),
            },
        }
        for side, env in sides.items():
            drop_env(env, broker4 if side == "rabbitmq4" else broker)
        print(json.dumps(out))
        return 0
    finally:
        for op in operators:
            stop(op)
        control_plane.stop(cluster_dir)
        broker.destroy()
        broker4.destroy()


def wait(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
