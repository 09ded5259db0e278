"""A publish whose confirm never reaches the API (confirm timeout, connection lost after the message went out):
the broker may have the message after all. Whatever happened, the task runs once and the client is told the truth.

- the broker kept it and a worker already started it -> the API answers 202 with the task id (not a 503 that
  invites a retry: that would send the mail twice);
- the broker kept it but no worker has it yet -> 503 and the row is withdrawn; the stray copy reaching a worker
  later is dead-lettered (no status record), never run; the client's retry is the one mail.

The one stand-in: a lost confirm cannot be caused on demand on a real broker, so the API's publisher is wrapped
to really publish (the real broker confirms it) and then report the confirm as lost. Everything else is real:
broker, store, email worker, SMTP server."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from qw_api.publisher import PublishUnavailable
from qw_core.store import open_store

from tests.support.api import client, running_api
from tests.support.smtp import Recorder, smtp_server
from tests.support.wait import wait_for
from tests.support.workers import running_worker, worker_env

EMAIL = {"to": "ann@example.com", "subject": "lost confirm", "text": "once"}


def lose_confirms(app: Any, before_raising: Callable[[str], Awaitable[None]]) -> None:
    """The publisher publishes for real, then (after `before_raising(task_id)`) says the confirm was lost."""
    publisher = app.state.services.publisher
    real = publisher.publish

    async def publish(exchange: str, routing_key: str, body: bytes, message_id: str, **kw: Any) -> None:
        await real(exchange, routing_key, body, message_id, **kw)
        await before_raising(message_id)
        raise PublishUnavailable("the broker did not confirm the message in time")

    publisher.publish = publish


@pytest.fixture
def stack(api_settings, amqp_url: str, tmp_path: Path) -> Iterator[tuple[Any, str, Recorder, dict[str, Any]]]:
    with smtp_server() as (smtp_port, mails), running_api(api_settings) as (base, app):
        env = worker_env(amqp_url, api_settings.database_url, api_settings.storage_dir,
                         QW_SMTP_PORT=smtp_port, QW_SMTP_FROM="noreply@queueworker.test")  # fmt: skip
        yield app, base, mails, env


def sent(mails: Recorder) -> collections.Counter[str]:
    return collections.Counter(m["X-QW-Task-Id"] for m in mails.messages())


def test_a_lost_confirm_for_a_task_a_worker_already_started_is_a_202(stack, api_settings, tmp_path) -> None:
    app, base, mails, env = stack
    store = open_store(api_settings.database_url)

    async def until_a_worker_has_it(task_id: str) -> None:
        with anyio.fail_after(30):
            while (rec := store.get(task_id)) is None or rec.status == "pending":  # noqa: ASYNC110 - polls a DB
                await anyio.sleep(0.02)

    lose_confirms(app, until_a_worker_has_it)
    with running_worker("email", env, tmp_path / "logs"), client(base) as http:
        r = http.post("/v1/emails", json=EMAIL)
        assert r.status_code == 202, r.text  # the task is live: no retry invited
        task_id = r.json()["task_id"]
        wait_for("the task", lambda: (rec := store.get(task_id)) is not None and rec.status == "succeeded", 30)
        wait_for("its mail", lambda: sent(mails)[task_id] == 1, 10)
    assert sent(mails) == {task_id: 1}
    store.close()


def test_a_lost_confirm_before_any_worker_has_it_is_a_503_and_the_stray_copy_never_runs(
    stack, api_settings, tmp_path
) -> None:
    app, base, mails, env = stack
    store = open_store(api_settings.database_url)

    async def at_once(_task_id: str) -> None:
        return None

    lose_confirms(app, at_once)
    with client(base) as http:
        r = http.post("/v1/emails", json=EMAIL)
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert store.counts() == {}  # withdrawn: nothing claims the task exists
        # The client retries (the publisher confirms normally again)
        del app.state.services.publisher.publish
        retry = http.post("/v1/emails", json=EMAIL)
        assert retry.status_code == 202, retry.text
    with running_worker("email", env, tmp_path / "logs") as worker:
        task_id = retry.json()["task_id"]
        wait_for("the retry", lambda: (rec := store.get(task_id)) is not None and rec.status == "succeeded", 30)
        # The stray copy of the first attempt was dead-lettered, not run: one mail, the retry's
        wait_for("the stray copy dead-lettered", lambda: "no status record" in worker.log(), 10)
    assert list(sent(mails).values()) == [1] and set(sent(mails)) == {task_id}
    store.close()
