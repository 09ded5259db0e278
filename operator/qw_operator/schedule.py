"""One scheduler for every QueueWorker the operator watches, instead of one kopf daemon each.

kopf's watch feeds the registry (`upsert` on every event of a QueueWorker, `remove` on its deletion; main.py), and
one task per broker ticks every QueueWorker on that broker whose pollingInterval is due, on each fresh snapshot
of the broker's batched read. A tick that has nothing to wait for (almost all: nothing to scale) runs to its end
at once, in the round's loop; one that scales goes on as its own task (a replica write it waits for holds up
nobody else), and a QueueWorker whose previous tick is still running is skipped for that round, never ticked twice
at once. A spec changed in the cluster is read at the next tick (the Ticker reads the body the last event brought).
Nothing ticks before the operator's view of the Deployments (deployments.py) has listed them all (`ready`).

While kopf's peering pauses this operator (another one leads), the registry is emptied and nothing ticks; on
resume kopf lists every QueueWorker again and they register afresh, with the history their status carries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qw_operator.metrics import OperatorMetrics
from qw_operator.rabbitmq import BrokerPoller, Snapshot
from qw_operator.reconcile import Ticker
from qw_operator.status import unknown_broker_status

log = logging.getLogger(__name__)

MakeTicker = Callable[[Any], Ticker]  # a QueueWorker's body -> its Ticker


@dataclass
class Entry:
    ticker: Ticker
    broker: str
    interval: float
    due: float = 0.0  # monotonic time of the next tick
    last_tick: float | None = None
    task: asyncio.Task[None] | None = None


def _broker(spec: Mapping[str, Any]) -> str:
    return str(spec.get("broker", "default"))


@dataclass
class Scheduler:
    pollers: Mapping[str, BrokerPoller]
    make_ticker: MakeTicker
    metrics: OperatorMetrics
    default_interval: float
    clock: Callable[[], float] = time.monotonic
    entries: dict[str, Entry] = field(default_factory=dict)
    paused: bool = False
    ready: asyncio.Event | None = None  # set once the Deployments are listed: nothing ticks before
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _registered: asyncio.Event = field(default_factory=asyncio.Event)

    # -- the registry, fed by kopf's watch --------------------------------------------------------------------

    def upsert(self, uid: str, body: Any) -> None:
        """A QueueWorker seen (listed, added or modified): a new one is ticked from now on, a known one reads
        its new spec at its next tick. (Registered while paused too: kopf's list after a resume may come before
        the resume reaches `pause`; nothing ticks until it does.)"""
        entry = self.entries.get(uid)
        if entry is None:
            entry = Entry(self.make_ticker(body), "", 0.0)
            self.entries[uid] = entry
            self.metrics.queueworkers.set(len(self.entries))
        else:
            entry.ticker.body = body
        self._register(uid, entry)
        self._registered.set()

    def _register(self, uid: str, entry: Entry) -> None:
        spec = entry.ticker.spec
        broker, interval = _broker(spec), float(spec.get("pollingInterval") or self.default_interval)
        if broker != entry.broker and entry.broker in self.pollers:
            self.pollers[entry.broker].unregister(uid)
        entry.broker, entry.interval = broker, interval
        if broker in self.pollers:
            self.pollers[broker].register(uid, str(spec.get("vhost", "/")), str(spec["queue"]), interval)

    def remove(self, uid: str) -> None:
        """A QueueWorker deleted: no more ticks (one running finishes), its metrics series go."""
        entry = self.entries.pop(uid, None)
        if entry is None:
            return
        if entry.broker in self.pollers:
            self.pollers[entry.broker].unregister(uid)
        self.metrics.forget(entry.ticker.namespace, entry.ticker.name)
        self.metrics.queueworkers.set(len(self.entries))

    def pause(self, paused: bool) -> None:
        """kopf's peering paused (True) or resumed this operator."""
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            for uid in list(self.entries):
                self.remove(uid)
        log.info("scheduler %s", "paused: another operator leads" if paused else "resumed")

    # -- ticking ----------------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._broker_loop(n, p), name=f"ticks {n}") for n, p in self.pollers.items()]
        self._tasks.append(asyncio.create_task(self._unknown_broker_loop(), name="ticks of unknown brokers"))

    async def stop(self) -> None:
        running = [e.task for e in self.entries.values() if e.task is not None]
        for t in (*self._tasks, *running):
            t.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)

    def _due(self, broker: str, slack: float) -> list[Entry]:
        now = self.clock()
        return [e for e in self.entries.values() if e.broker == broker and e.due <= now + slack]

    async def _wait_ready(self) -> None:
        if self.ready is not None:
            await self.ready.wait()

    async def _broker_loop(self, name: str, poller: BrokerPoller) -> None:
        await self._wait_ready()
        seq = 0
        while True:
            if not poller.registered:
                self._registered.clear()
                await self._registered.wait()
                continue
            # A snapshot newer than the last one used; a stalled or failing poller yields None -> failure.
            snap = await poller.wait_newer(seq, timeout=2 * poller.interval + 5)
            if snap is not None:
                seq = snap.seq
            if self.paused:
                continue
            # Due within half a poll: a QueueWorker polling as often as the broker is read ticks on every read.
            done = sum(self._start_tick(entry, snap) for entry in self._due(name, poller.interval / 2))
            self.metrics.ticks.inc(done)  # the ticks that finished at once, counted together

    async def _unknown_broker_loop(self) -> None:
        await self._wait_ready()
        while True:
            await asyncio.sleep(1.0)
            if self.paused:
                continue
            now = self.clock()
            for e in list(self.entries.values()):
                if e.broker not in self.pollers and e.due <= now:
                    e.due = now + e.interval
                    t = e.ticker
                    t.queue_status(unknown_broker_status(t.last_status.get("conditions"), e.broker, t.clock()))

    def _start_tick(self, entry: Entry, snap: Snapshot | None) -> bool:
        """Tick one QueueWorker: True when its tick finished at once (most do: nothing to write), else it runs on
        as its own task (a replica write to wait for) and counts when it ends."""
        if entry.task is not None and not entry.task.done():
            self.metrics.ticks_skipped.inc()
            return False
        now = self.clock()
        # On the interval's grid while on time; a late tick (a skipped round, a slow read) restarts the grid.
        base = now if entry.last_tick is None else entry.due
        entry.due = max(base + entry.interval, now + entry.interval / 2)
        if entry.last_tick is not None:
            self.metrics.tick_interval.observe(now - entry.last_tick)
        entry.last_tick = now
        ticker = entry.ticker
        try:
            _, rest = ticker.begin(snap)
        except Exception:
            self.metrics.reconcile_errors.inc()
            log.exception("%s/%s: tick failed", ticker.namespace, ticker.name)
            return True
        if rest is None:
            return True
        entry.task = asyncio.create_task(self._finish(ticker, rest))
        return False

    async def _finish(self, ticker: Ticker, rest: Awaitable[None]) -> None:
        try:
            await rest
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.reconcile_errors.inc()
            log.exception("%s/%s: tick failed", ticker.namespace, ticker.name)
        self.metrics.ticks.inc()
