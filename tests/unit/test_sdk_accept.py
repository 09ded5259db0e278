"""`accept` (qw_core.publishing), the producer's accept path, branch by branch, on the real SQLite store.

The publisher is a stand-in that does to the store what the broker's side would have done by then (the seam, as in
test_settle); tests/integration/test_sdk_client.py runs the same path on the real broker.
"""

from __future__ import annotations

from typing import Any

import pytest
from qw_core.messages import TaskMessage, UserTask, utcnow
from qw_core.publishing import BrokerUnavailable, PublishRefused, accept
from qw_core.store import SqliteStore


class Publisher:
    def __init__(self, store: SqliteStore, error: Exception | None = None, worker_started: bool = False) -> None:
        self.store, self.error, self.worker_started, self.sent = store, error, worker_started, []

    def publish(self, kind: str, body: bytes, message_id: str, headers: Any = None, not_before: Any = None) -> None:
        self.sent.append(message_id)
        if self.worker_started:  # the broker had it and a worker picked it up before the confirm got lost
            self.store.start_attempt(message_id, 1)
        if self.error:
            raise self.error


def task() -> TaskMessage:
    return TaskMessage(task_id="t1", tenant="acme", created_at=utcnow(), payload=UserTask(kind="k", args={"a": 1}))


@pytest.fixture
def store() -> SqliteStore:
    return SqliteStore(":memory:")


def test_a_confirmed_publish_makes_the_task_visible(store):
    accept(store, Publisher(store), task())  # type: ignore[arg-type]
    assert store.get("t1").status == "queued"


@pytest.mark.parametrize("error", [BrokerUnavailable("lost"), PublishRefused("full")])
def test_a_failed_publish_withdraws_the_row(store, error):
    with pytest.raises(type(error)):
        accept(store, Publisher(store, error), task())  # type: ignore[arg-type]
    assert store.get("t1") is None


def test_a_lost_confirm_for_a_task_a_worker_already_has_is_accepted_once(store):
    pub = Publisher(store, BrokerUnavailable("connection lost during the publish"), worker_started=True)
    accept(store, pub, task())  # type: ignore[arg-type]
    assert pub.sent == ["t1"] and store.get("t1").status == "processing"  # no second copy, no 'queued' rewind
