"""The AMQP topology, declared in one place as plain data, with tiny adapters for pika and aio-pika.

    qw.tasks (direct) --<kind>--> qw.<kind>  (quorum, delivery limit, DLX -> qw.dead)
    qw.delay.<ms> (topic, LEVELS rungs) --...--> qw.delay.due (topic) --#.<kind>--> qw.<kind>
    qw.dead  (direct) --<kind>--> qw.<kind>.dead (quorum)
    qw.notifications (fanout) --> qw.notifications.log (quorum)
    qw.events (topic, <tenant>.<kind>.<task_id>) --> each API process's exclusive, auto-deleted queue (qw_core.events)

Delayed tasks and retries go through the one delay ladder that every kind shares (qw_core.delays): a fixed set of
quorum queues, each with its own TTL, that dead-letter into each other and finally into the kind's queue.

Dead-lettering from quorum queues uses `at-least-once` (which needs `overflow=reject-publish`):
RabbitMQ's default dead-lettering republishes without confirms and can drop messages.
Exchanges are declared before the queues that name them.

Every queue is bounded (QueueLimits; the same arguments on RabbitMQ 3.10 and 4.x, whose quorum queues both take
x-max-length, x-max-length-bytes, x-message-ttl and the overflows reject-publish and drop-head):
- work queues and the delay ladder's queues refuse past their limit (`reject-publish`: the publisher's confirm is
  a nack, so the API answers 503 and a worker hands the original back). Nothing is dropped: a retry copy the broker
  refuses leaves the original with the worker, and a delayed message due while its work queue is full stays in its
  rung (at-least-once dead-lettering repeats until the work queue takes it).
- dead-letter queues and the notification log have no consumer: they keep the newest (`drop-head` drops the
  oldest past the limit) for a retention time (`x-message-ttl`), then drop them (they have no DLX).
A broker holding a queue declared with other arguments (an upgrade) refuses the declaration; the declare
functions then fall back to a passive declare of that queue and log how to migrate (see `_inequivalent`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from qw_core import delays as ladder

log = logging.getLogger(__name__)

TASKS_EXCHANGE = "qw.tasks"
DEAD_EXCHANGE = "qw.dead"
NOTIFICATIONS_EXCHANGE = "qw.notifications"
NOTIFICATIONS_QUEUE = "qw.notifications.log"
EVENTS_EXCHANGE = "qw.events"  # status changes, pushed (qw_core.events)

# Headers the platform sets on messages it republishes.
H_ATTEMPT = "x-qw-attempt"  # attempts already made (0 on first publish)
H_ERROR = "x-qw-error"  # why a message was dead-lettered
H_REASON = "x-qw-reason"  # machine-readable: undecodable | permanent | exhausted | delivery-limit
H_DEFERRED = "x-qw-deferred"  # times the task was deferred (qw_workers.errors.Deferred): not counted as attempts


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: str


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any]
    bindings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...] = field(default=())
    # Exchange-to-exchange bindings: (destination, source, routing key), declared after the exchanges.
    exchange_bindings: tuple[tuple[str, str, str], ...] = ()

    def queue(self, name: str) -> QueueSpec:
        return next(q for q in self.queues if q.name == name)


def queue_name(kind: str) -> str:
    return f"qw.{kind}"


def dead_queue_name(kind: str) -> str:
    return f"qw.{kind}.dead"


def retry_delay_ms(attempt: int, delays: Sequence[int]) -> int:
    """Delay before attempt `attempt + 1`, given `attempt` (>= 1) attempts made: the last delay repeats."""
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    return delays[min(attempt, len(delays)) - 1]


MIB = 1024 * 1024
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class QueueLimits:
    """How much each queue may hold. Work limits bound each work queue and each queue of the delay ladder; dead limits
    each kind's dead-letter queue; log limits the notification log. TTLs are milliseconds."""

    work_max_length: int = 100_000
    work_max_bytes: int = 256 * MIB
    dead_max_length: int = 10_000
    dead_max_bytes: int = 64 * MIB
    dead_ttl_ms: int = 7 * DAY_MS
    log_max_length: int = 10_000
    log_max_bytes: int = 64 * MIB
    log_ttl_ms: int = 1 * DAY_MS

    def work(self) -> dict[str, Any]:
        return {
            "x-max-length": self.work_max_length,
            "x-max-length-bytes": self.work_max_bytes,
            "x-overflow": "reject-publish",
        }

    def dead(self) -> dict[str, Any]:
        return _retained(self.dead_max_length, self.dead_max_bytes, self.dead_ttl_ms)

    def log(self) -> dict[str, Any]:
        return _retained(self.log_max_length, self.log_max_bytes, self.log_ttl_ms)


def _retained(max_length: int, max_bytes: int, ttl_ms: int) -> dict[str, Any]:
    """A queue nobody consumes: keep the newest, for a while."""
    return {
        "x-max-length": max_length,
        "x-max-length-bytes": max_bytes,
        "x-overflow": "drop-head",
        "x-message-ttl": ttl_ms,
    }


def _quorum(**extra: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **extra}


