"""Status changes pushed to this API process's subscribers: one broker consumer, fanned out in memory.

    qw.events --<tenant>.#--> this process's exclusive, auto-deleted, bounded queue --> Hub.receive
        --> per task: put in `seq` order (a change published late by another process is waited for briefly)
        --> each Subscription of that task, and of its tenant (optionally one kind): a bounded asyncio queue,
            one put per subscriber; each Change is encoded once per frame type (Change.frame), not per subscriber

The queue is bound `<tenant>.#` only while this process has a subscriber of that tenant (Hub.subscribe asks for the
binding, `await Hub.bound(tenant)` returns once the broker confirmed it, so a stream reads the stored state only
after every later change is sure to be routed here); after the tenant's last subscriber left, the binding stays
QW_EVENTS_UNBIND_SECONDS, then goes. Other tenants' changes never reach this process.

A subscriber never makes memory grow: past its buffer it gets RESYNC instead of what it missed (a task stream then
re-reads the store; a tenant stream ends). After the consumer (re)binds, every subscriber gets RESYNC too: changes
made while nothing was bound were never routed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from qw_core.events import EVENTS_EXCHANGE, decode, tenant_binding
from qw_core.store import TaskRecord

log = logging.getLogger(__name__)


class _Resync:
    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = _Resync()
CLOSED: Final = _Resync()  # put by a stream's own reader when its client left: the stream ends


@dataclass(eq=False, slots=True)
class Change:
    """One change as the hub passes it on: the record, when the hub received it (time.time(), for the lag metric
    and the bench's trace), and its frames, each encoded once however many subscribers send it."""

    rec: TaskRecord
    received: float = 0.0
    _frames: dict[Any, Any] = field(default_factory=dict)

    def frame(self, key: Any, make: Callable[[TaskRecord], Any]) -> Any:
        """`make(rec)`, computed once per `key` (e.g. the frame type and the link base it contains)."""
        try:
            return self._frames[key]
        except KeyError:
            out = self._frames[key] = make(self.rec)
            return out


Item = Change | _Resync  # RESYNC or CLOSED
REORDER_WAIT_SECONDS = 0.2  # how long a change waits for the one before it (published by another process)
REMEMBERED_TASKS = 100_000  # tasks whose next seq the hub remembers (least recently changed forgotten first)
CONNECTION_NAME = "qw-api-events"  # how the broker's management UI names this consumer's connection
QUEUE_MAX_LENGTH = 100_000  # this process's event queue on the broker: the oldest dropped past it
UNBIND_SECONDS = 5.0  # a tenant's binding outlives its last subscriber this long (QW_EVENTS_UNBIND_SECONDS)
BIND_WAIT_SECONDS = 10.0  # a new stream waits at most this long for its tenant's binding


@dataclass(eq=False)
class Subscription:
    tenant: str
    task_id: str | None = None  # one task, else every task of the tenant
    kind: str | None = None
    size: int = 256
    queue: asyncio.Queue[Item] = field(init=False)
    overflows: int = 0

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.size)

    def deliver(self, item: Item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # too slow: what it missed is replaced by one RESYNC
            self.overflows += 1
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)

    def close(self) -> None:
        """Its client left: the stream's next get() returns CLOSED, whatever is queued."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(CLOSED)

    async def get(self, wait: float) -> Item | None:
        """The next change, RESYNC, or None after `wait` seconds of silence."""
        try:
            async with asyncio.timeout(wait):  # no task per call, unlike wait_for: 10,000 streams wait here
                return await self.queue.get()
        except TimeoutError:
            return None


class Binder(Protocol):
    """What the hub asks of its consumer: route a tenant's changes here (or stop), and say when that holds."""

    def want(self, tenant: str, wanted: bool) -> None: ...

    async def bound_tenant(self, tenant: str) -> None: ...


