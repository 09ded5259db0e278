"""Status changes pushed to this API process's subscribers: one broker consumer, fanned out in memory.

    qw.events --#--> this process's exclusive, auto-deleted, bounded queue --> Hub.receive
        --> per task: put in `seq` order (a change published late by another process is waited for briefly)
        --> each Subscription of that task, and of its tenant (optionally one kind): a bounded asyncio queue

A subscriber never makes memory grow: past its buffer it gets RESYNC instead of what it missed (a task stream then
re-reads the store; a tenant stream ends). After the consumer (re)binds, every subscriber gets RESYNC too: changes
made while nothing was bound were never routed here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from qw_core.events import EVENTS_EXCHANGE, decode
from qw_core.store import TaskRecord

log = logging.getLogger(__name__)


class _Resync:
    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = _Resync()
Item = TaskRecord | _Resync
REORDER_WAIT_SECONDS = 0.2  # how long a change waits for the one before it (published by another process)
REMEMBERED_TASKS = 100_000  # tasks whose next seq the hub remembers (least recently changed forgotten first)
CONNECTION_NAME = "qw-api-events"  # how the broker's management UI names this consumer's connection
QUEUE_MAX_LENGTH = 100_000  # this process's event queue on the broker: the oldest dropped past it


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

    async def get(self, wait: float) -> Item | None:
        """The next change, RESYNC, or None after `wait` seconds of silence."""
        try:
            async with asyncio.timeout(wait):  # no task per call, unlike wait_for: 10,000 streams wait here
                return await self.queue.get()
        except TimeoutError:
            return None


class Hub:
    def __init__(self, reorder_wait: float = REORDER_WAIT_SECONDS, remembered: int = REMEMBERED_TASKS) -> None:
        self.reorder_wait, self.remembered = reorder_wait, remembered
        self._by_task: dict[str, set[Subscription]] = {}
        self._by_tenant: dict[str, set[Subscription]] = {}
        self._next: OrderedDict[str, int] = OrderedDict()  # task_id -> the seq expected next
        self._held: dict[str, dict[int, TaskRecord]] = {}
        self.received = 0

    def subscribe(self, sub: Subscription) -> Subscription:
        index = self._by_task if sub.task_id is not None else self._by_tenant
        index.setdefault(sub.task_id if sub.task_id is not None else sub.tenant, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        index = self._by_task if sub.task_id is not None else self._by_tenant
        key = sub.task_id if sub.task_id is not None else sub.tenant
        subs = index.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del index[key]

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
        (a task that changed before this process started would otherwise wait REORDER_WAIT_SECONDS once)."""
        if task_id not in self._next and task_id not in self._held:
            self._next[task_id] = seq + 1

    def receive(self, rec: TaskRecord) -> None:
        """One change from the broker, in any order: passed on in each task's seq order, each seq once."""
        self.received += 1
        expected = self._next.get(rec.task_id, 1)
        if rec.seq < expected:
            return  # already passed on (a duplicate), or given up on
        if rec.seq > expected:  # the change before it is still on its way (another process published it)
            held = self._held.setdefault(rec.task_id, {})
            if not held:
                asyncio.get_running_loop().call_later(self.reorder_wait, self._release, rec.task_id)
            held[rec.seq] = rec
            return
        self._emit(rec)
        waiting = self._held.get(rec.task_id)
        while waiting and self._next[rec.task_id] in waiting:
            self._emit(waiting.pop(self._next[rec.task_id]))
        if waiting is not None and not waiting:
            del self._held[rec.task_id]

    def _release(self, task_id: str) -> None:
        """The gap did not fill in time: pass on what waited (a task stream re-reads the store on the gap)."""
        for seq, rec in sorted(self._held.pop(task_id, {}).items()):
            if seq >= self._next.get(task_id, 1):
                self._emit(rec)

    def _emit(self, rec: TaskRecord) -> None:
        self._next[rec.task_id] = rec.seq + 1
        self._next.move_to_end(rec.task_id)
        if len(self._next) > self.remembered:
            self._next.popitem(last=False)
        for sub in self._by_task.get(rec.task_id, ()):
            sub.deliver(rec)
        for sub in self._by_tenant.get(rec.tenant, ()):
            if sub.kind is None or sub.kind == rec.kind:
                sub.deliver(rec)


class EventConsumer:
    """Feeds the hub from the broker, reconnecting (and resyncing every subscriber) after a loss."""

    def __init__(self, urls: list[str], hub: Hub, reconnect_seconds: float = 1.0) -> None:
        self.urls, self.hub, self.reconnect_seconds = urls, hub, reconnect_seconds
        self.bound = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="qw-events-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

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
            await queue.bind(exchange, routing_key="#")
            self.hub.resync_all()  # whatever changed before the bind never reached this queue
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
            if not connection.is_closed:
                await connection.close()
