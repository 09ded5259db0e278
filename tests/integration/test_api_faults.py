"""Broker faults on a private RabbitMQ node (never the shared one): the API never answers 202 for a lost task."""

from __future__ import annotations

import time
import urllib.parse

import pika
import pytest
from qw_core.settings import ApiSettings
from qw_core.topology import TASKS_EXCHANGE, queue_name
from rabbitmq import Broker, free_broker_ports

from tests.support.api import client, running_api
from tests.support.images import image_bytes
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi"}


@pytest.fixture(scope="module")
def fault_broker(tmp_path_factory):
    amqp, mgmt, prom = free_broker_ports()
    b = Broker(
        name=f"qwapifault-{amqp}", port=amqp, mgmt_port=mgmt, prom_port=prom, base=tmp_path_factory.mktemp("rmq")
    )
    b.start()
    yield b
    b.destroy()


@pytest.fixture
def fault_api(fault_broker, tmp_path):
    if not fault_broker.running():
        fault_broker.restart_after_crash()
    fault_broker.ctl("start_app")
    fault_broker.wait_ready()
    settings = ApiSettings(
        rabbitmq_url=fault_broker.url, database_url=f"sqlite:///{tmp_path}/qw.db", storage_dir=tmp_path / "s",
        api_keys="key-acme:acme", publish_timeout=2.0, retry_after_seconds=7,
    )  # fmt: skip
    with running_api(settings) as (base, app):
        with client(base) as c:
            wait_for("API ready", lambda: c.get("/readyz").status_code == 200, 20)
            yield c, app.state.services
    ch = pika.BlockingConnection(pika.URLParameters(fault_broker.url)).channel()
    for kind in ("image", "email"):
        ch.queue_purge(queue_name(kind))
    ch.connection.close()


def _nothing_left(services):
    assert services.store.counts() == {}
    assert [p for p in services.storage.root.rglob("*") if p.is_file()] == []


def test_broker_down_gives_503_with_retry_after_and_recovers_by_itself(fault_broker, fault_api):
    http, services = fault_api
    fault_broker.ctl("stop_app")
    wait_for("readyz to report the broker down", lambda: http.get("/readyz").status_code == 503, 20)
    for r in (
        http.post("/v1/emails", json=EMAIL),
        http.post("/v1/images", files={"file": ("a.png", image_bytes(), "image/png")}),
    ):
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert "nothing was queued" in r.json()["detail"]
    _nothing_left(services)
    fault_broker.ctl("start_app")
    wait_for("the API to reconnect", lambda: http.get("/readyz").status_code == 200, 30)
    assert http.post("/v1/emails", json=EMAIL).status_code == 202


def test_broker_nack_from_a_full_queue_is_503_not_202(fault_broker, fault_api):
    http, services = fault_api
    fault_broker.api(
        "/api/policies/%2F/cap",
        "PUT",
        {"pattern": "^qw\\.image$", "definition": {"max-length": 1}, "apply-to": "queues"},
    )
    try:
        codes = []
        for _ in range(30):  # the policy applies asynchronously; quorum queues reject once over the limit
            codes.append(http.post("/v1/images", files={"file": ("a.png", image_bytes(), "image/png")}).status_code)
            if codes[-1] == 503:
                break
            time.sleep(0.05)
        assert codes[-1] == 503 and set(codes[:-1]) <= {202}
        accepted = codes.count(202)
        assert services.store.counts() == {"queued": accepted}
        assert len([p for p in services.storage.root.rglob("*") if p.is_file()]) == accepted
    finally:
        fault_broker.api("/api/policies/%2F/cap", "DELETE")


def test_unroutable_publish_is_503(fault_broker, fault_api):
    http, services = fault_api
    q = urllib.parse.quote(queue_name("email"), safe="")
    fault_broker.api(f"/api/bindings/%2F/e/{TASKS_EXCHANGE}/q/{q}/email", "DELETE")
    try:
        r = http.post("/v1/emails", json=EMAIL)
        assert r.status_code == 503 and "unroutable" in r.json()["detail"]
        _nothing_left(services)
    finally:
        fault_broker.api(f"/api/bindings/%2F/e/{TASKS_EXCHANGE}/q/{q}", "POST", {"routing_key": "email"})


def test_a_confirm_that_never_comes_is_a_503_and_later_publishes_are_confirmed(fault_broker, fault_api):
    """A memory alarm makes the broker stop reading from publishers: the message waits unread and its confirm never
    comes. After QW_PUBLISH_TIMEOUT (2 s here) the API answers 503 and withdraws the row; once the alarm clears,
    the broker takes the stray message (a worker would dead-letter it: no status record) and its late confirm must
    not be matched to a later publish: the next task is confirmed as its own."""
    http, services = fault_api

    def alarm() -> bool:
        nodes = fault_broker.api("/api/nodes")
        return isinstance(nodes, list) and bool(nodes[0].get("mem_alarm"))

    fault_broker.ctl("set_vm_memory_high_watermark", "0.000001")
    try:
        wait_for("the memory alarm", alarm, 20)
        started = time.monotonic()
        r = http.post("/v1/emails", json=EMAIL)
        assert r.status_code == 503 and "did not confirm" in r.json()["detail"], r.text
        assert time.monotonic() - started >= 2.0  # not before the confirm timeout
        _nothing_left(services)
    finally:
        fault_broker.ctl("set_vm_memory_high_watermark", "0.4")
    wait_for("the alarm to clear", lambda: not alarm(), 20)
    after = [http.post("/v1/emails", json={**EMAIL, "subject": f"after {i}"}) for i in range(3)]
    assert [a.status_code for a in after] == [202] * 3, [a.text for a in after]
    assert services.store.counts() == {"queued": 3}


def test_confirmed_tasks_survive_a_broker_crash(fault_broker, fault_api):
    """Reliability test 3: K confirmed persistent messages, kill -9, restart: all K are still there."""
    http, _ = fault_api
    ids = [http.post("/v1/emails", json={**EMAIL, "subject": f"n{i}"}).json()["task_id"] for i in range(50)]
    fault_broker.kill9()
    fault_broker.restart_after_crash()
    wait_for("the API to reconnect after the crash", lambda: http.get("/readyz").status_code == 200, 60)
    ch = pika.BlockingConnection(pika.URLParameters(fault_broker.url)).channel()
    got = []
    while (m := ch.basic_get(queue_name("email"), auto_ack=True))[0]:
        got.append(m[1].message_id)
    ch.connection.close()
    assert sorted(got) == sorted(ids)