class Hub:
    def __init__(self, reorder_wait: float = REORDER_WAIT_SECONDS, remembered: int = REMEMBERED_TASKS) -> None:
        self.reorder_wait, self.remembered = reorder_wait, remembered
        self._by_task: dict[str, set[Subscription]] = {}
        self._by_tenant: dict[str, set[Subscription]] = {}
        self._per_tenant: dict[str, int] = {}  # subscribers of any kind, per tenant: what the binder binds
        self._next: OrderedDict[str, int] = OrderedDict()  # task_id -> the seq expected next
        self._held: dict[str, dict[int, Change]] = {}
        self.binder: Binder | None = None  # none: every change reaches the hub (tests feed it by hand)
        self.received = 0
        self.on_receive: Callable[[Change], None] | None = None  # e.g. the lag metric

    def subscribe(self, sub: Subscription) -> Subscription:
        """Registers `sub` at once; the tenant's binding may still be on its way (`await bound(tenant)`)."""
        index = self._by_task if sub.task_id is not None else self._by_tenant
        index.setdefault(sub.task_id if sub.task_id is not None else sub.tenant, set()).add(sub)
        count = self._per_tenant[sub.tenant] = self._per_tenant.get(sub.tenant, 0) + 1
        if count == 1 and self.binder is not None:
            self.binder.want(sub.tenant, True)
        return sub

    async def bound(self, tenant: str) -> None:
        """Returns once changes of `tenant` are routed to this process (or at once while the consumer is away:
        every subscriber then gets RESYNC when it is back)."""
        if self.binder is not None:
            await self.binder.bound_tenant(tenant)

    def unsubscribe(self, sub: Subscription) -> None:
        index = self._by_task if sub.task_id is not None else self._by_tenant
        key = sub.task_id if sub.task_id is not None else sub.tenant
        subs = index.get(key)
        if subs is None or sub not in subs:
            return  # already gone (a stream's cleanup runs twice)
        subs.discard(sub)
        if not subs:
            del index[key]
        count = self._per_tenant[sub.tenant] - 1
        if count:
            self._per_tenant[sub.tenant] = count
        else:
            del self._per_tenant[sub.tenant]
            if self.binder is not None:
                self.binder.want(sub.tenant, False)

    def tenants(self) -> list[str]:
        """Tenants with a subscriber here."""
        return list(self._per_tenant)

    def has_subscribers(self, tenant: str) -> bool:
        return tenant in self._per_tenant

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._by_task.values()) + sum(len(s) for s in self._by_tenant.values())

    def resync_all(self) -> None:
        for index in (self._by_task, self._by_tenant):
            for subs in index.values():
                for sub in subs:
                    sub.deliver(RESYNC)

    def known(self, task_id: str, seq: int) -> None:
        """A subscriber read the task at `seq` from the store: what comes next needs no wait for older changes
        (a task that changed before this process started, or while its tenant was not bound here, would otherwise
        wait REORDER_WAIT_SECONDS once)."""
        if task_id not in self._held and self._next.get(task_id, 0) <= seq:
            self._next[task_id] = seq + 1

    def receive(self, rec: TaskRecord) -> None:
        """One change from the broker, in any order: passed on in each task's seq order, each seq once."""
        self.received += 1
        change = Change(rec, time.time())
        if self.on_receive is not None:
            self.on_receive(change)
        expected = self._next.get(rec.task_id, 1)
        if rec.seq < expected:
            return  # already passed on (a duplicate), or given up on
        if rec.seq > expected:  # the change before it is still on its way (another process published it)
            held = self._held.setdefault(rec.task_id, {})
            if not held:
                asyncio.get_running_loop().call_later(self.reorder_wait, self._release, rec.task_id)
            held[rec.seq] = change
            return
        self._emit(change)
        waiting = self._held.get(rec.task_id)
        while waiting and self._next[rec.task_id] in waiting:
            self._emit(waiting.pop(self._next[rec.task_id]))
        if waiting is not None and not waiting:
            del self._held[rec.task_id]

    def _release(self, task_id: str) -> None:
        """The gap did not fill in time: pass on what waited (a task stream re-reads the store on the gap)."""
        for seq, change in sorted(self._held.pop(task_id, {}).items()):
            if seq >= self._next.get(task_id, 1):
                self._emit(change)

    def _emit(self, change: Change) -> None:
        rec = change.rec
        self._next[rec.task_id] = rec.seq + 1
        self._next.move_to_end(rec.task_id)
        if len(self._next) > self.remembered:
            self._next.popitem(last=False)
        for sub in self._by_task.get(rec.task_id, ()):
            sub.deliver(change)
        for sub in self._by_tenant.get(rec.tenant, ()):
            if sub.kind is None or sub.kind == rec.kind:
                sub.deliver(change)


