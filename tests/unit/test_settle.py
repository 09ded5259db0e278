"""The settle machine, branch by branch (qw_workers.settle's docstring), without a broker.

The channel is a recording fake (it is the seam: tests/integration runs the same machine on a real broker); the
store is the real SQLite store in memory, wrapped to record its writes and, when asked, to be down. Both write
into one event list, so the order publish copy -> status write -> ack is asserted, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import Any

import pytest
from qw_core.messages import EmailTask, ImageTask, TaskMessage, utcnow
from qw_core.settings import WorkerSettings
from qw_core.storage import LocalStorage
from qw_core.store import SqliteStore, StoreUnavailable
from qw_core.topology import DEAD_EXCHANGE, H_ATTEMPT, H_ERROR, H_REASON, RETRY_EXCHANGE, retry_routing_key
from qw_workers.context import TaskContext
from qw_workers.errors import PermanentError, RetryableError
from qw_workers.middleware import Delivery
from qw_workers.settle import ConnectionLost, Settler

TASK_ID = "t1"
DELAYS = [200, 400]
Event = tuple[Any, ...]
STARTED: Event = ("store", "start_attempt")


class RecordingChannel:
    """settle.Channel that records each call; `fail` maps a call name to the exception it raises."""

    def __init__(self, events: list[Event], fail: dict[str, Exception] | None = None) -> None:
        self.events = events
        self.fail = fail or {}

    def _call(self, event: Event) -> None:
        if event[0] in self.fail:
            raise self.fail[event[0]]
        self.events.append(event)

    def ack(self, d: Delivery) -> None:
        self._call(("ack", d.delivery_tag))

    def requeue(self, d: Delivery) -> None:
        self._call(("requeue", d.delivery_tag))

    def publish_copy(self, d: Delivery, exchange: str, routing_key: str, headers: dict[str, Any]) -> None:
        self._call(("publish", exchange, routing_key, headers))


class RecordingStore(SqliteStore):
    """The real store in memory; records the status writes, and raises StoreUnavailable for those in `down`."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__(":memory:")
        self.events = events
        self.down: set[str] = set()

    def _write(self, name: str, write: Callable[[], bool]) -> bool:
        if name in self.down:
            raise StoreUnavailable("the database is down")
        self.events.append(("store", name))
        return write()

    def start_attempt(self, task_id: str, attempt: int) -> bool:
        write = super().start_attempt
        return self._write("start_attempt", lambda: write(task_id, attempt))

    def succeed(self, task_id: str, result_key: str | None = None, result: str | None = None) -> bool:
        write = super().succeed
        return self._write("succeed", lambda: write(task_id, result_key, result))

    def schedule_retry(self, task_id: str, attempt: int, error: str) -> bool:
        write = super().schedule_retry
        return self._write("schedule_retry", lambda: write(task_id, attempt, error))

    def finish_failed(self, task_id: str, status: Any, error: str, attempt: int) -> bool:
        write = super().finish_failed
        return self._write("finish_failed", lambda: write(task_id, status, error, attempt))


class Rig:
    """A Settler for email tasks over a recording channel and store; `handler` is what the task body does."""

    def __init__(self, tmp_path: Any) -> None:
        self.events: list[Event] = []
        self.channel = RecordingChannel(self.events)
        self.store = RecordingStore(self.events)
        self.handler: Callable[[TaskMessage, TaskContext], str | None] = lambda task, ctx: "results/x.txt"
        self.contexts: list[TaskContext] = []
        settings = WorkerSettings(max_attempts=3, retry_delays=DELAYS, delivery_limit=4)
        ticks = count()
        self.settler = Settler(
            "email", self._run_handler, settings, self.store, LocalStorage(tmp_path), self.channel, lambda: next(ticks)
        )

    def _run_handler(self, task: TaskMessage, ctx: TaskContext) -> str | None:
        self.contexts.append(ctx)
        return self.handler(task, ctx)

    def queued(self, task_id: str = TASK_ID) -> None:
        self.store.create_pending(task_id, "tenant", "email")
        self.store.confirm_queued(task_id)
        self.events.clear()

    def status(self, task_id: str = TASK_ID) -> tuple[str, int, str | None] | None:
        rec = self.store.get(task_id)
        return None if rec is None else (rec.status, rec.attempts, rec.error)


