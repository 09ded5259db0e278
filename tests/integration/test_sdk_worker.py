"""SDK kinds end to end on the real broker and store: send() / Client.enqueue -> a real worker process -> status.

The user's module is tests/support/sdk_tasks.py; workers run it with `python -m qw_workers <kind>` and QW_APP set
(the same as `--app`, which the README test runs). Every test runs on RabbitMQ 3.10 and on 4.x.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.parse

import pytest
from queueworker import Client, InvalidPayload, set_default_client
from qw_core.registry import Registry
from qw_core.store import open_store
from qw_core.topology import H_ATTEMPT, H_ERROR, H_REASON, dead_queue_name, queue_name

from tests.support import sdk_limited, sdk_tasks
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, running_worker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x
APP = "tests.support.sdk_tasks"
LIMITED = "tests.support.sdk_limited"  # `crunch`: a sync body with a 1 s time limit, 1 retry


@pytest.fixture(params=["sqlite", "postgres"])
def rig(request, amqp_url, tmp_path, monkeypatch):
    """A Client (also the process's default, for send()), the store, a peek at the broker, a worker env."""
    db = f"sqlite:///{tmp_path}/qw.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    client = Client(amqp_url, database_url=db, tenant="acme")
    previous = set_default_client(client)
    store = open_store(db)
    peek = TaskPublisher(amqp_url, store)
    env = worker_env(amqp_url, db, tmp_path / "storage", QW_APP=APP)
    yield client, store, peek, env, tmp_path
    set_default_client(previous)
    client.close()
    peek.close()
    store.close()


def test_send_runs_on_a_worker_and_the_result_is_in_the_status(rig, broker, vhost):
    client, store, peek, env, tmp = rig
    task_id = sdk_tasks.reserve_stock.send(
        order_id="o-1", items=[{"sku": "A", "qty": 2}, sdk_tasks.Item(sku="B", qty=1)]
    )
    assert client.status(task_id).status == "queued"  # visible only once the broker confirmed it
    with running_worker("inventory", env, tmp / "logs"):
        st = client.wait(task_id, 20)
    assert (st.status, st.attempts, st.kind) == ("succeeded", 1, "inventory")
    assert st.result == {"order_id": "o-1", "reserved": 3, "skus": ["A", "B"]}
    assert store.get(task_id).tenant == "acme" and peek.depth(queue_name("inventory")) == 0
    # The kind's queue on the broker is declared like a built-in kind's (peek declared those).
    args = {q["name"]: q["arguments"] for q in broker.api(f"/api/queues/{urllib.parse.quote(vhost, safe='')}")}
    assert args["qw.inventory"] == {**args["qw.email"], "x-dead-letter-routing-key": "inventory"}
    assert args["qw.inventory.dead"] == args["qw.email.dead"]
    assert not {n for n in args if ".retry." in n}  # retries wait in the shared delay ladder


def test_a_bad_payload_is_refused_by_send_and_dead_at_once_on_the_worker(rig):
    client, store, peek, env, tmp = rig
    with pytest.raises(InvalidPayload, match=r"items\.0\.qty"):
        sdk_tasks.reserve_stock.send(order_id="o-1", items=[{"sku": "A", "qty": 0}])
    # A producer that does not know the kind cannot check it: the worker does, before the body runs.
    blind = Client(client.settings.rabbitmq_url.get_secret_value(), database_url=client.settings.database_url,
                   tenant="acme", registry=Registry())  # fmt: skip
    task_id = blind.enqueue("inventory", {"order_id": "o-2", "items": [{"qty": 1}], "extra": True})
    blind.close()
    with running_worker("inventory", env, tmp / "logs") as w:
        st = client.wait(task_id, 20)
        assert w.metric("queueworker_worker_retries_total", kind="inventory") in (None, 0.0)
    assert (st.status, st.attempts) == ("failed", 1)
    assert "invalid payload" in st.error and "items.0.sku: Field required" in st.error and "extra" in st.error
    [(headers, _)] = peek.drain(dead_queue_name("inventory"))
    assert headers[H_REASON] == "invalid-payload" and headers[H_ATTEMPT] == 1 and "items.0.sku" in headers[H_ERROR]


def test_an_exception_in_retry_on_is_retried_then_succeeds_and_any_other_fails_at_once(rig):
    client, store, peek, env, tmp = rig
    retried = sdk_tasks.flaky.send(counter=str(tmp / "a"), fail_times=2)
    refused = sdk_tasks.flaky.send(counter=str(tmp / "b"), fail_times=1, error="value")
    with running_worker("flaky", env, tmp / "logs"):
        ok, failed = client.wait(retried, 20), client.wait(refused, 20)
    assert (ok.status, ok.attempts, ok.result) == ("succeeded", 3, 3)
    assert (failed.status, failed.attempts) == ("failed", 1) and "ValueError: attempt 1 fails" in failed.error
    [(headers, _)] = peek.drain(dead_queue_name("flaky"))
    assert headers[H_REASON] == "permanent"
    # The kind's own backoff (0.2 s .. 0.4 s), through the delay ladder: it left nothing behind.
    assert peek.depth("qw.delay.100") == 0 and peek.depth("qw.delay.200") == 0


def test_an_async_body_runs_and_its_time_limit_stops_it(rig):
    client, store, peek, env, tmp = rig
    quick = sdk_tasks.summarise.send(values=[1.5, 2.5])
    slow = client.enqueue("summarise", {"values": [1], "sleep": 5})
    with running_worker("summarise", env, tmp / "logs") as w:
        done, dead = client.wait(quick, 20), client.wait(slow, 20)
        assert w.is_ready()  # the overrun was cancelled; the worker serves on
    assert (done.status, done.result) == ("succeeded", {"total": 4.0, "count": 2})
    assert (dead.status, dead.attempts) == ("dead", 2) and "time limit of 1s" in dead.error
    [(headers, _)] = peek.drain(dead_queue_name("summarise"))
    assert headers[H_REASON] == "exhausted"


@pytest.mark.parametrize("rig", ["sqlite"], indirect=True)
def test_sigterm_mid_task_finishes_the_task_in_hand_and_leaves_the_rest_queued(rig):
    client, store, peek, env, tmp = rig
    ids = [sdk_tasks.reserve_stock.send(order_id=f"o-{i}", items=[{"sku": "A", "qty": 1}]) for i in range(3)]
    slow = {**env, "QW_TEST_TASK_DELAY": "2", "QW_PREFETCH": "1", "QW_GRACE_PERIOD": "8"}
    with running_worker("inventory", slow, tmp / "logs") as w:
        wait_for("a task in hand", lambda: any(client.status(t).status == "processing" for t in ids), 10)
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0, w.log()
    [done] = [t for t in ids if client.status(t).status == "succeeded"]
    assert client.status(done).result["order_id"] in {"o-0", "o-1", "o-2"}
    assert peek.depth(queue_name("inventory")) == 2  # its ack reached the broker; the others wait, unstarted


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of each child process of `pid`, zombies included (state Z), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == pid:
            found.append((int(entry), state))
    return found


def duration_sum(w) -> float:
    return w.metric("queueworker_worker_task_duration_seconds_sum", kind="crunch") or 0.0


@pytest.mark.parametrize("rig", ["sqlite"], indirect=True)
def test_a_sync_body_past_its_time_limit_is_stopped_retried_then_dead_and_the_worker_serves_on(rig):
    client, store, peek, env, tmp = rig
    with running_worker("crunch", {**env, "QW_APP": LIMITED, "QW_CONCURRENCY": "1"}, tmp / "logs") as w:
        # Given a worker whose one slot has run a task in its child process
        first = client.wait(sdk_limited.crunch.send(n=1), 20)
        [(child, _)] = children(w.proc.pid)
        assert first.result == {"n": 1, "pid": child} and child != w.proc.pid
        before = duration_sum(w)
        # When a body sleeps 30 s past its 1 s limit
        slow = client.wait(sdk_limited.crunch.send(n=2, sleep=30), 30)
        # Then each attempt was stopped at the limit (plus the kill's grace and a new child's start), not 30 s
        per_attempt = (duration_sum(w) - before) / 2
        assert per_attempt < 5, per_attempt
        assert (slow.status, slow.attempts) == ("dead", 2) and "time limit of 1s" in slow.error
        [(headers, _)] = peek.drain(dead_queue_name("crunch"))
        assert headers[H_REASON] == "exhausted" and "TimeLimitExceeded" in headers[H_ERROR]
        # and the next task on the same worker succeeds, in a new child; the killed ones were reaped
        after = client.wait(sdk_limited.crunch.send(n=3), 20)
        assert after.status == "succeeded" and w.is_ready()
        assert children(w.proc.pid) == [(after.result["pid"], "S")] and after.result["pid"] != child


@pytest.mark.parametrize("rig", ["sqlite"], indirect=True)
def test_a_sync_body_whose_process_exits_is_retried_then_dead(rig):
    client, store, peek, env, tmp = rig
    with running_worker("crunch", {**env, "QW_APP": LIMITED}, tmp / "logs") as w:
        t0 = time.monotonic()
        dead = client.wait(sdk_limited.crunch.send(n=1, exit_code=1), 30)
        ok = client.wait(sdk_limited.crunch.send(n=2), 20)
        assert w.is_ready(), time.monotonic() - t0
        assert w.metric("queueworker_worker_retries_total", kind="crunch") == 1.0
    assert (dead.status, dead.attempts) == ("dead", 2)
    assert dead.error == "TaskProcessDied: the task's process exited with code 1"
    assert ok.status == "succeeded" and ok.result["n"] == 2
