"""The management-API reader and the shared poller against a recorded-page HTTP server (aiohttp, in-process):
pagination by page_count, one request per page, errors surfaced as BrokerError, one read per tick for many
QueueWorkers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from qw_operator.rabbitmq import (
    BrokerError,
    BrokerPoller,
    ManagementReader,
    PrometheusReader,
    QueueMetrics,
    Snapshot,
    parse_prometheus_depth,
    parse_queue,
    split_credentials,
)


def queue_item(vhost: str, name: str, ready: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "messages_ready": ready,
        "messages_unacknowledged": 1,
        "consumers": 2,
        "message_stats": {"publish_details": {"rate": 1.5}, "ack_details": {"rate": 0.5}},
    }


class FakeManagement:
    """Serves /api/queues pages the way RabbitMQ 3.10 does (items, page, page_count, ...)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.requests: list[dict[str, str]] = []
        self.status = 200
        self.delay = 0.0
        self.auth: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query) | {"path": request.path})
        self.auth.append(request.headers.get("Authorization"))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="nope")
        vhost = request.match_info.get("vhost")
        items = [i for i in self.items if vhost is None or i["vhost"] == vhost]
        size = int(request.query["page_size"])
        page = int(request.query["page"])
        count = (len(items) + size - 1) // size
        return web.json_response(
            {
                "items": items[(page - 1) * size : page * size],
                "page": page,
                "page_count": count,
                "page_size": size,
                "filtered_count": len(items),
                "item_count": len(items),
                "total_count": len(items),
            }
        )


