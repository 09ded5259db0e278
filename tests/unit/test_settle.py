"""The settle machine, branch by branch (qw_workers.settle's docstring), without a broker.

The channel is a recording fake (it is the seam: tests/integration runs the same machine on a real broker); the
store is the real SQLite store in memory, wrapped to record its writes and, when asked, to be down (for good or
for its next N calls). Both, and the backoff's pauses, write into one event list, so each path's order (retry:
copy -> status -> ack; dead letter: status -> copy -> ack) is asserted, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import Any

import pytest
from qw_core import delays as ladder
from qw_core.messages import EmailTask, ImageTask, TaskMessage, utcnow
from qw_core.settings import WorkerSettings
from qw_core.storage import LocalStorage
from qw_core.store import SqliteStore, StoreUnavailable
from qw_core.topology import DEAD_EXCHANGE, H_ATTEMPT, H_DEFERRED, H_ERROR, H_REASON
from qw_workers.context import TaskContext
from qw_workers.errors import Deferred, PermanentError, RetryableError
from qw_workers.middleware import Delivery
from qw_workers.settle import ConnectionLost, Settler, StoreBackoff

TASK_ID = "t1"
DELAYS = [200, 400]
WALL = 1_700_000_000.0  # the rig's wall clock (epoch seconds)
RETRY = ladder.ENTRY_EXCHANGE  # retries go through the delay ladder
Event = tuple[Any, ...]
STARTED: Event = ("store", "start_attempt")
PAUSE: Event = ("pause",)


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
    """The real store in memory; records the status writes, and raises StoreUnavailable for those in `down`, or
    for the next n calls of those in `down_for` (name -> n)."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__(":memory:")
        self.events = events
        self.down: set[str] = set()
        self.down_for: dict[str, int] = {}

    def _write(self, name: str, write: Callable[[], bool]) -> bool:
        if self.down_for.get(name):
            self.down_for[name] -= 1
            raise StoreUnavailable("the database is down")
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

    def schedule_retry(self, task_id: str, attempt: int, error: str, not_before: float | None = None) -> bool:
        write = super().schedule_retry
        return self._write("schedule_retry", lambda: write(task_id, attempt, error, not_before))

    def finish_failed(self, task_id: str, status: Any, error: str, attempt: int) -> bool:
        write = super().finish_failed
        return self._write("finish_failed", lambda: write(task_id, status, error, attempt))


class Rig:
    """A Settler for email tasks over a recording channel and store; `handler` is what the task body does.

    The backoff runs on a fake clock that only `pause` moves (jitter off: each wait is the full delay); `pauses`
    lists the waits, `stopping` makes a pause report that the worker is stopping."""

    def __init__(self, tmp_path: Any) -> None:
        self.events: list[Event] = []
        self.channel = RecordingChannel(self.events)
        self.store = RecordingStore(self.events)
        self.handler: Callable[[TaskMessage, TaskContext], str | None] = lambda task, ctx: "results/x.txt"
        self.contexts: list[TaskContext] = []
        self.now = 0.0
        self.pauses: list[float] = []
        self.stopping = False
        self.jitter_draw = 0.5  # the middle of the jitter range: the retry delay exactly
        self.backoff = StoreBackoff(clock=lambda: self.now, rand=lambda: 1.0)
        settings = WorkerSettings(max_attempts=3, retry_delays=DELAYS, delivery_limit=4)
        ticks = count()
        self.settler = Settler(
            "email",
            self._run_handler,
            settings,
            self.store,
            LocalStorage(tmp_path),
            self.channel,
            lambda: next(ticks),
            self.backoff,
            self._pause,
            wall=lambda: WALL,
            rand=lambda: self.jitter_draw,
        )

    def _pause(self, seconds: float) -> bool:
        self.events.append(PAUSE)
        self.pauses.append(seconds)
        self.now += seconds
        return self.stopping

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
        ("publish", RETRY, ladder.routing_key(delay, "email"), retry_headers(made + 1, error, delay)),
        ("store", "schedule_retry"),
        ("ack", 7),
    ]
    assert rig.status() == ("queued", made + 1, error)
    assert rig.store.get(TASK_ID).not_before == WALL + delay / 1000


