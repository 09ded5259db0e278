"""`Idempotency-Key` on the task routes and `DELETE /v1/tasks/{id}`, over real HTTP, on the real broker and store."""

from __future__ import annotations

import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from queueworker import Client
from qw_core.topology import TASKS_EXCHANGE, queue_name

from tests.support.api import client, running_api
from tests.support.images import image_bytes
from tests.support.wait import wait_for
from tests.support.workers import running_worker, worker_env

pytestmark = pytest.mark.integration
APP = "tests.support.sdk_tasks"
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"}
ORDER = {"order_id": "o-7", "items": [{"sku": "A", "qty": 2}]}


def key(k: str) -> dict[str, str]:
    return {"Idempotency-Key": k}


@pytest.fixture
def sdk_api(api_settings):
    """The API with the SDK kinds of tests/support/sdk_tasks.py (QW_APP)."""
    settings = api_settings.model_copy(update={"app": APP})
    with running_api(settings) as (base, app), client(base) as http:
        yield http, app.state.services, settings


@pytest.mark.task_delay(0.5)
def test_the_same_key_twice_is_one_task_and_one_email(platform):
    http, mails = platform
    r1 = http.post("/v1/emails", json=EMAIL, headers=key("mail-1"))
    r2 = http.post("/v1/emails", json=EMAIL, headers=key("mail-1"))
    assert (r1.status_code, r2.status_code) == (202, 202)
    assert r2.json() == r1.json() and r2.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in r1.headers
    wait_for("the task to succeed", lambda: http.get(r1.json()["status_url"]).json()["status"] == "succeeded", 20)
    assert len(mails.messages()) == 1
    r3 = http.post("/v1/emails", json=EMAIL, headers=key("mail-2"))  # another key: another email
    assert r3.json()["task_id"] != r1.json()["task_id"]
    with client(str(http.base_url), "key-globex") as other:  # keys are per tenant
        assert other.post("/v1/emails", json=EMAIL, headers=key("mail-1")).json()["task_id"] != r1.json()["task_id"]