@contextlib.asynccontextmanager
async def serve(app: web.Application, *hosts: str) -> AsyncIterator[int]:
    """`app` on a free port of 127.0.0.1 (and of each further host, same port) for the block; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    for host in hosts:
        await web.TCPSite(runner, host, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeManagement, str]]:
    fm = FakeManagement([queue_item("v1", f"q{i}", ready=i) for i in range(1201)] + [queue_item("v2", "other")])
    app = web.Application()
    app.router.add_get("/api/queues", fm.handle)
    app.router.add_get("/api/queues/{vhost}", fm.handle)
    async with serve(app) as port:
        yield fm, f"http://user:p%40ss@127.0.0.1:{port}"


async def test_reads_every_page_following_page_count(fake: tuple[FakeManagement, str]) -> None:
    fm, url = fake
    async with aiohttp.ClientSession() as s:
        reader = ManagementReader(url, s)
        queues = await reader.fetch()
    assert len(queues) == 1202
    assert queues[("v1", "q1200")].ready == 1200
    assert reader.calls == 3 == len(fm.requests)
    assert sorted(r["page"] for r in fm.requests) == ["1", "2", "3"] and fm.requests[0]["page"] == "1"
    assert all(r["page_size"] == "500" and "message_stats.ack_details.rate" in r["columns"] for r in fm.requests)
    assert fm.auth[0] == "Basic " + base64.b64encode(b"user:p@ss").decode()


async def test_one_vhost_reads_only_that_vhost(fake: tuple[FakeManagement, str]) -> None:
    fm, url = fake
    async with aiohttp.ClientSession() as s:
        queues = await ManagementReader(url, s).fetch("v2")
    assert list(queues) == [("v2", "other")]
    assert fm.requests[0]["path"] == "/api/queues/v2"


async def test_empty_broker_is_one_call(fake: tuple[FakeManagement, str]) -> None:
    fm, url = fake
    fm.items = []
    async with aiohttp.ClientSession() as s:
        reader = ManagementReader(url, s)
        assert await reader.fetch() == {}
    assert reader.calls == 1


@pytest.mark.parametrize("status", [401, 500, 503])
async def test_http_errors_raise_broker_error(fake: tuple[FakeManagement, str], status: int) -> None:
    fm, url = fake
    fm.status = status
    async with aiohttp.ClientSession() as s:
        with pytest.raises(BrokerError, match=f"HTTP {status}"):
            await ManagementReader(url, s).fetch()


async def test_timeout_and_refused_connection_raise_broker_error(fake: tuple[FakeManagement, str]) -> None:
    fm, url = fake
    fm.delay = 1.0
    async with aiohttp.ClientSession() as s:
        with pytest.raises(BrokerError, match="Timeout"):
            await ManagementReader(url, s, timeout=0.2).fetch()
        with pytest.raises(BrokerError) as info:
            await ManagementReader("http://guest:guest@127.0.0.1:9", s).fetch()
    assert "guest" not in str(info.value)  # credentials never end up in messages


async def test_poller_serves_many_queueworkers_with_one_read_per_tick(fake: tuple[FakeManagement, str]) -> None:
    fm, url = fake
    results: list[tuple[str, BaseException | None]] = []
    async with aiohttp.ClientSession() as s:
        poller = BrokerPoller("default", ManagementReader(url, s), on_result=lambda n, d, e: results.append((n, e)))
        for i in range(1000):
            poller.register(f"uid-{i}", "v1", f"q{i}", interval=0.2)
        task = asyncio.create_task(poller.run())
        snap = await poller.wait_newer(0, timeout=5)
        assert snap is not None and snap.error is None
        snap = await poller.wait_newer(snap.seq, timeout=5)
        task.cancel()
    assert snap is not None
    # 1201 queues in v1 -> 3 pages per tick, whatever the number of QueueWorkers
    assert snap.calls == 3
    assert len(fm.requests) in (6, 9)  # two (or three, if a third tick started) ticks of 3 pages
    assert all(r["path"] == "/api/queues/v1" for r in fm.requests)
    assert results[0] == ("default", None)


async def test_poller_records_errors_in_the_snapshot(fake: tuple[FakeManagement, str]) -> None:
    fm, url = fake
    fm.status = 500
    async with aiohttp.ClientSession() as s:
        poller = BrokerPoller("default", ManagementReader(url, s))
        poller.register("a", "v1", "q1", 1.0)
        snap = await poller.poll_once()
    assert snap.error and "HTTP 500" in snap.error and snap.queues == {}


async def test_wait_newer_times_out_when_no_poll_comes(fake: tuple[FakeManagement, str]) -> None:
    _, url = fake
    async with aiohttp.ClientSession() as s:
        poller = BrokerPoller("default", ManagementReader(url, s))
        assert await poller.wait_newer(0, timeout=0.05) is None


def test_parse_queue_without_stats() -> None:
    key, m = parse_queue({"name": "q", "vhost": "/", "messages_ready": 3, "messages_unacknowledged": 0})
    assert m is not None
    assert key == ("/", "q") and (m.ready, m.unacked, m.publish_rate, m.ack_rate) == (3, 0, 0.0, 0.0)


def test_split_credentials() -> None:
    base, auth = split_credentials("http://u:s%2Fecret@rabbit:15672/")
    assert base == "http://rabbit:15672" and auth == {
        "Authorization": "Basic " + base64.b64encode(b"u:s/ecret").decode()
    }
    assert split_credentials("https://rabbit")[1] == {}


def test_rates_are_held_between_stats_emissions() -> None:
    from qw_operator.rabbitmq import hold_rates

    k = ("/", "q")
    fresh = {k: QueueMetrics(10, 0, 1, 50.0, 40.0, published=100, acked=80)}
    state = hold_rates({}, fresh, 0.0)
    # Same counters, rates read 0.0: a repeated sample, so the last real rates stand...
    stale = {k: QueueMetrics(12, 0, 1, 0.0, 0.0, published=100, acked=80)}
    state = hold_rates(state, stale, 5.0)
    assert (state[k][0].publish_rate, state[k][0].ack_rate, state[k][0].ready) == (50.0, 40.0, 12)
    assert state[k][0].published_at == 0.0  # the held rate's age shows: the counter last grew at 0
    # ...until the counters have stood still for the hold time: then the queue is really idle
    state = hold_rates(state, stale, 16.0)
    assert state[k][0].publish_rate == 0.0
    # Moving counters always take the broker's new rates
    moved = {k: QueueMetrics(12, 0, 1, 7.0, 3.0, published=130, acked=95)}
    assert hold_rates(state, moved, 17.0)[k][0].publish_rate == 7.0
    assert hold_rates(state, moved, 17.0)[k][0].published_at == 17.0


def test_an_idle_queue_first_seen_has_no_publish_time() -> None:
    """A queue first seen with no publish rate was not published to at that moment: when, nobody here knows (a
    restarted operator used to report its own start as every idle queue's lastPublishTime, and rewrote them all)."""
    from qw_operator.rabbitmq import hold_rates

    k = ("/", "q")
    idle = {k: QueueMetrics(0, 0, 0, 0.0, 0.0, published=100, acked=100)}
    state = hold_rates({}, idle, 0.0)
    assert state[k][0].published_at is None
    assert hold_rates(state, idle, 5.0)[k][0].published_at is None  # still no publish seen
    grown = {k: QueueMetrics(1, 0, 0, 0.2, 0.0, published=101, acked=100)}
    assert hold_rates(state, grown, 6.0)[k][0].published_at == 6.0


PROM = r"""# TYPE rabbitmq_detailed_queue_messages_ready gauge
rabbitmq_detailed_queue_messages_ready{vhost="/",queue="qw.email"} 120
rabbitmq_detailed_queue_messages_ready{vhost="shop",queue="odd \"name\" \\ x"} 3
rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="qw.email"} 8
rabbitmq_detailed_queue_messages{vhost="/",queue="qw.email"} 128
rabbitmq_detailed_queue_consumers{vhost="/",queue="qw.email"} 4
rabbitmq_detailed_queue_process_reductions_total{vhost="/",queue="qw.email"} 99
"""


def test_prometheus_depth_parses_ready_unacked_consumers_and_escaped_names() -> None:
    depth = parse_prometheus_depth(PROM)
    assert depth == {("/", "qw.email"): (120, 8, 4), ("shop", 'odd "name" \\ x'): (3, 0, 0)}


def test_a_queue_listed_without_depth_is_unknown_not_empty() -> None:
    # RabbitMQ 4.x with the management metrics collector off (the official image): name and vhost only
    assert parse_queue({"name": "q", "vhost": "/"}) == (("/", "q"), None)
    assert parse_queue({"name": "q", "vhost": "/", "messages_ready": None})[1] is None


NAMES_ONLY = [{"name": "jobs", "vhost": "v1"}, {"name": "idle", "vhost": "v1"}]
PROM_4X = """rabbitmq_detailed_queue_messages_ready{vhost="v1",queue="jobs"} 100
rabbitmq_detailed_queue_messages_unacked{vhost="v1",queue="jobs"} 6
rabbitmq_detailed_queue_consumers{vhost="v1",queue="jobs"} 3
rabbitmq_detailed_queue_messages_ready{vhost="v1",queue="idle"} 0
rabbitmq_detailed_queue_messages_unacked{vhost="v1",queue="idle"} 0
rabbitmq_detailed_queue_consumers{vhost="v1",queue="idle"} 0
rabbitmq_detailed_queue_exchange_messages_published_total{vhost="v1",exchange="qw.tasks",queue="jobs"} PUB
rabbitmq_detailed_queue_messages_acked_total{vhost="v1",queue="jobs"} ACK
rabbitmq_build_info{rabbitmq_version="4.0.5",prometheus_plugin_version="4.0.5"} 1
rabbitmq_identity_info{rabbitmq_node="rabbit@a",rabbitmq_cluster="c"} 1
"""


@pytest.fixture
async def broker4() -> AsyncIterator[tuple[FakeManagement, dict[str, Any], str, str]]:
    """A 4.x-shaped broker: /api/queues lists names only; /metrics/detailed has depth and counters."""
    fm = FakeManagement(list(NAMES_ONLY))
    prom: dict[str, Any] = {"pub": 1000, "ack": 900, "status": 200, "hits": 0}

    async def metrics(request: web.Request) -> web.Response:
        prom["hits"] += 1
        if prom["status"] != 200:
            return web.Response(status=prom["status"], text="down")
        return web.Response(text=PROM_4X.replace("PUB", str(prom["pub"])).replace("ACK", str(prom["ack"])))

    app = web.Application()
    app.router.add_get("/api/queues", fm.handle)
    app.router.add_get("/api/queues/{vhost}", fm.handle)
    app.router.add_get("/metrics/detailed", metrics)
    async with serve(app) as port:
        yield fm, prom, f"http://u:p@127.0.0.1:{port}", f"http://127.0.0.1:{port}"


async def test_collector_off_and_no_prometheus_endpoint_is_unknown_with_the_fix_in_the_reason(broker4) -> None:
    _, _, mgmt, _ = broker4
    async with aiohttp.ClientSession() as s:
        poller = BrokerPoller("default", ManagementReader(mgmt, s))
        poller.register("a", "v1", "jobs", 1.0)
        snap = await poller.poll_once()
    assert snap.error is None and snap.queues == {}
    assert set(snap.unknown) == {("v1", "jobs"), ("v1", "idle")}
    assert "metrics collector is off" in snap.unknown[("v1", "jobs")]
    assert "QW_RABBITMQ_PROMETHEUS_URL" in snap.unknown[("v1", "jobs")]


async def test_4x_depth_and_rates_from_prometheus_then_the_management_api_is_not_read(broker4) -> None:
    fm, prom, mgmt, prom_url = broker4
    now = [1000.0]
    async with aiohttp.ClientSession() as s:
        poller = BrokerPoller("default", ManagementReader(mgmt, s), clock=lambda: now[0],
                              depth_reader=PrometheusReader(prom_url, s))  # fmt: skip
        poller.register("a", "v1", "jobs", 1.0)
        first = await poller.poll_once()
        jobs = first.queues[("v1", "jobs")]
        assert (jobs.ready, jobs.unacked, jobs.consumers, jobs.depth_source) == (100, 6, 3, "Prometheus")
        assert jobs.publish_rate is None and jobs.rate_source is None  # one counter sample: no rate yet, not 0
        assert first.queues[("v1", "idle")].publish_rate is None
        assert len(fm.requests) == 1

        now[0] += 5.0
        prom.update(pub=1050, ack=940)
        second = await poller.poll_once()
        jobs = second.queues[("v1", "jobs")]
        assert (jobs.publish_rate, jobs.ack_rate, jobs.rate_source) == (10.0, 8.0, "Prometheus")
        assert second.queues[("v1", "idle")].publish_rate == 0.0  # no samples on 4.x: nothing counted
        assert len(fm.requests) == 1  # Prometheus had everything: the management API was not read again

        prom["status"] = 503  # the endpoint fails: that same tick reads the management API instead
        third = await poller.poll_once()
        assert len(fm.requests) == 2 and third.error is None
        assert third.queues == {} and "without depth" in third.unknown[("v1", "jobs")]


# A 3.x rabbitmq_prometheus page: the 4.x one with its version changed and without the exchange counters 3.x lacks
PROM_3X = PROM_4X.replace("4.0.5", "3.10.8").split("rabbitmq_detailed_queue_exchange")[0]


def _prometheus_3x(text: str) -> web.Application:
    """An endpoint serving `text` at /metrics/detailed."""
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=text)

    app.router.add_get("/metrics/detailed", metrics)
    return app


