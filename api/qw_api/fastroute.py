"""The hot routes that queue a task (POST /v1/emails, POST /v1/tasks/{kind}), with their parameters read in one
step instead of through FastAPI's dependency solver.

A route declared with `route_class_override=SubmitRoute` keeps its ordinary FastAPI signature: OpenAPI, /docs and
schemathesis see the same body model, `Idempotency-Key` header and `?delay=` query as before. Only the request
handler differs: a well-formed request (JSON body valid for the route's model, a valid key or none, a valid delay or
none, a known API key) is read straight from the Request (the body through FastAPI's own validator of that body
field, so the same model in the same mode) and the endpoint is called with the values. Anything else, every
request that will be refused, goes to FastAPI's own handler of the same route: the same 401/422/400 answers, with
the same detail shapes, as without this class. The fast path's checks are each at least as strict as FastAPI's
(what it accepts FastAPI accepts), and it has no side effect before all of them passed (the tenant's token is
taken last, as `get_producer` does: 429 + Retry-After).

Measured by bench/ab_publish.py (CPU per request under 64 connections): FastAPI's per-request work for these
parameters (dependency tree, header and query validation, the body's content-type parsing) was about half the
API's cost beyond the no-op endpoint.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

import fastapi.routing
import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from qw_core.delays import MAX_DELAY_SECONDS
from qw_core.idempotency import HEADER, KEY_PATTERN, MAX_KEY_LENGTH

from .deps import Services, get_producer, get_services, over_limit, tenant_for_key
from .quotas import OverLimit

# The endpoint's parameters, by name, that this route fills (anything else: the route refuses to be built)
PARAMS = {"body", "tenant", "services", "request", "idempotency", "delay"}
_KEY = re.compile(KEY_PATTERN)
_HEADER = HEADER.lower()
# A plain decimal number: the subset of what pydantic's float parsing accepts that this path takes itself
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")
_FALLBACK = object()  # "let FastAPI answer this request"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class SubmitRoute(APIRoute):
    """An APIRoute whose well-formed requests skip FastAPI's parameter solving (module docstring)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        names = set(inspect.signature(endpoint).parameters)
        if names != PARAMS:
            raise TypeError(f"SubmitRoute {path}: the endpoint must take exactly {sorted(PARAMS)}, not {sorted(names)}")
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Handler:
        slow = super().get_route_handler()  # FastAPI's handler: every request the fast path does not take
        # Under include_router FastAPI builds the handler in the including router's context (its prefix, its
        # dependencies): read the route from there, as APIRoute.get_route_handler does.
        context = getattr(fastapi.routing, "_effective_route_context_var", None)
        effective = context.get() if context is not None else None
        route = effective if effective is not None and effective.original_route is self else self
        calls = {dep.call for dep in route.dependant.dependencies}
        if calls != {get_producer, get_services} or route.body_field is None:
            return slow  # dependencies added by a router, or no body: FastAPI's handler alone, nothing skipped
        body_field = route.body_field
        endpoint = self.endpoint
        overrides = route.dependency_overrides_provider

        async def handle(request: Request) -> Response:
            if overrides is not None and getattr(overrides, "dependency_overrides", None):
                return await slow(request)  # a dependency replaced (app.dependency_overrides): FastAPI solves it
            args = await _read(request, body_field)
            if args is _FALLBACK:
                return await slow(request)
            body, tenant, services, key, delay = args
            return await endpoint(
                body=body, tenant=tenant, services=services, request=request, idempotency=key, delay=delay
            )

        return handle


async def _read(request: Request, body_field: Any) -> Any:
    """(body, tenant, services, idempotency key, delay) of a well-formed request, else _FALLBACK. Side effects
    (the tenant's token) only once everything else passed."""
    headers = request.headers
    content_type = headers.get("content-type")
    if content_type is None or content_type.partition(";")[0].strip().lower() != "application/json":
        return _FALLBACK
    key = headers.get(_HEADER)
    if key is not None and (len(key) > MAX_KEY_LENGTH or _KEY.fullmatch(key) is None):
        return _FALLBACK
    delay: float | None = None
    if request.scope["query_string"]:
        raw = request.query_params.get("delay")
        if raw is not None:
            if _DECIMAL.fullmatch(raw) is None:
                return _FALLBACK
            delay = float(raw)
            if not (0 < delay <= MAX_DELAY_SECONDS and math.isfinite(delay)):
                return _FALLBACK
    scheme, credentials = get_authorization_scheme_param(headers.get("authorization"))
    if not credentials or scheme.lower() != "bearer":
        return _FALLBACK
    services: Services = request.app.state.services
    tenant = tenant_for_key(services, credentials)
    if tenant is None:
        return _FALLBACK
    raw_body = await request.body()
    try:
        data = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        return _FALLBACK
    body, errors = body_field.validate(data, {}, loc=("body",))
    if errors:
        return _FALLBACK
    try:
        services.quotas.admit(tenant)
    except OverLimit as exc:
        raise over_limit(exc) from None
    return body, tenant, services, key, delay
