"""The operator on RabbitMQ 4.x as the official image ships it (management metrics collector off, deprecated
features denied), on the real control plane under the shipped RBAC.

Measured before the fix: with only the management API configured, `/api/queues` had names and no depth, the
operator read 0 and scaled 3 busy workers to 0 in 1.5 s with 100 messages waiting, every condition green."""

import json
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from tests.e2e.harness import Env, deployment, drop_env, make_env, queueworker, stop
from tests.e2e.test_operator import TEMPLATE
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(k8s_cluster: Any, broker4: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = make_env(k8s_cluster, broker4, tmp_path_factory.mktemp("operator4"))
    yield e
    drop_env(e, broker4)


def quorum_queue(env: Env, name: str, messages: int) -> None:
    with pika.BlockingConnection(pika.URLParameters(env.amqp)) as conn:
        ch = conn.channel()
        ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 10})
        ch.confirm_delivery()
        for i in range(messages):
            ch.basic_publish("", name, str(i).encode(), pika.BasicProperties(delivery_mode=2))


def test_busy_workers_are_not_scaled_to_zero_when_the_broker_gives_no_depth(env: Env) -> None:
    proc = env.start_operator("op-mgmt-only", prometheus=False)
    try:
        quorum_queue(env, "busy", 100)
        env.apply(deployment("busy", 3))
        env.apply(queueworker("busy", env, "busy", scaleTargetRef={"name": "busy"}))
        wait_for("MetricsAvailable=False", lambda: env.condition("busy", "MetricsAvailable") == "False", 30)
        # Each 1 s tick without a depth counts a failure: 6 in a row outlast the cooldown (3 s) and the
        # stabilization (2 s), long enough for the old scale-to-zero; the replicas are held.
        failures = lambda: env.qw("busy")["status"].get("consecutiveFailures", 0)  # noqa: E731
        wait_for("6 consecutive ticks without a depth", lambda: failures() >= 6, 30, 0.2, state=failures)
        assert env.replicas("busy") == 3
        status = env.qw("busy")["status"]
        metrics = next(c for c in status["conditions"] if c["type"] == "MetricsAvailable")
        assert metrics["reason"] == "NoDepth" and "metrics collector is off" in metrics["message"]
        assert "QW_RABBITMQ_PROMETHEUS_URL" in metrics["message"]
        assert env.condition("busy", "BrokerReachable") == "True" and env.condition("busy", "Ready") == "False"
        assert status["reason"].startswith("MetricsUnavailable")
    finally:
        stop(proc)


def test_scales_up_and_to_zero_from_the_prometheus_endpoint(env: Env) -> None:
    proc = env.start_operator("op-prom")
    try:
        quorum_queue(env, "tpl4", 0)
        env.apply(queueworker("tpl4", env, "tpl4", template=TEMPLATE))
        wait_for("the owned Deployment", lambda: env.replicas("tpl4-worker") == 0, 30)
        env.publish("tpl4", 35)
        t0 = time.monotonic()
        wait_for("scale up to 4", lambda: env.replicas("tpl4-worker") == 4, 20, 0.05)
        reaction = time.monotonic() - t0

        # Depth and rates from the Prometheus counters, MetricsAvailable: wait for each, not for the first to show
        def from_prometheus() -> bool:
            status = env.qw("tpl4")["status"]
            queue = status.get("queue", {})
            available = [c["status"] for c in status.get("conditions", []) if c["type"] == "MetricsAvailable"]
            return queue.get("depthSource") == queue.get("rateSource") == "Prometheus" and available == ["True"]

        wait_for("depth and rates from Prometheus", from_prometheus, 20, 0.2, state=lambda: env.qw("tpl4")["status"])
        env.purge("tpl4")
        # The publish rate decays out of its 15 s window, then the 3 s cooldown: zero
        wait_for("scale to zero", lambda: env.replicas("tpl4-worker") == 0, 45)
        print(json.dumps({"rabbitmq4_reaction_seconds": round(reaction, 2)}))
        assert "Forbidden" not in env.log("op-prom")
    finally:
        stop(proc)
