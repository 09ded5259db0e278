"""Settling one delivery: run its task and decide, in the right order, what the broker and the store are told.

This is the worker's state machine, kept apart from pika so that every path is tested without a broker. It
speaks to the broker only through a `Channel` (ack, requeue, publish a confirmed copy) and to the status store.
Every path ends in exactly one final state, whichever step fails; the orders, by the `Result.outcome` they return:

- the handler returned: mark it succeeded (held, see below), ack -> `succeeded`; if another delivery of the same
  task finished first, ack -> `duplicate`;
- not due yet (its `x-qw-not-before` is ahead of this worker's clock: clock skew, or a delay past the ladder's
  reach): a copy back through the delay ladder for the time left (confirmed), ack -> `delayed`; not an attempt,
  no status write. If the copy is refused the original is handed back, like any refused copy;
- the handler raised and attempts are left: publish a copy through the delay ladder (confirmed; the kind's
  delay, jittered), mark it queued
  (best effort), ack -> `retried`. Once the copy is confirmed it carries the task, so the original is acked
  whatever the store says, never handed back (that was two live copies); a status write that failed leaves
  'processing' until the copy starts. If the copy is refused, nothing was written: hand the original back;
- no attempts left: mark it dead (held), dead-letter it ("exhausted"), ack -> `dead`; PermanentError: the same
  with "permanent" and `failed`. Status before the dead-letter copy: a store that is down means no copy yet, so a
  message handed back is never dead-lettered twice. The trade-off: if the broker refuses or loses the copy after
  the status is written, the redelivery finds the task ended and acks it as a duplicate; the status row (with the
  error) is the record, the dead-letter queue may miss that one copy. Never two copies, never a lost status;
- the last delivery the quorum queue allows (x-delivery-count at the limit): every earlier delivery died with its
  worker or was handed back, so it is not run: mark it dead (held), dead-letter it ("delivery-limit"), ack ->
  `dead`. It is never handed back while the store is down (the broker would drop it behind our back, the status
  left 'processing'); only a worker stopped mid-outage hands it back, and then the broker dead-letters it itself
  (x-death: delivery_limit), the one case whose status stays behind (see RELIABILITY.md);
- the task already ended, or this delivery is stale (start_attempt refused: a later attempt began, or this one's
  retry copy was recorded): ack -> `duplicate`; a task cancelled before it started: ack, nothing run -> `cancelled`;
  with no status record at all, dead-letter it ("permanent") -> `failed`; a dead/failed write that finds the task
  already ended (another copy finished it) acks -> `duplicate`, no dead letter;
- undecodable body, or a task of another kind: mark it failed if the message has an id (best effort: a store
  that is down must not keep a poison message alive), dead-letter it ("undecodable"), ack -> `failed`;
- the store is down before the task ran (start_attempt, a status read) or the handler's own store call raised
  StoreUnavailable: nothing irreversible is recorded, so wait the shared backoff, then hand the message back
  (requeue) -> `requeued`; it does not count as a failed attempt;
- `Deferred` (a rate limit): a copy through the delay ladder for its delay, with x-qw-deferred + 1 (the
  attempts left are counted without deferrals), then the ack -> `deferred`;
- the store is down at a write that records an outcome already reached ("held": succeeded, dead, failed): the
  message is held and the write retried after each backoff (rerunning the handler would redo its work, and an
  email's send would be in doubt); if the worker stops meanwhile it is handed back -> `requeued`;
- a copy the broker refused (not a lost connection): wait a short delay, hand the message back -> `requeued`;
- the channel raised ConnectionLost: it propagates; the broker redelivers the message and the store turns
  the repeat into a duplicate.

The backoff (`StoreBackoff`) is one per worker, shared by its threads: exponential with jitter (0.5 s doubling to
30 s), reset by the first store call that succeeds. While it runs, a thread about to start a new delivery waits
for it first, so the deliveries the worker holds (its prefetch) stay held and no new ones come in.

Every kind plugs in here as a `Handler` made from its registry entry (qw_workers.handlers.make_handler): a kind
needs nothing but that handler and a `Settler` built for it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from qw_core import delays as ladder
from qw_core.messages import TaskMessage
from qw_core.registry import RetryPolicy
from qw_core.settings import WorkerSettings
from qw_core.storage import Storage
from qw_core.store import StoreUnavailable, TaskStore
from qw_core.topology import DEAD_EXCHANGE, H_ATTEMPT, H_DEFERRED, H_ERROR, H_REASON

from qw_workers.context import Handler, Output, TaskContext
from qw_workers.middleware import Delivery, Result
from qw_workers.policy import attempt_of, decide_failure, deferrals_of, describe, reconnect_delay

log = logging.getLogger("qw_workers.settle")
T = TypeVar("T")
REFUSED_COPY_DELAY = 0.5  # before handing back a message whose copy the broker refused (not a store outage)


class ConnectionLost(Exception):
    """The connection a delivery came on is gone; the broker will redeliver the message."""


class Channel(Protocol):
    """The broker as settling sees it. Each call returns once the broker has it, or raises ConnectionLost."""

    def ack(self, d: Delivery) -> None: ...

    def requeue(self, d: Delivery) -> None: ...

    def publish_copy(self, d: Delivery, exchange: str, routing_key: str, headers: dict[str, Any]) -> None:
        """Same body and message_id, the delivery's headers updated with `headers` (a None value removes that
        header); returns once confirmed."""
        ...


class StoreBackoff:
    """How long the store is left alone after it failed; one per worker, shared by its threads (thread-safe).

    Each failure doubles the wait (jittered, `base` to `cap` seconds, policy.reconnect_delay); the first store call
    that succeeds resets it. `listener(up)` hears every failure (False) and each recovery (True), e.g. metrics.
    """

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        listener: Callable[[bool], None] | None = None,
    ) -> None:
        self.base, self.cap = base, cap
        self._clock, self._rand, self._listener = clock, rand, listener
        self._lock = threading.Lock()
        self._failures = 0
        self._until = 0.0

    def failed(self) -> float:
        """The store just failed: returns how long to wait before touching it (or the message) again."""
        with self._lock:
            self._failures += 1
            delay = reconnect_delay(self._failures, self.base, self.cap, self._rand)
            self._until = max(self._until, self._clock() + delay)
        if self._listener:
            self._listener(False)
        return delay

    def succeeded(self) -> None:
        with self._lock:
            was_down, self._failures, self._until = self._failures > 0, 0, 0.0
        if was_down and self._listener:
            self._listener(True)

    @property
    def down(self) -> bool:
        """The last store call failed and none has succeeded since."""
        with self._lock:
            return self._failures > 0

    def remaining(self) -> float:
        """Seconds until the store may be tried again (0 when it is up or the wait is over)."""
        with self._lock:
            return max(0.0, self._until - self._clock()) if self._failures else 0.0


class _StoreDown(Exception):
    """A store call failed; `delay` is the backoff to wait before the message or the store is touched again."""

    def __init__(self, cause: BaseException, delay: float) -> None:
        super().__init__(describe(cause))
        self.delay = delay


class _Settled(NamedTuple):
    """A branch's verdict; `Settler.settle` adds the attempt and the duration to make the `Result`."""

    outcome: str
    task_id: str | None
    reason: str | None = None
    error: str | None = None


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