def retry_headers(attempt: int, error: str, delay_ms: float) -> dict[str, Any]:
    """What a retry copy carries: the attempt, the error, when it is due; no dead-lettering history."""
    due = {ladder.H_NOT_BEFORE: round(WALL * 1000 + delay_ms)}
    return {**dict.fromkeys(ladder.DEATH_HEADERS), H_ATTEMPT: attempt, H_ERROR: error, **due}


@pytest.mark.parametrize(("draw", "delay"), [(0.0, 160), (1.0, 240), (0.25, 180)])
def test_the_retry_delay_is_jittered_by_the_settings_fraction(rig, draw, delay):
    """QW_RETRY_JITTER 0.2 (the default): 200 ms becomes 160..240 ms, uniformly."""
    rig.queued()
    rig.jitter_draw = draw
    rig.handler = raises(RetryableError("451"))
    rig.settler.settle(delivery())
    publish = next(e for e in rig.events if e[0] == "publish")
    assert publish[2] == ladder.routing_key(delay, "email")
    assert publish[3][ladder.H_NOT_BEFORE] == round(WALL * 1000 + delay)


@pytest.mark.parametrize("ahead_ms", [1, 2_500, 90_000_000])
def test_a_task_not_due_goes_back_through_the_ladder_without_an_attempt(rig, ahead_ms):
    """Given a delivery whose not_before is ahead of the worker's clock (clock skew, or longer than the ladder
    holds), then it is not run: a copy waits the time left, the original is acked, the status is untouched."""
    rig.queued()
    ran = []
    rig.handler = lambda task, ctx: ran.append(task) or "results/x.txt"
    result = rig.settler.settle(delivery(**{ladder.H_NOT_BEFORE: round(WALL * 1000) + ahead_ms, "x-death": [{}]}))
    assert result.outcome == "delayed" and not ran
    headers = {**dict.fromkeys(ladder.DEATH_HEADERS)}
    assert rig.events == [("publish", RETRY, ladder.routing_key(ahead_ms, "email"), headers), ("ack", 7)]
    assert rig.status() == ("queued", 0, None)


def test_a_task_whose_time_has_come_runs(rig):
    rig.queued()
    result = rig.settler.settle(delivery(**{ladder.H_NOT_BEFORE: round(WALL * 1000)}))
    assert result.outcome == "succeeded"


@pytest.mark.parametrize(("wait", "draw", "delay"), [(0.05, 0.0, 50), (30.0, 0.0, 30_000), (30.0, 1.0, 36_000)])
def test_a_deferred_task_goes_back_through_the_ladder_after_its_wait_and_counts_the_deferral(rig, wait, draw, delay):
    """Deferred (a rate limit) is no failure: on the last attempt it still goes back, after its wait (jittered
    upwards only: QW_RETRY_JITTER 0.2 makes 30 s 30..36 s), marked x-qw-deferred + 1."""
    rig.queued()
    rig.jitter_draw = draw
    rig.handler = raises(Deferred("over the rate", wait))
    result = rig.settler.settle(delivery(**{H_ATTEMPT: 2}))  # the third of 3 attempts
    error = "Deferred: over the rate"
    assert (result.outcome, result.attempt, result.reason) == ("deferred", 3, None)
    headers = {**retry_headers(3, error, delay), H_DEFERRED: 1}
    assert rig.events == [
        STARTED,
        ("publish", RETRY, ladder.routing_key(delay, "email"), headers),
        ("store", "schedule_retry"),
        ("ack", 7),
    ]
    assert rig.status() == ("queued", 3, error)


@pytest.mark.parametrize(("deferred", "outcome"), [(5, "retried"), (4, "dead")])
def test_deferrals_do_not_use_attempts(rig, deferred, outcome):
    """Seven runs of which five were deferrals are the second attempt (of 3): a failure is retried; with four
    deferrals it is the third, and it is dead."""
    rig.queued()
    rig.handler = raises(RetryableError("451"))
    result = rig.settler.settle(delivery(**{H_ATTEMPT: 6, H_DEFERRED: deferred}))
    assert result.outcome == outcome and result.attempt == 7


def test_any_other_exception_counts_as_retryable(rig):
    rig.queued()
    rig.handler = raises(KeyError("boom"))
    assert rig.settler.settle(delivery()).outcome == "retried"


