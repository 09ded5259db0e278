"""Queue metrics from RabbitMQ's rabbitmq_prometheus per-object endpoint (`/metrics/detailed`, port 15692).

One GET per broker node per tick asks for four families:
- `queue_coarse_metrics` and `queue_consumer_count`: ready, unacked and consumers of every queue. Every version
  has them, and they come straight from the queues' own metrics tables, about 2.5 s fresher than the management
  API's aggregated copy.
- `queue_exchange_metrics` (`..._queue_exchange_messages_published_total{exchange,queue}`) and
  `queue_delivery_metrics` (`..._queue_messages_acked_total`): per-queue counters, present on RabbitMQ 4.x, empty
  on 3.10. On 4.x they are the only source of rates when the management metrics collector is off (the official
  image's default, where `/api/queues` lists names only). On such a broker a queue without counter samples has
  had no traffic since the node started: its counters are 0, not unknown.

Each node reports the queues it hosts (a quorum queue: its leader), so on a cluster every node's endpoint is
read, and a host name that resolves to several addresses (a headless Service) is read at each address. Counter
rates are computed per node and summed, so a node that goes away or restarts never shows as a negative rate.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from qw_core import brokers
from qw_core.brokers import Resolver

from qw_operator.endpoints import BrokerError, endpoint_list, split_credentials

log = logging.getLogger(__name__)
_NUMBERS = itertools.count(1)

QueueKey = tuple[str, str]  # (vhost, queue)
Depth = tuple[int, int, int]  # ready, unacked, consumers
FAMILIES = ("queue_coarse_metrics", "queue_consumer_count", "queue_exchange_metrics", "queue_delivery_metrics")

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")
_DEPTH = {"rabbitmq_detailed_queue_messages_ready": 0, "rabbitmq_detailed_queue_messages_unacked": 1,
          "rabbitmq_detailed_queue_consumers": 2}  # fmt: skip
_PUBLISHED = "rabbitmq_detailed_queue_exchange_messages_published_total"
_BUILD, _IDENTITY = "rabbitmq_build_info", "rabbitmq_identity_info"
_INFO = {_BUILD: "rabbitmq_version", _IDENTITY: "rabbitmq_node"}  # the broker's series -> the label read from it
_ACKED = "rabbitmq_detailed_queue_messages_acked_total"


@dataclass(frozen=True)
class Scrape:
    """One node's answer: depth of the queues it hosts, their counters, and who answered."""

    depth: Mapping[QueueKey, Depth]
    published: Mapping[QueueKey, float] = field(default_factory=dict)
    acked: Mapping[QueueKey, float] = field(default_factory=dict)
    version: str | None = None  # rabbitmq_build_info
    node: str | None = None  # rabbitmq_identity_info
    # What differs from the scrape numbered `since` (the same endpoint's previous answer): queues whose depth or
    # counters changed, or None when it was parsed whole (anything may have changed).
    changed: frozenset[QueueKey] | None = None
    since: int = 0
    number: int = field(default_factory=lambda: next(_NUMBERS))

    @property
    def has_counters(self) -> bool:
        """Per-queue counters exist on this broker (4.x): a queue without samples then has counted nothing."""
        if self.published or self.acked:
            return True
        try:
            return self.version is not None and int(self.version.split(".")[0]) >= 4
        except ValueError:
            return False


def _labels(raw: str) -> dict[str, str]:
    return {k: _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), v) for k, v in _LABEL.findall(raw)}


_PLAIN = re.compile(r'^vhost="([^"\\]*)",queue="([^"\\]*)"$')  # the usual label set, nothing escaped


def _key(raw: str) -> QueueKey | None:
    """(vhost, queue) of a sample's labels; None when it has not both."""
    m = _PLAIN.match(raw)
    if m is not None:
        return m.group(1), m.group(2)
    labels = _labels(raw)
    if "vhost" not in labels or "queue" not in labels:
        return None
    return labels["vhost"], labels["queue"]


