"""Request and response bodies of the v1 API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# scheduled: accepted with ?delay=, waiting for its not_before; it goes to processing when a worker starts it.
PublicStatus = Literal["scheduled", "queued", "processing", "succeeded", "failed", "dead", "cancelled"]


class TaskAccepted(BaseModel):
    task_id: str
    status: Literal["queued", "scheduled"] = "queued"
    status_url: str
    not_before: float | None = Field(default=None, description="With ?delay=: when it may run (epoch seconds).")


class TaskView(BaseModel):
    task_id: str
    kind: str
    status: PublicStatus
    attempts: int
    error: str | None = None
    result_url: str | None = None
    result: Any = Field(default=None, description="An SDK task's return value (JSON), once it succeeded.")
    created_at: float
    updated_at: float
    not_before: float | None = Field(
        default=None, description="When a scheduled task (or a retry) is due, epoch seconds; null: at once."
    )
    seq: int = Field(
        default=0, description="How many times its status changed: the order of its changes (an event's `id`)."
    )


class NotificationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    data: dict[str, Any] = Field(default_factory=dict)


class NotificationAccepted(BaseModel):
    notification_id: str
    status: Literal["published"] = "published"


class Problem(BaseModel):
    detail: Any


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route for the error codes it answers, each with a Problem body."""
    return {code: {"model": Problem} for code in codes}


SUBMIT_ERRORS = problems(401, 413, 422, 503)  # what a route that queues work answers besides 202
