"""Retention: what the janitor may remove or fail out, decided from times passed in (no clock, no I/O).

A task row, its result and its side-effect rows live `retention_seconds` after the task ended (its last status
write); its source upload only until it ended (no attempt reads it after that). A row still `pending`
`pending_timeout_seconds` after it was written was never published: the API stopped between the row and the
publish (a live publish is confirmed or withdrawn within its publish timeout), so no worker will ever move it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qw_core.store import TERMINAL

STUCK_PENDING_ERROR = (
    "never queued: the API stopped between recording the task and publishing it "
    "(still pending after {timeout:g} s); submit it again"
)


@dataclass(frozen=True)
class RetentionPolicy:
    retention_seconds: float
    pending_timeout_seconds: float

    def cutoffs(self, now: float) -> Cutoffs:
        return Cutoffs(ended_before=now - self.retention_seconds, pending_before=now - self.pending_timeout_seconds)

    def stuck_error(self) -> str:
        return STUCK_PENDING_ERROR.format(timeout=self.pending_timeout_seconds)


@dataclass(frozen=True)
class Cutoffs:
    ended_before: float  # an ended task last written before this is expired
    pending_before: float  # a pending row written before this is stuck


def is_expired(status: str, updated_at: float, cut: Cutoffs) -> bool:
    return status in TERMINAL and updated_at < cut.ended_before


def is_stuck_pending(status: str, updated_at: float, cut: Cutoffs) -> bool:
    return status == "pending" and updated_at < cut.pending_before


def upload_removable(status: str, source_key: str | None) -> bool:
    """A source upload goes as soon as its task ended: queued, processing or a retry still read it."""
    return source_key is not None and status in TERMINAL


def another_batch(removed: int, batch_size: int) -> bool:
    """A full batch may have left more behind; a short one means the step is done for this pass."""
    return removed >= batch_size
