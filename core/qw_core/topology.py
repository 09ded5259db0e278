"""The AMQP topology, declared in one place as plain data, with tiny adapters for pika and aio-pika.

    qw.tasks (direct) --<kind>--> qw.<kind>  (quorum, delivery limit, DLX -> qw.dead)
    qw.retry (direct) --<kind>.<ms>--> qw.<kind>.retry.<ms> (quorum, TTL ms, DLX -> qw.tasks/<kind>)
    qw.dead  (direct) --<kind>--> qw.<kind>.dead (quorum)
    qw.notifications (fanout) --> qw.notifications.log (quorum)

Dead-lettering from quorum queues uses `at-least-once` (which needs `overflow=reject-publish`):
RabbitMQ's default dead-lettering republishes without confirms and can drop messages.
Exchanges are declared before the queues that name them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TASKS_EXCHANGE = "qw.tasks"
RETRY_EXCHANGE = "qw.retry"
DEAD_EXCHANGE = "qw.dead"
NOTIFICATIONS_EXCHANGE = "qw.notifications"
NOTIFICATIONS_QUEUE = "qw.notifications.log"

# Headers the platform sets on messages it republishes.
H_ATTEMPT = "x-qw-attempt"  # attempts already made (0 on first publish)
H_ERROR = "x-qw-error"  # why a message was dead-lettered
H_REASON = "x-qw-reason"  # machine-readable: undecodable | permanent | exhausted | delivery-limit


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

    def queue(self, name: str) -> QueueSpec:
        return next(q for q in self.queues if q.name == name)


def queue_name(kind: str) -> str:
    return f"qw.{kind}"


def dead_queue_name(kind: str) -> str:
    return f"qw.{kind}.dead"


def retry_queue_name(kind: str, delay_ms: int) -> str:
    return f"qw.{kind}.retry.{delay_ms}"


def retry_routing_key(kind: str, delay_ms: int) -> str:
    return f"{kind}.{delay_ms}"


def retry_delay_ms(attempt: int, delays: Sequence[int]) -> int:
    """Delay before attempt `attempt + 1`, given `attempt` (>= 1) attempts made: the last delay repeats."""
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    return delays[min(attempt, len(delays)) - 1]


def _quorum(**extra: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **extra}


def build_topology(
    kinds: Sequence[str],
    retry_delays: Sequence[int],
    delivery_limit: int,
    kind_delays: Mapping[str, Sequence[int]] | None = None,
) -> Topology:
    """Every kind the same way, built-in or SDK-defined; `kind_delays` gives a kind its own retry delays (its retry
    queues), others use `retry_delays`. A kind's main and dead queues do not depend on its delays, so processes
    that know different delays for a kind (a producer that never imported it) still declare them identically."""
    kind_delays = kind_delays or {}
    exchanges = (
        ExchangeSpec(DEAD_EXCHANGE, "direct"),
        ExchangeSpec(TASKS_EXCHANGE, "direct"),
        ExchangeSpec(RETRY_EXCHANGE, "direct"),
        ExchangeSpec(NOTIFICATIONS_EXCHANGE, "fanout"),
    )
    queues: list[QueueSpec] = []
    for kind in kinds:
        queues.append(QueueSpec(dead_queue_name(kind), _quorum(), ((DEAD_EXCHANGE, kind),)))
        queues.append(
            QueueSpec(
                queue_name(kind),
                _quorum(
                    **{
                        "x-delivery-limit": delivery_limit,
                        "x-dead-letter-exchange": DEAD_EXCHANGE,
                        "x-dead-letter-routing-key": kind,
                        "x-dead-letter-strategy": "at-least-once",
                        "x-overflow": "reject-publish",
                    }
                ),
                ((TASKS_EXCHANGE, kind),),
            )
        )
        for delay in sorted(set(kind_delays.get(kind, retry_delays))):
            queues.append(
                QueueSpec(
                    retry_queue_name(kind, delay),
                    _quorum(
                        **{
                            "x-message-ttl": delay,
                            "x-dead-letter-exchange": TASKS_EXCHANGE,
                            "x-dead-letter-routing-key": kind,
                            "x-dead-letter-strategy": "at-least-once",
                            "x-overflow": "reject-publish",
                        }
                    ),
                    ((RETRY_EXCHANGE, retry_routing_key(kind, delay)),),
                )
            )
    queues.append(QueueSpec(NOTIFICATIONS_QUEUE, _quorum(), ((NOTIFICATIONS_EXCHANGE, ""),)))
    return Topology(exchanges, tuple(queues))


def declare_with_pika(channel: Any, topology: Topology) -> None:
    """Declare on a pika BlockingChannel (idempotent; same arguments every time)."""
    for ex in topology.exchanges:
        channel.exchange_declare(exchange=ex.name, exchange_type=ex.type, durable=True)
    for q in topology.queues:
        channel.queue_declare(queue=q.name, durable=True, arguments=q.arguments)
        for exchange, key in q.bindings:
            channel.queue_bind(queue=q.name, exchange=exchange, routing_key=key)


async def declare_with_aio_pika(channel: Any, topology: Topology) -> None:
    """Declare on an aio-pika channel."""
    import aio_pika

    exchanges = {}
    for ex in topology.exchanges:
        exchanges[ex.name] = await channel.declare_exchange(ex.name, aio_pika.ExchangeType(ex.type), durable=True)
    for q in topology.queues:
        queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments)
        for exchange, key in q.bindings:
            await queue.bind(exchanges[exchange], routing_key=key)
