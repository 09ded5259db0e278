"""One scheduler for every QueueWorker the operator watches, instead of one kopf daemon each.

kopf's watch feeds the registry (`upsert` on every event of a QueueWorker, `remove` on its deletion; main.py), and
one task per broker ticks every QueueWorker on that broker whose pollingInterval is due, on each fresh snapshot
of the broker's batched read. A tick that has nothing to wait for (almost all: nothing to scale) runs to its end
at once, in the round's loop; one that scales goes on as its own task (a replica write it waits for holds up
nobody else), and a QueueWorker whose previous tick is still running is skipped for that round, never ticked twice
at once. A spec changed in the cluster is read at the next tick (the Ticker reads the body the last event brought).
Nothing ticks before the operator's view of the Deployments (deployments.py) has listed them all (`ready`).

The registry does not wait for kopf to hand it the QueueWorkers one by one: at start (and on resume) the scheduler
LISTs them all itself (`lister`, one request, raw JSON) and registers every one at once. kopf delivered them at
about 300 a second and slowing, each with its own handler call, so at 5,000 the last was ticked about 170 s after
start; the list takes 1-2 s. kopf's events still come and bring each object's newer bodies; a body older than
the one registered (a resourceVersion below it) is ignored.

While kopf's peering pauses this operator (another one leads), the registry is emptied and nothing ticks; on
resume they are listed again and register afresh, with the history their status carries.
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
Lister = Callable[[], Awaitable[list[Any]]]  # every watched QueueWorker's body, from one LIST


@dataclass
class Entry:
    ticker: Ticker
    broker: str
    interval: float
    due: float = 0.0  # monotonic time of the next tick
    last_tick: float | None = None
    task: asyncio.Task[None] | None = None
    queue: tuple[str, str] = ("", "")  # (vhost, queue) it reads


def _broker(spec: Mapping[str, Any]) -> str:
    return str(spec.get("broker", "default"))


def _version(body: Any) -> int | None:
    """The body's resourceVersion as a number (etcd's revision), None when it has none or it is not a number."""
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or "")
    except (TypeError, ValueError):
        return None


def older(body: Any, than: Any) -> bool:
    """`body` is an earlier state of the object than `than` (both have numeric resourceVersions). The API calls
    resourceVersions opaque; every apiserver backed by etcd gives revisions that grow, and when one is not a
    number nothing is called older (the newest arrival wins, as before)."""
    a, b = _version(body), _version(than)
    return a is not None and b is not None and a < b


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
    lister: Lister | None = None  # lists every QueueWorker at start and on resume (None: kopf's events only)
    listed: asyncio.Event = field(default_factory=asyncio.Event)  # the last list is registered
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _registered: asyncio.Event = field(default_factory=asyncio.Event)
    _removed: set[str] | None = None  # uids deleted while a list is in flight (its answer may still hold them)

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
        elif older(body, entry.ticker.body):
            return  # kopf delivering what the scheduler's own list already brought newer
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
        entry.queue = (str(spec.get("vhost", "/")), str(spec["queue"]))
        if broker in self.pollers:
            self.pollers[broker].register(uid, str(spec.get("vhost", "/")), str(spec["queue"]), interval)

    def remove(self, uid: str) -> None:
        """A QueueWorker deleted: no more ticks (one running finishes), its metrics series go."""
        if self._removed is not None:
            self._removed.add(uid)
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
        elif self.started:
            self._tasks.append(asyncio.create_task(self._list(), name="list QueueWorkers"))
        log.info("scheduler %s", "paused: another operator leads" if paused else "resumed")

    # -- ticking ----------------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._broker_loop(n, p), name=f"ticks {n}") for n, p in self.pollers.items()]
        self._tasks.append(asyncio.create_task(self._unknown_broker_loop(), name="ticks of unknown brokers"))
        self._tasks.append(asyncio.create_task(self._list(), name="list QueueWorkers"))

    async def _list(self) -> None:
        """Register every QueueWorker from one LIST; a failed list is tried again (kopf's events go on meanwhile,
        so nothing is lost while it fails, only slower)."""
        if self.lister is None:
            self.listed.set()
            return
        delay = 1.0
        while True:
            started = time.perf_counter()
            self._removed = set()
            try:
                bodies = await self.lister()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an apiserver away: try again, kopf's watch feeds meanwhile
                log.warning("listing QueueWorkers failed (%s); again in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(30.0, 2 * delay)
                continue
            removed, self._removed = self._removed, None
            if self.paused:
                return  # paused while listing: the resume lists again
            for b in bodies:
                uid = str(b["metadata"]["uid"])
                if uid not in removed:  # deleted after the list was answered: kopf's DELETED came first
                    self.upsert(uid, b)
            log.info("%d QueueWorkers listed and registered in %.1fs", len(bodies), time.perf_counter() - started)
            self.listed.set()
            return

    async def stop(self) -> None:
        running = [e.task for e in self.entries.values() if e.task is not None]
        for t in (*self._tasks, *running):
            t.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)

    def flush(self) -> int:
        """After `stop`: queue every status held back since its last write (see Ticker.flush); how many. Nothing
        while paused: another operator leads, and its statuses are newer."""
        if self.paused:
            return 0
        return sum(1 for e in self.entries.values() if e.ticker.flush() is not None)

    def _due(self, broker: str, slack: float, changed: frozenset[tuple[str, str]] = frozenset()) -> list[Entry]:
        limit = self.clock() + slack
        return [e for e in self.entries.values() if e.broker == broker and (e.due <= limit or e.queue in changed)]

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
            # Due within half a read: a QueueWorker polling as often as the broker is read ticks on every read.
            # One whose queue changed in this read ticks now too, due or not (the depth is read several times per
            # interval: a burst is acted on at the first read that shows it), and those go first: at thousands,
            # the round's unchanged ones (each a fast-path tick) would otherwise delay it by the whole round.
            changed = snap.changed if snap is not None else frozenset()
            due = self._due(name, poller.read_interval / 2, changed)
            if changed:
                due.sort(key=lambda e: e.queue not in changed)
            done = sum(self._start_tick(entry, snap) for entry in due)
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
        # On the interval's grid while on time; a late tick (a skipped round, a slow read) and an early one (its
        # queue changed) restart the grid.
        early = entry.due > now + entry.interval / 2
        base = now if entry.last_tick is None or early else entry.due
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