_WANTED = re.compile(
    r"^(rabbitmq_detailed_queue_messages_ready|rabbitmq_detailed_queue_messages_unacked|"
    r"rabbitmq_detailed_queue_consumers|rabbitmq_detailed_queue_exchange_messages_published_total|"
    r"rabbitmq_detailed_queue_messages_acked_total|rabbitmq_build_info|rabbitmq_identity_info)\{(.*)\} (\S+)$",
    re.MULTILINE,
)


def parse_scrape(text: str) -> Scrape:
    """A /metrics/detailed answer (Prometheus text format) -> per-queue depth and counters.

    Only the samples used are matched, in one scan of the whole text (a 3.10 answer at 5,000 queues is 25,000
    samples, 2 MB; two of its five per-queue series, messages and reductions, are never read): about 4x faster
    than matching each line in Python."""
    acc: dict[QueueKey, list[int]] = {}
    published: dict[QueueKey, float] = collections.defaultdict(float)
    acked: dict[QueueKey, float] = {}
    info: dict[str, str | None] = {}
    keys: dict[str, QueueKey | None] = {}  # label sets repeat once per family: parsed once
    for name, raw, value in _WANTED.findall(text):
        if name in _INFO:
            info[name] = _labels(raw).get(_INFO[name])
            continue
        if raw in keys:
            key = keys[raw]
        else:
            key = keys[raw] = _key(raw)
        if key is None:
            continue
        if name in _DEPTH:
            acc.setdefault(key, [0, 0, 0])[_DEPTH[name]] = int(float(value))
        elif name == _PUBLISHED:
            published[key] += float(value)  # one series per exchange that routed to the queue
        else:
            acked[key] = float(value)
    depth = {k: (v[0], v[1], v[2]) for k, v in acc.items()}
    return Scrape(depth, dict(published), acked, info.get(_BUILD), info.get(_IDENTITY))


def parse_changes(lines: list[str], previous: list[str], prev: Scrape) -> Scrape | None:
    """The scrape of `lines` from the previous answer's `previous` lines and `prev` (its scrape), parsing only the
    lines that differ; None when the answer's shape changed (samples added, removed or moved): parse it whole.

    An idle broker's answer repeats all but a few lines (at 5,000 queues about 1,000 of 25,000 lines differ per
    read, nearly all of them reductions, which are not read): the line comparison costs a fifth of a full parse,
    and each read's work follows what changed instead of how many queues there are."""
    if len(lines) != len(previous):
        return None
    pairs = [(old, new) for new, old in zip(lines, previous, strict=True) if new != old]
    if len(pairs) > len(lines) // 4:
        return None  # most of it changed: one scan of the whole text is cheaper
    depth: dict[QueueKey, Depth] | None = None
    published: dict[QueueKey, float] | None = None
    acked: dict[QueueKey, float] | None = None
    info = {_BUILD: prev.version, _IDENTITY: prev.node}
    changed: set[QueueKey] = set()
    for old, new in pairs:
        cut = new.rfind(" ")
        if cut < 0 or old.rfind(" ") != cut or old[:cut] != new[:cut] or new.startswith("#"):
            return None  # another sample (or comment) in this place: the shape changed
        m = _WANTED.match(new)
        if m is None:
            continue  # a series that is not read (reductions, messages)
        name, raw, value = m.groups()
        if name in _INFO:
            info[name] = _labels(raw).get(_INFO[name])
            continue
        key = _key(raw)
        if key is None:
            continue
        changed.add(key)
        if name in _DEPTH:
            if depth is None:
                depth = dict(prev.depth)
            d = list(depth.get(key, (0, 0, 0)))
            d[_DEPTH[name]] = int(float(value))
            depth[key] = (d[0], d[1], d[2])
        elif name == _PUBLISHED:  # a sum over the series of each exchange: this series' step
            if published is None:
                published = dict(prev.published)
            published[key] = published.get(key, 0.0) + float(value) - float(old[cut + 1 :])
        else:
            if acked is None:
                acked = dict(prev.acked)
            acked[key] = float(value)
    return Scrape(
        prev.depth if depth is None else depth,
        prev.published if published is None else published,
        prev.acked if acked is None else acked,
        info[_BUILD],
        info[_IDENTITY],
        frozenset(changed),
        prev.number,
    )