async def test_3x_depth_from_prometheus_rates_from_the_management_api(fake: tuple[FakeManagement, str]) -> None:
    fm, url = fake
    fm.items = [queue_item("v1", "jobs", ready=4)]
    async with serve(_prometheus_3x(PROM_3X)) as port, aiohttp.ClientSession() as s:
        clock = [1000.0]
        poller = BrokerPoller(
            "b",
            ManagementReader(url, s),
            clock=lambda: clock[0],
            depth_reader=PrometheusReader(f"http://127.0.0.1:{port}", s),
        )
        poller.register("a", "v1", "jobs", 1.0)
        for step in (0.0, 1.0, 0.1):  # no counters on 3.x: the management API is read too, at most once a poll
            clock[0] += step  # interval (and never more than half the time: see the slow broker's test below)
            snap = await poller.poll_once()
            await asyncio.sleep(0.05)  # the background read answers
    jobs = snap.queues[("v1", "jobs")]
    assert (jobs.ready, jobs.depth_source, jobs.publish_rate, jobs.rate_source) == (
        100,
        "Prometheus",
        1.5,
        "ManagementAPI",
    )
    assert len(fm.requests) == 2


async def test_management_api_fails_over_to_the_next_node(fake: tuple[FakeManagement, str]) -> None:
    _, url = fake
    async with aiohttp.ClientSession() as s:
        reader = ManagementReader(["http://127.0.0.1:9", url], s)
        assert len(await reader.fetch("v2")) == 1
        assert len(await reader.fetch("v2")) == 1  # sticks to the node that answered
        assert reader.calls == 3


