"""A tenant's outbound email rate (QW_EMAIL_TENANT_RATE), counted in the real store over two real email workers,
against a real SMTP server: past the limit a tenant's mails wait (deferred through the retry queues, no attempt
used) while another tenant's mails go out at once; every mail is sent exactly once and none ends dead."""

from __future__ import annotations

import pytest
from qw_core.store import open_store

from tests.support.smtp import smtp_server
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, running_worker, worker_env

pytestmark = [pytest.mark.integration]

WINDOW = 2  # seconds (QW_EMAIL_RATE_WINDOW_SECONDS; a minute by default)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_tenant_over_its_email_rate_waits_and_others_do_not(amqp_url, tmp_path, request, database):
    db = request.getfixturevalue("pg_url") if database == "postgres" else f"sqlite:///{tmp_path}/qw.db"
    store = open_store(db)
    pub = TaskPublisher(amqp_url, store)
    env = worker_env(
        amqp_url,
        db,
        tmp_path / "storage",
        QW_EMAIL_TENANT_RATE=0,  # no limit by default ...
        QW_EMAIL_TENANT_LIMITS="acme=3",  # ... but acme may send 3 mails per window
        QW_EMAIL_RATE_WINDOW_SECONDS=WINDOW,
        QW_MAX_ATTEMPTS=1,  # a deferral that used an attempt would end the mail dead at once
        QW_CONCURRENCY=2,
    )
    try:
        with smtp_server() as (port, smtp):
            acme = [pub.publish(pub.email("acme", to=f"a{i}@example.com", text="x")) for i in range(9)]
            other = [pub.publish(pub.email("globex", to=f"g{i}@example.com", text="x")) for i in range(6)]
            with (
                running_worker("email", {**env, "QW_SMTP_PORT": port}, tmp_path / "w1"),
                running_worker("email", {**env, "QW_SMTP_PORT": port}, tmp_path / "w2"),
            ):
                wait_for("globex's mails", lambda: all(_ended(store, t) for t in other), 20)
                sent_acme = sum(1 for m in smtp.messages() if m["To"].startswith("a"))
                # Not throttled behind acme: globex is done while acme still has mails waiting for a window.
                assert sent_acme < len(acme), "acme's mails were not held back by its rate"
                deferred = [store.get(t) for t in acme if not _ended(store, t)]
                assert deferred and all("reached its email rate of 3 per 2s" in (r.error or "") for r in deferred)
                wait_for("acme's mails", lambda: all(_ended(store, t) for t in acme), 40)
            times = {m["X-QW-Task-Id"]: at for m, at in zip(smtp.messages(), smtp.accepted_at, strict=True)}
        assert all(store.get(t).status == "succeeded" for t in acme + other)
        assert sorted(times) == sorted(acme + other), "each mail sent exactly once"
        windows = store._fetchall("SELECT window_start, used FROM rate_windows WHERE tenant='acme'")
        assert sum(used for _, used in windows) == 9 and max(used for _, used in windows) == 3, windows
        assert len(windows) >= 3  # 9 mails at 3 per window need at least 3 windows
        sent = sorted(times[t] for t in acme)
        assert sent[-1] - sent[0] > WINDOW  # the first and the last three are two windows apart at least
        assert not store._fetchall("SELECT 1 FROM rate_windows WHERE tenant='globex'")  # unlimited: not counted
    finally:
        pub.close()
        store.close()


def _ended(store, task_id):
    rec = store.get(task_id)
    return rec is not None and rec.status in ("succeeded", "failed", "dead")
