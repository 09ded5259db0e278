"""Settling one delivery: run its task and decide, in the right order, what the broker and the store are told.

This is the worker's state machine, kept apart from pika so that every path is tested without a broker. It
speaks to the broker only through a `Channel` (ack, requeue, publish a confirmed copy) and to the status store,
and always in the order publish the retry/dead copy (confirmed) -> status write -> ack: a message is acked only
once nothing about it can be lost. The branches, by the `Result.outcome` they return:

- undecodable body, or a task of another kind: dead-letter it ("undecodable"), mark it failed if the message
  has an id (best effort: a store that is down must not keep a poison message alive), ack -> `failed`;
- the last delivery the quorum queue allows (x-delivery-count at the limit): every earlier delivery died with
  its worker, so dead-letter it ("delivery-limit") and mark it dead before the broker drops it -> `dead`;
- the task already ended (start_attempt refused): ack -> `duplicate`; with no status record at all,
  dead-letter it ("permanent") -> `failed`;
- the handler returned: mark it succeeded, ack -> `succeeded`; if another delivery of the same task finished
  first, ack -> `duplicate`;
- the handler raised and attempts are left: publish a copy to the retry delay queue, mark it queued, ack ->
  `retried`; no attempts left: dead-letter ("exhausted"), mark dead -> `dead`; PermanentError: dead-letter
  ("permanent"), mark failed -> `failed`;
- a status write (store down) or a copy's publish failed: hand the message back (requeue) -> `requeued`;
- the channel raised ConnectionLost: it propagates; the broker redelivers the message and the store turns
  the repeat into a duplicate.

SDK task kinds plug in here as `Handler`s: a kind needs nothing but a handler and a `Settler` built for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from qw_core.messages import TaskMessage
from qw_core.registry import RetryPolicy
from qw_core.settings import WorkerSettings
from qw_core.storage import LocalStorage
from qw_core.store import TaskStore
from qw_core.topology import DEAD_EXCHANGE, H_ATTEMPT, H_ERROR, H_REASON, RETRY_EXCHANGE, retry_routing_key

from qw_workers.context import Handler, Output, TaskContext
from qw_workers.middleware import Delivery, Result
from qw_workers.policy import attempt_of, decide_failure, describe

log = logging.getLogger("qw_workers.settle")


class ConnectionLost(Exception):
    """The connection a delivery came on is gone; the broker will redeliver the message."""


class Channel(Protocol):
    """The broker as settling sees it. Each call returns once the broker has it, or raises ConnectionLost."""

    def ack(self, d: Delivery) -> None: ...

    def requeue(self, d: Delivery) -> None: ...

    def publish_copy(self, d: Delivery, exchange: str, routing_key: str, headers: dict[str, Any]) -> None:
        """Same body and message_id, the delivery's headers updated with `headers`; returns once confirmed."""
        ...


