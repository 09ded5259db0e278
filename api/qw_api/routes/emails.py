from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from qw_core.messages import EmailFields, EmailTask, TaskMessage, new_task_id, utcnow

from ..deps import DelayQuery, IdempotencyKeyHeader, ProducerDep, ServicesDep
from ..fastroute import SubmitRoute
from ..schemas import SUBMIT_ERRORS, TaskAccepted
from ..service import accepted, idempotency_key, not_before_of, submit

router = APIRouter(prefix="/v1", tags=["emails"], route_class=SubmitRoute)  # qw_api.fastroute


@router.post("/emails", status_code=202, response_model=TaskAccepted, responses=SUBMIT_ERRORS)
async def send_email(
    body: EmailFields,
    tenant: ProducerDep,
    services: ServicesDep,
    request: Request,
    idempotency: IdempotencyKeyHeader = None,
    delay: DelayQuery = None,
) -> Response:
    """Queue an email (`?delay=` seconds: send it no earlier). 202 means the broker has durably accepted it."""
    task = TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=EmailTask.from_fields(body))
    # The fingerprint's dump only when a key was sent (most requests have none)
    key = idempotency_key(services, idempotency, task.kind, body.model_dump(mode="json")) if idempotency else None
    return accepted(request, await submit(services, task, key=key, not_before=not_before_of(delay)))