def test_last_attempt_failing_is_marked_dead_then_dead_lettered_as_exhausted(rig):
    rig.queued()
    rig.handler = raises(RetryableError("451"))
    result = rig.settler.settle(delivery(**{H_ATTEMPT: 2}))
    error = "RetryableError: 451"
    assert (result.outcome, result.attempt, result.reason, result.error) == ("dead", 3, "exhausted", error)
    assert rig.events == [
        STARTED,
        ("store", "finish_failed"),
        dead_copy("exhausted", error, 3),
        ("ack", 7),
    ]
    assert rig.status() == ("dead", 3, error)


def test_permanent_error_is_marked_failed_then_dead_lettered_at_once(rig):
    rig.queued()
    rig.handler = raises(PermanentError("550 no such user"))
    result = rig.settler.settle(delivery())
    error = "PermanentError: 550 no such user"
    assert (result.outcome, result.reason, result.error) == ("failed", "permanent", error)
    assert rig.events == [STARTED, ("store", "finish_failed"), dead_copy("permanent", error, 1), ("ack", 7)]
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


def test_a_task_cancelled_before_it_started_is_acked_and_skipped_without_a_status_change(rig):
    rig.queued()
    assert rig.store.cancel(TASK_ID, "tenant").status == "cancelled"
    rig.events.clear()
    result = rig.settler.settle(delivery())
    assert (result.outcome, result.reason) == ("cancelled", None)
    assert rig.events == [STARTED, ("ack", 7)]  # no dead letter, no status write
    assert rig.contexts == []  # the body never ran
    assert rig.status() == ("cancelled", 0, "cancelled by the client before it started")


def test_a_task_with_no_status_record_is_dead_lettered_as_permanent(rig):
    result = rig.settler.settle(delivery())
    error = "no status record for this task"
    assert (result.outcome, result.reason, result.error) == ("failed", "permanent", error)
    assert rig.events == [STARTED, dead_copy("permanent", error, 1), ("ack", 7)]
    assert rig.status() is None and rig.contexts == []


@pytest.mark.parametrize(("deliveries", "outcome"), [(3, "succeeded"), (4, "dead"), (9, "dead")])
def test_the_last_delivery_the_queue_allows_is_marked_dead_and_dead_lettered_before_running(rig, deliveries, outcome):
    """Given a task whose earlier deliveries all died with their workers (x-delivery-count at the limit of 4), when
    it comes again, then it is dead-lettered and marked dead instead of run: the broker would drop it otherwise."""
    rig.queued()
    result = rig.settler.settle(delivery(**{"x-delivery-count": deliveries}))
    assert result.outcome == outcome
    if outcome == "dead":
        error = "the task was delivered 4 times without finishing"
        assert (result.reason, result.error) == ("delivery-limit", error)
        assert rig.events == [("store", "finish_failed"), dead_copy("delivery-limit", error, 1), ("ack", 7)]
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
    assert rig.events == [("store", "finish_failed"), dead_copy("undecodable", result.error, 1), ("ack", 7)]
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


# --- the store failed while settling ----------------------------------------------------------------------

DOWN = "StoreUnavailable: the database is down"


def test_store_down_before_the_task_ran_hands_it_back_after_the_backoff(rig):
    """Given the store is down when the attempt would start, then nothing ran and the message goes back only after
    the backoff's first wait (no hot loop)."""
    rig.queued()
    rig.store.down.add("start_attempt")
    result = rig.settler.settle(delivery())
    assert (result.outcome, result.reason, result.error) == ("requeued", None, DOWN)
    assert rig.events == [PAUSE, ("requeue", 7)]
    assert rig.pauses == [0.5] and rig.backoff.down
    assert rig.status() == ("queued", 0, None) and rig.contexts == []


def test_the_handlers_own_store_call_failing_is_an_outage_not_a_failed_attempt(rig):
    """Given the email handler's claim cannot reach the store, then no retry copy and no status change: the message
    is handed back after the backoff and the attempt is tried again as the same attempt."""
    rig.queued()
    rig.handler = raises(StoreUnavailable("the database is down"))
    result = rig.settler.settle(delivery())
    assert (result.outcome, result.error) == ("requeued", DOWN)
    assert rig.events == [STARTED, PAUSE, ("requeue", 7)]
    assert rig.status() == ("processing", 1, None)
    again = rig.settler.settle(delivery(**{"x-delivery-count": 1}))  # the same attempt comes back
    assert again.outcome == "requeued" and rig.status() == ("processing", 1, None)


