"""A worker on a PRIVATE throwaway broker survives stop_app/start_app: not ready meanwhile, then resumes."""

from __future__ import annotations

import pytest
from qw_core.storage import LocalStorage
from qw_core.store import open_store
from rabbitmq import SBIN, Broker, free_broker_ports

from tests.support.images import image_bytes
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, running_worker, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture
def fault_broker(tmp_path):
    assert (SBIN / "rabbitmq-server").exists(), "rabbitmq-server is not installed (scripts/install-system-deps.sh)"
    amqp, mgmt, prom = free_broker_ports()
    b = Broker(name=f"qwfault-{amqp}", port=amqp, mgmt_port=mgmt, prom_port=prom, base=tmp_path / "b")
    b.start()
    yield b
    b.destroy()


def test_worker_reconnects_after_broker_restart(fault_broker, tmp_path):
    b = fault_broker
    db = f"sqlite:///{tmp_path}/qw.db"
    store = open_store(db)
    storage = LocalStorage(tmp_path / "storage")
    key = storage.new_key("uploads", "acme", "PNG")
    storage.write(key, image_bytes("PNG", (20, 20)))
    env = worker_env(b.url, db, tmp_path / "storage")

    def done(task_id: str) -> bool:
        rec = store.get(task_id)
        return bool(rec and rec.status == "succeeded")

    with running_worker("image", env, tmp_path) as w:
        pub = TaskPublisher(b.url, store)
        first = pub.publish(pub.image("acme", key))
        wait_for("task before the restart", lambda: done(first), 15)
        pub.close()

        assert b.ctl("stop_app").returncode == 0
        wait_for("worker not ready while the broker is down", lambda: not w.is_ready(), 15)
        assert w.metric("queueworker_worker_broker_connected", kind="image") == 0
        assert w.get("/healthz")[0] == 200  # alive, just not ready

        assert b.ctl("start_app").returncode == 0
        b.wait_ready(60)
        wait_for("worker ready again after the restart", w.is_ready, 40, 0.2)
        assert w.metric("queueworker_worker_broker_connected", kind="image") == 1

        pub = TaskPublisher(b.url, store)
        after = [pub.publish(pub.image("acme", key)) for _ in range(3)]
        for t in after:
            wait_for("task after the restart", lambda t=t: done(t), 15)
        pub.close()
        assert w.proc.poll() is None
    store.close()
