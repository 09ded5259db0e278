"""`make dev`'s local autoscaler: the operator's policy and batched reader scale real worker processes."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from qw_core.storage import LocalStorage
from qw_core.store import open_store
from qw_core.topology import queue_name

from tests.support.images import image_bytes
from tests.support.util import free_port
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, worker_env

pytestmark = pytest.mark.integration


def test_workers_scale_up_with_the_backlog_drain_it_and_scale_back_to_zero(broker, amqp_url, tmp_path):
    db = f"sqlite:///{tmp_path}/qw.db"
    store, storage = open_store(db), LocalStorage(tmp_path / "storage")
    pub = TaskPublisher(amqp_url, store)
    env = worker_env(amqp_url, db, tmp_path / "storage", QW_TEST_TASK_DELAY=0.5,
                     QW_RABBITMQ_MANAGEMENT_URL=broker.management_url, QW_LOCAL_BASE_PORT=free_port(),
                     QW_LOCAL_MAX_REPLICAS=3, QW_LOCAL_MESSAGES_PER_REPLICA=5, QW_LOCAL_COOLDOWN_SECONDS=3,
                     QW_LOCAL_STABILIZATION_SECONDS=3)  # fmt: skip
    ids = []
    for _ in range(30):
        key = storage.new_key("uploads", "acme", "PNG")
        storage.write(key, image_bytes())
        ids.append(pub.publish(pub.image("acme", key, "PNG", width=10)))
    scaler = subprocess.Popen([sys.executable, "-m", "qw_operator.local", "image", "--interval", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        consumers = lambda: pub.ch.queue_declare(queue_name("image"), passive=True).method.consumer_count  # noqa: E731
        wait_for("more than one worker", lambda: consumers() >= 2, 40, 0.2)
        wait_for("the backlog to drain", lambda: store.counts().get("succeeded") == 30, 60, 0.2)
        wait_for("scale back to zero after the cooldown", lambda: consumers() == 0, 40, 0.2)
    finally:
        scaler.send_signal(signal.SIGTERM)
        out = scaler.communicate(timeout=40)[0]
        pub.close()
    assert scaler.returncode == 0, out[-3000:]
    assert all(store.get(t).completions == 1 for t in ids)  # none lost, none run twice
    assert "image: 0 -> 3 (ScaleUp" in out and "-> 0 (ScaleDown: Cooldown" in out, out[-3000:]
