"""A worker on a PRIVATE throwaway broker survives stop_app/start_app: not ready meanwhile, then resumes."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from qw_core.storage import LocalStorage
from qw_core.store import open_store
from rabbitmq import SBIN, Broker

from tests.support.workers import TaskPublisher, running_worker, wait_until, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture
def fault_broker(tmp_path):
    assert (SBIN / "rabbitmq-server").exists(), "rabbitmq-server is not installed (scripts/install-system-deps.sh)"
    b = Broker(name="qwfault", port=5682, mgmt_port=15682, prom_port=15702, base=tmp_path / "b")
    b.start()
    yield b
    b.destroy()


def test_worker_reconnects_after_broker_restart(fault_broker, tmp_path):
    b = fault_broker
    db = f"sqlite:///{tmp_path}/qw.db"
    store = open_store(db)
    storage = LocalStorage(tmp_path / "storage")
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buf, "PNG")
    key = storage.new_key("uploads", "acme", "PNG")
    storage.write(key, buf.getvalue())
    env = worker_env(b.url, db, tmp_path / "storage")

    def done(task_id: str) -> bool:
        rec = store.get(task_id)
        return bool(rec and rec.status == "succeeded")

    with running_worker("image", env, tmp_path) as w:
        pub = TaskPublisher(b.url, store)
        first = pub.publish(pub.image("acme", key))
        wait_until(lambda: done(first), 15, what="task before the restart")
        pub.close()

        assert b.ctl("stop_app").returncode == 0
        wait_until(lambda: not w.is_ready(), 15, what="worker not ready while the broker is down")
        assert w.metric("queueworker_worker_broker_connected", kind="image") == 0
        assert w.get("/healthz")[0] == 200  # alive, just not ready

        assert b.ctl("start_app").returncode == 0
        b.wait_ready(60)
        wait_until(w.is_ready, 40, interval=0.2, what="worker ready again after the restart")
        assert w.metric("queueworker_worker_broker_connected", kind="image") == 1

        pub = TaskPublisher(b.url, store)
        after = [pub.publish(pub.image("acme", key)) for _ in range(3)]
        for t in after:
            wait_until(lambda t=t: done(t), 15, what="task after the restart")
        pub.close()
        assert w.proc.poll() is None
    store.close()
