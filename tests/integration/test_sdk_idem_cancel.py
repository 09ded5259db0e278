"""Idempotency keys and cancellation through the SDK, on the real broker and store, with real worker processes.

The user's module is tests/support/sdk_tasks.py (`flaky` writes its counter file when its body runs: the proof that
a cancelled task's body never ran).
"""

from __future__ import annotations

import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from queueworker import Client, IdempotencyConflict, Unroutable, set_default_client
from qw_core.topology import TASKS_EXCHANGE, queue_name

from tests.support import sdk_tasks
from tests.support.wait import wait_for
from tests.support.workers import running_worker, worker_env

pytestmark = pytest.mark.integration
APP = "tests.support.sdk_tasks"
ORDER = {"order_id": "o-1", "items": [{"sku": "A", "qty": 1}]}


@pytest.fixture
def rig(amqp_url, tmp_path):
    """A Client (also the process's default, for send()) and a worker env on one SQLite store."""
    db = f"sqlite:///{tmp_path}/qw.db"
    client = Client(amqp_url, database_url=db, tenant="acme")
    previous = set_default_client(client)
    yield client, worker_env(amqp_url, db, tmp_path / "storage", QW_APP=APP), tmp_path
    set_default_client(previous)
    client.close()


def counts(client: Client) -> dict[str, int]:
    return client._connections()[0].counts()


def test_the_same_key_twice_queues_one_task_and_its_body_runs_once(rig):
    client, env, tmp = rig
    args = {"counter": str(tmp / "runs"), "fail_times": 0}
    first = client.enqueue("flaky", args, idempotency_key="order-17")
    assert client.enqueue("flaky", args, idempotency_key="order-17") == first
    assert sdk_tasks.flaky.options(idempotency_key="order-17").send(**args) == first  # one key space
    with running_worker("flaky", env, tmp / "logs"):
        assert client.wait(first, 20).status == "succeeded"
    assert (tmp / "runs").read_text() == "1" and counts(client) == {"succeeded": 1}
    # Another key is another task; a key of another tenant is its own.
    assert sdk_tasks.flaky.options(idempotency_key="order-18").send(**args) != first
    with Client(client.settings.rabbitmq_url.get_secret_value(), database_url=client.settings.database_url,
                tenant="globex") as other:  # fmt: skip
        assert other.enqueue("flaky", args, idempotency_key="order-17") != first


def test_concurrent_enqueues_with_one_key_make_one_task(rig):
    client, _, _ = rig
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: client.enqueue("inventory", ORDER, idempotency_key="k-1"), range(16)))
    assert len(ids) == 1 and counts(client) == {"queued": 1}


async def test_send_async_with_a_key_returns_the_first_task(rig):
    client, _, _ = rig
    first = await sdk_tasks.reserve_stock.options(idempotency_key="k-async").send_async(**ORDER)
    again = await client.enqueue_async("inventory", ORDER, idempotency_key="k-async")
    assert again == first and counts(client) == {"queued": 1}


def test_a_key_reused_for_another_payload_is_refused_and_queues_nothing(rig):
    client, _, _ = rig
    first = client.enqueue("inventory", ORDER, idempotency_key="k-1")
    with pytest.raises(IdempotencyConflict, match=f"'k-1' was already used for a different request.*{first}"):
        client.enqueue("inventory", {**ORDER, "order_id": "o-2"}, idempotency_key="k-1")
    with pytest.raises(IdempotencyConflict):
        client.enqueue("summarise", {"values": [1]}, idempotency_key="k-1")
    with pytest.raises(ValueError, match="printable ASCII"):
        client.enqueue("inventory", ORDER, idempotency_key="bad\nkey")
    assert counts(client) == {"queued": 1}


def test_an_expired_key_makes_a_new_task(amqp_url, tmp_path):
    from qw_core.settings import ClientSettings

    settings = ClientSettings(
        rabbitmq_url=amqp_url, database_url=f"sqlite:///{tmp_path}/qw.db", idempotency_seconds=1.5
    )
    with Client(settings=settings) as c:
        c.enqueue("inventory", ORDER)  # connected and declared: the key's clock below is only the key's
        first = c.enqueue("inventory", ORDER, idempotency_key="k-1")
        assert c.enqueue("inventory", ORDER, idempotency_key="k-1") == first
        time.sleep(1.6)
        assert c.enqueue("inventory", ORDER, idempotency_key="k-1") != first
        assert counts(c) == {"queued": 3}


def test_a_failed_publish_does_not_bind_the_key_so_a_retry_queues_the_task(rig, broker, vhost):
    client, _, _ = rig
    client.enqueue("summarise", {"values": [0]})  # declares the kind's queues and binding
    v, q = urllib.parse.quote(vhost, safe=""), urllib.parse.quote(queue_name("summarise"), safe="")
    broker.api(f"/api/bindings/{v}/e/{TASKS_EXCHANGE}/q/{q}/summarise", "DELETE")
    with pytest.raises(Unroutable):
        client.enqueue("summarise", {"values": [1]}, idempotency_key="k-retry")
    broker.api(f"/api/bindings/{v}/e/{TASKS_EXCHANGE}/q/{q}", "POST", {"routing_key": "summarise"})
    task_id = client.enqueue("summarise", {"values": [1]}, idempotency_key="k-retry")
    assert client.status(task_id).status == "queued" and counts(client) == {"queued": 2}


def test_a_cancelled_task_is_skipped_by_the_worker_and_its_body_never_runs(rig):
    client, env, tmp = rig
    task_id = sdk_tasks.flaky.send(counter=str(tmp / "runs"), fail_times=0)  # no flaky worker yet
    kept = sdk_tasks.flaky.send(counter=str(tmp / "kept"), fail_times=0)
    assert client.cancel(task_id) is True
    assert client.cancel(task_id) is True  # already cancelled: still True
    st = client.wait(task_id, 1)  # `cancelled` is final
    assert (st.status, st.attempts) == ("cancelled", 0)
    with running_worker("flaky", env, tmp / "logs") as w:
        assert client.wait(kept, 20).status == "succeeded"
        wait_for("the skip counted", lambda: w.metric("queueworker_worker_tasks_processed_total", kind="flaky",
                                                      outcome="cancelled") == 1.0, 10)  # fmt: skip
        assert f"task {task_id} cancelled" in w.log()
    assert not (tmp / "runs").exists() and (tmp / "kept").exists()
    assert client.status(task_id).status == "cancelled"
    with pytest.raises(LookupError, match="no task 'nope'"):
        client.cancel("nope")


def test_a_running_task_cannot_be_cancelled(rig):
    client, env, tmp = rig
    task_id = client.enqueue("inventory", ORDER)
    with running_worker("inventory", {**env, "QW_TEST_TASK_DELAY": "3"}, tmp / "logs"):
        wait_for("the task to start", lambda: client.status(task_id).status == "processing", 20)
        assert client.cancel(task_id) is False
        assert client.wait(task_id, 20).status == "succeeded"
    assert client.cancel(task_id) is False