async def test_a_name_with_several_addresses_is_read_at_each() -> None:
    """A headless Service name resolves to every broker pod; each reports the queues it leads. Two endpoints on
    127.0.0.1 and 127.0.0.2 (same port) stand for two nodes; the resolver says the name has both addresses."""
    nodes = {"127.0.0.1": ("a", 7), "127.0.0.2": ("b", 9)}

    async def metrics(request: web.Request) -> web.Response:
        queue, ready = nodes[request.transport.get_extra_info("sockname")[0]]  # type: ignore[union-attr]
        return web.Response(text=f'rabbitmq_detailed_queue_messages_ready{{vhost="/",queue="{queue}"}} {ready}\n')

    app = web.Application()
    app.router.add_get("/metrics/detailed", metrics)

    def resolve(host: str, p: int) -> list[str]:
        return sorted(nodes) if host == "rmq-nodes" else []

    async with serve(app, "127.0.0.2") as port, aiohttp.ClientSession() as s:
        reader = PrometheusReader(f"http://rmq-nodes:{port}", s, resolve=resolve)
        assert await reader.fetch() == {("/", "a"): (7, 0, 0), ("/", "b"): (9, 0, 0)}
        assert reader.calls == 2


async def test_a_slow_management_api_does_not_hold_up_the_snapshots(fake: tuple[FakeManagement, str]) -> None:
    """3.x: depth from Prometheus, rates from the management API. When the management API takes longer than the
    poll interval (seconds, with a thousand quorum queues on a busy broker), a snapshot after the first takes its
    last answer and the fresh depth instead of waiting: the QueueWorkers are still decided every interval."""
    fm, url = fake
    fm.items = [queue_item("v1", "jobs", ready=4)]
    depth = {"ready": 100}
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=PROM_3X.replace('queue="jobs"} 100', f'queue="jobs"}} {depth["ready"]}'))

    app.router.add_get("/metrics/detailed", metrics)
    async with serve(app) as port, aiohttp.ClientSession() as s:
        poller = BrokerPoller(
            "b", ManagementReader(url, s), depth_reader=PrometheusReader(f"http://127.0.0.1:{port}", s)
        )
        poller.register("a", "v1", "jobs", 1.0)
        first = await poller.poll_once()  # waits for both
        fm.delay = 1.5
        depth["ready"] = 7
        t0 = time.perf_counter()
        second = await poller.poll_once()
        took = time.perf_counter() - t0
        await poller.close()
    assert first.queues[("v1", "jobs")].publish_rate == 1.5
    jobs = second.queues[("v1", "jobs")]
    assert took < 0.5 and (jobs.ready, jobs.publish_rate, jobs.rate_source) == (7, 1.5, "ManagementAPI")


