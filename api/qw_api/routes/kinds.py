"""Task kinds over HTTP: `POST /v1/tasks/{kind}` for the kinds of the QW_APP module, `GET /v1/kinds` for those and
the built-in ones.

Each kind of QW_APP gets its own route with the kind's payload model as its body, so FastAPI validates it (422
naming the field) and /docs shows its schema; then the same accept path as every other task route
(qw_api.service.submit: row, confirmed publish, visible; 202 only after the broker's confirm, 503 + Retry-After
otherwise). A kind this API does not know answers 404 (after authentication, like every /v1 route), and so does a
built-in kind, naming its own route: those routes take what a client may give (POST /v1/images an upload, never a
storage key of its choosing).

No `from __future__ import annotations` here: a route's body annotation is the kind's model, a runtime value.
"""

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel
from qw_core.messages import TaskMessage, UserTask, new_task_id, utcnow
from qw_core.registry import Registry, TaskSpec

from ..deps import DelayQuery, IdempotencyKeyHeader, ProducerDep, ServicesDep, TenantDep
from ..fastroute import SubmitRoute
from ..schemas import SUBMIT_ERRORS, TaskAccepted, problems
from ..service import accepted, idempotency_key, link, not_before_of, submit

# The routes that queue the built-in kinds (qw_api.routes.images, .emails), by kind.
BUILTIN_ROUTES = {"image": "upload_image", "email": "send_email"}


class KindView(BaseModel):
    kind: str
    submit_url: str
    builtin: bool = False  # True: submit_url is the kind's own route (a multipart upload for image), not its schema
    description: str | None = None
    payload_schema: dict[str, Any]
    max_attempts: int | None = None  # None: the workers' QW_MAX_ATTEMPTS
    retry_delays_ms: list[int] | None = None  # None: the workers' QW_RETRY_DELAYS
    retry_jitter: float | None = None  # None: the workers' QW_RETRY_JITTER
    time_limit: float | None = None


def build_router(registry: Registry) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["tasks"])

    @router.get("/kinds", response_model=list[KindView], responses=problems(401))
    async def list_kinds(tenant: TenantDep, request: Request) -> list[KindView]:
        """The task kinds there are, each with its payload's JSON Schema and where to submit it: the built-in ones
        (`builtin`: at their own routes) and those of the API's QW_APP module (at POST /v1/tasks/{kind})."""
        return [_view(spec, request) for spec in registry]

    for spec in registry:
        if spec.builtin:
            continue
        router.add_api_route(
            f"/tasks/{spec.kind}",
            _submit_route(spec),
            methods=["POST"],
            status_code=202,
            response_model=TaskAccepted,
            responses=SUBMIT_ERRORS,
            name=f"submit_{spec.kind}",
            route_class_override=SubmitRoute,  # well-formed requests skip FastAPI's parameter solving
            summary=f"Queue a {spec.kind} task",
            description=(spec.fn.__doc__ or "").strip() or f"Queue a task of kind {spec.kind}.",
        )

    @router.post("/tasks/{kind}", status_code=202, response_model=TaskAccepted, responses=problems(401, 404))
    async def submit_task_of_kind(kind: str, tenant: TenantDep) -> None:
        """Queue a task of one of the kinds of the API's QW_APP module: each has its own route above, with its
        payload schema. Any other kind is 404, naming the kinds there are."""
        raise HTTPException(404, _unknown(kind, registry))

    return router


def _submit_route(spec: TaskSpec) -> Any:
    async def submit_task(
        body: Any,
        tenant: ProducerDep,
        services: ServicesDep,
        request: Request,
        idempotency: IdempotencyKeyHeader = None,
        delay: DelayQuery = None,
    ) -> Response:
        payload = UserTask(kind=spec.kind, args=body.model_dump(mode="json"))
        task = TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=payload)
        key = idempotency_key(services, idempotency, spec.kind, payload.args)  # as the SDK's: one key space
        return accepted(request, await submit(services, task, key=key, not_before=not_before_of(delay)))

    submit_task.__annotations__["body"] = spec.model  # FastAPI reads the body's model from the signature
    return submit_task


def _view(spec: TaskSpec, request: Request) -> KindView:
    p = spec.policy
    return KindView(
        kind=spec.kind,
        submit_url=link(request, BUILTIN_ROUTES[spec.kind] if spec.builtin else f"submit_{spec.kind}"),
        builtin=spec.builtin,
        description=(spec.fn.__doc__ or "").strip() or None,
        payload_schema=spec.json_schema(),
        max_attempts=p.max_attempts,
        retry_delays_ms=list(p.delays_ms) if p.delays_ms is not None else None,
        retry_jitter=p.jitter,
        time_limit=spec.time_limit,
    )


def _unknown(kind: str, registry: Registry) -> str:
    spec = registry.get(kind)
    if spec is not None and spec.builtin:
        return f"{kind!r} is a built-in kind: queue it with POST /v1/{kind}s"
    accepted = [s.kind for s in registry if not s.builtin]
    if not accepted:
        return f"no task kind {kind!r}: this API defines no task kinds (start it with QW_APP=<your tasks module>)"
    return f"no task kind {kind!r}; this API accepts: {', '.join(accepted)} (GET /v1/kinds lists them)"
