from __future__ import annotations

import json

from fastapi import APIRouter
from qw_core.messages import Notification, new_task_id, utcnow
from qw_core.topology import NOTIFICATIONS_EXCHANGE

from ..deps import ProducerDep, ServicesDep
from ..publisher import PublishUnavailable
from ..schemas import SUBMIT_ERRORS, NotificationAccepted, NotificationRequest
from ..service import unavailable

router = APIRouter(prefix="/v1", tags=["notifications"])


@router.post("/notifications", status_code=202, response_model=NotificationAccepted, responses=SUBMIT_ERRORS)
async def publish_notification(
    body: NotificationRequest, tenant: ProducerDep, services: ServicesDep
) -> NotificationAccepted:
    """Publish an event to every subscriber of the fanout exchange (the seed guide's pub/sub pattern)."""
    note = Notification(
        notification_id=new_task_id(), tenant=tenant, topic=body.topic, data=body.data, created_at=utcnow()
    )
    raw = json.dumps(note.model_dump(mode="json")).encode()
    try:
        await services.publisher.publish(NOTIFICATIONS_EXCHANGE, "", raw, note.notification_id)
    except PublishUnavailable as exc:
        raise unavailable(services, f"the notification could not be published: {exc}") from exc
    return NotificationAccepted(notification_id=note.notification_id)
