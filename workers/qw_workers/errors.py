"""The errors a handler raises to steer the runtime, and those the runtime raises about a body. Any other exception
counts as retryable (unless a kind's `retry_on` says otherwise)."""

from __future__ import annotations


class RetryableError(Exception):
    """Try again later (through the retry delay queues), until max_attempts; then dead-letter (exhausted)."""


class PermanentError(Exception):
    """Retrying cannot help (bad input, refused image, 5xx from SMTP): dead-letter now, status 'failed'."""


class TimeLimitExceeded(Exception):
    """A body ran longer than its kind's time_limit and was stopped (retried when the kind's `retry_on` allows)."""


class TaskProcessDied(RetryableError):
    """The child process running a sync body died on its own (a crash, os._exit, the OOM killer); always retried."""


class Deferred(RetryableError):
    """Not now, and not a failure (a rate limit was reached): the task goes back through the delay ladder after
    `delay` seconds (jittered upwards) without using one of its attempts."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay
