"""What a handler gets besides its task: settings, the store, storage, the attempt number, a logger, and the task's
id and tenant (a built-in body gets its payload and this: `fn(payload, ctx)`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from qw_core.messages import TaskMessage
from qw_core.settings import WorkerSettings
from qw_core.storage import Storage
from qw_core.store import TaskStore


@dataclass(frozen=True)
class TaskContext:
    settings: WorkerSettings
    store: TaskStore
    storage: Storage
    attempt: int
    log: logging.LoggerAdapter[logging.Logger]
    task_id: str
    tenant: str


@dataclass(frozen=True)
class Output:
    """What a handler produced: a file in storage (`result_key`) and/or a JSON value (`result`, as text)."""

    result_key: str | None = None
    result: str | None = None


# A task body: returns the result's storage key, an Output, or None. Raises RetryableError / PermanentError.
Handler = Callable[[TaskMessage, TaskContext], "str | Output | None"]