@dataclass(frozen=True)
class Settler:
    """Settles the deliveries of one task kind; one instance serves every worker thread (its only state is the
    shared `backoff`).

    `clock` times the task for `Result.duration_s` and `wall` (epoch seconds) says whether a task is due (tests
    pass fake ones; `rand` draws the retry jitter). `pause(seconds)` waits and returns True when the worker is
    stopping (then a held message is handed back at once); the runtime passes its stop event's `wait`. `policy`: the
    kind's own retry policy (SDK kinds); its unset parts come from the settings (QW_MAX_ATTEMPTS, QW_RETRY_DELAYS,
    QW_RETRY_JITTER).
    """

    kind: str
    handler: Handler
    settings: WorkerSettings
    store: TaskStore
    storage: Storage
    channel: Channel
    clock: Callable[[], float] = time.monotonic
    backoff: StoreBackoff = field(default_factory=StoreBackoff)
    pause: Callable[[float], bool] = _sleep
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    wall: Callable[[], float] = time.time
    rand: Callable[[], float] = random.random

    @property
    def retry_policy(self) -> RetryPolicy:
        """The policy in force: the kind's own, completed from the settings."""
        s = self.settings
        return self.policy.resolve(s.max_attempts, s.retry_delays, s.retry_jitter)

    def settle(self, d: Delivery) -> Result:
        """Run and settle `d`; the outcome says which branch (module docstring) it took. Raises ConnectionLost."""
        started = self.clock()
        attempt = attempt_of(d.headers)
        try:
            task = self._decode(d)
        except Exception as exc:
            verdict = self._undecodable(d, attempt, describe(exc))
        else:
            verdict = self._run(d, task.task_id, attempt, task)
        return Result(verdict.outcome, verdict.task_id, attempt, self.clock() - started, verdict.reason, verdict.error)

    def _decode(self, d: Delivery) -> TaskMessage:
        task = TaskMessage.from_bytes(d.body)
        if task.kind != self.kind:
            raise ValueError(f"a {task.kind} task on the {self.kind} queue")
        return task

    def _undecodable(self, d: Delivery, attempt: int, error: str) -> _Settled:
        if d.message_id:
            self._best_effort(lambda: self.store.finish_failed(str(d.message_id), "failed", error, attempt))
        self._dead_letter(d, "undecodable", error, attempt)
        self.channel.ack(d)
        return _Settled("failed", d.message_id, "undecodable", error)

    def _run(self, d: Delivery, task_id: str, attempt: int, task: TaskMessage) -> _Settled:
        """A store outage hands the message back after the backoff; so does a copy the broker refused."""
        wait = self.backoff.remaining()
        if wait and self.pause(wait):  # the store is resting: hold this delivery, take no new one
            self.channel.requeue(d)
            return _Settled("requeued", task_id, error="the worker is stopping and the store is down")
        try:
            return self._attempt(d, task_id, attempt, task)
        except ConnectionLost:
            raise
        except _StoreDown as down:
            log.warning(
                "the store is down (%s); handing the task back in %.1fs",
                down,
                down.delay,
                extra={"task_id": task_id, "kind": self.kind},
            )
            self.pause(down.delay)
            self.channel.requeue(d)
            return _Settled("requeued", task_id, error=str(down))
        except Exception as exc:
            log.exception("could not settle the task; requeueing it", extra={"task_id": task_id, "kind": self.kind})
            self.pause(REFUSED_COPY_DELAY)
            self.channel.requeue(d)
            return _Settled("requeued", task_id, error=describe(exc))

    def _attempt(self, d: Delivery, task_id: str, attempt: int, task: TaskMessage) -> _Settled:
        due_ms = ladder.not_before_ms(d.headers)
        if due_ms is not None and due_ms > self.wall() * 1000:
            self._through_ladder(d, due_ms - self.wall() * 1000, {})
            self.channel.ack(d)
            return _Settled("delayed", task_id)
        if self.last_delivery(d):
            # Every earlier delivery died with its worker (crash loop, OOM kill) or was handed back. If this one
            # goes back too, the broker dead-letters it behind our back and the status says "processing" for ever.
            error = f"the task was delivered {self.settings.delivery_limit} times without finishing"
            return self._dead(d, task_id, attempt, "dead", "delivery-limit", error)
        if not self._store(lambda: self.store.start_attempt(task_id, attempt)):
            return self._not_started(d, task_id, attempt)
        try:
            output = self.handler(task, self._context(task, attempt))
        except StoreUnavailable as exc:  # the handler's own store call: an outage, not a failed attempt
            raise _StoreDown(exc, self.backoff.failed()) from exc
        except Exception as exc:
            return self._failed(d, task_id, attempt, exc)
        out = output if isinstance(output, Output) else Output(result_key=output)
        # False: another delivery of the same task finished first (it ran side by side with this one).
        outcome = (
            "succeeded" if self._held(lambda: self.store.succeed(task_id, out.result_key, out.result)) else "duplicate"
        )
        self.channel.ack(d)
        return _Settled(outcome, task_id)

    def _not_started(self, d: Delivery, task_id: str, attempt: int) -> _Settled:
        """The store refused it: it already ended or this delivery is stale (a duplicate), it was cancelled before
        it started (skipped: acked, nothing run, no status change), or it was never recorded."""
        rec = self._store(lambda: self.store.get(task_id))
        if rec is None:
            error = "no status record for this task"
            self._dead_letter(d, "permanent", error, attempt)
            self.channel.ack(d)
            return _Settled("failed", task_id, "permanent", error)
        self.channel.ack(d)
        if rec.status == "cancelled":
            return _Settled("cancelled", task_id, error="skipped: cancelled before it started")
        return _Settled("duplicate", task_id)

    def _failed(self, d: Delivery, task_id: str, attempt: int, exc: Exception) -> _Settled:
        error = describe(exc)
        p = self.retry_policy
        assert p.max_attempts is not None and p.delays_ms is not None  # resolved from the settings
        deferred = deferrals_of(d.headers)
        jitter = p.jitter or 0.0
        decision = decide_failure(exc, attempt - deferred, p.max_attempts, p.delays_ms, p.retry_on, jitter, self.rand)
        if decision.action in ("retry", "defer"):
            due = self.wall() + decision.delay_ms / 1000
            headers: dict[str, Any] = {H_ATTEMPT: attempt, H_ERROR: error, ladder.H_NOT_BEFORE: round(due * 1000)}
            if decision.action == "defer":
                headers[H_DEFERRED] = deferred + 1  # run numbers stay monotonic; attempts are runs - deferrals
            self._through_ladder(d, decision.delay_ms, headers)
            # Confirmed: the copy carries the task now. Never hand the original back (two live copies).
            self._best_effort(lambda: self.store.schedule_retry(task_id, attempt, error, due))
            self.channel.ack(d)
            return _Settled("retried" if decision.action == "retry" else "deferred", task_id, error=error)
        assert decision.reason is not None
        status: Literal["dead", "failed"] = "dead" if decision.action == "dead" else "failed"
        return self._dead(d, task_id, attempt, status, decision.reason, error)

    def _dead(
        self, d: Delivery, task_id: str, attempt: int, status: Literal["dead", "failed"], reason: str, error: str
    ) -> _Settled:
        """Status (held until written), then the dead-letter copy, then the ack: never two dead letters."""
        if not self._held(lambda: self.store.finish_failed(task_id, status, error, attempt)):
            return self._not_started(d, task_id, attempt)  # another copy ended it first, or it has no record
        self._dead_letter(d, reason, error, attempt)
        self.channel.ack(d)
        return _Settled(status, task_id, reason, error)

    def _context(self, task: TaskMessage, attempt: int) -> TaskContext:
        logger = logging.getLogger(f"qw_workers.{self.kind}")
        fields = {"task_id": task.task_id, "kind": self.kind, "attempt": attempt}
        log = logging.LoggerAdapter(logger, fields)
        return TaskContext(self.settings, self.store, self.storage, attempt, log, task.task_id, task.tenant)

    def _through_ladder(self, d: Delivery, delay_ms: float, headers: dict[str, Any]) -> None:
        """A copy of `d` back to this kind's queue after `delay_ms`, through the delay ladder; without the broker's
        dead-lettering history, which would make it drop the copy as a cycle (qw_core.delays)."""
        forget: dict[str, Any] = dict.fromkeys(ladder.DEATH_HEADERS)
        rk = ladder.routing_key(delay_ms, self.kind)
        self.channel.publish_copy(d, ladder.ENTRY_EXCHANGE, rk, {**forget, **headers})

    def _dead_letter(self, d: Delivery, reason: str, error: str, attempt: int) -> None:
        headers = {H_REASON: reason, H_ERROR: error, H_ATTEMPT: attempt}
        self.channel.publish_copy(d, DEAD_EXCHANGE, self.kind, headers)

    def last_delivery(self, d: Delivery) -> bool:
        """Quorum queues count returns in x-delivery-count; past the limit the broker dead-letters the message."""
        count = d.headers.get("x-delivery-count")
        return isinstance(count, int) and count >= self.settings.delivery_limit

    def _store(self, call: Callable[[], T]) -> T:
        """One store call; its outcome feeds the shared backoff. Raises _StoreDown (with the wait) when it is down."""
        try:
            value = call()
        except StoreUnavailable as exc:
            raise _StoreDown(exc, self.backoff.failed()) from exc
        self.backoff.succeeded()
        return value

    def _held(self, write: Callable[[], T]) -> T:
        """A write that records an outcome already reached: retried after each backoff until it is written; raises
        _StoreDown (hand the message back) only if the worker stops meanwhile."""
        while True:
            try:
                return self._store(write)
            except _StoreDown as down:
                log.warning("the store is down (%s); holding the task, next try in %.1fs", down, down.delay)
                if self.pause(down.delay):
                    raise

    def _best_effort(self, write: Callable[[], object]) -> None:
        try:
            self._store(write)
        except Exception:
            log.warning("status write failed (best effort)", exc_info=True)
