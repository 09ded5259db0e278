"""Flood: many clients post tasks as fast as they can into a small bounded queue with no consumer, for a few
seconds. The API answers 202 only for what the queue holds, 503 (+ Retry-After) once it is full, 429 past a
tenant's rate; the queue never grows past its limit and the broker never raises its memory or disk alarm.
The figures are printed (run with -s) and quoted in ../shared/RELIABILITY.md."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from collections import Counter

import pika
import pytest
from qw_core.topology import queue_name

from tests.support.api import client, running_api
from tests.support.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi"}
CLIENTS = 8
SECONDS = 3.0
LIMIT = 200


class Sampler(threading.Thread):
    """Every 50 ms: the queue's depth (AMQP, its own connection) and, every 250 ms, the node's memory
    (/api/nodes/<node>?memory=true: its total is there on 3.10 and 4.x, with or without the metrics collector)
    and its alarms (/api/health/checks/alarms: 503 while any memory or disk alarm is raised)."""

    def __init__(self, broker, amqp_url: str) -> None:
        super().__init__(daemon=True)
        self.broker, self.amqp_url = broker, amqp_url
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
                self.depths.append(ch.queue_declare(queue_name("email"), passive=True).method.message_count)
                if time.monotonic() - last_node >= 0.25:
                    last_node = time.monotonic()
                    self.sample_node()
                self.stop.wait(0.05)
        finally:
            conn.close()


def _flood(base: str, until: float, codes: Counter, lock: threading.Lock) -> None:
    with client(base) as http:
        while time.monotonic() < until:
            r = http.post("/v1/emails", json=EMAIL)
            if r.status_code in (503, 429):
                assert "retry-after" in r.headers
            with lock:
                codes[r.status_code] += 1


def test_a_flood_into_a_small_queue_is_refused_and_the_broker_never_alarms(broker, amqp_url, api_settings):
    settings = api_settings.model_copy(update={"queue_max_length": LIMIT, "tenant_rate": 400.0, "tenant_burst": 400})
    codes: Counter = Counter()
    lock = threading.Lock()
    with running_api(settings) as (base, app), client(base) as http:
        wait_for("API ready", lambda: http.get("/readyz").status_code == 200, 20)
        sampler = Sampler(broker, amqp_url)
        sampler.start()
        start = time.monotonic()
        until = start + SECONDS
        floods = [threading.Thread(target=_flood, args=(base, until, codes, lock)) for _ in range(CLIENTS)]
        for t in floods:
            t.start()
        for t in floods:
            t.join(SECONDS + 60)
        elapsed = time.monotonic() - start
        time.sleep(0.3)
        sampler.stop.set()
        sampler.join(10)
        stored = app.state.services.store.counts()
    final_depth = sampler.depths[-1]
    mem_limit = int(broker.ctl("eval", "vm_memory_monitor:get_memory_limit().").stdout.strip())
    figures = {
        "clients": CLIENTS,
        "seconds": round(elapsed, 2),
        "offered_per_second": round(sum(codes.values()) / elapsed, 1),
        "codes": dict(sorted(codes.items())),
        "queue_limit": LIMIT,
        "max_depth_seen": max(sampler.depths),
        "final_depth": final_depth,
        "broker_mem_before_bytes": sampler.memory[0],
        "broker_mem_peak_bytes": max(sampler.memory),
        "broker_mem_alarm_at_bytes": mem_limit,
        "alarm_checks": sampler.checks,
        "alarms": sampler.alarms,
    }
    print("flood:", json.dumps(figures))
    assert set(codes) <= {202, 429, 503} and codes[503] > 0
    assert sampler.checks >= SECONDS * 2 and sampler.alarms == []
    assert max(sampler.memory) < mem_limit
    # Every 202 is in the queue (no consumer) and nothing else is. A quorum queue's limit is soft by what is in
    # flight: publishes the queue has not yet applied when it fills are still taken (each client has one request
    # in flight), then it refuses until it is below the limit again.
    assert codes[202] == final_depth == stored.get("queued", 0)
    assert LIMIT <= max(sampler.depths) <= LIMIT + CLIENTS
    assert stored.keys() <= {"queued"}
