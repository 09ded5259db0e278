"""queueworker: define background tasks, run them on workers, send them from Python or over HTTP.

    from queueworker import task

    @task(kind="inventory", retries=5)
    def reserve_stock(order_id: str, items: list[Item]) -> dict: ...

    reserve_stock.send(order_id="o-1", items=[...])       # from any code that imports the task
    Client().enqueue("inventory", {"order_id": "o-1", ...})  # from code that does not

Workers: `python -m qw_workers --app shop.tasks inventory`. The API: `QW_APP=shop.tasks python -m qw_api`, then
`POST /v1/tasks/inventory`. A thin facade: the runtime is qw_workers, the contract (messages, topology, registry,
publishing) is qw_core; nothing below imports this package. Reference: docs/sdk.md.
"""

from __future__ import annotations

from queueworker.client import Client, TaskStatus, default_client, set_default_client
from queueworker.errors import (
    BrokerUnavailable,
    Deferred,
    IdempotencyConflict,
    IdempotencyKeyInUse,
    InvalidPayload,
    MessageTooLarge,
    PermanentError,
    PublishError,
    PublishRefused,
    QueueworkerError,
    RetryableError,
    StoreUnavailable,
    TaskProcessDied,
    TimeLimitExceeded,
    Unroutable,
)
from queueworker.tasks import BoundTask, Task, task

__all__ = [
    "BoundTask",
    "BrokerUnavailable",
    "Client",
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
    "Task",
    "TaskProcessDied",
    "TaskStatus",
    "TimeLimitExceeded",
    "Unroutable",
    "default_client",
    "set_default_client",
    "task",
]