def email(task_id: str = TASK_ID) -> bytes:
    payload = EmailTask(to="someone@example.com", subject="hello", text="body")
    return TaskMessage(task_id=task_id, tenant="tenant", created_at=utcnow(), payload=payload).to_bytes()


def delivery(body: bytes | None = None, message_id: str | None = TASK_ID, **headers: Any) -> Delivery:
    body = email() if body is None else body
    return Delivery("email", 1, 7, body, message_id, dict(headers), redelivered=False)


def raises(exc: Exception) -> Callable[[TaskMessage, TaskContext], str | None]:
    def handler(task: TaskMessage, ctx: TaskContext) -> str | None:
        raise exc

    return handler


def dead_copy(reason: str, error: str, attempt: int) -> Event:
    return ("publish", DEAD_EXCHANGE, "email", {H_REASON: reason, H_ERROR: error, H_ATTEMPT: attempt})


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


# --- the handler returned ----------------------------------------------------------------------------


def test_success_marks_succeeded_then_acks(rig):
    rig.queued()
    result = rig.settler.settle(delivery())
    assert (result.outcome, result.task_id, result.attempt, result.reason, result.error) == (
        "succeeded", TASK_ID, 1, None, None,
    )  # fmt: skip
    assert result.duration_s == 1  # the clock was read once before and once after
    assert rig.events == [STARTED, ("store", "succeed"), ("ack", 7)]
    assert rig.status() == ("succeeded", 1, None)
    assert rig.store.get(TASK_ID).result_key == "results/x.txt"


def test_handler_gets_the_attempt_and_a_logger_carrying_the_task(rig):
    rig.queued()
    rig.settler.settle(delivery(**{H_ATTEMPT: 1}))
    (ctx,) = rig.contexts
    assert ctx.attempt == 2 and ctx.store is rig.store
    assert ctx.log.extra == {"task_id": TASK_ID, "kind": "email", "attempt": 2}
    assert ctx.log.logger.name == "qw_workers.email"


def test_another_delivery_finishing_first_makes_this_one_a_duplicate(rig):
    """Given two deliveries of one task running side by side, when the other one succeeds first, then this is a
    duplicate: acked, and the status keeps the other's result."""
    rig.queued()

    def finished_elsewhere(task: TaskMessage, ctx: TaskContext) -> str:
        SqliteStore.succeed(rig.store, TASK_ID, "results/other.txt")
        return "results/mine.txt"

    rig.handler = finished_elsewhere
    result = rig.settler.settle(delivery())
    assert result.outcome == "duplicate" and result.reason is None
    assert rig.events == [STARTED, ("store", "succeed"), ("ack", 7)]
    assert rig.store.get(TASK_ID).result_key == "results/other.txt"


# --- the handler raised ------------------------------------------------------------------------------


@pytest.mark.parametrize(("made", "delay"), [(0, 200), (1, 400)])
def test_retryable_error_with_attempts_left_publishes_a_retry_copy_then_marks_queued_then_acks(rig, made, delay):
    rig.queued()
    rig.handler = raises(RetryableError("451 try later"))
    result = rig.settler.settle(delivery(**{H_ATTEMPT: made}))
    error = "RetryableError: 451 try later"
    assert (result.outcome, result.attempt, result.reason, result.error) == ("retried", made + 1, None, error)
    assert rig.events == [
        STARTED,
        ("publish", RETRY_EXCHANGE, retry_routing_key("email", delay), {H_ATTEMPT: made + 1, H_ERROR: error}),
        ("store", "schedule_retry"),
        ("ack", 7),
    ]
    assert rig.status() == ("queued", made + 1, error)


def test_any_other_exception_counts_as_retryable(rig):
    rig.queued()
    rig.handler = raises(KeyError("boom"))
    assert rig.settler.settle(delivery()).outcome == "retried"


