"""Live status: one task's server-sent events, a tenant's (SSE or WebSocket). Pushed from the broker through the
process's hub (qw_api.push); with QW_EVENTS_PUSH=false a task's stream reads the store instead (the fallback).

Every status frame carries the task's `seq` (SSE `id:`), the order in which the store made its changes: a client
that reconnects with `Last-Event-ID` gets the stored state only if it is newer than what it had.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, cast

from fastapi import APIRouter, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from qw_core.store import TERMINAL, StoreUnavailable, TaskRecord
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from ..deps import Services, ServicesDep, TenantDep, over_limit
from ..push import RESYNC, Change, Subscription
from ..quotas import OverLimit
from ..schemas import problems
from .sockets import link_key, serve_socket
from .tasks import NOT_FOUND, load_task, task_view

router = APIRouter(prefix="/v1", tags=["events"])
SSE_MAX_SECONDS = 900.0
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
KEEPALIVE = ": keep-alive\n\n"
OVERFLOW = object()  # a tenant stream fell behind by more than its buffer: it ends
KindQuery = Annotated[str | None, Query(max_length=100, description="Only tasks of this kind.")]


def view_dict(rec: TaskRecord, conn: HTTPConnection) -> dict[str, Any]:
    return task_view(rec, cast(Request, conn)).model_dump()


def status_frame(rec: TaskRecord, conn: HTTPConnection) -> str:
    return f"id: {rec.seq}\nevent: status\ndata: {json.dumps(view_dict(rec, conn))}\n\n"


def pushed_frame(change: Change, conn: HTTPConnection, trace: bool) -> bytes:
    """The change's SSE frame, encoded once for every stream with the same link base."""
    frame: bytes = change.frame(("sse", link_key(change.rec, conn)), lambda rec: status_frame(rec, conn).encode())
    return b": hub %.6f\n%s" % (change.received, frame) if trace else frame


def open_stream(services: Services, tenant: str) -> Callable[[], None]:
    """A slot under the tenant's cap of open streams (429 over it, 503 over the server's), or the HTTP error."""
    try:
        return services.quotas.open_stream(tenant)
    except OverLimit as exc:
        raise over_limit(exc) from None


def _resume_from(last_event_id: str | None) -> int | None:
    try:
        return int(last_event_id) if last_event_id is not None else None
    except ValueError:
        return None  # not one of ours: start over with the stored state


@router.get(
    "/tasks/{task_id}/events",
    responses={200: {"content": {"text/event-stream": {}}}, **problems(401, 404, 429)},
)
async def task_events(
    task_id: str,
    tenant: TenantDep,
    services: ServicesDep,
    request: Request,
    last_event_id: Annotated[str | None, Header(description="Resume: the last `id` received.")] = None,
) -> StreamingResponse:
    """Server-sent events: the stored state, then one `status` event per change (`id`: the task's change number),
    ending after a final status. `Last-Event-ID` resumes: nothing already received is sent again. A comment line
    keeps the connection alive (QW_SSE_KEEPALIVE_SECONDS); at most QW_MAX_STREAMS_PER_TENANT open (429)."""
    sub = None
    if services.settings.events_push:  # before the first read: no change can fall between the two
        sub = services.hub.subscribe(Subscription(tenant, task_id=task_id, size=services.settings.events_buffer))
    try:
        if sub is not None:
            await services.hub.bound(tenant)  # changes from here on are routed to this process
        first = await load_task(services, task_id, tenant)
        if first is None:
            raise HTTPException(404, NOT_FOUND)
        release = open_stream(services, tenant)
    except BaseException:
        if sub is not None:
            services.hub.unsubscribe(sub)
        raise
    resume = _resume_from(last_event_id)
    if sub is not None:
        services.hub.known(task_id, first.seq)
    if sub is None:
        stream = _polled(services, request, first, resume)
    else:
        stream = _pushed(services, request, sub, first, resume)

    async def counted() -> AsyncIterator[str | bytes]:
        services.metrics.sse_streams.inc()
        try:
            async for frame in stream:
                yield frame
        finally:
            services.metrics.sse_streams.dec()
            if sub is not None:
                services.hub.unsubscribe(sub)
            release()

    def cleanup() -> None:  # also when the stream never started (client gone at once)
        if sub is not None:
            services.hub.unsubscribe(sub)
        release()

    return StreamingResponse(
        counted(), media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(cleanup)
    )


