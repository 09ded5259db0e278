"""Queue metrics for the operator: one batched read per broker per tick, shared by every QueueWorker on it.

`ManagementReader` reads the management API (one `GET /api/queues?page=N&page_size=500&columns=...` per page,
following `page_count`, failing over between the nodes it is given). `PrometheusReader` (prometheus.py, optional
per broker) reads every node's rabbitmq_prometheus per-object endpoint. `BrokerPoller` runs one asyncio task per
broker that refreshes a `Snapshot` every interval while any QueueWorker is registered, and lets the
per-QueueWorker ticks wait for a fresh one. A QueueWorker never calls the broker itself, so N QueueWorkers on one
broker cost ceil(queues / 500) + nodes calls per tick, not N.

Where each figure comes from, per queue and per tick (the QueueWorker's status names it):
- depth (ready, unacked, consumers): the Prometheus endpoint when configured and it reports the queue (fresher);
  else the management API, if it has depth.
- rates: the Prometheus per-queue counters where the broker has them (4.x); else the management API's rates.
- A queue the broker lists without depth (RabbitMQ 4.x with the management metrics collector off, as the
  official image ships it, and no Prometheus endpoint configured) is *unknown*, never empty: its QueueWorker
  holds its replicas (or falls back) and says why. A rate no source has yet is None, never 0.
When the Prometheus endpoint gives depth and counters for every queue (4.x), the management API is not read at
all; it is read again as soon as a Prometheus read fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from qw_operator.endpoints import BrokerError, endpoint_list, split_credentials
from qw_operator.prometheus import (
    CounterRates,
    Depth,
    PrometheusReader,
    Scrape,
    merge_depth,
    parse_prometheus_depth,
)

__all__ = ["BrokerError", "BrokerPoller", "Brokers", "ManagementReader", "PrometheusReader", "QueueMetrics",
           "Snapshot", "parse_prometheus_depth", "parse_queue", "split_credentials"]  # fmt: skip

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # the management API's maximum page size
COLUMNS = ",".join(
    [
        "name",
        "vhost",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "message_stats.publish",
        "message_stats.ack",
        "message_stats.publish_details.rate",
        "message_stats.ack_details.rate",
    ]
)

QueueKey = tuple[str, str]  # (vhost, queue)
PROMETHEUS, MANAGEMENT = "Prometheus", "ManagementAPI"  # sources, as the status names them


@dataclass(frozen=True)
class QueueMetrics:
    ready: int
    unacked: int
    consumers: int
    publish_rate: float | None  # None: no source has a rate for this queue (yet)
    ack_rate: float | None
    published: int = 0  # the management API's cumulative counters: they tell a fresh stats sample from a repeat
    acked: int = 0
    depth_source: str = MANAGEMENT
    rate_source: str | None = MANAGEMENT
    # When (epoch) the operator last saw the queue's publish counter grow; None: not seen yet. A rate is computed
    # over past samples (held between the management API's stats emissions, or a counter window), so it outlives
    # the publishing: its age tells a stale rate from a live one.
    published_at: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """The result of one poll: every queue's metrics, or the error that poll hit."""

    seq: int
    fetched_at: float  # epoch seconds
    queues: Mapping[QueueKey, QueueMetrics] = field(default_factory=dict)
    error: str | None = None
    calls: int = 0  # HTTP requests this poll took (pages and endpoints)
    unknown: Mapping[QueueKey, str] = field(default_factory=dict)  # listed by the broker without depth: why
    read_seconds: float = 0.0  # how long the read took (it began at fetched_at - read_seconds)
    changed: frozenset[QueueKey] = frozenset()  # queues whose figures differ from the last snapshot's


def parse_queue(item: Mapping[str, Any]) -> tuple[QueueKey, QueueMetrics | None]:
    """One /api/queues item. None when it has no depth: the management metrics collector is off (RabbitMQ 4.x's
    official image) or has not emitted stats for a new queue yet. Missing `message_stats` alongside a depth is a
    queue nothing was published to yet: rates 0."""
    key = (str(item["vhost"]), str(item["name"]))
    if item.get("messages_ready") is None or item.get("messages_unacknowledged") is None:
        return key, None
    stats = item.get("message_stats") or {}
    return key, QueueMetrics(
        ready=int(item["messages_ready"]),
        unacked=int(item["messages_unacknowledged"]),
        consumers=int(item.get("consumers") or 0),
        publish_rate=float((stats.get("publish_details") or {}).get("rate") or 0.0),
        ack_rate=float((stats.get("ack_details") or {}).get("rate") or 0.0),
        published=int(stats.get("publish") or 0),
        acked=int(stats.get("ack") or 0),
    )