def test_last_attempt_failing_is_dead_lettered_as_exhausted_and_marked_dead(rig):
    rig.queued()
    rig.handler = raises(RetryableError("451"))
    result = rig.settler.settle(delivery(**{H_ATTEMPT: 2}))
    error = "RetryableError: 451"
    assert (result.outcome, result.attempt, result.reason, result.error) == ("dead", 3, "exhausted", error)
    assert rig.events == [
        STARTED,
        dead_copy("exhausted", error, 3),
        ("store", "finish_failed"),
        ("ack", 7),
    ]
    assert rig.status() == ("dead", 3, error)


def test_permanent_error_is_dead_lettered_at_once_and_marked_failed(rig):
    rig.queued()
    rig.handler = raises(PermanentError("550 no such user"))
    result = rig.settler.settle(delivery())
    error = "PermanentError: 550 no such user"
    assert (result.outcome, result.reason, result.error) == ("failed", "permanent", error)
    assert rig.events == [STARTED, dead_copy("permanent", error, 1), ("store", "finish_failed"), ("ack", 7)]
    assert rig.status() == ("failed", 1, error)


# --- the task did not start -------------------------------------------------------------------------


ENDINGS: dict[str, Callable[[SqliteStore], object]] = {
    "succeeded": lambda store: SqliteStore.succeed(store, TASK_ID, "results/x.txt"),
    "failed": lambda store: SqliteStore.finish_failed(store, TASK_ID, "failed", "550", 1),
    "dead": lambda store: SqliteStore.finish_failed(store, TASK_ID, "dead", "451", 3),
}


@pytest.mark.parametrize("ended", sorted(ENDINGS))
def test_a_task_that_already_ended_is_acked_as_a_duplicate_without_running(rig, ended):
    rig.queued()
    ENDINGS[ended](rig.store)
    result = rig.settler.settle(delivery())
    assert (result.outcome, result.reason) == ("duplicate", None)
    assert rig.events == [STARTED, ("ack", 7)]
    assert rig.contexts == []
    assert rig.status()[0] == ended


def test_a_task_with_no_status_record_is_dead_lettered_as_permanent(rig):
    result = rig.settler.settle(delivery())
    error = "no status record for this task"
    assert (result.outcome, result.reason, result.error) == ("failed", "permanent", error)
    assert rig.events == [STARTED, dead_copy("permanent", error, 1), ("ack", 7)]
    assert rig.status() is None and rig.contexts == []


@pytest.mark.parametrize(("deliveries", "outcome"), [(3, "succeeded"), (4, "dead"), (9, "dead")])
def test_the_last_delivery_the_queue_allows_is_dead_lettered_before_running(rig, deliveries, outcome):
    """Given a task whose earlier deliveries all died with their workers (x-delivery-count at the limit of 4), when
    it comes again, then it is dead-lettered and marked dead instead of run: the broker would drop it otherwise."""
    rig.queued()
    result = rig.settler.settle(delivery(**{"x-delivery-count": deliveries}))
    assert result.outcome == outcome
    if outcome == "dead":
        error = "the task was delivered 4 times without finishing"
        assert (result.reason, result.error) == ("delivery-limit", error)
        assert rig.events == [dead_copy("delivery-limit", error, 1), ("store", "finish_failed"), ("ack", 7)]
        assert rig.status() == ("dead", 1, error) and rig.contexts == []


def test_a_delivery_count_that_is_not_a_number_is_ignored(rig):
    rig.queued()
    assert rig.settler.settle(delivery(**{"x-delivery-count": "99"})).outcome == "succeeded"


# --- the body cannot be a task of this kind ---------------------------------------------------------


def image_task() -> bytes:
    payload = ImageTask(source_key="uploads/a.png", source_format="PNG")
    return TaskMessage(task_id=TASK_ID, tenant="tenant", created_at=utcnow(), payload=payload).to_bytes()