def test_concurrent_requests_with_one_key_make_one_task(api, http):
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: http.post("/v1/emails", json=EMAIL, headers=key("race")), range(16)))
    assert {r.status_code for r in answers} == {202}
    assert len({r.json()["task_id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 15
    assert api[1].state.services.store.counts() == {"queued": 1}


def test_a_key_reused_for_another_request_is_422_and_changes_nothing(api, http):
    first = http.post("/v1/emails", json=EMAIL, headers=key("k-1")).json()["task_id"]
    r = http.post("/v1/emails", json={**EMAIL, "subject": "Other"}, headers=key("k-1"))
    assert r.status_code == 422 and "already used for a different request" in r.json()["detail"]
    assert first in r.json()["detail"]
    files = {"file": ("a.png", image_bytes(), "image/png")}
    r = http.post("/v1/images", files=files, headers=key("k-1"))  # another kind
    assert r.status_code == 422
    storage = api[1].state.services.settings.storage_dir
    assert api[1].state.services.store.counts() == {"queued": 1}
    assert not [p for p in storage.rglob("*") if p.is_file()]  # the refused upload is not kept


@pytest.mark.parametrize("bad", ["k" * 256, "a\tb", "caf\xe9"])
def test_a_malformed_key_is_422_naming_the_header(api, http, bad):
    r = http.post("/v1/emails", json=EMAIL, headers={"Idempotency-Key": bad.encode("latin-1")})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert api[1].state.services.store.counts() == {}


def test_an_image_sent_twice_with_a_key_is_one_task_and_one_stored_upload(api, http):
    files = {"file": ("a.png", image_bytes(), "image/png")}
    r1 = http.post("/v1/images", files=files, data={"width": "32"}, headers=key("img-1"))
    r2 = http.post("/v1/images", files=files, data={"width": "32"}, headers=key("img-1"))
    assert r1.status_code == r2.status_code == 202 and r1.json()["task_id"] == r2.json()["task_id"]
    r3 = http.post("/v1/images", files=files, data={"width": "16"}, headers=key("img-1"))  # other options
    assert r3.status_code == 422
    storage = api[1].state.services.settings.storage_dir
    assert len([p for p in storage.rglob("*") if p.is_file()]) == 1


def test_an_expired_key_makes_a_new_task(api_settings):
    settings = api_settings.model_copy(update={"idempotency_seconds": 0.3})
    with running_api(settings) as (base, _), client(base) as http:
        first = http.post("/v1/emails", json=EMAIL, headers=key("k-1")).json()["task_id"]
        wait_for("the key to expire", lambda: http.post("/v1/emails", json=EMAIL, headers=key("k-1")).json()["task_id"]
                 != first, 5, 0.1)  # fmt: skip


def test_after_a_503_the_same_key_queues_the_task(api, http, broker, vhost):
    v, q = urllib.parse.quote(vhost, safe=""), urllib.parse.quote(queue_name("email"), safe="")
    broker.api(f"/api/bindings/{v}/e/{TASKS_EXCHANGE}/q/{q}/email", "DELETE")
    try:
        r = http.post("/v1/emails", json=EMAIL, headers=key("k-503"))
        assert r.status_code == 503 and "Retry-After" in r.headers
    finally:
        broker.api(f"/api/bindings/{v}/e/{TASKS_EXCHANGE}/q/{q}", "POST", {"routing_key": "email"})
    r = http.post("/v1/emails", json=EMAIL, headers=key("k-503"))
    assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers
    assert api[1].state.services.store.counts() == {"queued": 1}


def test_a_key_is_shared_by_the_http_route_and_the_sdk(sdk_api):
    http, services, settings = sdk_api
    with Client(settings.rabbitmq_url.get_secret_value(), database_url=settings.database_url, tenant="acme") as c:
        task_id = c.enqueue("inventory", ORDER, idempotency_key="order-7")
    r = http.post("/v1/tasks/inventory", json=ORDER, headers=key("order-7"))
    assert r.status_code == 202 and r.json()["task_id"] == task_id and r.headers["Idempotent-Replayed"] == "true"
    assert services.store.counts() == {"queued": 1}
    assert "Idempotency-Key" in json.dumps(http.get("/openapi.json").json()["paths"]["/v1/tasks/inventory"])


def test_cancel_a_queued_task_then_its_worker_skips_it(sdk_api, amqp_url, tmp_path):
    http, services, settings = sdk_api
    r = http.post("/v1/tasks/flaky", json={"counter": str(tmp_path / "runs"), "fail_times": 0})
    url = r.json()["status_url"]
    with client(str(http.base_url), "key-globex") as other:
        assert other.delete(url).status_code == 404  # another tenant's task: not found, not cancelled
    assert http.delete("/v1/tasks/nope").status_code == 404
    r = http.delete(url)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["attempts"] == 0
    assert http.delete(url).status_code == 200  # again: still cancelled
    events = http.get(f"{url}/events").text  # the stream ends: `cancelled` is final
    assert [json.loads(line[6:])["status"] for line in events.splitlines() if line.startswith("data: ")] == [
        "cancelled"
    ]
    env = worker_env(amqp_url, settings.database_url, settings.storage_dir, QW_APP=APP)
    with running_worker("flaky", env, tmp_path / "logs") as w:
        wait_for("the skip", lambda: w.metric("queueworker_worker_tasks_processed_total", kind="flaky",
                                              outcome="cancelled") == 1.0, 10)  # fmt: skip
    assert not (tmp_path / "runs").exists()
    assert http.get(url).json()["status"] == "cancelled"


@pytest.mark.task_delay(3)
def test_cancel_a_running_or_finished_task_is_409_with_its_status(platform):
    http, _ = platform
    url = http.post("/v1/emails", json=EMAIL).json()["status_url"]
    wait_for("the task to start", lambda: http.get(url).json()["status"] == "processing", 20)
    r = http.delete(url)
    assert r.status_code == 409 and r.json()["status"] == "processing" and "has started" in r.json()["detail"]
    wait_for("the task to succeed", lambda: http.get(url).json()["status"] == "succeeded", 20)
    r = http.delete(url)
    assert r.status_code == 409 and r.json()["status"] == "succeeded" and "has ended" in r.json()["detail"]
