"""The accept path shared by every task route: row, publish with confirm, then visible. All or nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

import orjson
from fastapi import HTTPException, Request, Response
from qw_core import delays as ladder
from qw_core.idempotency import (
    KEY_POLL_SECONDS,
    REPLAYED_HEADER,
    IdempotencyConflict,
    IdempotencyKey,
    IdempotencyKeyInUse,
    KeyClaim,
    make_key,
)
from qw_core.messages import TaskMessage
from qw_core.storage import StorageUnavailable
from qw_core.store import StoreUnavailable
from qw_core.topology import TASKS_EXCHANGE
from starlette.concurrency import run_in_threadpool

from .deps import Services
from .publisher import MessageTooLarge, PublishUnavailable

log = logging.getLogger("qw_api.service")


def unavailable(services: Services, what: str) -> HTTPException:
    return HTTPException(
        503,
        f"{what}; nothing was queued, try again shortly",
        headers={"Retry-After": str(services.settings.retry_after_seconds)},
    )


class Accepted(NamedTuple):
    """The task a request is answered with: its own, or (`replayed`) the first one of its idempotency key."""

    task_id: str
    replayed: bool = False
    not_before: float | None = None


async def submit(
    services: Services,
    task: TaskMessage,
    source_key: str | None = None,
    key: IdempotencyKey | None = None,
    not_before: float | None = None,
) -> Accepted:
    """Accept `task` or raise 503; under an idempotency `key` already used for this request, answer with the first
    task instead (422 for a key used for another request, 409 while its first request is still being queued). On
    failure, or a replay, no row claims `task` is queued and its upload is removed.

    `not_before` (epoch seconds): a delayed task, published through the delay ladder (qw_core.delays)."""
    try:
        if key is None:
            await services.rows.create_pending((task.task_id, task.tenant, task.kind, source_key, not_before))
        else:
            claim = await _claim(services, task, key, source_key, not_before)
            if claim.outcome == "existing":
                await _remove_upload(services, source_key)
                return Accepted(claim.task_id, replayed=True)
    except StoreUnavailable as exc:
        await _remove_upload(services, source_key)
        raise unavailable(services, "the task store is unavailable") from exc
    except HTTPException:
        await _remove_upload(services, source_key)
        raise
    start = time.perf_counter()
    try:
        if not_before is None:
            await services.publisher.publish(TASKS_EXCHANGE, task.kind, task.to_bytes(), task.task_id)
        else:
            rk = ladder.routing_key((not_before - time.time()) * 1000, task.kind)
            headers = {ladder.H_NOT_BEFORE: round(not_before * 1000)}
            await services.publisher.publish(ladder.ENTRY_EXCHANGE, rk, task.to_bytes(), task.task_id, headers)
    except MessageTooLarge:
        await run_in_threadpool(services.store.discard_pending, task.task_id)
        await _remove_upload(services, source_key)
        raise  # 413, by the app's handler (main.py)
    except PublishUnavailable as exc:
        services.metrics.publish_failures.labels(task.kind).inc()
        if not await _withdraw(services, task.task_id):
            # The confirm never came (timeout, connection lost) but the broker had the message: a worker has
            # already moved the row on. The task is live; a 503 would invite a retry that runs it twice.
            services.metrics.tasks_submitted.labels(task.kind).inc()
            return Accepted(task.task_id, not_before=not_before)
        await _remove_upload(services, source_key)
        raise unavailable(services, f"the task could not be queued: {exc}") from exc
    services.metrics.publish_duration.labels(task.kind).observe(time.perf_counter() - start)
    # The broker has it now. If this write fails the worker's own status writes still move the task on.
    try:
        await services.rows.confirm_queued(task.task_id)
    except StoreUnavailable:
        pass
    services.metrics.tasks_submitted.labels(task.kind).inc()
    return Accepted(task.task_id, not_before=not_before)


async def _claim(
    services: Services, task: TaskMessage, key: IdempotencyKey, source_key: str | None, not_before: float | None
) -> KeyClaim:
    """The store's claim of `key` (qw_core.idempotency); while the key's first request is still being queued (by
    this API or another replica), wait for its outcome, a little longer than one publish may take."""
    deadline = time.monotonic() + services.settings.publish_timeout + 1.0
    while True:
        claim = await run_in_threadpool(
            services.store.claim_key, task.task_id, task.tenant, task.kind, key, source_key, None, not_before
        )
        if claim.outcome == "mismatch":
            raise HTTPException(422, str(IdempotencyConflict(key.key, claim.task_id)))
        if claim.outcome != "busy":
            return claim
        if time.monotonic() >= deadline:
            raise HTTPException(
                409,
                str(IdempotencyKeyInUse(key.key)),
                headers={"Retry-After": str(services.settings.retry_after_seconds)},
            )
        await asyncio.sleep(KEY_POLL_SECONDS)


async def _withdraw(services: Services, task_id: str) -> bool:
    """After a failed publish: remove the still-pending row, so a copy the broker kept after all is refused by
    the worker (no status record: dead-lettered, never run). False when a worker already has the task."""
    try:
        return bool(await run_in_threadpool(services.store.discard_pending, task_id))
    except StoreUnavailable:
        return True  # the row stays pending; the answer is still an honest "not queued as far as we know"


async def _remove_upload(services: Services, key: str | None) -> None:
    """Best effort: the answer is about the task, not the file. An upload left behind (the store down right now)
    names no task; on S3 the uploads' lifecycle rule removes it (qw_workers.janitor sets it)."""
    if key:
        try:
            await run_in_threadpool(services.storage.delete, key)
        except StorageUnavailable as exc:
            log.warning("could not remove the upload %s of a task that was not queued: %s", key, exc)


