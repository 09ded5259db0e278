"""The email worker as a real process, sending to a real SMTP server (aiosmtpd) on a real broker."""

from __future__ import annotations

import pytest
from qw_core.topology import H_ATTEMPT, H_REASON, dead_queue_name

from tests.support.smtp import smtp_server
from tests.support.wait import wait_for
from tests.support.workers import running_worker

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x


@pytest.fixture
def rig(email_rig):
    return email_rig


def settled(store, task_id):
    rec = store.get(task_id)
    return rec if rec and rec.status in ("succeeded", "failed", "dead") else None


@pytest.mark.parametrize("email_rig", ["sqlite", "postgres"], indirect=True)
def test_mail_received_with_headers_and_multipart_body(rig):
    pub, store, env, tmp = rig
    with smtp_server() as (port, smtp):
        plain = pub.publish(
            pub.email(
                to="ann@example.com",
                subject="Hi Ann",
                text="plain body",
                html="<p>html body</p>",
                reply_to="help@example.com",
            )
        )
        templated = pub.publish(
            pub.email(
                to="bob@example.com",
                subject="Welcome",
                template="welcome",
                context={"name": "<script>alert(1)</script>", "product": "QW & Co"},
            )
        )
        with running_worker("email", {**env, "QW_SMTP_PORT": port}, tmp):
            for t in (plain, templated):
                assert wait_for("email settled", lambda t=t: settled(store, t), 15).status == "succeeded"
        msgs = {m["X-QW-Task-Id"]: m for m in smtp.messages()}
    assert set(msgs) == {plain, templated}
    m = msgs[plain]
    assert m["To"] == "ann@example.com" and m["Subject"] == "Hi Ann" and m["Reply-To"] == "help@example.com"
    assert m["From"] == "QueueWorker <noreply@qw.test>" and m["Message-ID"] and m["Date"]
    assert m.get_content_type() == "multipart/alternative"
    assert m.get_body(("plain",)).get_content().strip() == "plain body"
    assert m.get_body(("html",)).get_content().strip() == "<p>html body</p>"
    t = msgs[templated]
    assert "Hello <script>alert(1)</script>," in t.get_body(("plain",)).get_content()
    html = t.get_body(("html",)).get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "QW &amp; Co" in html
    for msg in msgs.values():  # one header of each, nothing smuggled in
        assert len(msg.get_all("To")) == 1 and len(msg.get_all("Subject")) == 1 and msg.get_all("Bcc") is None


def test_transient_smtp_failure_always_ends_dead_after_max_attempts(rig):
    pub, store, env, tmp = rig
    with smtp_server(data_default="451 4.3.0 try again later") as (port, smtp):
        task = pub.publish(pub.email(text="x"))
        with running_worker("email", {**env, "QW_SMTP_PORT": port}, tmp) as w:
            rec = wait_for("email dead", lambda: settled(store, task), 15)
            wait_for("dead letter", lambda: pub.depth(dead_queue_name("email")) == 1, 10)
            counted = lambda: (  # noqa: E731 - the metrics count an outcome after its ack, the status comes before
                w.metric("queueworker_worker_retries_total", kind="email"),
                w.metric("queueworker_worker_tasks_processed_total", kind="email", outcome="dead"),
            )
            wait_for("2 retries and 1 dead counted", lambda: counted() == (2, 1), 10)
        assert smtp.data_attempts == 3 and smtp.accepted == []
    assert rec.status == "dead" and rec.attempts == 3 and "451" in rec.error
    [(headers, _)] = pub.drain(dead_queue_name("email"))
    assert headers[H_REASON] == "exhausted" and headers[H_ATTEMPT] == 3


def test_transient_twice_then_ok_succeeds_on_the_third_attempt(rig):
    pub, store, env, tmp = rig
    with smtp_server(data_replies=["451 busy", "421 closing"]) as (port, smtp):
        task = pub.publish(pub.email(text="x"))
        with running_worker("email", {**env, "QW_SMTP_PORT": port}, tmp):
            rec = wait_for("email sent", lambda: settled(store, task), 15)
        assert len(smtp.accepted) == 1
    assert rec.status == "succeeded" and rec.attempts == 3 and rec.completions == 1


def test_permanent_smtp_refusal_fails_without_retry(rig):
    pub, store, env, tmp = rig
    with smtp_server(rcpt_reply="550 5.1.1 no such user") as (port, smtp):
        task = pub.publish(pub.email(text="x"))
        with running_worker("email", {**env, "QW_SMTP_PORT": port}, tmp):
            rec = wait_for("email failed", lambda: settled(store, task), 15)
            # The status is written before the dead-letter copy: wait for the copy before the worker is stopped.
            wait_for("the dead letter", lambda: pub.depth(dead_queue_name("email")) >= 1, 10)
    assert rec.status == "failed" and rec.attempts == 1 and "550" in rec.error
    [(headers, _)] = pub.drain(dead_queue_name("email"))
    assert headers[H_REASON] == "permanent"


@pytest.mark.parametrize("email_rig", ["sqlite", "postgres"], indirect=True)
def test_duplicate_delivery_sends_one_email(rig):
    pub, store, env, tmp = rig
    with smtp_server() as (port, smtp):
        msg = pub.email(text="once")
        pub.publish(msg)
        pub.publish(msg, create_row=False)  # the same task delivered twice
        with running_worker("email", {**env, "QW_SMTP_PORT": port, "QW_CONCURRENCY": 2}, tmp) as w:
            wait_for("email sent", lambda: settled(store, msg.task_id), 15)
            wait_for(
                "the second delivery handled",
                lambda: (
                    w.metric("queueworker_worker_tasks_processed_total", kind="email", outcome="duplicate") == 1
                    or w.metric("queueworker_worker_tasks_processed_total", kind="email", outcome="retried") == 1
                ),
                10,
            )
            wait_for("queue drained", lambda: pub.depth("qw.email") == 0 and smtp.accepted, 10)
        assert len(smtp.accepted) == 1
    assert store.get(msg.task_id).completions == 1
