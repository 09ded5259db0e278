"""`/v1/ws`: a tenant's live status over a WebSocket, authenticated without the key in the URL.

Protocol (JSON text frames):
- auth, one of: the subprotocols `queueworker` and `bearer.<key>` (`new WebSocket(url, ["queueworker",
  "bearer." + key])`, for keys made of token characters), an `Authorization: Bearer <key>` header (not from a
  browser), or a first message `{"type": "auth", "key": "<key>"}` within AUTH_TIMEOUT_SECONDS;
- the server answers `{"type": "ready", "tenant": ...}`, then `{"type": "status", "task": <TaskView + seq>}` for
  every change of the tenant's tasks (`?kind=` for one kind), and `{"type": "resync"}` when changes may have been
  missed (read again what matters);
- close codes: 4401 bad or missing key, 4429/4503 too many streams (the tenant's cap, the server's), 4408 a
  subscriber too slow to keep up (reconnect and re-read), 1001 the server is going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import cast

from fastapi import Request, WebSocket, WebSocketDisconnect
from qw_core.store import TaskRecord
from starlette.websockets import WebSocketState

from ..deps import Services, tenant_for_key
from ..push import RESYNC, Subscription
from ..quotas import OverLimit
from .tasks import task_view

SUBPROTOCOL = "queueworker"
KEY_PROTOCOL_PREFIX = "bearer."
AUTH_TIMEOUT_SECONDS = 10.0
CLOSE_UNAUTHORIZED, CLOSE_TOO_SLOW = 4401, 4408


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
    reader = asyncio.create_task(_until_closed(websocket))
    try:
        await websocket.send_json({"type": "ready", "tenant": tenant, "kind": kind})
        overflows = sub.overflows
        while not reader.done():
            getter = asyncio.ensure_future(sub.get(services.settings.sse_keepalive_seconds))
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return
            item = getter.result()
            if sub.overflows != overflows:
                await websocket.close(CLOSE_TOO_SLOW, "too slow to keep up: reconnect and read the tasks again")
                return
            if item is RESYNC:
                await websocket.send_json({"type": "resync"})
            elif isinstance(item, TaskRecord):
                view = task_view(item, cast(Request, websocket)).model_dump()
                await websocket.send_json({"type": "status", "task": view})
    finally:
        reader.cancel()
        services.metrics.sse_streams.dec()
        services.hub.unsubscribe(sub)
        if websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(1001)


async def _until_closed(websocket: WebSocket) -> None:
    """Reads (and ignores) what the client sends, until it closes."""
    while True:
        msg = await websocket.receive()
        if msg["type"] == "websocket.disconnect":
            return
