"""The two errors a handler raises to steer the runtime. Any other exception counts as retryable."""

from __future__ import annotations


class RetryableError(Exception):
    """Try again later (through the retry delay queues), until max_attempts; then dead-letter (exhausted)."""


class PermanentError(Exception):
    """Retrying cannot help (bad input, refused image, 5xx from SMTP): dead-letter now, status 'failed'."""