RATE_HOLD_SECONDS = 15.0
_NOTHING = object()  # "not seen yet", unequal to anything
MANAGEMENT_GRACE = 0.1  # seconds a snapshot waits for a running management read once its depth is in


def hold_rates(
    previous: Mapping[QueueKey, tuple[QueueMetrics, float]], queues: Mapping[QueueKey, QueueMetrics], now: float
) -> dict[QueueKey, tuple[QueueMetrics, float]]:
    """Keep the last real rate while the broker has not emitted new queue stats.

    A queue's stats reach the management API every few seconds (collect_statistics_interval, later under load),
    and between two emissions its rates read 0.0 while the counters stand still. A poll faster than that would
    see the rates flicker to zero. So: unchanged counters within RATE_HOLD_SECONDS -> the previous rates stand.
    Returns {key: (metrics with held rates, when the counters last moved)}; `published_at` is when the publish
    counter last moved: unknown (None) at first sight unless the queue shows a publish rate then (it may be live),
    so a restarted operator does not report every idle queue as published to at its start.
    """
    out: dict[QueueKey, tuple[QueueMetrics, float]] = {}
    for key, m in queues.items():
        prev = previous.get(key)
        if prev is None:
            out[key] = (dataclasses.replace(m, published_at=now if (m.publish_rate or 0.0) > 0 else None), now)
            continue
        pm, moved_at = prev
        published_at = pm.published_at if pm.published == m.published else now
        if (pm.published, pm.acked) != (m.published, m.acked):
            out[key] = (dataclasses.replace(m, published_at=published_at), now)
            continue
        held = now - moved_at < RATE_HOLD_SECONDS
        pub, ack = (pm.publish_rate, pm.ack_rate) if held else (m.publish_rate, m.ack_rate)
        if (pm.ready, pm.unacked, pm.consumers, pm.publish_rate, pm.ack_rate, pm.published_at) == (
            m.ready, m.unacked, m.consumers, pub, ack, published_at
        ) and (pm.depth_source, pm.rate_source) == (m.depth_source, m.rate_source):  # fmt: skip
            out[key] = prev  # nothing moved: the same object (an idle queue costs no new one)
        else:
            out[key] = (dataclasses.replace(m, publish_rate=pub, ack_rate=ack, published_at=published_at), moved_at)
    return out


