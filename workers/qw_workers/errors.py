"""The two errors a handler raises to steer the runtime. Any other exception counts as retryable."""

from __future__ import annotations


class RetryableError(Exception):
    """Try again later (through the retry delay queues), until max_attempts; then dead-letter (exhausted)."""


class PermanentError(Exception):
    """Retrying cannot help (bad input, refused image, 5xx from SMTP): dead-letter now, status 'failed'."""


class Deferred(RetryableError):
    """Not now, and not a failure (a rate limit was reached): the task goes back through the retry queues after about
    `delay` seconds without using one of its attempts. The runtime picks the retry queue whose delay is nearest."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay
