from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from qw_core.messages import EmailFields, EmailTask, TaskMessage, new_task_id, utcnow

from ..deps import DelayQuery, ServicesDep, TenantDep
from ..schemas import SUBMIT_ERRORS, TaskAccepted
from ..service import accepted, not_before_of, submit

router = APIRouter(prefix="/v1", tags=["emails"])


@router.post("/emails", status_code=202, response_model=TaskAccepted, responses=SUBMIT_ERRORS)
async def send_email(
    body: EmailFields, tenant: TenantDep, services: ServicesDep, request: Request, delay: DelayQuery = None
) -> JSONResponse:
    """Queue an email (`?delay=` seconds: send it no earlier). 202 means the broker has durably accepted it."""
    task = TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=EmailTask.from_fields(body))
    due = not_before_of(delay)
    await submit(services, task, not_before=due)
    return accepted(request, task.task_id, due)
