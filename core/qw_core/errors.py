"""The base of every error the platform raises to a producer (the SDK's `queueworker.QueueworkerError`)."""

from __future__ import annotations


class QueueworkerError(Exception):
    """A task was not queued (or a status not read): the broker, the store or the payload said no."""
