"""`make dev`'s local autoscaler runs a kind of your own: workers for `inventory` (QW_APP) come with its backlog,
drain it and go, as the image and email workers do (tests/integration/test_local_autoscale.py)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from queueworker import Client
from qw_core.topology import queue_name

from tests.support import sdk_tasks  # noqa: F401 - the kinds, so the client checks the payloads
from tests.support.util import free_port
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, worker_env

pytestmark = pytest.mark.integration


def test_an_sdk_kind_scales_up_with_its_backlog_drains_it_and_scales_to_zero(broker, amqp_url, tmp_path):
    db = f"sqlite:///{tmp_path}/qw.db"
    client = Client(amqp_url, database_url=db, tenant="acme")
    ids = [client.enqueue("inventory", order_id=f"o-{i}", items=[{"sku": "A", "qty": 1}]) for i in range(30)]
    env = worker_env(amqp_url, db, tmp_path / "storage", QW_APP="tests.support.sdk_tasks", QW_TEST_TASK_DELAY=0.5,
                     QW_RABBITMQ_MANAGEMENT_URL=broker.management_url, QW_LOCAL_BASE_PORT=free_port(),
                     QW_LOCAL_MAX_REPLICAS=3, QW_LOCAL_MESSAGES_PER_REPLICA=5, QW_LOCAL_COOLDOWN_SECONDS=3,
                     QW_LOCAL_STABILIZATION_SECONDS=3)  # fmt: skip
    peek = TaskPublisher(amqp_url, None)  # type: ignore[arg-type]
    scaler = subprocess.Popen([sys.executable, "-m", "qw_operator.local", "inventory", "--interval", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        consumers = lambda: peek.ch.queue_declare(queue_name("inventory"), passive=True).method.consumer_count  # noqa: E731
        wait_for("more than one worker", lambda: consumers() >= 2, 40, 0.2)
        wait_for("the backlog to drain", lambda: all(client.status(t).status == "succeeded" for t in ids), 60, 0.5)
        wait_for("scale back to zero after the cooldown", lambda: consumers() == 0, 40, 0.2)
    finally:
        scaler.send_signal(signal.SIGTERM)
        out = scaler.communicate(timeout=40)[0]
        peek.close()
        client.close()
    assert scaler.returncode == 0, out[-3000:]
    assert "inventory: 0 -> 3 (ScaleUp" in out and "-> 0 (ScaleDown: Cooldown" in out, out[-3000:]
