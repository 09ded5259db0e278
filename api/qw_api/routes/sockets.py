"""`/v1/ws`: a tenant's live status over a WebSocket, authenticated without the key in the URL.

Protocol (JSON text frames):
- auth, one of: the subprotocols `queueworker` and `bearer.<key>` (`new WebSocket(url, ["queueworker",
  "bearer." + key])`, for keys made of token characters), an `Authorization: Bearer <key>` header (not from a
  browser), or a first message `{"type": "auth", "key": "<key>"}` within AUTH_TIMEOUT_SECONDS;
- the server answers `{"type": "ready", "tenant": ...}`, then `{"type": "status", "task": <TaskView + seq>}` for
  every change of the tenant's tasks (`?kind=` for one kind), and `{"type": "resync"}` when changes may have been
  missed (read again what matters);
- close codes: 4401 bad or missing key, 4429/4503 too many streams (the tenant's cap, the server's), 4408 a
  subscriber too slow to keep up (reconnect and re-read), 4000 the socket's lifetime is over (QW_WS_MAX_SECONDS,
  default an hour: reconnect, and read again what may have changed meanwhile), 1001 the server is going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from functools import partial
from typing import Any, cast

from fastapi import Request, WebSocket, WebSocketDisconnect
from qw_core.store import TaskRecord
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketState

from ..deps import Services, tenant_for_key
from ..push import CLOSED, RESYNC, Change, Subscription
from ..quotas import OverLimit
from .tasks import task_view

SUBPROTOCOL = "queueworker"
KEY_PROTOCOL_PREFIX = "bearer."
AUTH_TIMEOUT_SECONDS = 10.0
CLOSE_UNAUTHORIZED, CLOSE_TOO_SLOW = 4401, 4408
CLOSE_RECONNECT = 4000  # the socket's lifetime (QW_WS_MAX_SECONDS) is over: reconnect, then read what matters


def link_key(rec: TaskRecord, conn: HTTPConnection) -> Any:
    """What a frame of `rec` depends on besides the record: the base of its result link (only a success has one)."""
    if rec.status != "succeeded":
        return None
    scope = conn.scope
    return scope["scheme"], scope.get("root_path", ""), next((v for k, v in scope["headers"] if k == b"host"), None)


def _offered_key(websocket: WebSocket) -> str | None:
    for proto in websocket.scope.get("subprotocols", []):
        if proto.startswith(KEY_PROTOCOL_PREFIX):
            return str(proto[len(KEY_PROTOCOL_PREFIX) :])
    auth = websocket.headers.get("authorization", "")
    scheme, _, key = auth.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


async def _first_message_key(websocket: WebSocket) -> str | None:
    try:
        raw = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_SECONDS)
        msg = json.loads(raw)
    except (TimeoutError, ValueError, KeyError):
        return None
    if isinstance(msg, dict) and msg.get("type") == "auth" and isinstance(msg.get("key"), str):
        return str(msg["key"])
    return None


async def serve_socket(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        key = _offered_key(websocket) or await _first_message_key(websocket)
        tenant = tenant_for_key(services, key) if key else None
        if tenant is None:
            await websocket.close(CLOSE_UNAUTHORIZED, "missing or invalid API key")
            return
        if not services.settings.events_push:
            await websocket.close(4503, "live events need QW_EVENTS_PUSH=true")
            return
        try:
            release = services.quotas.open_stream(tenant)
        except OverLimit as exc:
            await websocket.close(4000 + exc.status, exc.message[:120])
            return
        try:
            await _stream(services, websocket, tenant)
        finally:
            release()
    except WebSocketDisconnect:
        return


async def _stream(services: Services, websocket: WebSocket, tenant: str) -> None:
    kind = websocket.query_params.get("kind") or None
    sub = services.hub.subscribe(Subscription(tenant, kind=kind, size=services.settings.events_buffer))
    services.metrics.sse_streams.inc()
    reader = asyncio.create_task(_until_closed(websocket, sub))  # one task per socket, none per message
    ends = time.monotonic() + services.settings.ws_max_seconds
    try:
        await services.hub.bound(tenant)  # "ready" promises every later change
        await websocket.send_json({"type": "ready", "tenant": tenant, "kind": kind})
        overflows = sub.overflows
        while True:
            left = ends - time.monotonic()
            if left <= 0:
                await websocket.close(CLOSE_RECONNECT, "connection lifetime reached: reconnect")
                return
            item = await sub.get(min(services.settings.sse_keepalive_seconds, left))
            if item is CLOSED:
                return
            if sub.overflows != overflows:
                await websocket.close(CLOSE_TOO_SLOW, "too slow to keep up: reconnect and read the tasks again")
                return
            if item is RESYNC:
                await websocket.send_json({"type": "resync"})
            elif isinstance(item, Change):
                text = item.frame(("ws", link_key(item.rec, websocket)), partial(_message, websocket))
                await websocket.send_text(text)
    finally:
        reader.cancel()
        services.metrics.sse_streams.dec()
        services.hub.unsubscribe(sub)
        if websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(1001)


def _message(websocket: WebSocket, rec: TaskRecord) -> str:
    view = task_view(rec, cast(Request, websocket)).model_dump()
    return json.dumps({"type": "status", "task": view}, separators=(",", ":"), ensure_ascii=False)


async def _until_closed(websocket: WebSocket, sub: Subscription) -> None:
    """Reads (and ignores) what the client sends, until it closes: then the stream ends."""
    try:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
    finally:
        sub.close()
