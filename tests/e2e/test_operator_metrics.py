"""The operator dashboard's panels on real data: the real operator (`python -m qw_operator`) runs against the real
control plane and the real RabbitMQ, a private Prometheus scrapes its /metrics every second, and every panel
query of charts/queueworker/dashboards/operator.json must return data.

Two QueueWorkers: one on a queue with a backlog (the operator scales its Deployment up: depth, replicas, scale
events, broker reads) and one on a broker that refuses connections (broker read errors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cluster as control_plane
import pika
import pytest
from qw_core.topology import TASKS_EXCHANGE, build_topology, declare_with_pika

from tests.support.prometheus import CHART, panel_queries, prometheus, query
from tests.support.util import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BACKLOG = 30


def _queueworker(name: str, broker: str, vhost: str) -> dict:
    return {
        "apiVersion": "queueworker.dev/v1alpha1",
        "kind": "QueueWorker",
        "metadata": {"name": name},
        "spec": {
            "queue": "qw.email",
            "vhost": vhost,
            "broker": broker,
            "minReplicas": 0,
            "maxReplicas": 3,
            "pollingInterval": 1,
            "scaling": {"mode": "QueueLength", "messagesPerReplica": 10},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "worker", "image": "example.invalid/workers:1", "args": ["email"]}]},
            },
        },
    }


@pytest.fixture
def namespace(k8s_cluster: control_plane.Cluster) -> Iterator[str]:
    crd = CHART / "crds" / "queueworker.yaml"
    k8s_cluster.kubectl("apply", "--server-side", "-f", str(crd))
    k8s_cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/queueworkers.queueworker.dev")
    name = f"opm-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _backlog(amqp_url: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        declare_with_pika(ch, build_topology(("email",), 10))
        ch.confirm_delivery()
        for i in range(BACKLOG):
            props = pika.BasicProperties(delivery_mode=2, message_id=f"m{i}")
            ch.basic_publish(TASKS_EXCHANGE, "email", b"{}", props, mandatory=True)
    finally:
        conn.close()


def test_every_operator_panel_returns_data(k8s_cluster, namespace, broker, vhost, amqp_url, tmp_path) -> None:
    _backlog(amqp_url)
    for qw in (_queueworker("mail", "default", vhost), _queueworker("cut-off", "down", vhost)):
        k8s_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(qw))

    metrics_port = free_port()
    env = {
        **os.environ,
        # Also in the environment: the kubernetes client reads $KUBECONFIG when it is imported.
        "KUBECONFIG": str(k8s_cluster.kubeconfig),
        "QW_ENV": "test",
        "QW_LOG_FORMAT": "text",
        "QW_RABBITMQ_MANAGEMENT_URL": broker.management_url,
        # A broker nothing listens on: its reads fail, which the error panel must show.
        "QW_BROKERS": f"down=http://user:pass@127.0.0.1:{free_port()}",
        "QW_METRICS_HOST": "127.0.0.1",
        "QW_METRICS_PORT": str(metrics_port),
        "QW_HEALTH_HOST": "127.0.0.1",
        "QW_HEALTH_PORT": str(free_port()),
        "QW_DEFAULT_INTERVAL": "1",
        "QW_MANAGEMENT_TIMEOUT": "2",
    }
    log_path = tmp_path / "operator.log"
    with open(log_path, "wb") as log:
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qw_operator",
                "--namespace",
                namespace,
                "--kubeconfig",
                str(k8s_cluster.kubeconfig),
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        targets = {"queueworker-operator": ("/metrics", [f"127.0.0.1:{metrics_port}"])}
        queries = panel_queries("operator")
        with prometheus(tmp_path / "prom", targets) as prom:
            missing: list[str] = []

            def every_panel_has_data() -> bool:
                assert operator.poll() is None, log_path.read_text()[-4000:]
                missing[:] = [f"{title}: {expr}" for title, expr in queries if not query(prom, expr)]
                return not missing

            wait_for(
                "data for every operator panel query",
                every_panel_has_data,
                60,
                1.0,
                state=lambda: (missing, log_path.read_text()[-3000:]),
            )

            # The data is the real scaling: 30 ready messages at 10 per replica -> 3 replicas. Each series is
            # scraped on its own schedule: wait for both facts asserted, not just for the panels' series.
            def scaled() -> tuple[list[Any], list[Any]]:
                desired = query(prom, f'queueworker_operator_replicas_desired{{namespace="{namespace}", name="mail"}}')
                errors = query(prom, 'queueworker_operator_broker_read_errors_total{broker="down"} > 0')
                return desired, errors

            def done() -> bool:
                desired, errors = scaled()
                return bool(desired and float(desired[0]["value"][1]) == 3 and errors)

            wait_for("3 replicas desired and read errors from the down broker", done, 30, 1.0, state=scaled)
    finally:
        operator.terminate()
        try:
            operator.wait(15)
        except subprocess.TimeoutExpired:
            operator.kill()