class EventConsumer:
    """Feeds the hub from the broker, reconnecting (and resyncing every subscriber) after a loss. The hub's Binder:
    its queue is bound `<tenant>.#` for each tenant the hub has a subscriber of, and for `unbind_seconds` after the
    last one left (a page reloading keeps its binding)."""

    def __init__(
        self, urls: list[str], hub: Hub, reconnect_seconds: float = 1.0, unbind_seconds: float = UNBIND_SECONDS
    ) -> None:
        self.urls, self.hub, self.reconnect_seconds, self.unbind_seconds = urls, hub, reconnect_seconds, unbind_seconds
        self.bound = asyncio.Event()  # connected, and what was wanted at (re)connect bound
        self._task: asyncio.Task[None] | None = None
        self._queue: Any = None  # while connected: this process's queue, and the exchange it binds to
        self._exchange: Any = None
        self._bound: set[str] = set()  # tenants whose binding the broker confirmed on this connection
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._busy: dict[str, asyncio.Task[None]] = {}  # a tenant's bind/unbind under way
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self.binds = self.unbinds = 0
        hub.binder = self

    # The hub's Binder

    def want(self, tenant: str, wanted: bool) -> None:
        timer = self._grace.pop(tenant, None)
        if timer is not None:
            timer.cancel()
        if not wanted:  # the last subscriber left: keep the binding a little while
            self._grace[tenant] = asyncio.get_running_loop().call_later(self.unbind_seconds, self._grace_over, tenant)
            return
        self._reconcile_soon(tenant)

    async def bound_tenant(self, tenant: str) -> None:
        if self._queue is None or tenant in self._bound:
            return  # away: every subscriber gets RESYNC once it is back
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tenant, []).append(waiter)
        with contextlib.suppress(TimeoutError):  # a broker this slow: go on, resync comes with the reconnect
            async with asyncio.timeout(BIND_WAIT_SECONDS):
                await waiter

    def bound_tenants(self) -> set[str]:
        return set(self._bound)

    def _grace_over(self, tenant: str) -> None:
        self._grace.pop(tenant, None)
        self._reconcile_soon(tenant)

    def _wanted(self, tenant: str) -> bool:
        return self.hub.has_subscribers(tenant) or tenant in self._grace

    def _reconcile_soon(self, tenant: str) -> None:
        if self._queue is not None and tenant not in self._busy:
            self._busy[tenant] = asyncio.create_task(self._reconcile(tenant), name=f"qw-events-bind-{tenant}")

    async def _reconcile(self, tenant: str) -> None:
        """Binds or unbinds until the broker matches what is wanted (subscribers may come and go meanwhile)."""
        queue = self._queue
        try:
            while queue is not None and queue is self._queue:
                wanted, have = self._wanted(tenant), tenant in self._bound
                if wanted and not have:
                    await queue.bind(self._exchange, routing_key=tenant_binding(tenant))
                    self.binds += 1
                    self._bound.add(tenant)
                    self._wake(tenant)
                elif have and not wanted:
                    await queue.unbind(self._exchange, routing_key=tenant_binding(tenant))
                    self.unbinds += 1
                    self._bound.discard(tenant)
                else:
                    return
        except Exception as exc:  # the channel is going: the reconnect binds again
            log.warning("status events: binding %s failed (%s)", tenant, exc)
        finally:
            self._busy.pop(tenant, None)

    def _wake(self, tenant: str) -> None:
        for waiter in self._waiters.pop(tenant, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _lost(self) -> None:
        self._queue = self._exchange = None
        self._bound.clear()
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()
        for tenant in list(self._waiters):
            self._wake(tenant)

    # The connection

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="qw-events-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for task in list(self._busy.values()):
            task.cancel()
        self._lost()

    async def _run(self) -> None:
        attempt = 0
        while True:
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                await self._consume(url)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("status events: consumer lost the broker (%s); reconnecting", exc)
            self.bound.clear()
            self._lost()
            self.hub.resync_all()
            await asyncio.sleep(self.reconnect_seconds)

    async def _consume(self, url: str) -> None:
        import aio_pika

        connection = await aio_pika.connect(url, timeout=10, client_properties={"connection_name": CONNECTION_NAME})
        try:
            channel = await connection.channel(publisher_confirms=False)
            exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(
                "",
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": QUEUE_MAX_LENGTH, "x-overflow": "drop-head"},
            )
            self._queue, self._exchange = queue, exchange
            for tenant in self.hub.tenants():  # those subscribed while it was away
                self._reconcile_soon(tenant)
            await asyncio.gather(*self._busy.values())
            self.hub.resync_all()  # whatever changed before the binds never reached this queue
            self.bound.set()
            log.info("status events: consuming %s", queue.name)
            closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_close(*_: object) -> None:
                if not closed.done():
                    closed.set_result(None)

            connection.close_callbacks.add(on_close)
            channel.close_callbacks.add(on_close)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                try:
                    rec = decode(message.body)
                except Exception:
                    log.warning("status events: undecodable event dropped")
                    return
                self.hub.receive(rec)

            await queue.consume(on_message, no_ack=True)
            await closed
        finally:
            self._queue = None
            if not connection.is_closed:
                await connection.close()
