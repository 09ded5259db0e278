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
from typing import Any

from qw_core.aio_publishing import AsyncPublisher, accept_async
from qw_core.messages import KINDS, TaskMessage, UserTask, new_task_id, utcnow
from qw_core.publishing import BlockingPublisher, accept
from qw_core.registry import Registry, check_kind_name, default_registry
from qw_core.settings import ClientSettings
from qw_core.store import TERMINAL, TaskStore, open_store
from qw_core.topology import Topology, build_topology


@dataclass(frozen=True)
class TaskStatus:
    """A task as the status store has it; `result` is the body's return value once it succeeded."""

    task_id: str
    kind: str
    status: str
    attempts: int
    error: str | None
    result: Any

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
        self._publisher: BlockingPublisher | None = None
        self._aio: dict[asyncio.AbstractEventLoop, AsyncPublisher] = {}  # one connection per event loop

    def enqueue(self, kind: str, payload: Mapping[str, Any] | None = None, /, **fields: Any) -> str:
        """Queue a task of `kind` with `payload` (a mapping, or keyword fields); returns its task id.

        A kind defined in this process (its module imported) is validated here (InvalidPayload names the field);
        any other kind is validated by its worker, which dead-letters a bad payload. Raises BrokerUnavailable,
        PublishRefused (full queue), Unroutable (no queue for the kind), MessageTooLarge or StoreUnavailable.
        """
        return self.submit(kind, self._args(kind, payload, fields))

    async def enqueue_async(self, kind: str, payload: Mapping[str, Any] | None = None, /, **fields: Any) -> str:
        """`enqueue` for asyncio code: published on this event loop's own connection (the row writes in a thread)."""
        return await self.submit_async(kind, self._args(kind, payload, fields))

    def submit(self, kind: str, args: dict[str, Any], **send_options: Any) -> str:
        """Queue already-validated JSON `args` (Task.send validates against its own spec first)."""
        task = self._prepare(kind, args, **send_options)
        store, publisher = self._connections()
        accept(store, publisher, task)
        return task.task_id

    async def submit_async(self, kind: str, args: dict[str, Any], **send_options: Any) -> str:
        """`submit` for asyncio code: many coroutines publish at once on the loop's one connection."""
        task = self._prepare(kind, args, **send_options)
        store = self._store if self._store is not None else await asyncio.to_thread(self._open_store)
        await accept_async(store, self._aio_publisher(), task)
        return task.task_id

    def _args(self, kind: str, payload: Mapping[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
        """The payload as JSON arguments, validated here when the kind is defined in this process."""
        args = {**(payload or {}), **fields}
        spec = self.registry.get(kind)
        return spec.to_args(args) if spec else args

    def _prepare(self, kind: str, args: dict[str, Any]) -> TaskMessage:
        """The task message for `kind` (shared by the sync and asyncio paths; send options land here)."""
        if kind in KINDS:
            raise ValueError(f"{kind!r} is a built-in kind: queue it through the HTTP API (POST /v1/{kind}s)")
        check_kind_name(kind)
        payload = UserTask(kind=kind, args=args)
        return TaskMessage(task_id=new_task_id(), tenant=self.settings.tenant, created_at=utcnow(), payload=payload)

    def status(self, task_id: str) -> TaskStatus | None:
        """The task's status and result, or None if no such task is visible (not queued yet or unknown)."""
        rec = self._connections()[0].get(task_id)
        if rec is None or rec.status == "pending":
            return None
        result = json.loads(rec.result) if rec.result is not None else None
        return TaskStatus(rec.task_id, rec.kind, rec.status, rec.attempts, rec.error, result)

    def wait(self, task_id: str, timeout: float = 30.0, interval: float = 0.1) -> TaskStatus:
        """Poll until the task ended (succeeded, failed or dead); TimeoutError after `timeout` seconds."""
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
            if self._store is not None:
                self._store.close()
            self._store = self._publisher = None
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
    """What a producer declares for a kind: its queue and dead-letter queue, as the worker declares them. Not its
    retry queues: only a worker publishes to those, with the delays it knows (a producer's QW_RETRY_DELAYS may
    differ, and would leave unused queues behind)."""

    def topology_for(kind: str) -> Topology:
        return build_topology(
            (kind,), settings.retry_delays, settings.delivery_limit, {kind: ()}, settings.queue_limits()
        )

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
