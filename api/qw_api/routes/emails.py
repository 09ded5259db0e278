from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from qw_core.messages import EmailFields, EmailTask, TaskMessage, new_task_id, utcnow

from ..deps import ServicesDep, TenantDep
from ..schemas import SUBMIT_ERRORS, TaskAccepted
from ..service import accepted, submit

router = APIRouter(prefix="/v1", tags=["emails"])


@router.post("/emails", status_code=202, response_model=TaskAccepted, responses=SUBMIT_ERRORS)
async def send_email(body: EmailFields, tenant: TenantDep, services: ServicesDep, request: Request) -> JSONResponse:
    """Queue an email. 202 means the broker has durably accepted it."""
    task = TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=EmailTask.from_fields(body))
    await submit(services, task)
    return accepted(request, task.task_id)
