"""`Client`: queue tasks by kind name from any Python code, with the same guarantees as the HTTP API.

`enqueue` returns only once the task is durable: a status row (pending, invisible), a persistent, mandatory publish
confirmed by the broker, then the row made visible (queued): qw_core.publishing.accept, the API's accept path in
synchronous form. A Client holds one broker connection and one store for the whole process and is safe to share
between threads; `default_client()` is that shared instance, built on first use from QW_* variables (the "connection
pool pattern": never a connection per task). After a fork the child builds its own: a socket must not be shared.
asyncio code (`enqueue_async`, `submit_async`) gets one more connection per event loop (qw_core.aio_publishing),
on which all its coroutines publish at once; the store's row writes run in a thread there.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from qw_core.aio_publishing import AsyncPublisher, accept_async
from qw_core.delays import resolve_not_before
from qw_core.events import EventPublisher, publish_changes
from qw_core.idempotency import IdempotencyKey, make_key
from qw_core.messages import KINDS, TaskMessage, UserTask, new_task_id, utcnow
from qw_core.publishing import BlockingPublisher, accept
from qw_core.registry import Registry, check_kind_name, default_registry
from qw_core.settings import ClientSettings
from qw_core.store import TERMINAL, TaskStore, open_store
from qw_core.topology import Topology, build_topology


@dataclass(frozen=True)
class TaskStatus:
    """A task as the status store has it; `result` is the body's return value once it succeeded; `not_before`: when
    a delayed task (status `scheduled`) or a retry (`queued`) is due."""

    task_id: str
    kind: str
    status: str
    attempts: int
    error: str | None
    result: Any
    not_before: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class Client:
    """Queues tasks. Arguments override QW_RABBITMQ_URL, QW_DATABASE_URL and QW_TENANT; `settings` replaces them."""

    def __init__(
        self,
        url: str | None = None,
        *,
        database_url: str | None = None,
        tenant: str | None = None,
        settings: ClientSettings | None = None,
        registry: Registry | None = None,
    ) -> None:
        given: dict[str, Any] = {"rabbitmq_url": url, "database_url": database_url, "tenant": tenant}
        self.settings = settings or ClientSettings(**{k: v for k, v in given.items() if v is not None})
        self.registry = registry if registry is not None else default_registry
        self._lock = threading.Lock()
        self._store: TaskStore | None = None
        self._events: EventPublisher | None = None  # its status changes (queued, cancelled) to qw.events
        self._publisher: BlockingPublisher | None = None
        self._aio: dict[asyncio.AbstractEventLoop, AsyncPublisher] = {}  # one connection per event loop

    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        not_before: datetime | None = None,
        **fields: Any,
    ) -> str:
        """Queue a task of `kind` with `payload` (a mapping, or keyword fields); returns its task id.

        `delay` (seconds or a timedelta, up to a day) or `not_before` (an aware datetime at most a day ahead): the
        task runs no earlier than that (status `scheduled` until then). `idempotency_key`: see `submit`. A payload
        field named like a keyword option (`idempotency_key`, `delay`, `not_before`) goes in `payload`. A kind
        defined in this process (its module imported) is validated here (InvalidPayload names the field); any other
        kind is validated by its worker, which dead-letters a bad payload. Raises ValueError (a bad delay),
        BrokerUnavailable, PublishRefused (full queue), Unroutable (no queue for the kind), MessageTooLarge or
        StoreUnavailable.
        """
        valid = self._args(kind, payload, fields)
        return self.submit(kind, valid, idempotency_key=idempotency_key, delay=delay, not_before=not_before)

    async def enqueue_async(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        not_before: datetime | None = None,
        **fields: Any,
    ) -> str:
        """`enqueue` for asyncio code: published on this event loop's own connection (the row writes in a thread)."""
        valid = self._args(kind, payload, fields)
        return await self.submit_async(kind, valid, idempotency_key=idempotency_key, delay=delay, not_before=not_before)

    def submit(
        self,
        kind: str,
        args: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        not_before: datetime | None = None,
    ) -> str:
        """Queue already-validated JSON `args` (Task.send validates against its own spec first); `delay` and
        `not_before` as in `enqueue`.

        `idempotency_key` (1-255 printable ASCII characters, e.g. a UUID; ValueError otherwise): the same key from
        the same tenant within QW_IDEMPOTENCY_SECONDS (default 24 h) returns the first task's id and queues
        nothing, also over HTTP (`Idempotency-Key`) and across processes. The same key with another kind or other
        args raises IdempotencyConflict; IdempotencyKeyInUse if the first request is still being queued after 10 s.
        """
        task, key, due = self._prepare(kind, args, idempotency_key, delay, not_before)
        store, publisher = self._connections()
        return accept(store, publisher, task, key, not_before=due)

    async def submit_async(
        self,
        kind: str,
        args: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        not_before: datetime | None = None,
    ) -> str:
        """`submit` for asyncio code: many coroutines publish at once on the loop's one connection."""
        task, key, due = self._prepare(kind, args, idempotency_key, delay, not_before)
        store = self._store if self._store is not None else await asyncio.to_thread(self._open_store)
        return await accept_async(store, self._aio_publisher(), task, key, not_before=due)

    def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not started (status `queued`: never run, or waiting for a retry; or `scheduled`):
        True once it is `cancelled` (now or before; a worker that receives it skips it), False if it is processing
        or has ended. LookupError for a task this client's tenant does not have."""
        rec = self._connections()[0].cancel(task_id, self.settings.tenant)
        if rec is None or rec.status == "pending":
            raise LookupError(f"no task {task_id!r} for tenant {self.settings.tenant!r}")
        return rec.status == "cancelled"

    def _args(self, kind: str, payload: Mapping[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
        """The payload as JSON arguments, validated here when the kind is defined in this process."""
        args = {**(payload or {}), **fields}
        spec = self.registry.get(kind)
        return spec.to_args(args) if spec else args

    def _prepare(
        self,
        kind: str,
        args: dict[str, Any],
        idempotency_key: str | None,
        delay: float | timedelta | None,
        not_before: datetime | None,
    ) -> tuple[TaskMessage, IdempotencyKey | None, float | None]:
        """The task message, its idempotency key and when it is due (shared by the sync and asyncio paths); every
        check that can fail runs here, before anything connects."""
        if kind in KINDS:
            raise ValueError(f"{kind!r} is a built-in kind: queue it through the HTTP API (POST /v1/{kind}s)")
        check_kind_name(kind)
        now = utcnow()
        due = resolve_not_before(delay, not_before, now)
        payload = UserTask(kind=kind, args=args)
        task = TaskMessage(task_id=new_task_id(), tenant=self.settings.tenant, created_at=now, payload=payload)
        key = None
        if idempotency_key is not None:
            key = make_key(idempotency_key, kind, args, time.time(), self.settings.idempotency_seconds)
        return task, key, due.timestamp() if due else None

    def status(self, task_id: str) -> TaskStatus | None:
        """The task's status and result, or None if no such task is visible (not queued yet or unknown)."""
        rec = self._connections()[0].get(task_id)
        if rec is None or rec.status == "pending":
            return None
        result = json.loads(rec.result) if rec.result is not None else None
        due = datetime.fromtimestamp(rec.not_before, UTC) if rec.not_before is not None else None
        return TaskStatus(rec.task_id, rec.kind, rec.status, rec.attempts, rec.error, result, due)

    def wait(self, task_id: str, timeout: float = 30.0, interval: float = 0.1) -> TaskStatus:
        """Poll until the task ended (succeeded, failed, dead or cancelled); TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(task_id)
            if st is not None and st.done:
                return st
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} did not end within {timeout}s (status: {st and st.status})")
            time.sleep(interval)

    def close(self) -> None:
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
            for aio in self._aio.values():
                aio.close_soon()
            if self._events is not None:
                self._events.close()
            if self._store is not None:
                self._store.close()
            self._store = self._publisher = self._events = None
            self._aio.clear()

    async def aclose(self) -> None:
        """`close` for asyncio code (the store's close runs in a thread)."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _open_store(self) -> TaskStore:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings.database_url)
                if self.settings.publish_events:
                    self._events = publish_changes(self._store, self.settings.rabbitmq_urls())
            return self._store

    def _aio_publisher(self) -> AsyncPublisher:
        """The running loop's publisher (made on first use; those of closed loops are forgotten)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for gone in [lp for lp in self._aio if lp.is_closed()]:
                del self._aio[gone]
            if loop not in self._aio:
                s = self.settings
                self._aio[loop] = AsyncPublisher(
                    s.rabbitmq_urls(), producer_topology(s), s.heartbeat, s.max_message_bytes
                )
            return self._aio[loop]

    def _connections(self) -> tuple[TaskStore, BlockingPublisher]:
        """The store and the publisher, made on first use (a Client that is never used opens nothing)."""
        self._open_store()
        with self._lock:
            assert self._store is not None
            if self._publisher is None:
                s = self.settings
                topology = producer_topology(s)
                self._publisher = BlockingPublisher(s.rabbitmq_urls(), topology, s.heartbeat, s.max_message_bytes)
            return self._store, self._publisher


def producer_topology(settings: ClientSettings) -> Callable[[str], Topology]:
    """What a producer declares for a kind: its queue and dead-letter queue and the delay ladder, as the worker
    declares them."""

    def topology_for(kind: str) -> Topology:
        return build_topology((kind,), settings.delivery_limit, settings.queue_limits())

    return topology_for


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process's shared Client (made on first use, from QW_* variables); what `Task.send` publishes through."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def set_default_client(client: Client | None) -> Client | None:
    """Replace the shared client (None: build a new one from QW_* on next use); returns the previous one, unclosed.

    For tests and for programs that configure the client in code instead of through the environment."""
    global _default
    with _default_lock:
        previous, _default = _default, client
        return previous


def _forget_default_after_fork() -> None:
    global _default, _default_lock
    _default, _default_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_default_after_fork)
