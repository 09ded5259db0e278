"""The accept path shared by every task route: row, publish with confirm, then visible. All or nothing."""

from __future__ import annotations

import time

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from qw_core import delays as ladder
from qw_core.messages import TaskMessage
from qw_core.store import StoreUnavailable
from qw_core.topology import TASKS_EXCHANGE
from starlette.concurrency import run_in_threadpool

from .deps import Services
from .publisher import MessageTooLarge, PublishUnavailable


def unavailable(services: Services, what: str) -> HTTPException:
    return HTTPException(
        503,
        f"{what}; nothing was queued, try again shortly",
        headers={"Retry-After": str(services.settings.retry_after_seconds)},
    )


async def submit(
    services: Services, task: TaskMessage, source_key: str | None = None, not_before: float | None = None
) -> None:
    """Accept `task` or raise 503. On failure no row claims it is queued and its upload is removed.

    `not_before` (epoch seconds): a delayed task, published through the delay ladder (qw_core.delays)."""
    try:
        await services.pending_writes.write((task.task_id, task.tenant, task.kind, source_key, not_before))
    except StoreUnavailable as exc:
        await _remove_upload(services, source_key)
        raise unavailable(services, "the task store is unavailable") from exc
    start = time.perf_counter()
    try:
        if not_before is None:
            await services.publisher.publish(TASKS_EXCHANGE, task.kind, task.to_bytes(), task.task_id)
        else:
            key = ladder.routing_key((not_before - time.time()) * 1000, task.kind)
            headers = {ladder.H_NOT_BEFORE: round(not_before * 1000)}
            await services.publisher.publish(ladder.ENTRY_EXCHANGE, key, task.to_bytes(), task.task_id, headers)
    except MessageTooLarge:
        await run_in_threadpool(services.store.discard_pending, task.task_id)
        await _remove_upload(services, source_key)
        raise  # 413, by the app's handler (main.py)
    except PublishUnavailable as exc:
        services.metrics.publish_failures.labels(task.kind).inc()
        if not await _withdraw(services, task.task_id):
            # The confirm never came (timeout, connection lost) but the broker had the message: a worker has
            # already moved the row on. The task is live; a 503 would invite a retry that runs it twice.
            services.metrics.tasks_submitted.labels(task.kind).inc()
            return
        await _remove_upload(services, source_key)
        raise unavailable(services, f"the task could not be queued: {exc}") from exc
    services.metrics.publish_duration.labels(task.kind).observe(time.perf_counter() - start)
    # The broker has it now. If this write fails the worker's own status writes still move the task on.
    try:
        await services.queued_writes.write(task.task_id)
    except StoreUnavailable:
        pass
    services.metrics.tasks_submitted.labels(task.kind).inc()


async def _withdraw(services: Services, task_id: str) -> bool:
    """After a failed publish: remove the still-pending row, so a copy the broker kept after all is refused by
    the worker (no status record: dead-lettered, never run). False when a worker already has the task."""
    try:
        return bool(await run_in_threadpool(services.store.discard_pending, task_id))
    except StoreUnavailable:
        return True  # the row stays pending; the answer is still an honest "not queued as far as we know"


async def _remove_upload(services: Services, key: str | None) -> None:
    if key:
        await run_in_threadpool(services.storage.delete, key)


def link(request: Request, route: str, **params: str) -> str:
    """An absolute link to a route: under QW_PUBLIC_URL when set, else from the request (scheme and host from
    trusted proxies' X-Forwarded-* headers, see QW_FORWARDED_ALLOW_IPS)."""
    public = request.app.state.services.settings.public_url
    if public:
        return public + request.app.url_path_for(route, **params)
    return str(request.url_for(route, **params))


def accepted(request: Request, task_id: str, not_before: float | None = None) -> JSONResponse:
    """The 202 body (schema: TaskAccepted), built directly: no response-model pass on the hot path."""
    status_url = link(request, "get_task", task_id=task_id)
    body: dict[str, object] = {"task_id": task_id, "status": "queued", "status_url": status_url}
    if not_before is not None:
        body.update(status="scheduled", not_before=not_before)
    return JSONResponse(body, status_code=202)


def not_before_of(delay: float | None) -> float | None:
    """The epoch seconds a task asked to wait `delay` seconds may run (the route's Query checked the range)."""
    return None if delay is None else time.time() + delay
