"""Delayed tasks and jittered retries through the delay ladder (qw_core.delays), on RabbitMQ 3.10 and 4.x.

A real worker process runs the kinds of tests/support/sdk_tasks.py; `stamped` writes the time of each attempt to a
file, so the tests see when a body really started, not when a status row was written.
"""

from __future__ import annotations

import time
import urllib.parse
from datetime import UTC, datetime, timedelta

import pika
import pytest
from queueworker import Client, set_default_client
from qw_core import delays as ladder
from qw_core.messages import TaskMessage, UserTask, new_task_id, utcnow
from qw_core.store import open_store
from qw_core.topology import TASKS_EXCHANGE, build_topology, declare_with_pika, queue_name

from tests.support import sdk_tasks
from tests.support.workers import running_worker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x
APP = "tests.support.sdk_tasks"
RUNGS = [ladder.rung_name(level) for level in range(ladder.LEVELS)]


@pytest.fixture
def rig(amqp_url, tmp_path):
    db = f"sqlite:///{tmp_path}/qw.db"
    client = Client(amqp_url, database_url=db, tenant="acme")
    previous = set_default_client(client)  # what Task.send uses
    env = worker_env(amqp_url, db, tmp_path / "storage", QW_APP=APP)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield client, conn.channel(), env, tmp_path
    conn.close()
    set_default_client(previous)
    client.close()


def _starts(path) -> list[float]:
    return [float(t) for t in path.read_text().split()] if path.exists() else []


def _depth(ch, queue: str) -> int:
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def test_the_ladder_is_bounded_and_declaring_it_again_changes_nothing(broker, vhost, amqp_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    topology = build_topology(["inventory"], 10)
    declare_with_pika(conn.channel(), topology)
    declare_with_pika(conn.channel(), topology)  # a second process, or a restart: no error, no change
    conn.close()
    queues = {q["name"]: q for q in broker.api(f"/api/queues/{urllib.parse.quote(vhost, safe='')}")}
    for level, name in enumerate(RUNGS):
        args = queues[name]["arguments"]
        assert args["x-message-ttl"] == ladder.UNIT_MS * 2**level and args["x-queue-type"] == "quorum"
        assert args["x-overflow"] == "reject-publish" and args["x-max-length"] == 100_000
        assert args["x-dead-letter-strategy"] == "at-least-once"
    assert sum(ladder.rung_ttl_ms(level) for level in range(ladder.LEVELS)) >= ladder.MAX_DELAY_SECONDS * 1000


def test_a_delayed_task_runs_no_earlier_than_its_delay_and_soon_after(rig):
    client, ch, env, tmp = rig
    with running_worker("stamped", env, tmp / "logs"):
        log = tmp / "a"
        sent = time.time()
        task_id = sdk_tasks.stamped.options(delay=3).send(log=str(log))
        st = client.status(task_id)
        assert st.status == "scheduled" and abs(st.not_before.timestamp() - (sent + 3)) < 0.5
        done = client.wait(task_id, 20)
    [started] = _starts(log)
    assert done.status == "succeeded"
    late = started - st.not_before.timestamp()
    print(f"delay 3 s: started {late:+.3f} s after not_before")
    assert 0 <= late <= 2.5  # never early; late by well under a rung of the 3 s route (1.6 s), plus a busy machine


def test_a_long_delay_is_scheduled_and_does_not_run(rig):
    client, ch, env, tmp = rig
    log = tmp / "b"
    task_id = client.enqueue("stamped", {"log": str(log)}, delay=timedelta(hours=1))
    with running_worker("stamped", env, tmp / "logs"):
        time.sleep(2)
        st = client.status(task_id)
    assert st.status == "scheduled" and st.attempts == 0 and not log.exists()
    assert abs((st.not_before - datetime.now(UTC)).total_seconds() - 3600) < 10
    assert _depth(ch, queue_name("stamped")) == 0
    assert sum(_depth(ch, rung) for rung in RUNGS) == 1  # waiting in the ladder


def test_several_delays_run_in_the_order_they_are_due(rig):
    client, ch, env, tmp = rig
    delays = [3.0, 1.0, 2.0, 0.5]
    with running_worker("stamped", env, tmp / "logs"):
        logs = [tmp / f"order-{i}" for i in range(len(delays))]
        ids = [client.enqueue("stamped", {"log": str(lg)}, delay=d) for lg, d in zip(logs, delays, strict=True)]
        for task_id in ids:
            assert client.wait(task_id, 20).status == "succeeded"
    starts = [_starts(lg)[0] for lg in logs]
    due = [client.status(task_id).not_before.timestamp() for task_id in ids]
    assert all(start >= d for start, d in zip(starts, due, strict=True))  # none before its time
    # In the order they were due (sending them took time too: that order, not the delays' one).
    assert sorted(range(len(ids)), key=starts.__getitem__) == sorted(range(len(ids)), key=due.__getitem__)


def test_retries_are_jittered_and_a_delayed_task_goes_through_the_ladder_again(rig):
    """stamped retries after 2 s +- 50 %. Each task came through the ladder already (delay=0.5): its retry copy
    passes the same rungs again, which RabbitMQ would drop as a dead-letter cycle if it kept its x-death."""
    client, ch, env, tmp = rig
    logs = [tmp / f"jitter-{i}" for i in range(6)]
    with running_worker("stamped", env, tmp / "logs"):
        ids = [client.enqueue("stamped", {"log": str(lg), "fail_times": 1}, delay=0.5) for lg in logs]
        done = [client.wait(task_id, 30) for task_id in ids]
    assert [(d.status, d.attempts) for d in done] == [("succeeded", 2)] * len(ids)
    waits = [_starts(lg)[1] - _starts(lg)[0] for lg in logs]
    print("retry waits:", [round(w, 2) for w in waits])
    assert all(0.9 <= w <= 3.0 + 3.0 for w in waits)  # never before 2 s - 50 %; the top allows a busy machine
    assert max(waits) - min(waits) > 0.2  # not all the same delay


def test_a_task_delivered_before_its_time_goes_back_to_wait(rig):
    """As if the ladder (or a producer's clock) were early: the worker's own clock decides."""
    client, ch, env, tmp = rig
    store = open_store(client.settings.database_url)
    log = tmp / "early"
    task = TaskMessage(task_id=new_task_id(), tenant="acme", created_at=utcnow(),
                       payload=UserTask(kind="stamped", args={"log": str(log)}))  # fmt: skip
    due = time.time() + 6  # well after the worker is up and has it, even on a busy machine
    store.create_pending(task.task_id, "acme", "stamped", not_before=due)
    store.confirm_queued(task.task_id)
    declare_with_pika(ch, build_topology(["stamped"], 10))
    headers = {ladder.H_NOT_BEFORE: round(due * 1000), "x-qw-attempt": 0}
    props = pika.BasicProperties(message_id=task.task_id, delivery_mode=2, headers=headers)
    with running_worker("stamped", env, tmp / "logs") as w:
        ch.basic_publish(TASKS_EXCHANGE, "stamped", task.to_bytes(), props)  # straight to the work queue
        assert client.wait(task.task_id, 30).status == "succeeded"
        assert w.metric("queueworker_worker_tasks_processed_total", kind="stamped", outcome="delayed") >= 1
    [started] = _starts(log)
    assert started >= due
    store.close()