class _Settled(NamedTuple):
    """A branch's verdict; `Settler.settle` adds the attempt and the duration to make the `Result`."""

    outcome: str
    task_id: str | None
    reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Settler:
    """Settles the deliveries of one task kind; one instance serves every worker thread (it keeps no state).

    `clock` times the task for `Result.duration_s` (tests pass a fake one). `policy`: the kind's own retry policy
    (SDK kinds); its unset parts come from the settings (QW_MAX_ATTEMPTS, QW_RETRY_DELAYS).
    """

    kind: str
    handler: Handler
    settings: WorkerSettings
    store: TaskStore
    storage: LocalStorage
    channel: Channel
    clock: Callable[[], float] = time.monotonic
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def retry_policy(self) -> RetryPolicy:
        """The policy in force: the kind's own, completed from the settings."""
        return self.policy.resolve(self.settings.max_attempts, self.settings.retry_delays)

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
        self._dead_letter(d, "undecodable", error, attempt)
        if d.message_id:
            self._best_effort(lambda: self.store.finish_failed(str(d.message_id), "failed", error, attempt))
        self.channel.ack(d)
        return _Settled("failed", d.message_id, "undecodable", error)

    def _run(self, d: Delivery, task_id: str, attempt: int, task: TaskMessage) -> _Settled:
        """Any failure to write the status or publish a copy hands the message back to be tried again later."""
        try:
            return self._attempt(d, task_id, attempt, task)
        except ConnectionLost:
            raise
        except Exception as exc:
            log.exception("could not settle the task; requeueing it", extra={"task_id": task_id, "kind": self.kind})
            self.channel.requeue(d)
            return _Settled("requeued", task_id, error=describe(exc))

    def _attempt(self, d: Delivery, task_id: str, attempt: int, task: TaskMessage) -> _Settled:
        if self.last_delivery(d):
            # Every earlier delivery died with its worker (crash loop, OOM kill). If this one dies too the
            # broker dead-letters it behind our back and the status would say "processing" for ever.
            error = f"the task was delivered {self.settings.delivery_limit} times without finishing"
            self._dead_letter(d, "delivery-limit", error, attempt)
            self.store.finish_failed(task_id, "dead", error, attempt)
            self.channel.ack(d)
            return _Settled("dead", task_id, "delivery-limit", error)
        if not self.store.start_attempt(task_id, attempt):
            return self._not_started(d, task_id, attempt)
        try:
            output = self.handler(task, self._context(task_id, attempt))
        except Exception as exc:
            return self._failed(d, task_id, attempt, exc)
        out = output if isinstance(output, Output) else Output(result_key=output)
        # False: another delivery of the same task finished first (it ran side by side with this one).
        outcome = "succeeded" if self.store.succeed(task_id, out.result_key, out.result) else "duplicate"
        self.channel.ack(d)
        return _Settled(outcome, task_id)

    def _not_started(self, d: Delivery, task_id: str, attempt: int) -> _Settled:
        """The store refused to start it: it already ended (a duplicate), or it was never recorded."""
        if self.store.get(task_id) is None:
            error = "no status record for this task"
            self._dead_letter(d, "permanent", error, attempt)
            self.channel.ack(d)
            return _Settled("failed", task_id, "permanent", error)
        self.channel.ack(d)
        return _Settled("duplicate", task_id)

    def _failed(self, d: Delivery, task_id: str, attempt: int, exc: Exception) -> _Settled:
        error = describe(exc)
        p = self.retry_policy
        assert p.max_attempts is not None and p.delays_ms is not None  # resolved from the settings
        decision = decide_failure(exc, attempt, p.max_attempts, p.delays_ms, p.retry_on)
        if decision.action == "retry":
            rk = retry_routing_key(self.kind, decision.delay_ms)
            self.channel.publish_copy(d, RETRY_EXCHANGE, rk, {H_ATTEMPT: attempt, H_ERROR: error})
            self.store.schedule_retry(task_id, attempt, error)
            self.channel.ack(d)
            return _Settled("retried", task_id, error=error)
        assert decision.reason is not None
        self._dead_letter(d, decision.reason, error, attempt)
        status: Literal["dead", "failed"] = "dead" if decision.action == "dead" else "failed"
        self.store.finish_failed(task_id, status, error, attempt)
        self.channel.ack(d)
        return _Settled(status, task_id, decision.reason, error)

    def _context(self, task_id: str, attempt: int) -> TaskContext:
        logger = logging.getLogger(f"qw_workers.{self.kind}")
        fields = {"task_id": task_id, "kind": self.kind, "attempt": attempt}
        return TaskContext(self.settings, self.store, self.storage, attempt, logging.LoggerAdapter(logger, fields))

    def _dead_letter(self, d: Delivery, reason: str, error: str, attempt: int) -> None:
        headers = {H_REASON: reason, H_ERROR: error, H_ATTEMPT: attempt}
        self.channel.publish_copy(d, DEAD_EXCHANGE, self.kind, headers)

    def last_delivery(self, d: Delivery) -> bool:
        """Quorum queues count returns in x-delivery-count; past the limit the broker dead-letters the message."""
        count = d.headers.get("x-delivery-count")
        return isinstance(count, int) and count >= self.settings.delivery_limit

    @staticmethod
    def _best_effort(fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            log.warning("status write failed (best effort)", exc_info=True)