@pytest.mark.parametrize(
    ("handler", "write", "outcome", "after"),
    [
        (None, "succeed", "succeeded", []),
        (raises(PermanentError("550")), "finish_failed", "failed", [("publish", DEAD_EXCHANGE)]),
        (raises(RetryableError("451")), "finish_failed", "dead", [("publish", DEAD_EXCHANGE)]),
    ],
)
def test_an_outcome_write_is_held_and_retried_after_each_backoff_not_handed_back(rig, handler, write, outcome, after):
    """Given the task reached its outcome and the store is down for the next two tries of its write, then the
    message is held (no requeue, the handler does not run again), the write is retried after 0.5 s and 1 s, and
    the dead-letter copy (if any) comes only after the status: never a copy for a message that may come back."""
    rig.queued()
    rig.handler = handler or rig.handler
    rig.store.down_for[write] = 2
    result = rig.settler.settle(delivery(**{H_ATTEMPT: 2}))
    assert result.outcome == outcome
    assert [e[:2] for e in rig.events] == [STARTED, PAUSE, PAUSE, ("store", write), *after, ("ack", 7)]
    assert rig.pauses == [0.5, 1.0] and len(rig.contexts) == 1
    assert rig.status()[0] == outcome and not rig.backoff.down  # the write that got through reset the backoff


def test_the_last_delivery_is_never_handed_back_while_the_store_is_down(rig):
    """Given the delivery the quorum queue allows last and the store down for three tries, then it is held until
    the status is written (handing it back would let the broker drop it with the status left behind)."""
    rig.queued()
    rig.store.down_for["finish_failed"] = 3
    result = rig.settler.settle(delivery(**{"x-delivery-count": 4}))
    assert (result.outcome, result.reason) == ("dead", "delivery-limit")
    assert [e[:2] for e in rig.events] == [PAUSE, PAUSE, PAUSE, ("store", "finish_failed"), ("publish", DEAD_EXCHANGE),
                                           ("ack", 7)]  # fmt: skip
    assert rig.pauses == [0.5, 1.0, 2.0]
    assert rig.status()[0] == "dead"


@pytest.mark.parametrize(
    ("headers", "handler", "before"),
    [({"x-delivery-count": 4}, None, []), ({}, raises(PermanentError("550")), [STARTED])],
)
def test_a_held_message_goes_back_without_a_dead_letter_when_the_worker_stops(rig, headers, handler, before):
    """Given the store is down at a dead/failed write and the worker is stopping, then the message is handed back
    and no dead-letter copy exists: the broker keeps (or, at the limit, dead-letters) the only copy."""
    rig.queued()
    rig.handler = handler or rig.handler
    rig.store.down.add("finish_failed")
    rig.stopping = True
    result = rig.settler.settle(delivery(**headers))
    assert (result.outcome, result.error) == ("requeued", DOWN)
    assert rig.events == [*before, PAUSE, PAUSE, ("requeue", 7)]
    assert not any(e[0] == "publish" for e in rig.events)


def test_a_retry_copy_confirmed_is_never_followed_by_a_requeue_even_if_its_status_write_fails(rig):
    """Given the retry copy is confirmed and the store is down for `schedule_retry`, then the original is acked
    (the copy carries the task; a requeue would leave two live copies) and the status says processing until the
    copy starts."""
    rig.queued()
    rig.store.down.add("schedule_retry")
    rig.handler = raises(RetryableError("451"))
    result = rig.settler.settle(delivery())
    assert result.outcome == "retried"
    assert [e[:2] for e in rig.events] == [STARTED, ("publish", RETRY), ("ack", 7)]
    assert rig.status() == ("processing", 1, None) and rig.backoff.down
    rig.store.down.clear()
    rig.handler = lambda task, ctx: "results/x.txt"
    retried = rig.settler.settle(delivery(**{H_ATTEMPT: 1}))  # the copy, after its delay
    assert retried.outcome == "succeeded" and rig.status() == ("succeeded", 2, None)


def test_while_the_store_rests_a_new_delivery_waits_for_the_backoff_before_touching_it(rig):
    """Given another thread saw the store fail (the backoff is shared), when a delivery comes, then it is held
    for what is left of the wait before its first store call, and the call that succeeds resets the backoff."""
    rig.queued()
    assert rig.backoff.failed() == 0.5
    rig.now += 0.2
    result = rig.settler.settle(delivery())
    assert result.outcome == "succeeded"
    assert rig.events == [PAUSE, STARTED, ("store", "succeed"), ("ack", 7)]
    assert rig.pauses == [pytest.approx(0.3)] and not rig.backoff.down


