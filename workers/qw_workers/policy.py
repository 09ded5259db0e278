"""Pure decisions of the runtime: what to do after an attempt, and how long to wait before reconnecting."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qw_core.registry import InvalidPayload
from qw_core.topology import H_ATTEMPT, retry_delay_ms

from qw_workers.errors import PermanentError, RetryableError

Action = Literal["retry", "dead", "failed"]
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


def decide_failure(
    error: BaseException,
    attempt: int,
    max_attempts: int,
    delays: Sequence[int],
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> Decision:
    """Retry while attempts are left and the error is one the kind retries (`retry_on`; PermanentError never)."""
    if isinstance(error, InvalidPayload):
        return Decision("failed", reason="invalid-payload")
    if isinstance(error, PermanentError) or not isinstance(error, (RetryableError, *retry_on)):
        return Decision("failed", reason="permanent")
    if attempt >= max_attempts:
        return Decision("dead", reason="exhausted")
    return Decision("retry", delay_ms=retry_delay_ms(attempt, delays))


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
