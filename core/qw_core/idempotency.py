"""Idempotency keys: the same key (per tenant) within its window names the first task, never a second one.

A client that did not hear the answer to a request (a timeout, a lost connection) cannot know whether its task was
queued; with a key it sends the request again and gets the first task back. The store binds a key to a task in the
same transaction that records the task (a primary key on (tenant, key): concurrent requests cannot both win), and
remembers the request's fingerprint (kind + payload), so a key reused for a different request is refused instead of
silently answering with an unrelated task. A key whose task was never queued (its publish failed) is released with
its row, so the retry the client was told to make (503) works; an expired key (QW_IDEMPOTENCY_SECONDS after it was
first used) counts as new, and the janitor removes it.

Pure: the store (qw_core.store.TaskStore.claim_key) does the I/O, the callers (qw_api.service, qw_core.publishing)
the waiting.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from qw_core.errors import QueueworkerError

MAX_KEY_LENGTH = 255
# Printable ASCII (spaces inside allowed): safe in an HTTP header, a log line and a database column alike.
KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # Stripe's name: "true" on an answer that names an earlier task
KEY_POLL_SECONDS = 0.05  # how often a request waits on a key whose first request is still being queued

ClaimOutcome = Literal["new", "existing", "busy", "mismatch"]


class IdempotencyConflict(QueueworkerError, ValueError):
    """The key was already used, within its window, for a different request (another kind or payload)."""

    def __init__(self, key: str, task_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a different request (another kind or payload; task "
            f"{task_id}); use a new key for a new task, or send the first request's exact payload to get its task"
        )
        self.key, self.task_id = key, task_id


class IdempotencyKeyInUse(QueueworkerError):
    """The first request with this key is still being queued (its publish is in flight): try again shortly."""

    def __init__(self, key: str) -> None:
        super().__init__(f"a request with idempotency key {key!r} is still being queued; try again in a few seconds")
        self.key = key


@dataclass(frozen=True)
class KeyClaim:
    """What the store made of a key: `new` (the key is ours, the pending row written), `existing` (the key names a
    queued task: `task_id`), `busy` (it names a task still pending: its first request is publishing), `mismatch`
    (it names a task made by a different request)."""

    outcome: ClaimOutcome
    task_id: str


@dataclass(frozen=True)
class IdempotencyKey:
    """A validated key with the fingerprint of the request it comes with and its expiry (Unix time)."""

    key: str
    fingerprint: str
    expires_at: float


def check_key(key: str) -> str:
    """The key if it is 1..255 printable ASCII characters without leading or trailing spaces; ValueError otherwise."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not re.fullmatch(KEY_PATTERN, key):
        raise ValueError(
            f"an idempotency key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters (no control characters, "
            "no leading or trailing spaces), e.g. a UUID"
        )
    return key


def fingerprint(kind: str, payload: Any) -> str:
    """The request a key was first used for: its kind and its JSON payload (key order does not matter)."""
    canonical = json.dumps([kind, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def make_key(key: str, kind: str, payload: Any, now: float, window_seconds: float) -> IdempotencyKey:
    return IdempotencyKey(check_key(key), fingerprint(kind, payload), now + window_seconds)