def parse_prometheus_depth(text: str) -> dict[QueueKey, Depth]:
    """Per-queue ready/unacked/consumers only."""
    return dict(parse_scrape(text).depth)


def merge_depth(scrapes: Iterable[Scrape]) -> dict[QueueKey, Depth]:
    """Every node's queues in one map. A queue two nodes both report (a leader change between their answers)
    keeps the larger backlog: reading one tick high delays a scale-down, reading it low could scale busy
    workers away."""
    out: dict[QueueKey, Depth] = {}
    for s in scrapes:
        for key, d in s.depth.items():
            old = out.get(key)
            if old is None or d[0] + d[1] > old[0] + old[1]:
                out[key] = d
    return out


RATE_WINDOW = 15.0  # seconds of samples a rate is taken over (counters step once per stats emission)


class CounterRates:
    """Per-second rates from the per-queue counters, the way Prometheus' rate() takes them: over a window, per
    series (node, queue), resets treated as a restart from 0, then summed over nodes.

    A queue is unknown (None) until two samples of it span at least `min_span` seconds. A queue that appears on
    a node already read before (with the same vhost filter) starts from 0 there: on a 4.x broker, no sample means
    nothing counted yet. The counters are the queue's, kept across channel closes (checked on 4.0.5).
    """

    FORGET_NODE = 600.0  # a node not read for this long (gone for good) loses its series

    def __init__(self, window: float = RATE_WINDOW, min_span: float = 0.5) -> None:
        self.window = window
        self.min_span = min_span
        self._series: dict[tuple[str, QueueKey], collections.deque[tuple[float, float, float]]] = {}
        self._nodes: dict[tuple[str, str | None], float] = {}  # (node, vhost filter) -> when it was last read
        self.published_at: dict[QueueKey, float] = {}  # when a queue's publish counter last grew on any node
        self.grown: set[QueueKey] = set()  # queues whose publish counter grew in the last update

    def update(
        self, scrapes: Sequence[tuple[str, Scrape]], now: float, vhost: str | None = None
    ) -> dict[QueueKey, tuple[float, float] | None]:
        """(node id, scrape) pairs of one tick (read with `vhost` as filter) -> {queue: (publish/s, ack/s) or None
        while unknown}."""
        out: dict[QueueKey, tuple[float, float] | None] = {}
        seen: set[tuple[str, QueueKey]] = set()
        self.grown = set()
        for node, s in scrapes:
            if not s.has_counters:
                continue
            before = self._nodes.get((node, vhost))
            for key in set(s.depth) | set(s.published) | set(s.acked):
                sid = (node, key)
                seen.add(sid)
                sample = (now, s.published.get(key, 0.0), s.acked.get(key, 0.0))
                series = self._series.get(sid)
                if series is None:
                    series = self._series[sid] = collections.deque()
                    if before is not None:
                        series.append((before, 0.0, 0.0))
                elif sample[1] < series[-1][1] or sample[2] < series[-1][2]:
                    series.clear()  # counters reset: the node restarted or the queue was re-created
                    series.append((before if before is not None else now, 0.0, 0.0))
                if series and sample[1] > series[-1][1]:  # grew (first sight of a counter: when, unknown)
                    self.published_at[key] = now
                    self.grown.add(key)
                series.append(sample)
                while len(series) > 2 and series[1][0] <= now - self.window:
                    series.popleft()
                rate = self._rate(series)
                if key not in out:
                    out[key] = rate
                else:  # the same queue counted on another node: the sum, unknown if either part is
                    prev = out[key]
                    out[key] = None if prev is None or rate is None else (prev[0] + rate[0], prev[1] + rate[1])
            self._nodes[(node, vhost)] = now
        answered = {n for n, _ in scrapes}
        gone = {n for (n, _), t in self._nodes.items() if now - t > self.FORGET_NODE}
        for sid in [sid for sid in self._series if sid[0] in gone or (sid not in seen and sid[0] in answered)]:
            del self._series[sid]  # the queue is gone from a node that answered, or the node is gone
        self._nodes = {k: t for k, t in self._nodes.items() if k[0] not in gone}
        return out

    def _rate(self, series: collections.deque[tuple[float, float, float]]) -> tuple[float, float] | None:
        t0, p0, a0 = series[0]
        t1, p1, a1 = series[-1]
        span = t1 - t0
        if span < self.min_span:
            return None
        return (p1 - p0) / span, (a1 - a0) / span