class ManagementReader:
    """Reads every queue (optionally of one vhost) page by page. `calls` counts HTTP requests.

    Given several nodes' URLs (`url1|url2|...` or a list), it reads through one and moves on to the next when
    that one fails: any node's management API serves the whole cluster's queues.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._targets = [split_credentials(u) for u in endpoint_list(url)]
        if not self._targets:
            raise ValueError("ManagementReader needs at least one URL")
        self._current = 0
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.page_size = page_size
        self.calls = 0
        self._pages: dict[tuple[str, int], tuple[bytes, tuple[int, list[tuple[QueueKey, QueueMetrics | None]]]]] = {}

    @property
    def base(self) -> str:
        return self._targets[self._current][0]

    async def _page(self, path: str, page: int) -> tuple[int, list[tuple[QueueKey, QueueMetrics | None]]]:
        """(page_count, the page's queues parsed). A page whose bytes are those of its last read (an idle broker's
        answer) is not parsed again."""
        base, auth = self._targets[self._current]
        params = {"page": str(page), "page_size": str(self.page_size), "columns": COLUMNS}
        self.calls += 1
        try:
            async with self._session.get(base + path, params=params, headers=auth, timeout=self._timeout) as resp:
                if resp.status != 200:
                    body = (await resp.text())[:200]
                    raise BrokerError(f"GET {path} page {page}: HTTP {resp.status} {body}")
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BrokerError(f"GET {base}{path}: {type(exc).__name__}: {exc}") from exc
        return self.parse_page(path, page, raw)

    def parse_page(self, path: str, page: int, raw: bytes) -> tuple[int, list[tuple[QueueKey, QueueMetrics | None]]]:
        last = self._pages.get((path, page))
        if last is not None and last[0] == raw:
            return last[1]
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BrokerError(f"GET {path} page {page}: not JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise BrokerError(f"GET {path}: not a paginated queue list")
        parsed = (int(data.get("page_count") or 0), [parse_queue(item) for item in data["items"]])
        self._pages[(path, page)] = (raw, parsed)
        return parsed

    async def _fetch_one(self, path: str) -> dict[QueueKey, QueueMetrics | None]:
        first = await self._page(path, 1)
        page_count = first[0]
        # The first page tells how many there are; the rest are fetched together (latency of ~one page, not N).
        rest = await asyncio.gather(*(self._page(path, p) for p in range(2, page_count + 1)))
        for stale in [k for k in self._pages if k[0] == path and k[1] > max(page_count, 1)]:
            del self._pages[stale]
        out: dict[QueueKey, QueueMetrics | None] = {}
        for _, items in (first, *rest):
            out.update(items)
        return out

    async def fetch(self, vhost: str | None = None) -> dict[QueueKey, QueueMetrics | None]:
        """Every queue; None for one listed without depth. Tries each node once, starting with the last good."""
        path = "/api/queues" if vhost is None else "/api/queues/" + urllib.parse.quote(vhost, safe="")
        errors: list[str] = []
        for _ in self._targets:
            try:
                return await self._fetch_one(path)
            except BrokerError as exc:
                errors.append(str(exc))
                if len(self._targets) > 1:
                    self._current = (self._current + 1) % len(self._targets)
        raise BrokerError("; ".join(errors))


COLLECTOR_OFF = (
    "RabbitMQ lists queue {queue!r} without depth: its management metrics collector is off (RabbitMQ 4.x's "
    "official image turns it off) or has not reported this new queue yet. Scaling holds until depth is known. "
    "Give the operator the broker's Prometheus endpoint (QW_RABBITMQ_PROMETHEUS_URL, QW_BROKERS_PROMETHEUS or "
    "the chart's rabbitmq.prometheusUrl, port 15692)"
)
NOT_ON_PROMETHEUS = (
    "no Prometheus endpoint of the broker reports queue {queue!r}{failed}, and the management API lists it "
    "without depth (metrics collector off). Scaling holds until depth is known; give the operator every node's "
    "endpoint (url1|url2|..., or a headless Service name that resolves to all nodes)"
)


Clock = Callable[[], float]


class BrokerPoller:
    """One task per broker: refreshes the snapshot every `interval` while anything is registered.

    Registrations are (QueueWorker id -> (vhost, queue, interval)); the poll interval is the smallest
    registered one, and when every registration is on one vhost only that vhost's queues are read.
    """

    incremental = True  # False: every read works out every queue again (the tests' reference)

    def __init__(
        self,
        name: str,
        reader: ManagementReader,
        default_interval: float = 5.0,
        on_result: Callable[[str, float, BaseException | None], None] | None = None,
        clock: Clock = time.time,
        depth_reader: PrometheusReader | None = None,
        reads_per_interval: int = 1,
    ) -> None:
        self.name = name
        self.reads_per_interval = max(1, reads_per_interval)
        self.reader = reader
        self.depth_reader = depth_reader
        self._depth_failing = False
        self._prometheus_complete = False  # the last Prometheus read had depth and counters: skip the API
        self.default_interval = default_interval
        self._on_result = on_result
        self._clock = clock
        self._regs: dict[str, tuple[str, str, float]] = {}
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self.snapshot: Snapshot | None = None
        self._rates: dict[QueueKey, tuple[QueueMetrics, float]] = {}
        self._management_task: asyncio.Task[dict[QueueKey, QueueMetrics | None] | BrokerError] | None = None
        self._management_last: tuple[str | None, Any] | None = None  # (vhost filter, answer or BrokerError)
        self._management_next = 0.0  # clock() before which no new management read starts
        self._management_took = 0.0  # seconds the last management read took
        self._last: dict[QueueKey, tuple[tuple[Any, ...], QueueMetrics]] = {}  # each queue's last figures
        # What the last _combine saw, so the next one redoes only the queues whose inputs changed: the snapshot's
        # queues, the management answer its held rates came from (and until when they stand), each node's scrape
        # (by number), the merged depth and the counter rates.
        self._queues: dict[QueueKey, QueueMetrics] = {}
        self._rates_from: Any = _NOTHING
        self._rates_until = 0.0
        self._scrapes_seen: tuple[int, ...] = ()
        self._depth: Mapping[QueueKey, Depth] = {}
        self._counter_rates: dict[QueueKey, tuple[float, float] | None] = {}
        self._counters = CounterRates()

    def register(self, uid: str, vhost: str, queue: str, interval: float) -> None:
        idle = not self._regs
        self._regs[uid] = (vhost, queue, interval)
        if idle:
            self._wake.set()  # an idle poller starts at once; later registrations join the next tick

    def unregister(self, uid: str) -> None:
        self._regs.pop(uid, None)

    @property
    def registered(self) -> int:
        return len(self._regs)

    @property
    def interval(self) -> float:
        """The smallest pollingInterval registered (0.5 s at least): how often every QueueWorker is decided."""
        return max(0.5, min((r[2] for r in self._regs.values()), default=self.default_interval))

    @property
    def read_interval(self) -> float:
        """How often the depth is read: `reads_per_interval` times per interval (0.25 s at least)."""
        return max(0.25, self.interval / self.reads_per_interval)

    def _vhost_filter(self) -> str | None:
        vhosts = {r[0] for r in self._regs.values()}
        return next(iter(vhosts)) if len(vhosts) == 1 else None

    @property
    def calls(self) -> int:
        return self.reader.calls + (self.depth_reader.calls if self.depth_reader else 0)

    async def poll_once(self) -> Snapshot:
        seq = (self.snapshot.seq + 1) if self.snapshot else 1
        before = self.calls
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            vhost = self._vhost_filter()
            management, scrapes = await self._read(vhost)
            now = self._clock()
            queues, unknown, changed = self._combine(management, scrapes, now, vhost)
            read = time.perf_counter() - started
            snap = Snapshot(seq, now, queues, None, self.calls - before, unknown, read, changed)
        except BrokerError as exc:
            error = exc
            snap = Snapshot(seq, self._clock(), {}, str(exc), self.calls - before)
            log.warning("broker %s: metrics read failed: %s", self.name, exc)
        if self._on_result is not None:
            self._on_result(self.name, time.perf_counter() - started, error)
        async with self._changed:
            self.snapshot = snap
            self._changed.notify_all()
        return snap

    async def _read(
        self, vhost: str | None
    ) -> tuple[dict[QueueKey, QueueMetrics | None] | None, list[tuple[str, Scrape]] | None]:
        """(management API answer or None, Prometheus scrapes or None); BrokerError when neither answered."""
        if self.depth_reader is None:
            return await self.reader.fetch(vhost), None
        if self._prometheus_complete:  # 4.x with counters: the management API adds nothing; read it on failure
            try:
                return None, self._depth_ok(await self.depth_reader.fetch_all(vhost))
            except BrokerError as exc:
                self._depth_error(exc)
                return await self.reader.fetch(vhost), None
        # Depth from Prometheus, rates from the management API (3.x). The management API answers much slower
        # (seconds with a thousand quorum queues on a busy broker) and its rates move once per stats emission
        # anyway: it is read in the background, one read at a time, and a snapshot takes its latest answer
        # instead of waiting for it; only the first snapshot waits for both.
        task = self._management_task
        last = self._management_last
        fresh = last is None or last[0] != vhost  # no answer for this filter yet
        if task is None or (task.done() and (fresh or self._clock() >= self._management_next)):
            task = self._management_task = asyncio.create_task(self._management_read(vhost), name=f"mgmt {self.name}")
        got: Any
        scraped: Any
        if fresh:  # no answer for this filter yet: wait for both
            got, scraped = await asyncio.gather(
                asyncio.shield(task), self.depth_reader.fetch_all(vhost), return_exceptions=True
            )
        else:
            scraped = (await asyncio.gather(self.depth_reader.fetch_all(vhost), return_exceptions=True))[0]
            # A little longer for a fresh answer when the management API answers that fast (a small broker); never
            # its full latency, and not at all when its reads take longer than that (thousands of queues: every
            # snapshot, and every scale-up with it, waited the grace for nothing)
            if not task.done() and self._management_took < MANAGEMENT_GRACE:
                await asyncio.wait([task], timeout=MANAGEMENT_GRACE)
            assert last is not None  # not fresh
            got = self._management_last[1] if self._management_last is not None else last[1]
        for res in (got, scraped):
            if isinstance(res, BaseException) and not isinstance(res, BrokerError):
                raise res
        if isinstance(scraped, BrokerError):
            self._depth_error(scraped)
            if isinstance(got, BrokerError):
                raise BrokerError(f"management API: {got}; Prometheus endpoint: {scraped}")
        management = None if isinstance(got, BaseException) else got
        return management, None if isinstance(scraped, BaseException) else self._depth_ok(scraped)

    async def _management_read(self, vhost: str | None) -> dict[QueueKey, QueueMetrics | None] | BrokerError:
        """One background management read; its answer (or its error, returned: a snapshot that does not wait
        for this read never retrieves it) is what the next snapshots take."""
        started, t0 = self._clock(), time.perf_counter()
        try:
            got: dict[QueueKey, QueueMetrics | None] | BrokerError = await self.reader.fetch(vhost)
        except BrokerError as exc:  # logged once per read, not once per snapshot that takes it
            log.warning("broker %s: management API read failed, using the Prometheus endpoint: %s", self.name, exc)
            got = exc
        self._management_last = (vhost, got)
        # The next read starts one interval after this one started, and never before the broker had as long idle
        # as this read took: at thousands of queues a read takes seconds of the broker's CPU (pages of 500 queues
        # at 0.3-1 s each at 5,000), and back to back they slowed the Prometheus reads every scale-up waits for.
        # The rates it brings move once per stats emission and are held anyway (RATE_HOLD_SECONDS).
        took = self._management_took = time.perf_counter() - t0
        self._management_next = started + max(self.interval, 2 * took)
        return got

    def _depth_error(self, exc: BrokerError) -> None:
        """Logged once per outage: scaling goes on from the management API's figures, a few seconds slower."""
        if not self._depth_failing:
            log.warning("broker %s: Prometheus endpoint read failed: %s", self.name, exc)
        self._depth_failing = True
        self._prometheus_complete = False

    def _depth_ok(self, scrapes: list[tuple[str, Scrape]]) -> list[tuple[str, Scrape]]:
        if self._depth_failing:
            log.info("broker %s: Prometheus endpoint readable again", self.name)
        self._depth_failing = False
        return scrapes

    def _combine(
        self,
        management: Mapping[QueueKey, QueueMetrics | None] | None,
        scrapes: list[tuple[str, Scrape]] | None,
        now: float,
        vhost: str | None = None,
    ) -> tuple[dict[QueueKey, QueueMetrics], dict[QueueKey, str], frozenset[QueueKey]]:
        """Per queue: depth from Prometheus, else the management API; rates from Prometheus counters, else the
        management API; neither -> unknown (with the reason), never zero.

        Only the queues whose inputs changed since the last call are worked out again (a new depth, held rate or
        counter rate, a queue new or gone, every unknown one); the rest keep their figures. At 5,000 idle queues
        that is a few per read instead of 5,000: the read every scale-up waits for got shorter by as much."""
        dirty: set[QueueKey] | None = set() if self.incremental else None  # None: every queue
        # Rates held from the management API: the same answer again changes nothing until a hold runs out.
        if dirty is None or management is not self._rates_from or now >= self._rates_until:
            with_depth = {k: m for k, m in (management or {}).items() if m is not None}
            rates = hold_rates(self._rates, with_depth, now)
            old_rates = self._rates
            if dirty is not None:
                dirty.update(k for k, v in rates.items() if old_rates.get(k) is not v)
                dirty.update(k for k in old_rates if k not in rates)
            self._rates, self._rates_from = rates, management
            # The earliest moment a held rate runs out (hold_rates then gives that queue the answer's own rate).
            self._rates_until = min(
                (t + RATE_HOLD_SECONDS for _, t in rates.values() if t + RATE_HOLD_SECONDS > now), default=math.inf
            )
        # Depth from Prometheus: one node's scrape says what changed since the one before it.
        seen_scrapes = tuple(s.number for _, s in scrapes or ())
        if scrapes and len(scrapes) == 1:
            only = scrapes[0][1]
            depth: Mapping[QueueKey, Depth] = only.depth
            if dirty is not None and seen_scrapes != self._scrapes_seen:
                if only.changed is not None and (only.since,) == self._scrapes_seen:
                    dirty.update(only.changed)
                else:
                    dirty = None
        else:
            depth = merge_depth(s for _, s in scrapes or ())
            if dirty is not None and seen_scrapes != self._scrapes_seen:
                old_depth = self._depth
                dirty.update(k for k, d in depth.items() if old_depth.get(k) != d)
                dirty.update(k for k in old_depth if k not in depth)
        self._scrapes_seen, self._depth = seen_scrapes, depth
        counters = bool(scrapes) and all(s.has_counters for _, s in scrapes or ())
        rates_now = self._counters.update(scrapes or [], now, vhost) if counters else {}
        if dirty is not None and (rates_now or self._counter_rates):
            old_counter = self._counter_rates
            dirty.update(k for k, r in rates_now.items() if old_counter.get(k, _NOTHING) != r)
            dirty.update(k for k in old_counter if k not in rates_now)
            dirty.update(self._counters.grown)
        self._counter_rates = rates_now
        complete = counters and self.depth_reader is not None and not self.depth_reader.failed
        self._prometheus_complete = complete and (management is None or all(k in depth for k in management))

        listed = management or {}
        queues: dict[QueueKey, QueueMetrics]
        if dirty is None:
            keys: Any = set(depth) | set(listed)
            queues, seen = {}, {}
        else:
            known = self._queues.keys()
            keys = dirty | (depth.keys() - known) | (listed.keys() - known)  # (unknown ones are never known)
            queues, seen = dict(self._queues), self._last
            for gone in queues.keys() - depth.keys() - listed.keys():
                del queues[gone]
                seen.pop(gone, None)
        unknown: dict[QueueKey, str] = {}
        changed: list[QueueKey] = []
        for key in keys:
            if key not in depth and key not in listed:
                continue  # gone: removed above
            held = self._rates.get(key)
            mg = held[0] if held else None
            if key in depth:
                ready, unacked, consumers = depth[key]
                dsrc = PROMETHEUS
            elif mg is not None:
                ready, unacked, consumers, dsrc = mg.ready, mg.unacked, mg.consumers, MANAGEMENT
            else:
                unknown[key] = self._why_unknown(key)
                queues.pop(key, None)
                seen.pop(key, None)
                continue
            rate = rates_now.get(key)
            pub: float | None
            ack: float | None
            if rate is not None:
                pub, ack, rsrc = rate[0], rate[1], PROMETHEUS
            elif mg is not None:
                pub, ack, rsrc = mg.publish_rate, mg.ack_rate, MANAGEMENT
            else:
                pub, ack, rsrc = None, None, None
            published_at = self._counters.published_at.get(key) if rsrc == PROMETHEUS else None
            if rsrc == MANAGEMENT and mg is not None:
                published_at = mg.published_at
            fields = (ready, unacked, consumers, pub, ack, mg.published if mg else 0, mg.acked if mg else 0, dsrc,
                      rsrc, published_at)  # fmt: skip
            last = self._last.get(key)
            # Unchanged: the last snapshot's object again (the ticks compare it; an idle queue costs no new one).
            if last is not None and last[0] == fields:
                queues[key] = last[1]
            else:
                queues[key] = QueueMetrics(*fields)
                changed.append(key)
            seen[key] = (fields, queues[key])
        self._last, self._queues = seen, queues
        return queues, unknown, frozenset(changed)

    def _why_unknown(self, key: QueueKey) -> str:
        if self.depth_reader is None:
            return COLLECTOR_OFF.format(queue=key[1])
        failed = self.depth_reader.failed
        detail = f" ({len(failed)} endpoint(s) failed: {'; '.join(failed.values())[:300]})" if failed else ""
        return NOT_ON_PROMETHEUS.format(queue=key[1], failed=detail)

    async def wait_newer(self, seq: int, timeout: float) -> Snapshot | None:  # noqa: ASYNC109 - None on timeout
        """The first snapshot with a sequence number above `seq`; None if none came within `timeout`."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.snapshot is not None and self.snapshot.seq > seq), timeout
                )
            except TimeoutError:
                return None
            return self.snapshot

    async def run(self) -> None:
        """A poll every `read_interval` from the start of the last one (a read that takes longer than the interval is
        followed by the next at once), not `interval` after it ended."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if self._regs:
                await self.poll_once()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, started + self.read_interval - loop.time()))
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Cancel a background management read (the operator stops)."""
        task = self._management_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@dataclass
class Brokers:
    """The named brokers the operator knows (from its own settings); one poller task each."""

    pollers: dict[str, BrokerPoller]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(p.run(), name=f"poller {n}") for n, p in self.pollers.items()]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for p in self.pollers.values():
            await p.close()
