"""An email whose earlier attempt began sending and never recorded the outcome (the worker died mid-send, or the
store was down when it finished) may have gone out. By default it is never sent again: the task ends dead and
says why (at most once). QW_EMAIL_RESEND_IN_DOUBT=true sends it once more (at least once). The real worker, SMTP
server, broker and store; the in-doubt claim is the row such an attempt leaves, written into the real store."""

from __future__ import annotations

import time

import pytest

from tests.support.smtp import smtp_server
from tests.support.wait import wait_for
from tests.support.workers import running_worker

LEASE = 60.0  # the email worker's claim lease at its default SMTP timeout (mail.claim_lease)


@pytest.fixture
def rig(email_rig):
    return email_rig


def in_doubt(store, task_id: str) -> None:
    """What an attempt leaves when it claimed the send and never recorded the outcome, a lease ago."""
    assert store.claim_effect(task_id, "email", LEASE, now=time.time() - LEASE - 5) == "claimed"


def final(store, task_id):
    rec = store.get(task_id)
    return rec if rec and rec.status in ("succeeded", "failed", "dead") else None


def test_an_email_in_doubt_is_not_sent_again_and_the_task_says_why(rig) -> None:
    pub, store, env, tmp = rig
    msg = pub.email(to="ann@example.com", subject="once", text="x")
    in_doubt(store, msg.task_id)
    with smtp_server() as (port, smtp):
        task_id = pub.publish(msg)
        with running_worker("email", {**env, "QW_SMTP_PORT": port}, tmp):
            rec = wait_for("the task to end", lambda: final(store, task_id), 20)
        assert smtp.data_attempts == 0  # nothing sent
    assert rec.status == "failed" and "may have been sent" in rec.error and "QW_EMAIL_RESEND_IN_DOUBT" in rec.error
    assert rec.attempts == 1  # at once, not after retries


def test_with_resend_in_doubt_it_is_sent_once_more(rig) -> None:
    pub, store, env, tmp = rig
    msg = pub.email(to="ann@example.com", subject="again", text="x")
    in_doubt(store, msg.task_id)
    with smtp_server() as (port, smtp):
        task_id = pub.publish(msg)
        with running_worker("email", {**env, "QW_SMTP_PORT": port, "QW_EMAIL_RESEND_IN_DOUBT": "true"}, tmp):
            rec = wait_for("the task to end", lambda: final(store, task_id), 20)
        assert [m["X-QW-Task-Id"] for m in smtp.messages()] == [task_id]
    assert rec.status == "succeeded"
