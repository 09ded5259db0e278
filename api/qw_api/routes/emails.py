from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import ValidationError
from qw_core.messages import EmailTask, TaskMessage, new_task_id, utcnow

from ..deps import ServicesDep, TenantDep
from ..schemas import EmailRequest, Problem, TaskAccepted
from ..service import submit

router = APIRouter(prefix="/v1", tags=["emails"])


@router.post(
    "/emails",
    status_code=202,
    response_model=TaskAccepted,
    responses={401: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
)
async def send_email(body: EmailRequest, tenant: TenantDep, services: ServicesDep, request: Request) -> TaskAccepted:
    """Queue an email. 202 means the broker has durably accepted it."""
    try:
        payload = EmailTask(**body.model_dump())
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from None
    task = TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=payload)
    await submit(services, task)
    return TaskAccepted(task_id=task.task_id, status_url=str(request.url_for("get_task", task_id=task.task_id)))
