"""Pure decisions of the runtime: what to do after an attempt, and how long to wait before reconnecting."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qw_core.registry import InvalidPayload
from qw_core.topology import H_ATTEMPT, H_DEFERRED, retry_delay_ms

from qw_workers.errors import Deferred, PermanentError, RetryableError

Action = Literal["retry", "defer", "dead", "failed"]
DeadReason = Literal["undecodable", "permanent", "exhausted", "invalid-payload"]


@dataclass(frozen=True)
class Decision:
    """`retry` after `delay_ms`, or dead-letter with `reason` and final status ('dead' or 'failed')."""

    action: Action
    delay_ms: int = 0
    reason: DeadReason | None = None


def attempt_of(headers: dict[str, Any] | None) -> int:
    """The number of this attempt (1-based), from the attempts already made recorded in the header."""
    raw = (headers or {}).get(H_ATTEMPT, 0)
    try:
        made = int(raw)
    except (TypeError, ValueError):
        made = 0
    return max(made, 0) + 1


def deferrals_of(headers: dict[str, Any] | None) -> int:
    """How many times the task was deferred (those runs are not attempts: see `decide_failure`)."""
    raw = (headers or {}).get(H_DEFERRED, 0)
    try:
        return max(int(raw), 0)
    except (TypeError, ValueError):
        return 0


def decide_failure(
    error: BaseException,
    attempt: int,
    max_attempts: int,
    delays: Sequence[int],
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Retry while attempts are left and the error is one the kind retries (`retry_on`; PermanentError never);
    the delay is the ladder's, jittered (`jittered`). `Deferred` is no failure: it goes back after its delay
    (jittered upwards only: never before it asked), whatever the attempts (the caller passes the attempts made,
    deferrals not counted)."""
    if isinstance(error, Deferred):
        return Decision("defer", delay_ms=max(1, round(error.delay * 1000 * (1 + jitter * rand()))))
    if isinstance(error, InvalidPayload):
        return Decision("failed", reason="invalid-payload")
    if isinstance(error, PermanentError) or not isinstance(error, (RetryableError, *retry_on)):
        return Decision("failed", reason="permanent")
    if attempt >= max_attempts:
        return Decision("dead", reason="exhausted")
    return Decision("retry", delay_ms=jittered(retry_delay_ms(attempt, delays), jitter, rand))


def jittered(delay_ms: int, jitter: float, rand: Callable[[], float] = random.random) -> int:
    """`delay_ms` times a uniform factor in [1 - jitter, 1 + jitter] (at least 1 ms): tasks that failed together
    (a dependency down) come back spread out instead of in one burst."""
    return max(1, round(delay_ms * (1 + jitter * (2 * rand() - 1))))


def reconnect_delay(
    failures: int, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter in [d/2, d], d = min(cap, base * 2**(failures-1))."""
    if failures < 1:
        return 0.0
    d = min(cap, base * 2 ** min(failures - 1, 30))
    return d * (0.5 + 0.5 * rand())


def describe(error: BaseException) -> str:
    """A short, single-line error text for the status row and the dead-letter header."""
    text = str(error).replace("\r", " ").replace("\n", " ").strip()
    name = getattr(error, "type_name", None) or type(error).__name__  # a child process's error keeps its own name
    return (f"{name}: {text}" if text else name)[:500]
