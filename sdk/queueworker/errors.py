"""Every exception the SDK raises, in one place: catch `QueueworkerError` for all of them.

They are the platform's own classes (qw_core), re-exported: an `except queueworker.PublishError` catches what the
publisher raises without the user importing our internals. Every one the producer side raises is a
`QueueworkerError`: PublishError (BrokerUnavailable, PublishRefused, Unroutable, MessageTooLarge), InvalidPayload,
StoreUnavailable, IdempotencyConflict (a key reused for another request), IdempotencyKeyInUse.
"""

from __future__ import annotations

from qw_core.errors import QueueworkerError
from qw_core.idempotency import IdempotencyConflict, IdempotencyKeyInUse
from qw_core.publishing import BrokerUnavailable, MessageTooLarge, PublishError, PublishRefused, Unroutable
from qw_core.registry import InvalidPayload
from qw_core.store import StoreUnavailable
from qw_workers.errors import Deferred, PermanentError, RetryableError, TaskProcessDied, TimeLimitExceeded

# Raised by task bodies to steer the worker: PermanentError fails the task at once (dead letter, no retry);
# RetryableError asks for a retry even when `retry_on` would not match; Deferred(message, seconds) sends it back
# after about that long without using an attempt (a rate limit of your own). Raised by the worker about a body (for
# `retry_on`): TimeLimitExceeded (the body overran its time_limit), TaskProcessDied (a sync body's process died).

__all__ = [
    "BrokerUnavailable",
    "Deferred",
    "IdempotencyConflict",
    "IdempotencyKeyInUse",
    "InvalidPayload",
    "MessageTooLarge",
    "PermanentError",
    "PublishError",
    "PublishRefused",
    "QueueworkerError",
    "RetryableError",
    "StoreUnavailable",
    "TaskProcessDied",
    "TimeLimitExceeded",
    "Unroutable",
]
