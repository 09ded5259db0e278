"""Delayed delivery without the delayed-message plugin: a fixed binary ladder of TTL queues (pure; no I/O).

Quorum queues expire messages only at their head, so a queue holding messages of different TTLs would keep a
short one behind a long one. Each rung here is one queue with one queue-level TTL (`x-message-ttl`): every message
in it expires in arrival order. Rung k waits UNIT_MS * 2**k; LEVELS rungs add up to a little over a day.

    qw.delay.<ttl k> (topic exchange)  --"*" x p + "1.#"--> qw.delay.<ttl k> (quorum queue, TTL, DLX -> next rung)
                                       --"*" x p + "0.#"--> next rung's exchange (exchange-to-exchange: no wait)
    last rung's next exchange = qw.delay.due (topic) --"#.<kind>"--> qw.<kind>

A delayed message is published to the top rung's exchange with a routing key that spells its delay in rungs,
highest first, then the kind: `0.0.1.0...1.<kind>`. Each rung either holds it for its TTL (bit 1) or passes it on
at once (bit 0); dead-lettering keeps the routing key. No consumer, no router process: the broker does it all, and
a message visits each queue at most once per pass (RabbitMQ drops a message that is dead-lettered into a queue its
`x-death` already names, so a copy sent through the ladder again is published without its `x-death` history).
The delay is rounded up to whole units: a message is never due before its time, and late by under a unit plus one
dead-lettering hop per rung it waited in. The worker checks `x-qw-not-before` again on receipt (clock skew, a
delay past the ladder's reach) and sends a task that is not due back through the ladder.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

UNIT_MS = 100
LEVELS = 20  # 0.1 s .. 52,428.8 s; all rungs together 29 h 7 min
MAX_DELAY_SECONDS = 86_400.0  # what a producer may ask for: a day
DELAY_PREFIX = "qw.delay"
DUE_EXCHANGE = "qw.delay.due"
H_NOT_BEFORE = "x-qw-not-before"  # epoch milliseconds before which the task must not run
# RabbitMQ's dead-lettering history: removed from a copy sent through the ladder again (see the module docstring).
DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                 "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count")  # fmt: skip


def rung_ttl_ms(level: int) -> int:
    return UNIT_MS * 2**level


def rung_name(level: int) -> str:
    """The name of rung `level`'s exchange and of its queue (the two namespaces are separate)."""
    return f"{DELAY_PREFIX}.{rung_ttl_ms(level)}"


ENTRY_EXCHANGE = rung_name(LEVELS - 1)  # where every delayed message is published


def next_exchange(level: int) -> str:
    return rung_name(level - 1) if level > 0 else DUE_EXCHANGE


def rung_pattern(level: int, bit: int) -> str:
    """The binding key that matches routing keys whose bit for `level` is `bit`."""
    return "*." * (LEVELS - 1 - level) + f"{bit}.#"


def units(delay_ms: float) -> int:
    """The delay in whole rung units, rounded up (never early), within what the ladder can hold."""
    return min(max(math.ceil(delay_ms / UNIT_MS), 0), 2**LEVELS - 1)


def routing_key(delay_ms: float, kind: str) -> str:
    """`delay_ms` spelled in rungs, highest first, then the kind: the route through the ladder to `qw.<kind>`."""
    n = units(delay_ms)
    return ".".join(str((n >> level) & 1) for level in reversed(range(LEVELS))) + f".{kind}"


def due_binding(kind: str) -> str:
    return f"#.{kind}"


def resolve_not_before(delay: float | timedelta | None, not_before: datetime | None, now: datetime) -> datetime | None:
    """When a task asked to wait may run: `delay` (seconds or a timedelta, 0 < delay <= a day) or `not_before` (an
    aware datetime at most a day ahead; a past one means now); None when neither is given. ValueError otherwise."""
    if delay is not None and not_before is not None:
        raise ValueError("give delay or not_before, not both")
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not 0 < seconds <= MAX_DELAY_SECONDS:  # also refuses NaN
            raise ValueError(f"delay must be more than 0 and at most {MAX_DELAY_SECONDS:.0f} seconds (a day)")
        return now + timedelta(seconds=seconds)
    if not_before is None:
        return None
    if not isinstance(not_before, datetime) or not_before.tzinfo is None:
        raise ValueError("not_before must be a timezone-aware datetime (e.g. datetime.now(UTC) + timedelta(...))")
    if (not_before - now).total_seconds() > MAX_DELAY_SECONDS:
        raise ValueError(f"not_before must be at most a day ({MAX_DELAY_SECONDS:.0f} s) ahead")
    return max(not_before, now).astimezone(UTC)


def not_before_ms(headers: dict[str, object] | None) -> int | None:
    """The `x-qw-not-before` of a delivery, or None (absent or not a number)."""
    raw = (headers or {}).get(H_NOT_BEFORE)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    return int(raw)