def build_topology(kinds: Sequence[str], delivery_limit: int, limits: QueueLimits | None = None) -> Topology:
    """Every kind the same way, built-in or SDK-defined, and the delay ladder they share. Nothing depends on a
    kind's retry policy (its delays are routes through the ladder, not queues of their own), so every process that
    knows a kind declares it identically. `limits` bound the queues (CommonSettings.queue_limits(); every process
    must pass the same)."""
    limits = limits or QueueLimits()
    exchanges = [
        ExchangeSpec(DEAD_EXCHANGE, "direct"),
        ExchangeSpec(TASKS_EXCHANGE, "direct"),
        ExchangeSpec(NOTIFICATIONS_EXCHANGE, "fanout"),
        ExchangeSpec(EVENTS_EXCHANGE, "topic"),
        ExchangeSpec(ladder.DUE_EXCHANGE, "topic"),
        *(ExchangeSpec(ladder.rung_name(level), "topic") for level in range(ladder.LEVELS)),
    ]
    queues: list[QueueSpec] = []
    for kind in kinds:
        queues.append(QueueSpec(dead_queue_name(kind), _quorum(**limits.dead()), ((DEAD_EXCHANGE, kind),)))
        queues.append(
            QueueSpec(
                queue_name(kind),
                _quorum(
                    **{
                        "x-delivery-limit": delivery_limit,
                        "x-dead-letter-exchange": DEAD_EXCHANGE,
                        "x-dead-letter-routing-key": kind,
                        "x-dead-letter-strategy": "at-least-once",
                        **limits.work(),
                    }
                ),
                ((TASKS_EXCHANGE, kind), (ladder.DUE_EXCHANGE, ladder.due_binding(kind))),
            )
        )
    queues.extend(_ladder_queues(limits))
    queues.append(QueueSpec(NOTIFICATIONS_QUEUE, _quorum(**limits.log()), ((NOTIFICATIONS_EXCHANGE, ""),)))
    skips = tuple(
        (ladder.next_exchange(level), ladder.rung_name(level), ladder.rung_pattern(level, 0))
        for level in range(ladder.LEVELS)
    )
    return Topology(tuple(exchanges), tuple(queues), skips)


def _ladder_queues(limits: QueueLimits) -> list[QueueSpec]:
    """One queue per rung: it holds what its exchange routes with the rung's bit set for the rung's TTL, then
    dead-letters it (routing key kept) to the next rung's exchange. Bounded like a work queue."""
    return [
        QueueSpec(
            ladder.rung_name(level),
            _quorum(
                **{
                    "x-message-ttl": ladder.rung_ttl_ms(level),
                    "x-dead-letter-exchange": ladder.next_exchange(level),
                    "x-dead-letter-strategy": "at-least-once",
                    **limits.work(),
                }
            ),
            ((ladder.rung_name(level), ladder.rung_pattern(level, 1)),),
        )
        for level in reversed(range(ladder.LEVELS))
    ]


_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'")


def inequivalent_arg(error: BaseException) -> str | None:
    """The argument a broker named when it refused a queue declaration as inequivalent (406), else None."""
    found = _INEQUIVALENT.search(str(error))
    return found.group(1) if found else None


def log_inequivalent(queue: QueueSpec, arg: str, error: BaseException) -> None:
    """One clear error: the queue runs as the broker has it (not as this version declares it) until migrated."""
    wanted = queue.arguments.get(arg, "(none)")
    log.error(
        "queue %s already exists on the broker with a different %s (this version declares %s=%s; broker: %s). "
        "Using the queue as it is, without this version's arguments (it may be unbounded). To migrate: once it is "
        "empty, delete it (rabbitmqctl delete_queue %s --if-empty) and restart this service so it is declared "
        "again; or keep it and apply the same limits with a policy (rabbitmqctl set_policy --apply-to queues ...: "
        "max-length, max-length-bytes, overflow, message-ttl).",
        queue.name,
        arg,
        arg,
        wanted,
        error,
        queue.name,
        extra={"queue": queue.name, "argument": arg},
    )


def declare_with_pika(channel: Any, topology: Topology) -> None:
    """Declare on a pika BlockingChannel (idempotent; same arguments every time). The declarations go through a
    channel of their own, so a queue the broker refuses as inequivalent (its channel closed) leaves `channel` open;
    that queue is then declared passively (it must exist) and the mismatch logged."""
    decl = channel.connection.channel()
    try:
        for ex in topology.exchanges:
            decl.exchange_declare(exchange=ex.name, exchange_type=ex.type, durable=True)
        for destination, source, key in topology.exchange_bindings:
            decl.exchange_bind(destination=destination, source=source, routing_key=key)
        for q in topology.queues:
            decl = _declare_queue_with_pika(decl, q)
            for exchange, key in q.bindings:
                decl.queue_bind(queue=q.name, exchange=exchange, routing_key=key)
    finally:
        if decl.is_open:
            decl.close()


def _declare_queue_with_pika(decl: Any, q: QueueSpec) -> Any:
    """Declare `q` on `decl`; returns the channel to go on with (a new one if the broker closed `decl`)."""
    import pika.exceptions

    try:
        decl.queue_declare(queue=q.name, durable=True, arguments=q.arguments)
        return decl
    except pika.exceptions.ChannelClosedByBroker as exc:
        arg = inequivalent_arg(exc)
        if exc.reply_code != 406 or arg is None:
            raise
        decl = decl.connection.channel()
        decl.queue_declare(queue=q.name, passive=True)
        log_inequivalent(q, arg, exc)
        return decl