async def test_a_slow_management_api_is_read_at_most_half_the_time(fake: tuple[FakeManagement, str]) -> None:
    """At thousands of queues the management API takes seconds to answer (3.10: 0.3-1 s per page of 500 at 5,000
    queues), and back-to-back reads slowed the Prometheus reads every scale-up waits for: after a read that took
    T seconds the next starts no sooner than 2 T after the last one started (and one poll interval at least),
    while depth is read from Prometheus on every poll."""
    fm, url = fake
    fm.items = [queue_item("v1", "jobs", ready=4)]
    fm.delay = 0.3
    async with serve(_prometheus_3x(PROM_3X)) as port, aiohttp.ClientSession() as s:
        poller = BrokerPoller(
            "b", ManagementReader(url, s), depth_reader=PrometheusReader(f"http://127.0.0.1:{port}", s)
        )
        poller.register("a", "v1", "jobs", 0.5)
        started = time.monotonic()
        snaps = 0
        while time.monotonic() - started < 2.4:
            await poller.poll_once()  # back to back: Prometheus answers at once
            snaps += 1
            await asyncio.sleep(0.02)
        await poller.close()
    assert snaps > 20  # depth every poll
    # 2.4 s of polling: reads at 0, ~0.6, ~1.2, ~1.8 (each 0.3 s, then as long idle); back to back it was 8
    assert 3 <= len(fm.requests) <= 5, len(fm.requests)


async def test_a_failing_background_management_read_leaves_depth_and_unknown_rates(
    fake: tuple[FakeManagement, str],
) -> None:
    """The management API fails (500) after the first read: the next snapshots keep Prometheus' depth, report no
    rate (unknown, not 0) and no error; when it answers again, its rates come back."""
    fm, url = fake
    fm.items = [queue_item("v1", "jobs", ready=4)]
    async with serve(_prometheus_3x(PROM_3X)) as port, aiohttp.ClientSession() as s:
        clock = [1000.0]
        poller = BrokerPoller(
            "b",
            ManagementReader(url, s),
            clock=lambda: clock[0],
            depth_reader=PrometheusReader(f"http://127.0.0.1:{port}", s),
        )
        poller.register("a", "v1", "jobs", 1.0)

        async def tick() -> Snapshot:
            clock[0] += 1.0  # a poll interval later: the management API is due again
            return await poller.poll_once()

        await tick()
        fm.status = 500
        failing = [await tick() for _ in range(3)]
        fm.status = 200
        await tick()  # starts the read that answers again
        await asyncio.sleep(0.2)
        back = await tick()
        await poller.close()
    jobs = failing[-1].queues[("v1", "jobs")]
    assert failing[-1].error is None and (jobs.ready, jobs.publish_rate, jobs.rate_source) == (100, None, None)
    assert back.queues[("v1", "jobs")].publish_rate == 1.5