def test_a_stop_while_waiting_for_the_store_hands_the_delivery_back_untouched(rig):
    rig.queued()
    rig.backoff.failed()
    rig.stopping = True
    assert rig.settler.settle(delivery()).outcome == "requeued"
    assert rig.events == [PAUSE, ("requeue", 7)] and rig.status() == ("queued", 0, None)


def test_the_backoff_doubles_per_failure_up_to_its_cap_and_a_success_resets_it():
    heard: list[bool] = []
    backoff = StoreBackoff(base=0.5, cap=30.0, clock=lambda: 100.0, rand=lambda: 1.0, listener=heard.append)
    assert not backoff.down and backoff.remaining() == 0
    assert [backoff.failed() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.down and backoff.remaining() == 30
    backoff.succeeded()
    backoff.succeeded()  # only the first success after a failure is news
    assert not backoff.down and backoff.remaining() == 0 and backoff.failed() == 0.5
    assert heard == [False] * 9 + [True, False]
    jittered = StoreBackoff(rand=lambda: 0.0)
    assert jittered.failed() == 0.25  # full jitter in [d/2, d]


# --- stale and racing deliveries ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("made", "headers", "outcome"),
    [
        ("retry recorded", {}, "duplicate"),  # the original after a lost ack: its retry copy carries the task
        ("retry started", {}, "duplicate"),  # a later attempt began
        ("crashed mid-attempt", {}, "succeeded"),  # the same attempt, still processing: run it again
        ("retry recorded", {H_ATTEMPT: 1}, "succeeded"),  # the retry copy itself
    ],
)
def test_a_stale_delivery_of_an_earlier_attempt_is_a_duplicate(rig, made, headers, outcome):
    rig.queued()
    SqliteStore.start_attempt(rig.store, TASK_ID, 1)
    if made in ("retry recorded", "retry started"):
        SqliteStore.schedule_retry(rig.store, TASK_ID, 1, "451")
    if made == "retry started":
        SqliteStore.start_attempt(rig.store, TASK_ID, 2)
    rig.events.clear()
    result = rig.settler.settle(delivery(**headers))
    assert result.outcome == outcome
    assert (rig.contexts == []) == (outcome == "duplicate")


def test_a_dead_end_that_finds_the_task_already_ended_is_not_dead_lettered(rig):
    """Given two copies of one task, when this one fails for good after the other succeeded, then it is a
    duplicate: no dead letter for a task that succeeded."""
    rig.queued()

    def failed_after_the_other_succeeded(task: TaskMessage, ctx: TaskContext) -> str:
        SqliteStore.succeed(rig.store, TASK_ID, "results/other.txt")
        raise PermanentError("550")

    rig.handler = failed_after_the_other_succeeded
    result = rig.settler.settle(delivery())
    assert result.outcome == "duplicate" and result.reason is None
    assert rig.events == [STARTED, ("store", "finish_failed"), ("ack", 7)]
    assert rig.status()[0] == "succeeded"


# --- the broker failed while settling -------------------------------------------------------------------


def test_a_copy_the_broker_refuses_hands_the_message_back_after_a_delay_without_a_status_write(rig):
    rig.queued()
    rig.channel.fail["publish"] = RuntimeError("nacked")
    rig.handler = raises(RetryableError("451"))
    result = rig.settler.settle(delivery())
    assert (result.outcome, result.error) == ("requeued", "RuntimeError: nacked")
    assert rig.events == [STARTED, PAUSE, ("requeue", 7)]
    assert rig.pauses == [0.5]
    assert rig.status()[0] == "processing"


@pytest.mark.parametrize(
    ("call", "handler", "said"),
    [
        ("ack", None, [STARTED, ("store", "succeed")]),
        ("publish", raises(RetryableError("451")), [STARTED]),
        ("ack", raises(RetryableError("451")), [STARTED, ("publish", RETRY), ("store", "schedule_retry")]),
        ("publish", raises(PermanentError("550")), [STARTED, ("store", "finish_failed")]),
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
        rig.settler.settle(delivery(b"not json", message_id=None))
    assert rig.events == []
