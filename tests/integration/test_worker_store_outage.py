"""The store goes down under a busy email worker: PostgreSQL (a private one, on a free port) is stopped mid-run and
started again. Every task still ends in exactly one final state, each mail is sent at most once, nothing is left
processing or queued, and the worker backs off instead of handing messages back in a hot loop.

The real worker process (two threads), the session's real broker, a real SMTP server; the outage is real (pg_ctl
stop, fast mode: every connection is cut), not injected.
"""

from __future__ import annotations

import collections
import json
import shutil
import time
import urllib.parse

import pytest
from postgres import Postgres
from qw_core.store import TERMINAL, PostgresStore
from qw_core.topology import H_REASON, dead_queue_name

from tests.support.smtp import smtp_server
from tests.support.util import free_port
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, running_worker, worker_env

pytestmark = pytest.mark.integration

TASKS = 40
UNKNOWN_TEMPLATE = "no-such-template"  # every 5th task: a permanent failure, dead-lettered (status first)
OUTAGE_S = 14.0  # past the pool's 10 s wait for a connection, so store calls fail during it, not only block
THREADS = 2
# Hand-backs a backing-off worker can make in the outage: per thread about one per backoff step (0.5, 1, 2, 4 s
# ...) plus the first failures of calls already in flight. A hot loop makes thousands.
MAX_HAND_BACKS = 20


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, so stopping it never touches the session's."""
    pg = Postgres(free_port())
    try:
        pg.start()
    except (SystemExit, OSError) as exc:
        pytest.fail(f"PostgreSQL could not start: {exc}")
    yield pg
    pg.stop()
    shutil.rmtree(pg.dir, ignore_errors=True)


def statuses(store: PostgresStore, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    out = {}
    for task_id in ids:
        rec = store.get(task_id)
        out[task_id] = (rec.status, rec.error) if rec else ("missing", None)
    return out


def test_store_outage_mid_run_every_task_ends_once_and_no_hot_loop(own_postgres, amqp_url, broker, tmp_path):
    pg = own_postgres
    store = PostgresStore(pg.url)
    pub = TaskPublisher(amqp_url, store)
    # The first DATA answers are 451: those tasks go through retry copies as well.
    with smtp_server(data_replies=["451 4.3.0 try again later"] * 4) as (smtp_port, smtp):
        env = worker_env(amqp_url, pg.url, tmp_path / "storage", QW_SMTP_PORT=smtp_port,
                         QW_SMTP_FROM="noreply@qw.test", QW_CONCURRENCY=THREADS, QW_PREFETCH=4,
                         QW_TEST_TASK_DELAY=0.25)  # fmt: skip
        with running_worker("email", env, tmp_path / "logs") as w:
            ids, doomed = [], set()
            for i in range(TASKS):
                if i % 5 == 4:
                    msg = pub.email(to=f"user{i}@example.com", subject=f"mail {i}", template=UNKNOWN_TEMPLATE)
                    doomed.add(msg.task_id)
                else:
                    msg = pub.email(to=f"user{i}@example.com", subject=f"mail {i}", text="x")
                ids.append(pub.publish(msg))
            pub.close()

            def metric(name: str, **labels: str) -> float:
                return w.metric(f"queueworker_worker_{name}", kind="email", **labels) or 0.0

            wait_for(
                "a few tasks done before the outage",
                lambda: metric("tasks_processed_total", outcome="succeeded") >= 5,
                30,
            )
            requeued_before = metric("tasks_processed_total", outcome="requeued")
            pg.stop()  # fast shutdown: every connection of the worker's pool is cut
            stopped_at = time.monotonic()
            wait_for("the worker not ready while the store is down", lambda: not w.is_ready(), OUTAGE_S, 0.1,
                     state=w.log)  # fmt: skip
            assert w.get("/healthz")[0] == 200  # alive: a restart would not bring the store back
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
            during = {
                "store_unavailable": metric("store_unavailable_total"),
                "store_up": metric("store_up"),
                "requeued": metric("tasks_processed_total", outcome="requeued") - requeued_before,
            }
            assert pg.start()
            outage = time.monotonic() - stopped_at

            def all_final() -> dict[str, tuple[str, str | None]] | None:
                try:
                    now = statuses(store, ids)
                except Exception:
                    return None
                return now if all(s in TERMINAL for s, _ in now.values()) else None

            final = wait_for("every task in a final state", all_final, 90, 0.5, state=lambda: w.log()[-2000:])
            wait_for("the worker ready again", w.is_ready, 30, 0.2, state=w.log)
            after = {
                "store_up": metric("store_up"),
                "store_unavailable": metric("store_unavailable_total"),
                "retried": metric("tasks_processed_total", outcome="retried"),
                "redelivered": _redelivered(broker, amqp_url),
            }
            assert w.proc.poll() is None

    sent = collections.Counter(m["X-QW-Task-Id"] for m in smtp.messages())
    check = PostgresStore(pg.url)
    dead_letters = collections.Counter()
    drain = TaskPublisher(amqp_url, check)
    for headers, body in drain.drain(dead_queue_name("email")):
        dead_letters[(json.loads(body)["task_id"], headers.get(H_REASON))] += 1
    drain.close()
    check.close()
    store.close()

    by_status = collections.Counter(s for s, _ in final.values())
    print(f"\nstore outage: {TASKS} tasks, outage {outage:.1f}s, during it {during}, after {after}, "
          f"final {dict(by_status)}, mails {sum(sent.values())} for {len(sent)} tasks, dead letters "
          f"{sum(dead_letters.values())}")  # fmt: skip

    assert during["store_unavailable"] >= 1 and during["store_up"] == 0, during
    assert during["requeued"] <= MAX_HAND_BACKS, during  # backed off, no hot loop
    assert after["store_up"] == 1
    assert set(by_status) <= TERMINAL  # nothing left processing, queued or missing
    for task_id, (status, error) in final.items():
        assert sent[task_id] <= 1, f"{task_id} mailed {sent[task_id]} times"
        if status == "succeeded":
            assert sent[task_id] == 1, f"{task_id} succeeded without its mail"
        else:
            assert error, f"{task_id} ended {status} without a reason"
    assert all(n == 1 for n in dead_letters.values()), f"a message dead-lettered twice: {dead_letters}"
    assert {t for t, _ in dead_letters} == {t for t, (status, _) in final.items() if status != "succeeded"}
    for task_id in doomed:
        assert final[task_id][0] == "failed" and UNKNOWN_TEMPLATE in (final[task_id][1] or ""), final[task_id]
        assert (task_id, "permanent") in dead_letters and sent[task_id] == 0
    assert by_status["succeeded"] >= (TASKS - len(doomed)) // 2, dict(by_status)  # the outage cost a few at most


def _redelivered(broker, amqp_url: str) -> int | None:
    """The broker's own count of redeliveries on the email queue (its management API), if it keeps one."""
    vhost = urllib.parse.quote(urllib.parse.unquote(amqp_url.rsplit("/", 1)[1]), safe="")
    try:
        q = broker.api(f"/api/queues/{vhost}/qw.email")
    except OSError:
        return None
    stats = q.get("message_stats", {}) if isinstance(q, dict) else {}
    return stats.get("redeliver")
