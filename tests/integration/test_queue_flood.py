"""Flood: many clients publish tasks as fast as they can into a small bounded queue with no consumer, for a few
seconds, through the API (202 only for what the queue holds, 503 + Retry-After once it is full, 429 past a
tenant's rate) and as SDK Clients straight to the broker (PublishRefused once full). The queue never grows past
its limit (plus what is in flight) and the broker never raises its memory or disk alarm.
The figures are printed (run with -s) and quoted in ../shared/RELIABILITY.md."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from collections import Counter

import pika
import pytest
from queueworker import Client, PublishRefused
from qw_core.settings import ClientSettings
from qw_core.topology import build_topology, declare_with_pika, queue_name

from tests.support import sdk_tasks  # noqa: F401 - registers the kinds, so the client validates them
from tests.support.api import client, running_api
from tests.support.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi"}
ORDER = {"order_id": "o-1", "items": [{"sku": "A", "qty": 1}]}
CLIENTS = 8
SECONDS = 3.0
LIMIT = 200


class Sampler(threading.Thread):
    """Every 50 ms: the queue's depth (AMQP, its own connection) and, every 250 ms, the node's memory
    (/api/nodes/<node>?memory=true: its total is there on 3.10 and 4.x, with or without the metrics collector)
    and its alarms (/api/health/checks/alarms: 503 while any memory or disk alarm is raised)."""

    def __init__(self, broker, amqp_url: str, queue: str) -> None:
        super().__init__(daemon=True)
        self.broker, self.amqp_url, self.queue = broker, amqp_url, queue
        self.node = broker.api("/api/nodes")[0]["name"]
        self.depths: list[int] = []
        self.memory: list[int] = []
        self.alarms: list[str] = []
        self.checks = 0
        self.stop = threading.Event()

    def sample_node(self) -> None:
        total = self.broker.api(f"/api/nodes/{self.node}?memory=true")["memory"]["total"]
        self.memory.append(max(total.values()))  # the largest of erlang, rss, allocated: the broker's own figure
        try:
            self.broker.api("/api/health/checks/alarms")
        except urllib.error.HTTPError as exc:
            self.alarms.append(exc.read().decode(errors="replace"))
        self.checks += 1

    def run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        ch = conn.channel()
        last_node = 0.0
        try:
            while not self.stop.is_set():
                self.depths.append(ch.queue_declare(self.queue, passive=True).method.message_count)
                if time.monotonic() - last_node >= 0.25:
                    last_node = time.monotonic()
                    self.sample_node()
                self.stop.wait(0.05)
        finally:
            conn.close()


def _flood(broker, amqp_url: str, queue: str, offer) -> tuple[Counter, dict]:
    """CLIENTS threads each run `offer(until, count)` (count(outcome) per attempt) for SECONDS, while a Sampler
    watches `queue` and the broker; returns the outcomes and the figures."""
    codes: Counter = Counter()
    lock = threading.Lock()

    def count(outcome: object) -> None:
        with lock:
            codes[outcome] += 1

    sampler = Sampler(broker, amqp_url, queue)
    sampler.start()
    start = time.monotonic()
    floods = [threading.Thread(target=offer, args=(start + SECONDS, count)) for _ in range(CLIENTS)]
    for t in floods:
        t.start()
    for t in floods:
        t.join(SECONDS + 60)
    elapsed = time.monotonic() - start
    time.sleep(0.3)
    sampler.stop.set()
    sampler.join(10)
    mem_limit = int(broker.ctl("eval", "vm_memory_monitor:get_memory_limit().").stdout.strip())
    figures = {
        "clients": CLIENTS,
        "seconds": round(elapsed, 2),
        "offered_per_second": round(sum(codes.values()) / elapsed, 1),
        "outcomes": dict(sorted(codes.items(), key=str)),
        "queue_limit": LIMIT,
        "max_depth_seen": max(sampler.depths),
        "final_depth": sampler.depths[-1],
        "broker_mem_before_bytes": sampler.memory[0],
        "broker_mem_peak_bytes": max(sampler.memory),
        "broker_mem_alarm_at_bytes": mem_limit,
        "alarm_checks": sampler.checks,
        "alarms": sampler.alarms,
    }
    print("flood:", json.dumps(figures))
    assert sampler.checks >= SECONDS * 2 and sampler.alarms == []
    assert max(sampler.memory) < mem_limit
    # A quorum queue's limit is soft by what is in flight: publishes it has not yet applied when it fills are
    # still taken (each client has one in flight), then it refuses until it is below the limit again.
    assert LIMIT <= max(sampler.depths) <= LIMIT + CLIENTS
    return codes, figures


def test_a_flood_through_the_api_is_503_once_full_and_the_broker_never_alarms(broker, amqp_url, api_settings):
    settings = api_settings.model_copy(update={"queue_max_length": LIMIT, "tenant_rate": 400.0, "tenant_burst": 400})
    with running_api(settings) as (base, app), client(base) as http:
        wait_for("API ready", lambda: http.get("/readyz").status_code == 200, 20)

        def offer(until: float, count) -> None:
            with client(base) as c:
                while time.monotonic() < until:
                    r = c.post("/v1/emails", json=EMAIL)
                    assert r.status_code in (202, 429, 503)
                    assert r.status_code == 202 or "retry-after" in r.headers
                    count(r.status_code)

        codes, figures = _flood(broker, amqp_url, queue_name("email"), offer)
        stored = app.state.services.store.counts()
    assert codes[503] > 0
    # Every 202 is in the queue (no consumer) and nothing else is.
    assert codes[202] == figures["final_depth"] == stored.get("queued", 0) and stored.keys() <= {"queued"}


def test_a_flood_of_sdk_clients_is_refused_once_full_and_the_broker_never_alarms(broker, amqp_url, tmp_path):
    dbs = iter(range(CLIENTS))
    rows: list[int] = []  # each client's task rows

    def offer(until: float, count) -> None:
        db = f"sqlite:///{tmp_path}/c{next(dbs)}.db"
        settings = ClientSettings(rabbitmq_url=amqp_url, database_url=db, queue_max_length=LIMIT)
        with Client(settings=settings) as c:
            while time.monotonic() < until:
                try:
                    c.enqueue("inventory", ORDER)
                    count("accepted")
                except PublishRefused:
                    count("refused")
            store, _ = c._connections()
            rows.append(store.counts().get("queued", 0))

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))  # the queue the sampler watches, as a client would
    limits = ClientSettings(queue_max_length=LIMIT).queue_limits()
    declare_with_pika(conn.channel(), build_topology(("inventory",), 10, limits))
    conn.close()
    codes, figures = _flood(broker, amqp_url, queue_name("inventory"), offer)
    assert codes["refused"] > 0 and len(rows) == CLIENTS
    assert codes["accepted"] == figures["final_depth"] == sum(rows)