class PrometheusReader:
    """Reads `/metrics/detailed` of every configured node (an http:// host with several addresses is read at
    each, through qw_core.brokers.expand, as the AMQP clients spread over a cluster)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
        resolve: Resolver = brokers.resolve,
    ) -> None:
        self._resolve = resolve
        self.urls = endpoint_list(urls)
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.calls = 0
        self.failed: dict[str, str] = {}  # endpoint -> error, from the last fetch
        self._last: dict[str, tuple[str, list[str], Scrape]] = {}  # endpoint -> its last answer, lines, parse

    async def _get(self, base: str, auth: Mapping[str, str], vhost: str | None) -> Scrape:
        params = [("family", f) for f in FAMILIES]
        if vhost is not None:
            params.append(("vhost", vhost))
        self.calls += 1
        try:
            async with self._session.get(
                base + "/metrics/detailed", params=params, headers=dict(auth), timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    raise BrokerError(f"GET {base}/metrics/detailed: HTTP {resp.status} {(await resp.text())[:200]}")
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BrokerError(f"GET {base}/metrics/detailed: {type(exc).__name__}: {exc}") from exc
        return self.parse(base, text)

    def parse(self, base: str, text: str) -> Scrape:
        last = self._last.get(base)
        if last is not None and last[0] == text:  # the same answer again: the same scrape, nothing changed
            return last[2]
        lines = text.split("\n")
        scrape = parse_changes(lines, last[1], last[2]) if last is not None else None
        if scrape is None:
            scrape = parse_scrape(text)
        self._last[base] = (text, lines, scrape)
        return scrape

    async def fetch_all(self, vhost: str | None = None) -> list[tuple[str, Scrape]]:
        """(endpoint, scrape) of every node that answered; BrokerError when none did. Failures of some nodes
        are kept in `failed` (their queues fall back to the management API's figures, if it has any)."""
        # A name with several addresses (a headless Service: every broker pod) is read at each; resolved every
        # tick, as pods come and go. The resolver blocks, hence the thread.
        nodes = await asyncio.to_thread(brokers.expand, self.urls, self._resolve, {"http": 80})
        jobs = [split_credentials(u) for u in nodes]
        got = await asyncio.gather(*(self._get(b, auth, vhost) for b, auth in jobs), return_exceptions=True)
        ok: list[tuple[str, Scrape]] = []
        self.failed = {}
        for (base, _), res in zip(jobs, got, strict=True):
            if isinstance(res, BrokerError):
                self.failed[base] = str(res)
            elif isinstance(res, BaseException):
                raise res
            else:
                ok.append((res.node or base, res))
        if not ok:
            raise BrokerError("; ".join(self.failed.values()) or "no Prometheus endpoint configured")
        return ok

    async def fetch(self, vhost: str | None = None) -> dict[QueueKey, Depth]:
        """Depth only, merged over the nodes."""
        return merge_depth(s for _, s in await self.fetch_all(vhost))