@pytest.mark.parametrize(
    ("body", "error_start"),
    [
        (b"not json", "ValidationError: "),
        (b'{"v": 2}', "ValidationError: "),
        (image_task(), "ValueError: a image task"),
    ],
)
def test_an_undecodable_body_is_dead_lettered_and_marked_failed(rig, body, error_start):
    rig.queued()
    result = rig.settler.settle(delivery(body))
    assert (result.outcome, result.task_id, result.attempt, result.reason) == ("failed", TASK_ID, 1, "undecodable")
    assert result.error.startswith(error_start)
    assert rig.events == [dead_copy("undecodable", result.error, 1), ("store", "finish_failed"), ("ack", 7)]
    assert rig.status() == ("failed", 1, result.error)


def test_an_undecodable_body_without_a_message_id_writes_no_status(rig):
    result = rig.settler.settle(delivery(b"not json", message_id=None))
    assert (result.outcome, result.task_id, result.reason) == ("failed", None, "undecodable")
    assert rig.events == [dead_copy("undecodable", result.error, 1), ("ack", 7)]


def test_an_undecodable_body_is_acked_even_when_the_store_is_down(rig):
    """The status write is best effort here: a poison message must not come back for ever."""
    rig.queued()
    rig.store.down.add("finish_failed")
    result = rig.settler.settle(delivery(b"not json"))
    assert (result.outcome, result.reason) == ("failed", "undecodable")
    assert rig.events == [dead_copy("undecodable", result.error, 1), ("ack", 7)]
    assert rig.status() == ("queued", 0, None)


# --- the store or the broker failed while settling -----------------------------------------------------


@pytest.mark.parametrize(
    ("down", "handler", "before"),
    [
        ("start_attempt", None, []),
        ("succeed", None, [STARTED]),
        ("schedule_retry", raises(RetryableError("451")), [STARTED, ("publish", RETRY_EXCHANGE)]),
        ("finish_failed", raises(PermanentError("550")), [STARTED, ("publish", DEAD_EXCHANGE)]),
    ],
)
def test_store_down_hands_the_message_back(rig, down, handler, before):
    """Given the store goes down at any status write, then the message is requeued (not acked) to be tried later."""
    rig.queued()
    rig.store.down.add(down)
    rig.handler = handler or rig.handler
    result = rig.settler.settle(delivery())
    assert (result.outcome, result.reason, result.error) == ("requeued", None, "StoreUnavailable: the database is down")
    assert [e[:2] for e in rig.events] == [*before, ("requeue", 7)]


def test_a_copy_the_broker_refuses_hands_the_message_back_without_a_status_write(rig):
    rig.queued()
    rig.channel.fail["publish"] = RuntimeError("nacked")
    rig.handler = raises(RetryableError("451"))
    result = rig.settler.settle(delivery())
    assert (result.outcome, result.error) == ("requeued", "RuntimeError: nacked")
    assert rig.events == [STARTED, ("requeue", 7)]
    assert rig.status()[0] == "processing"


@pytest.mark.parametrize(
    ("call", "handler", "said"),
    [
        ("ack", None, [STARTED, ("store", "succeed")]),
        ("publish", raises(RetryableError("451")), [STARTED]),
        ("ack", raises(RetryableError("451")), [STARTED, ("publish", RETRY_EXCHANGE), ("store", "schedule_retry")]),
    ],
)
def test_a_lost_connection_propagates_and_nothing_more_is_done(rig, call, handler, said):
    """The broker redelivers the message itself; the store turns the repeat into a duplicate if it had ended."""
    rig.queued()
    rig.channel.fail[call] = ConnectionLost("connection closed")
    rig.handler = handler or rig.handler
    with pytest.raises(ConnectionLost):
        rig.settler.settle(delivery())
    assert [e[:2] for e in rig.events] == said


def test_a_lost_connection_while_dead_lettering_an_undecodable_body_propagates(rig):
    rig.channel.fail["publish"] = ConnectionLost("connection closed")
    with pytest.raises(ConnectionLost):
        rig.settler.settle(delivery(b"not json"))
    assert rig.events == []
