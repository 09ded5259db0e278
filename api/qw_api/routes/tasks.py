from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from qw_core.storage import MEDIA_TYPES
from qw_core.store import TERMINAL, StoreUnavailable, TaskRecord
from starlette.concurrency import run_in_threadpool

from ..deps import Services, ServicesDep, TenantDep
from ..schemas import TaskView, problems
from ..service import link, unavailable

router = APIRouter(prefix="/v1", tags=["tasks"])
NOT_FOUND = "no such task"  # the same answer for another tenant's task: never reveal it exists


async def load_task(services: Services, task_id: str, tenant: str) -> TaskRecord | None:
    try:
        rec = await run_in_threadpool(services.store.get, task_id, tenant)
    except StoreUnavailable as exc:
        raise unavailable(services, "the task store is unavailable") from exc
    return None if rec is None or rec.status == "pending" else rec


def task_view(rec: TaskRecord, request: Request) -> TaskView:
    result_url = None
    if rec.status == "succeeded" and (rec.result_key or rec.result is not None):
        result_url = link(request, "get_task_result", task_id=rec.task_id)
    result = json.loads(rec.result) if rec.result is not None else None
    return TaskView(
        task_id=rec.task_id, kind=rec.kind, status=rec.status, attempts=rec.attempts,  # type: ignore[arg-type]
        error=rec.error, result_url=result_url, result=result, created_at=rec.created_at, updated_at=rec.updated_at,
        not_before=rec.not_before, seq=rec.seq,
    )  # fmt: skip


@router.get("/tasks/{task_id}", response_model=TaskView, responses=problems(401, 404))
async def get_task(task_id: str, tenant: TenantDep, services: ServicesDep, request: Request) -> TaskView:
    rec = await load_task(services, task_id, tenant)
    if rec is None:
        raise HTTPException(404, NOT_FOUND)
    return task_view(rec, request)


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
    return JSONResponse(task_view(rec, request).model_dump())


@router.get(
    "/tasks/{task_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/json": {}, **{m: {} for m in MEDIA_TYPES.values()}}},
        **problems(401, 404, 409),
    },
)  # fmt: skip
async def get_task_result(task_id: str, tenant: TenantDep, services: ServicesDep) -> Response:
    """The processed file of an image task, or an SDK task's return value as JSON."""
    rec = await load_task(services, task_id, tenant)
    if rec is None:
        raise HTTPException(404, NOT_FOUND)
    if rec.status == "succeeded" and rec.result is not None:
        return JSONResponse(json.loads(rec.result))
    if rec.status == "succeeded" and not rec.result_key:
        raise HTTPException(404, "the task succeeded without a result (it returned None)")
    if rec.status != "succeeded" or not rec.result_key:
        raise HTTPException(409, f"the task has no result yet (status: {rec.status})")
    path = services.storage.path(rec.result_key)
    if not path.is_file():
        raise HTTPException(404, "the result file is gone")
    ext = path.suffix.lstrip(".")
    return FileResponse(path, media_type=MEDIA_TYPES.get(ext, "application/octet-stream"), filename=f"{task_id}.{ext}")