async def _pushed(
    services: Services, request: Request, sub: Subscription, rec: TaskRecord, resume: int | None
) -> AsyncIterator[str | bytes]:
    sent = -1 if resume is None else resume
    keepalive, trace = services.settings.sse_keepalive_seconds, services.settings.events_trace
    started = time.monotonic()
    change: Change | None = None  # rec as pushed (its frame shared with other streams), else rec as read
    while True:
        if rec.seq > sent:
            sent = rec.seq
            yield pushed_frame(change, request, trace) if change is not None else status_frame(rec, request)
        if rec.status in TERMINAL or time.monotonic() - started > SSE_MAX_SECONDS:
            return
        item = await sub.get(keepalive)
        if item is None:  # (a client that left is noticed by StreamingResponse, which then cancels this stream)
            yield KEEPALIVE
            continue
        if isinstance(item, Change) and item.rec.seq <= sent + 1:
            change, rec = item, item.rec
            continue
        # RESYNC (overflow, or the consumer rebound) or a gap (a change that never arrived): the store knows
        try:
            stored = await load_task(services, rec.task_id, rec.tenant)
        except HTTPException:  # the store is down: keep what we have, the next change may tell
            continue
        if stored is None:
            return
        change, rec = None, stored
        services.hub.known(rec.task_id, rec.seq)


async def _polled(
    services: Services, request: Request, rec: TaskRecord, resume: int | None
) -> AsyncIterator[str | bytes]:
    """The fallback (QW_EVENTS_PUSH=false): the store read every QW_SSE_POLL_INTERVAL seconds per stream."""
    sent = -1 if resume is None else resume
    started = last_sent = time.monotonic()
    current: TaskRecord | None = rec
    while current is not None:
        if current.seq > sent:
            sent, last_sent = current.seq, time.monotonic()
            yield status_frame(current, request)
            if current.status in TERMINAL:
                return
        elif time.monotonic() - last_sent > services.settings.sse_keepalive_seconds:
            last_sent = time.monotonic()
            yield KEEPALIVE
        if await request.is_disconnected() or time.monotonic() - started > SSE_MAX_SECONDS:
            return
        await asyncio.sleep(services.settings.sse_poll_interval)
        try:
            current = await run_in_threadpool(services.store.get, rec.task_id, rec.tenant)
        except StoreUnavailable:
            continue


@router.get("/events", responses={200: {"content": {"text/event-stream": {}}}, **problems(401, 429, 503)})
async def tenant_events(
    tenant: TenantDep,
    services: ServicesDep,
    request: Request,
    kind: KindQuery = None,
    last_event_id: Annotated[
        str | None, Header(description="Sent by a reconnecting EventSource: the stream starts with `resync`.")
    ] = None,
):
    """Server-sent events for every task of the tenant (or of one `kind`): a `status` event per change, as it
    happens (no stored state first: read a task with GET /v1/tasks/{id}). `event: resync` means changes may have
    been missed: the server lost the broker, or this is a reconnect (a `Last-Event-ID` header, which a browser's
    EventSource sends by itself: what changed while it was away was not kept for it). Read again what matters.
    `event: overflow` ends a stream that fell too far behind. Needs QW_EVENTS_PUSH (503 without)."""
    if not services.settings.events_push:
        raise HTTPException(503, "tenant-wide events need QW_EVENTS_PUSH=true; follow a task's /events instead")
    release = open_stream(services, tenant)
    sub = services.hub.subscribe(Subscription(tenant, kind=kind, size=services.settings.events_buffer))

    async def stream() -> AsyncIterator[str | bytes]:
        services.metrics.sse_streams.inc()
        try:
            await services.hub.bound(tenant)
            yield ": subscribed\n\n"
            if last_event_id is not None:
                yield "event: resync\ndata: {}\n\n"
            async for item in tenant_items(services, sub, request.is_disconnected):
                if item is None:
                    yield KEEPALIVE
                elif item is RESYNC:
                    yield "event: resync\ndata: {}\n\n"
                elif item is OVERFLOW:
                    yield "event: overflow\ndata: {}\n\n"
                elif isinstance(item, Change):
                    yield pushed_frame(item, request, False)
        finally:
            services.metrics.sse_streams.dec()
            services.hub.unsubscribe(sub)
            release()

    def cleanup() -> None:
        services.hub.unsubscribe(sub)
        release()

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS,
                             background=BackgroundTask(cleanup))  # fmt: skip


async def tenant_items(
    services: Services, sub: Subscription, gone: Callable[[], Any]
) -> AsyncIterator[Change | object | None]:
    """A tenant subscription's items (None: a keep-alive is due) until it overflows (OVERFLOW, the last) or the
    client is gone (checked at keep-alives; a closed connection also cancels the stream)."""
    started = time.monotonic()
    overflows = sub.overflows
    while time.monotonic() - started < SSE_MAX_SECONDS:
        item = await sub.get(services.settings.sse_keepalive_seconds)
        if sub.overflows != overflows:
            yield OVERFLOW
            return
        if item is None and await gone():
            return
        yield item


@router.websocket("/ws")
async def tenant_socket(websocket: WebSocket) -> None:
    """The tenant-wide stream over a WebSocket (see sockets.py for the protocol)."""
    await serve_socket(websocket)
