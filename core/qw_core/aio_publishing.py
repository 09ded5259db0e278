"""Publishing tasks from asyncio code: one pika AsyncioConnection per event loop, publishes multiplexed on one channel.

The same promises as qw_core.publishing's BlockingPublisher, without a thread per publish: each publish is
persistent and mandatory and its coroutine returns only on the broker's confirm. Any number of coroutines publish
at once on the one channel; each waits on its own future, matched to the broker's `basic.ack`/`basic.nack` by
delivery tag (the channel numbers its publishes 1, 2, ... once confirms are on; `multiple` settles every tag up to
the one named). A message the broker returned as unroutable (`basic.return` comes before its ack) fails with
Unroutable, a nack (a full queue: reject-publish) with PublishRefused, a closed connection fails every publish in
flight with BrokerUnavailable (never retried: the broker may have them), and the next publish connects again (nodes
in qw_core.brokers' order). The connection's heartbeats run on the event loop, so an idle connection stays open.

Queues are declared once per kind and connection on a channel of their own, as declare_with_pika does, so a queue
the broker refuses as inequivalent leaves the publishing channel open. `accept_async` is qw_core.publishing.accept
for coroutines; the status store is synchronous, so its row writes run in a thread (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel

from qw_core import brokers
from qw_core import delays as ladder
from qw_core.idempotency import KEY_POLL_SECONDS, IdempotencyConflict, IdempotencyKey, IdempotencyKeyInUse, KeyClaim
from qw_core.messages import TaskMessage
from qw_core.publishing import (
    KEY_WAIT_SECONDS,
    BrokerUnavailable,
    MessageTooLarge,
    PublishError,
    PublishRefused,
    Unroutable,
    _withdraw,
)
from qw_core.store import StoreUnavailable, TaskStore
from qw_core.topology import H_ATTEMPT, TASKS_EXCHANGE, Topology, inequivalent_arg, log_inequivalent

log = logging.getLogger("qw_core.aio_publishing")
OPEN_TIMEOUT = 15.0  # seconds to connect to one node and set up its channel


class AsyncPublisher:
    """Confirmed, mandatory, persistent publishes to `qw.tasks` from coroutines of one event loop (the first to use
    it); `topology_for(kind)` says what to declare before a kind's first publish on each connection."""

    def __init__(
        self,
        urls: Sequence[str],
        topology_for: Callable[[str], Topology],
        heartbeat: int = 30,
        max_message_bytes: int = 16 * 1024 * 1024,
        connection_name: str = "qw-client",
    ) -> None:
        self.urls = list(urls)
        self.topology_for = topology_for
        self.heartbeat = heartbeat
        self.max_message_bytes = max_message_bytes
        self.connection_name = connection_name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()  # one connect, one declaration at a time
        self._rng = random.Random()
        self._conn: AsyncioConnection | None = None
        self._ch: Channel | None = None
        self._node: str | None = None
        self._lost: str | None = None
        self._declared: set[str] = set()
        self._tag = 0  # the delivery tag of the last publish on this channel
        self._pending: dict[int, tuple[asyncio.Future[None], str, str]] = {}  # tag -> (future, message id, kind)
        self._returned: set[str] = set()  # message ids returned unroutable, awaiting their confirm

    async def publish(
        self,
        kind: str,
        body: bytes,
        message_id: str,
        headers: dict[str, Any] | None = None,
        not_before: float | None = None,
    ) -> None:
        """Return once the broker confirmed the routed message; raise a PublishError subclass otherwise.

        `not_before` (epoch seconds): the message goes through the delay ladder and reaches the kind's queue then."""
        if len(body) > self.max_message_bytes:
            raise MessageTooLarge(
                f"the message would be {len(body)} bytes; the broker accepts at most {self.max_message_bytes}"
            )
        props = pika.BasicProperties(
            message_id=message_id,
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            headers={H_ATTEMPT: 0, **(headers or {})},
        )
        exchange, key = TASKS_EXCHANGE, kind
        if not_before is not None:
            props.headers[ladder.H_NOT_BEFORE] = round(not_before * 1000)
        ch = await self._live_channel(kind)
        if not_before is not None:  # the time left is measured now, after any reconnect
            exchange, key = ladder.ENTRY_EXCHANGE, ladder.routing_key((not_before - time.time()) * 1000, kind)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tag += 1
        self._pending[self._tag] = (confirmed, message_id, kind)
        try:
            ch.basic_publish(exchange, key, body, props, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop(BrokerUnavailable(f"the broker connection failed during the publish ({exc!r})"))
        await confirmed

    def close(self) -> None:
        """Close the connection (from its loop's thread; see `close_soon` from anywhere else)."""
        self._drop(BrokerUnavailable("the client was closed"))

    def close_soon(self) -> None:
        """Close from any thread: on the loop's thread now, else scheduled on the loop (if it still runs)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.close()
        else:
            loop.call_soon_threadsafe(self.close)

    # --- the connection ----------------------------------------------------------------------------------------

    async def _live_channel(self, kind: str) -> Channel:
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif self.loop is not loop:
            raise RuntimeError("an AsyncPublisher serves one event loop; make one per loop (Client does)")
        async with self._lock:
            if self._ch is None or not self._ch.is_open:
                self._drop(BrokerUnavailable("the connection was replaced"))
                await self._connect()
            assert self._conn is not None and self._ch is not None
            if kind not in self._declared:
                try:
                    await declare(self._conn, self.topology_for(kind))
                except pika.exceptions.ChannelClosedByBroker as exc:
                    raise PublishError(f"the broker refused to declare the {kind!r} queues: {exc!r}") from exc
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self._drop(BrokerUnavailable("the connection failed"))
                    raise BrokerUnavailable(f"the message broker is not reachable ({exc!r})") from exc
                self._declared.add(kind)
            return self._ch

    async def _connect(self) -> None:
        error: BaseException = BrokerUnavailable("no broker URL")
        for url in brokers.connect_order(self.urls, self._rng, self._lost):
            try:
                conn = await asyncio.wait_for(open_connection(self._params(url)), OPEN_TIMEOUT)
            except (pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                error = exc
                continue
            try:
                ch = await asyncio.wait_for(self._open_channel(conn), OPEN_TIMEOUT)
            except (pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                error = exc
                _close_quietly(conn)
                continue
            self._conn, self._ch, self._node, self._tag = conn, ch, url, 0
            conn.add_on_close_callback(self._on_connection_closed)
            return
        raise BrokerUnavailable(f"the message broker is not reachable ({error!r})")

    def _params(self, url: str) -> pika.URLParameters:
        params = pika.URLParameters(url)
        params.heartbeat = self.heartbeat
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 30
        params.client_properties = {"connection_name": self.connection_name}
        return params

    async def _open_channel(self, conn: AsyncioConnection) -> Channel:
        ch = await open_channel(conn)
        ch.add_on_return_callback(self._on_return)
        ch.add_on_close_callback(self._on_channel_closed)
        await rpc(ch, ch.confirm_delivery, self._on_confirm)
        return ch

    def _drop(self, error: PublishError) -> None:
        """Forget the connection (closing it if open); every publish awaiting its confirm fails with `error`."""
        conn, self._conn, self._ch = self._conn, None, None
        pending, self._pending = self._pending, {}
        self._declared.clear()
        self._returned.clear()
        if self._node is not None:
            self._lost, self._node = self._node, None
        for fut, _, _ in pending.values():
            if not fut.done():
                fut.set_exception(error)
        if conn is not None:
            _close_quietly(conn)

    # --- pika's callbacks (on the loop) ------------------------------------------------------------------------

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        tags = [t for t in self._pending if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            entry = self._pending.pop(tag, None)
            if entry is None:
                continue
            fut, message_id, kind = entry
            returned = message_id in self._returned
            self._returned.discard(message_id)
            if fut.done():
                continue
            if nack:
                fut.set_exception(PublishRefused(f"the broker refused the {kind!r} task (its queue may be full)"))
            elif returned:
                fut.set_exception(Unroutable(f"the broker has no queue for kind {kind!r}; nothing was queued"))
            else:
                fut.set_result(None)

    def _on_return(self, _ch: Any, _method: Any, props: Any, _body: bytes) -> None:
        if props.message_id:
            self._returned.add(props.message_id)

    def _on_channel_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is self._ch:
            self._drop(PublishError(f"the broker closed the channel: {reason!r}"))

    def _on_connection_closed(self, conn: Any, reason: BaseException) -> None:
        if conn is self._conn:
            self._drop(BrokerUnavailable(f"the broker connection failed during the publish ({reason!r})"))


async def open_connection(
    params: pika.URLParameters, cls: type[AsyncioConnection] = AsyncioConnection
) -> AsyncioConnection:
    opened: asyncio.Future[AsyncioConnection] = asyncio.get_running_loop().create_future()

    def fail(_conn: Any, error: BaseException | str) -> None:
        if not opened.done():
            exc = error if isinstance(error, BaseException) else pika.exceptions.AMQPConnectionError(error)
            opened.set_exception(exc)

    conn = cls(
        params,
        on_open_callback=resolve_with(opened),
        on_open_error_callback=fail,
        on_close_callback=fail,
        custom_ioloop=asyncio.get_running_loop(),
    )
    try:
        return await opened
    except BaseException:
        _close_quietly(conn)
        raise


def resolve_with(fut: asyncio.Future[Any]) -> Callable[[Any], None]:
    """A pika callback that resolves `fut` with its argument (once)."""

    def done(value: Any) -> None:
        if not fut.done():
            fut.set_result(value)

    return done


async def rpc(ch: Channel, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a channel method that takes a completion `callback` and await its frame; the channel closing (by the
    broker, or with its connection) fails the wait with the reason."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def closed(_ch: Any, reason: BaseException) -> None:
        if not fut.done():
            fut.set_exception(reason)

    ch.add_on_close_callback(closed)
    method(*args, callback=resolve_with(fut), **kwargs)
    return await fut


async def open_channel(conn: AsyncioConnection) -> Channel:
    """A new open channel on `conn`; its closing before it opened fails the wait."""
    fut: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()

    def closed(_ch: Any, reason: BaseException) -> None:
        if not fut.done():
            fut.set_exception(reason)

    ch = conn.channel(on_open_callback=resolve_with(fut))
    ch.add_on_close_callback(closed)
    return await fut


async def declare(conn: AsyncioConnection, topology: Topology) -> None:
    """declare_with_pika's declarations on a channel of their own (an inequivalent queue is used as it is)."""
    decl = await open_channel(conn)
    try:
        for ex in topology.exchanges:
            await rpc(decl, decl.exchange_declare, ex.name, ex.type, durable=True)
        for destination, source, key in topology.exchange_bindings:
            await rpc(decl, decl.exchange_bind, destination=destination, source=source, routing_key=key)
        for q in topology.queues:
            try:
                await rpc(decl, decl.queue_declare, q.name, durable=True, arguments=q.arguments)
            except pika.exceptions.ChannelClosedByBroker as exc:
                arg = inequivalent_arg(exc)
                if exc.reply_code != 406 or arg is None:
                    raise
                decl = await open_channel(conn)
                await rpc(decl, decl.queue_declare, q.name, passive=True)
                log_inequivalent(q, arg, exc)
            for exchange, key in q.bindings:
                await rpc(decl, decl.queue_bind, q.name, exchange, routing_key=key)
    finally:
        if decl.is_open:
            decl.close()


def _close_quietly(conn: AsyncioConnection) -> None:
    if conn.is_open:
        try:
            conn.close()
        except Exception:  # noqa: S110 - already broken; the next publish reconnects
            pass


async def accept_async(
    store: TaskStore,
    publisher: AsyncPublisher,
    task: TaskMessage,
    key: IdempotencyKey | None = None,
    wait_seconds: float = KEY_WAIT_SECONDS,
    not_before: float | None = None,
) -> str:
    """qw_core.publishing.accept for coroutines: row (or key claim), confirmed publish, visible; the row writes in
    a thread. Returns the task id: `task`'s, or the first task's of an idempotency `key` used for the same request."""
    body = task.to_bytes()
    if key is None:
        await asyncio.to_thread(store.create_pending, task.task_id, task.tenant, task.kind, None, None, not_before)
    else:
        claim = await _claim_async(store, task, key, wait_seconds, not_before)
        if claim.outcome == "existing":
            return claim.task_id
    try:
        await publisher.publish(task.kind, body, task.task_id, not_before=not_before)
    except BaseException:
        if not await asyncio.to_thread(_withdraw, store, task.task_id):
            log.info("task %s: the publish failed but a worker already has it; accepted", task.task_id)
            return task.task_id
        raise
    try:
        await asyncio.to_thread(store.confirm_queued, task.task_id)
    except StoreUnavailable:
        pass  # the broker has it; the worker's own status writes move the task on
    return task.task_id


async def _claim_async(
    store: TaskStore, task: TaskMessage, key: IdempotencyKey, wait_seconds: float, not_before: float | None
) -> KeyClaim:
    """qw_core.publishing's key claim, waiting on the event loop, not in a thread: coroutines that wait for the first
    request of their key must not hold the threads its own row writes need (asyncio.to_thread's pool is small)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        claim = await asyncio.to_thread(
            store.claim_key, task.task_id, task.tenant, task.kind, key, None, None, not_before
        )
        if claim.outcome == "mismatch":
            raise IdempotencyConflict(key.key, claim.task_id)
        if claim.outcome != "busy":
            return claim
        if time.monotonic() >= deadline:
            raise IdempotencyKeyInUse(key.key)
        await asyncio.sleep(KEY_POLL_SECONDS)
