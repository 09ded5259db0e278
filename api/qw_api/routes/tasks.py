from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from qw_core.storage import MEDIA_TYPES, Blob, StorageUnavailable
from qw_core.store import TERMINAL, StoreUnavailable, TaskRecord
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ..deps import Services, ServicesDep, TenantDep, over_limit
from ..quotas import OverLimit
from ..schemas import TaskView, problems
from ..service import link, unavailable

router = APIRouter(prefix="/v1", tags=["tasks"])
log = logging.getLogger("qw_api.tasks")
NOT_FOUND = "no such task"  # the same answer for another tenant's task: never reveal it exists
SSE_KEEPALIVE_SECONDS = 15.0
SSE_MAX_SECONDS = 900.0


async def _load(services: Services, task_id: str, tenant: str) -> TaskRecord | None:
    try:
        rec = await run_in_threadpool(services.store.get, task_id, tenant)
    except StoreUnavailable as exc:
        raise unavailable(services, "the task store is unavailable") from exc
    return None if rec is None or rec.status == "pending" else rec


def _view(rec: TaskRecord, request: Request) -> TaskView:
    result_url = None
    if rec.status == "succeeded" and (rec.result_key or rec.result is not None):
        result_url = link(request, "get_task_result", task_id=rec.task_id)
    result = json.loads(rec.result) if rec.result is not None else None
    return TaskView(
        task_id=rec.task_id, kind=rec.kind, status=rec.status, attempts=rec.attempts,  # type: ignore[arg-type]
        error=rec.error, result_url=result_url, result=result, created_at=rec.created_at, updated_at=rec.updated_at,
        not_before=rec.not_before,
    )  # fmt: skip


@router.get("/tasks/{task_id}", response_model=TaskView, responses=problems(401, 404))
async def get_task(task_id: str, tenant: TenantDep, services: ServicesDep, request: Request) -> TaskView:
    rec = await _load(services, task_id, tenant)
    if rec is None:
        raise HTTPException(404, NOT_FOUND)
    return _view(rec, request)


@router.delete("/tasks/{task_id}", response_model=TaskView, responses=problems(401, 404, 409))
async def cancel_task(task_id: str, tenant: TenantDep, services: ServicesDep, request: Request) -> Response:
    """Cancel a task that has not started: `queued` (never run, or waiting for its next retry) becomes `cancelled`,
    and a worker that receives it later skips it. 409 with its `status` once it is processing or has ended; 200
    again for a task already cancelled."""
    try:
        rec = await run_in_threadpool(services.store.cancel, task_id, tenant)
    except StoreUnavailable as exc:
        raise unavailable(services, "the task store is unavailable; nothing was cancelled") from exc
    if rec is None or rec.status == "pending":
        raise HTTPException(404, NOT_FOUND)
    if rec.status != "cancelled":
        started = "has ended" if rec.status in TERMINAL else "has started"
        detail = f"the task {started} (status: {rec.status}); only a queued task can be cancelled"
        return JSONResponse({"detail": detail, "status": rec.status}, status_code=409)
    return JSONResponse(_view(rec, request).model_dump())


@router.get(
    "/tasks/{task_id}/events",
    responses={200: {"content": {"text/event-stream": {}}}, **problems(401, 404)},
)
async def task_events(task_id: str, tenant: TenantDep, services: ServicesDep, request: Request) -> StreamingResponse:
    """Server-sent events: one `status` event per change, ending after a final status."""
    first = await _load(services, task_id, tenant)
    if first is None:
        raise HTTPException(404, NOT_FOUND)
    try:
        release = services.quotas.open_stream(tenant)
    except OverLimit as exc:
        raise over_limit(exc) from None

    async def stream() -> AsyncIterator[str]:
        services.metrics.sse_streams.inc()
        try:
            rec: TaskRecord | None = first
            last: tuple[str, int, float] | None = None
            started = last_sent = time.monotonic()
            while rec is not None:
                state = (rec.status, rec.attempts, rec.updated_at)
                if state != last:
                    last, last_sent = state, time.monotonic()
                    yield f"event: status\ndata: {json.dumps(_view(rec, request).model_dump())}\n\n"
                    if rec.status in TERMINAL:
                        return
                elif time.monotonic() - last_sent > SSE_KEEPALIVE_SECONDS:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                if await request.is_disconnected() or time.monotonic() - started > SSE_MAX_SECONDS:
                    return
                await asyncio.sleep(services.settings.sse_poll_interval)
                try:
                    rec = await run_in_threadpool(services.store.get, task_id, tenant)
                except StoreUnavailable:
                    continue
        finally:
            services.metrics.sse_streams.dec()
            release()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        background=BackgroundTask(release),  # also when the stream never started (client gone at once)
    )


@router.get(
    "/tasks/{task_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/json": {}, **{m: {} for m in MEDIA_TYPES.values()}}},
        302: {"description": "S3 storage with QW_RESULT_REDIRECT_SECONDS set: the file at a presigned URL"},
        **problems(401, 404, 409, 503),
    },
)  # fmt: skip
async def get_task_result(task_id: str, tenant: TenantDep, services: ServicesDep) -> Response:
    """The processed file of an image task, or an SDK task's return value as JSON."""
    rec = await _load(services, task_id, tenant)  # the tenant check: another tenant's task is 404, never a link
    if rec is None:
        raise HTTPException(404, NOT_FOUND)
    if rec.status == "succeeded" and rec.result is not None:
        return JSONResponse(json.loads(rec.result))
    if rec.status == "succeeded" and not rec.result_key:
        raise HTTPException(404, "the task succeeded without a result (it returned None)")
    if rec.status != "succeeded" or not rec.result_key:
        raise HTTPException(409, f"the task has no result yet (status: {rec.status})")
    storage, key = services.storage, rec.result_key
    ext = key.rsplit(".", 1)[-1]
    media_type, filename = MEDIA_TYPES.get(ext, "application/octet-stream"), f"{task_id}.{ext}"
    path = storage.local_path(key)
    if path is not None:
        if not path.is_file():
            raise HTTPException(404, "the result file is gone")
        return FileResponse(path, media_type=media_type, filename=filename)
    seconds = services.settings.result_redirect_seconds
    try:
        if seconds:
            url = storage.presign(key, seconds, filename, media_type)
            if url:
                return RedirectResponse(url, 302, headers={"Cache-Control": "no-store"})
        blob = await run_in_threadpool(storage.open, key)
    except FileNotFoundError:
        raise HTTPException(404, "the result file is gone") from None
    except StorageUnavailable as exc:
        log.warning("result of %s not served: %s", task_id, exc)
        raise HTTPException(
            503,
            "the result storage is unavailable; try again shortly",
            headers={"Retry-After": str(services.settings.retry_after_seconds)},
        ) from None
    return _streamed(blob, media_type, filename)


def _streamed(blob: Blob, media_type: str, filename: str) -> StreamingResponse:
    """The object's bytes as they come from the store (a chunk at a time, in the thread pool), then closed."""
    headers = {"Content-Length": str(blob.size), "Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(blob.chunks, media_type=media_type, headers=headers, background=BackgroundTask(blob.close))