def link(request: Request, route: str, **params: str) -> str:
    """An absolute link to a route: under QW_PUBLIC_URL when set, else from the request (scheme and host from
    trusted proxies' X-Forwarded-* headers, see QW_FORWARDED_ALLOW_IPS)."""
    path = _path_template(request.app, route, tuple(params)).format_map(params)
    public = request.app.state.services.settings.public_url
    if public:
        return public + path
    return _base(request) + path  # what request.url_for(route, **params) gives


_BASES_KEPT = 256  # the Host header is the client's: a bounded cache


def _base(request: Request) -> str:
    """str(request.base_url) without its trailing slash, remembered per (scheme, server, root path, Host header):
    Starlette builds the URL anew on every call (a twentieth of an accepted POST's own code)."""
    scope = request.scope
    host = next((value for key, value in scope["headers"] if key == b"host"), None)
    key = (scope["scheme"], scope.get("server"), scope.get("app_root_path", scope.get("root_path", "")), host)
    bases: dict[tuple[Any, ...], str] | None = getattr(request.app.state, "link_bases", None)
    if bases is None or len(bases) >= _BASES_KEPT:
        bases = request.app.state.link_bases = {}
    base = bases.get(key)
    if base is None:
        # A WebSocket's own URL is ws(s)://, but its links name HTTP routes (as url_for makes them): http(s)://.
        url = request.base_url
        if url.scheme in _HTTP_SCHEME:
            url = url.replace(scheme=_HTTP_SCHEME[url.scheme])
        base = bases[key] = str(url).rstrip("/")
    return base


_HTTP_SCHEME = {"ws": "http", "wss": "https"}


def _path_template(app: Any, route: str, names: tuple[str, ...]) -> str:
    """The route's path with `{name}` for each parameter, found once per app (kept in app.state): Starlette's
    url_path_for tries every route in turn (an exception per miss), a twentieth of a POST /v1/emails under load."""
    known: dict[tuple[str, tuple[str, ...]], str] | None = getattr(app.state, "link_templates", None)
    if known is None:
        known = app.state.link_templates = {}
    template = known.get((route, names))
    if template is None:
        marks = {name: f"\x00{i}\x00" for i, name in enumerate(names)}
        template = str(app.url_path_for(route, **marks)).replace("{", "{{").replace("}", "}}")
        for i, name in enumerate(names):
            template = template.replace(f"\x00{i}\x00", "{" + name + "}")
        known[(route, names)] = template
    return template


def accepted(request: Request, result: Accepted) -> Response:
    """The 202 body (schema: TaskAccepted), built directly: no response-model pass on the hot path, orjson for the
    encoding. A replay (an idempotency key's first task) is the first answer again, marked
    `Idempotent-Replayed: true`."""
    status_url = link(request, "get_task", task_id=result.task_id)
    headers = {REPLAYED_HEADER: "true"} if result.replayed else None
    body: dict[str, object] = {"task_id": result.task_id, "status": "queued", "status_url": status_url}
    if result.not_before is not None:
        body.update(status="scheduled", not_before=result.not_before)
    return Response(orjson.dumps(body), status_code=202, headers=headers, media_type="application/json")


def idempotency_key(services: Services, header: str | None, kind: str, payload: Any) -> IdempotencyKey | None:
    """The request's key with its fingerprint (`kind` and `payload`: what makes two requests the same one)."""
    if header is None:
        return None
    return make_key(header, kind, payload, time.time(), services.settings.idempotency_seconds)


def not_before_of(delay: float | None) -> float | None:
    """The epoch seconds a task asked to wait `delay` seconds may run (the route's Query checked the range)."""
    return None if delay is None else time.time() + delay
