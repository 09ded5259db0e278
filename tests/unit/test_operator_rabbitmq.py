"""The management-API reader and the shared poller against a recorded-page HTTP server (aiohttp, in-process):
pagination by page_count, one request per page, errors surfaced as BrokerError, one read per tick for many
QueueWorkers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from qw_operator.rabbitmq import (
    BrokerError,
    BrokerPoller,
    ManagementReader,
    QueueMetrics,
    parse_prometheus_depth,
    parse_queue,
    split_credentials,
    with_depth,
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


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeManagement, str]]:
    fm = FakeManagement([queue_item("v1", f"q{i}", ready=i) for i in range(1201)] + [queue_item("v2", "other")])
    app = web.Application()
    app.router.add_get("/api/queues", fm.handle)
    app.router.add_get("/api/queues/{vhost}", fm.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fm, f"http://user:p%40ss@127.0.0.1:{port}"
    await runner.cleanup()


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
    key, m = parse_queue({"name": "q", "vhost": "/", "messages_ready": 3})
    assert key == ("/", "q") and (m.ready, m.unacked, m.publish_rate, m.ack_rate) == (3, 0, 0.0, 0.0)


def test_split_credentials() -> None:
    base, auth = split_credentials("http://u:s%2Fecret@rabbit:15672/")
    assert base == "http://rabbit:15672" and auth == {
        "Authorization": "Basic " + base64.b64encode(b"u:s/ecret").decode()
    }
    assert split_credentials("https://rabbit")[1] == {}


def test_rates_are_held_between_stats_emissions() -> None:
    from qw_operator.rabbitmq import QueueMetrics, hold_rates

    k = ("/", "q")
    fresh = {k: QueueMetrics(10, 0, 1, 50.0, 40.0, published=100, acked=80)}
    state = hold_rates({}, fresh, 0.0)
    # Same counters, rates read 0.0: a repeated sample, so the last real rates stand...
    stale = {k: QueueMetrics(12, 0, 1, 0.0, 0.0, published=100, acked=80)}
    state = hold_rates(state, stale, 5.0)
    assert (state[k][0].publish_rate, state[k][0].ack_rate, state[k][0].ready) == (50.0, 40.0, 12)
    # ...until the counters have stood still for the hold time: then the queue is really idle
    state = hold_rates(state, stale, 16.0)
    assert state[k][0].publish_rate == 0.0
    # Moving counters always take the broker's new rates
    moved = {k: QueueMetrics(12, 0, 1, 7.0, 3.0, published=130, acked=95)}
    assert hold_rates(state, moved, 17.0)[k][0].publish_rate == 7.0


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


def test_with_depth_replaces_depth_and_keeps_rates() -> None:
    mgmt = {
        ("/", "qw.email"): QueueMetrics(100, 0, 3, 12.5, 10.0, 500, 400),
        ("/", "other"): QueueMetrics(1, 0, 0, 0, 0),
    }
    merged = with_depth(mgmt, {("/", "qw.email"): (120, 8, 4), ("/", "new"): (5, 0, 0)})
    assert merged[("/", "qw.email")] == QueueMetrics(120, 8, 4, 12.5, 10.0, 500, 400)
    assert merged[("/", "other")] == mgmt[("/", "other")]  # only the management API knows it: kept as is
    assert merged[("/", "new")] == QueueMetrics(5, 0, 0, 0.0, 0.0)  # declared after the API's last stats
