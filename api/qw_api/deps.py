"""Typed dependencies: routes ask for what they need; tests replace nothing, they build a real app."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from qw_core.delays import MAX_DELAY_SECONDS
from qw_core.idempotency import HEADER, KEY_PATTERN, MAX_KEY_LENGTH
from qw_core.settings import ApiSettings
from qw_core.storage import Storage
from qw_core.store import TaskStore

from .batching import RowWriter
from .metrics import ApiMetrics
from .publisher import Publisher
from .push import Hub
from .quotas import OverLimit, TenantQuotas
from .uploads import UploadLimits


@dataclass
class Services:
    settings: ApiSettings
    store: TaskStore
    storage: Storage
    publisher: Publisher
    metrics: ApiMetrics
    key_hashes: dict[bytes, str]  # sha256(key) -> tenant
    rows: RowWriter = field(init=False)  # the accept path's row writes, group-committed
    uploads: UploadLimits = field(init=False)
    quotas: TenantQuotas = field(init=False)
    hub: Hub = field(default_factory=Hub)  # live status changes for this process's subscribers (push.py)

    def __post_init__(self) -> None:
        self.rows = RowWriter(self.store)
        s = self.settings
        self.uploads = UploadLimits(
            s.upload_body_budget_bytes, s.decode_budget_bytes, s.upload_wait_seconds, s.max_upload_bytes
        )
        self.quotas = TenantQuotas(
            s.tenant_rate, s.tenant_burst, s.tenant_overrides(), s.max_streams_per_tenant, s.max_streams
        )


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")
BearerCreds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_tenant(request: Request, creds: BearerCreds) -> str:
    """The tenant of the request's API key (401 without a valid one)."""
    return _tenant_of(request.app.state.services, creds)


TenantDep = Annotated[str, Depends(get_tenant)]


async def get_producer(request: Request, creds: BearerCreds) -> str:
    """The tenant of a request that creates work (a task, a notification): it also takes one of the tenant's
    tokens (429 + Retry-After when it has none). Reads, cancels and streams never do.

    Services from the request itself, not through ServicesDep/TenantDep: every dependency is a node FastAPI solves
    on each request (a tenth of POST /v1/emails went to solving them), so the hot path's tree stays two deep."""
    services: Services = request.app.state.services
    tenant = _tenant_of(services, creds)
    try:
        services.quotas.admit(tenant)
    except OverLimit as exc:
        raise over_limit(exc) from None
    return tenant


ProducerDep = Annotated[str, Depends(get_producer)]


def over_limit(exc: OverLimit) -> HTTPException:
    return HTTPException(exc.status, exc.message, {"Retry-After": str(exc.retry_after)})


def _tenant_of(services: Services, creds: HTTPAuthorizationCredentials | None) -> str:
    if creds is not None and creds.scheme.lower() == "bearer":
        tenant = tenant_for_key(services, creds.credentials)
        if tenant is not None:
            return tenant
    raise HTTPException(
        401, "missing or invalid API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
    )


def tenant_for_key(services: Services, key: str) -> str | None:
    """The tenant of an API key, None for an unknown one."""
    digest = hash_key(key)
    found = None
    for known, tenant in services.key_hashes.items():  # constant-time compare against every key
        if hmac.compare_digest(known, digest):
            found = tenant
    return found


# A route that creates a task takes an optional idempotency key (qw_core.idempotency); a malformed one is 422.
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        max_length=MAX_KEY_LENGTH,
        pattern=KEY_PATTERN,
        description=(
            "Send the request again with the same key (per tenant, within QW_IDEMPOTENCY_SECONDS, default 24 h) to "
            "get the first task back instead of a second one (202, `Idempotent-Replayed: true`). The same key with a "
            "different request is 422. 1-255 printable ASCII characters, e.g. a UUID."
        ),
    ),
]

# `?delay=<seconds>` on every route that queues a task: run it no earlier than that (status `scheduled` until then).
DelayQuery = Annotated[
    float | None,
    Query(
        gt=0,
        le=MAX_DELAY_SECONDS,
        description="Run the task no earlier than this many seconds from now (more than 0, at most 86400: a day).",
    ),
]
